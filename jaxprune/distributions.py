"""Per-layer sparsity allocation: uniform, Erdos-Renyi(-Kernel) and per-path distributions.

"Global" magnitude pruning is not a per-leaf allocation: use ``jaxprune.select.global_topk`` with
the scalar sparsity (``resolve("global")`` returns the sentinel :data:`GLOBAL`, a
:class:`GlobalSelection`).
"""

from jaxprune._src.distributions import GLOBAL as GLOBAL
from jaxprune._src.distributions import GlobalSelection as GlobalSelection
from jaxprune._src.distributions import er as er
from jaxprune._src.distributions import erk as erk
from jaxprune._src.distributions import nonzero_budget as nonzero_budget
from jaxprune._src.distributions import per_path as per_path
from jaxprune._src.distributions import resolve as resolve
from jaxprune._src.distributions import uniform as uniform

__all__ = [
    "GLOBAL",
    "GlobalSelection",
    "er",
    "erk",
    "nonzero_budget",
    "per_path",
    "resolve",
    "uniform",
]
