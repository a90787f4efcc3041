"""Flax Linen glue: learned gate layers, labels for slimming and gate penalties, rebuilding.

The gates store their parameters under jaxprune's reserved names (``l0_log_alpha``,
``bernoulli_gate``, ``channel_gate``), which :func:`jaxprune.gate_labels`, the penalties
(:func:`jaxprune.add_gate_penalty`, ``optax_sparsity(gates=...)``) and the selectors
(:func:`jaxprune.gate_masks`, :func:`jaxprune.fold_gates`) recognize. Stochastic gates draw
from the ``"gates"`` RNG stream. :mod:`jaxprune.nnx` has the same layers for Flax NNX.
"""

from jaxprune._src.gates_linen import BernoulliGate as BernoulliGate
from jaxprune._src.gates_linen import ChannelGate as ChannelGate
from jaxprune._src.gates_linen import HardConcreteGate as HardConcreteGate
from jaxprune._src.gates_linen import hard_concrete_init as hard_concrete_init
from jaxprune._src.gates_linen import slimming_labels as slimming_labels
from jaxprune._src.labels import gate_labels as gate_labels
from jaxprune._src.shrink_linen import rebuild as rebuild

__all__ = [
    "BernoulliGate",
    "ChannelGate",
    "HardConcreteGate",
    "gate_labels",
    "hard_concrete_init",
    "rebuild",
    "slimming_labels",
]
