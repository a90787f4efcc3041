"""Importance scores: ``jaxprune.scores.magnitude``, ``taylor``, ``random``, ``norm``, ...

Every leaf given is scored (biases too; structured granularities refuse leaves of rank < 2):
pass ``jaxprune.only_prunable(params)`` to score the leaves :func:`jaxprune.optax_sparsity`
prunes by default, with ``None`` (unscored, never pruned) for the others.
"""

from jaxprune._src.scores import TaylorState as TaylorState
from jaxprune._src.scores import magnitude as magnitude
from jaxprune._src.scores import norm as norm
from jaxprune._src.scores import random as random
from jaxprune._src.scores import reduce as reduce
from jaxprune._src.scores import taylor as taylor
from jaxprune._src.scores import taylor_finalize as taylor_finalize
from jaxprune._src.scores import taylor_init as taylor_init
from jaxprune._src.scores import taylor_update as taylor_update

__all__ = [
    "TaylorState",
    "magnitude",
    "norm",
    "random",
    "reduce",
    "taylor",
    "taylor_finalize",
    "taylor_init",
    "taylor_update",
]
