"""Score -> mask selectors: exact top-k (per layer and global), thresholds, N:M, hysteresis.

Every function maps a params-shaped tree of scores (``None`` = not scored) to a bool mask tree;
see :mod:`jaxprune._src.select` for how the exact top-k avoids sorting.
"""

from jaxprune._src.select import global_topk as global_topk
from jaxprune._src.select import hysteresis as hysteresis
from jaxprune._src.select import layerwise_topk as layerwise_topk
from jaxprune._src.select import n_of_m as n_of_m
from jaxprune._src.select import n_of_m_mask as n_of_m_mask
from jaxprune._src.select import std_threshold as std_threshold
from jaxprune._src.select import threshold as threshold
from jaxprune._src.select import topk_mask as topk_mask

__all__ = [
    "global_topk",
    "hysteresis",
    "layerwise_topk",
    "n_of_m",
    "n_of_m_mask",
    "std_threshold",
    "threshold",
    "topk_mask",
]
