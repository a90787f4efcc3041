"""Flax NNX glue: learned gate layers with their own ``Variable`` types, and labels by type.

The layers mirror :mod:`jaxprune.linen` (same parameter names, math and defaults). Each gate
parameter is a subclass of :class:`GateParam` (itself an ``nnx.Param``, so ``nnx.Optimizer(...,
wrt=nnx.Param)`` trains it), which filters, weight-decay masks (:func:`mask_fn`) and penalty
masks (:func:`labels`, :func:`gate_labels`, :func:`slimming_labels`) select by type.
"""

from jaxprune._src.gates_nnx import BernoulliGate as BernoulliGate
from jaxprune._src.gates_nnx import BernoulliParam as BernoulliParam
from jaxprune._src.gates_nnx import ChannelGate as ChannelGate
from jaxprune._src.gates_nnx import ChannelGateParam as ChannelGateParam
from jaxprune._src.gates_nnx import GateParam as GateParam
from jaxprune._src.gates_nnx import HardConcreteGate as HardConcreteGate
from jaxprune._src.gates_nnx import HardConcreteParam as HardConcreteParam
from jaxprune._src.gates_nnx import gate_labels as gate_labels
from jaxprune._src.gates_nnx import labels as labels
from jaxprune._src.gates_nnx import mask_fn as mask_fn
from jaxprune._src.gates_nnx import slimming_labels as slimming_labels

__all__ = [
    "BernoulliGate",
    "BernoulliParam",
    "ChannelGate",
    "ChannelGateParam",
    "GateParam",
    "HardConcreteGate",
    "HardConcreteParam",
    "gate_labels",
    "labels",
    "mask_fn",
    "slimming_labels",
]
