"""One-shot pruning of pretrained models from calibration data: Wanda, SparseGPT, OWL, N:M.

Pure functions prune one linear layer from its :class:`InputStats` (streamed, jittable,
reducible across devices); :func:`prune_blocks` (pytrees) and :func:`prune_nnx` (Flax NNX
modules, in place) prune a whole stack of transformer blocks sequentially, each block
calibrated on the outputs of the already pruned blocks before it.

Example:
  >>> import jax, jax.numpy as jnp
  >>> import jaxprune
  >>> x = jax.random.normal(jax.random.key(0), (256, 16))
  >>> kernel = jax.random.normal(jax.random.key(1), (16, 8))
  >>> stats = jaxprune.oneshot.input_stats_update(jaxprune.oneshot.input_stats_init(16), x)
  >>> pruned = jaxprune.oneshot.sparsegpt(kernel, stats, n_of_m=(2, 4), blocksize=8)
  >>> pruned.mask.reshape(4, 4, 8).sum(1).min().item()  # 2 of every 4 inputs kept
  2
"""

from jaxprune._src.oneshot import InputStats as InputStats
from jaxprune._src.oneshot import Pruned as Pruned
from jaxprune._src.oneshot import input_stats_init as input_stats_init
from jaxprune._src.oneshot import input_stats_update as input_stats_update
from jaxprune._src.oneshot import magnitude as magnitude
from jaxprune._src.oneshot import outlier_ratio as outlier_ratio
from jaxprune._src.oneshot import owl_sparsities as owl_sparsities
from jaxprune._src.oneshot import reconstruction_error as reconstruction_error
from jaxprune._src.oneshot import sparsegpt as sparsegpt
from jaxprune._src.oneshot import wanda as wanda
from jaxprune._src.oneshot import wanda_scores as wanda_scores
from jaxprune._src.oneshot_driver import OWL as OWL
from jaxprune._src.oneshot_driver import LayerReport as LayerReport
from jaxprune._src.oneshot_driver import Magnitude as Magnitude
from jaxprune._src.oneshot_driver import SparseGPT as SparseGPT
from jaxprune._src.oneshot_driver import Wanda as Wanda
from jaxprune._src.oneshot_driver import format_report as format_report
from jaxprune._src.oneshot_driver import prune_blocks as prune_blocks
from jaxprune._src.oneshot_nnx import prune_nnx as prune_nnx

__all__ = [
    "InputStats",
    "LayerReport",
    "Magnitude",
    "OWL",
    "Pruned",
    "SparseGPT",
    "Wanda",
    "format_report",
    "input_stats_init",
    "input_stats_update",
    "magnitude",
    "outlier_ratio",
    "owl_sparsities",
    "prune_blocks",
    "prune_nnx",
    "reconstruction_error",
    "sparsegpt",
    "wanda",
    "wanda_scores",
]
