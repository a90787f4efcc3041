"""Counting parameters and multiply-accumulates (MACs) from a model's jaxpr.

Convention: one MAC is one multiply-add. ``dot_general`` costs
``prod(output shape) * prod(contracted sizes)`` MACs; ``conv_general_dilated`` costs
``prod(output shape) * prod(kernel window) * C_in / feature_group_count`` MACs. Biases,
activations, normalization and pooling are not counted (they are a small fraction for the
usual networks). FLOPs are ``2 * MACs``, the convention of most pruning papers (and of the
LeNet-5 figures they quote). MACs are for the batch of the example inputs: pass a batch of 1
for per-example numbers. Operations inside ``scan`` count ``length`` times;
the bodies of ``cond`` and ``while`` are not counted. The walk is a client of
:class:`jaxprune._src.interpret.JaxprWalker`, the library's one jaxpr interpreter.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxprune._src import base
from jaxprune._src.interpret import JaxprWalker

OTHER = "<other>"


@dataclasses.dataclass(frozen=True)
class Count:
    """Parameters and MACs per layer.

    Attributes:
      params: ``{layer path: number of parameters}``; a layer is a leaf's parent path.
      macs: ``{layer path: MACs}``; a matmul or convolution is charged to the layer of the
        variable it reads as kernel (the right operand), else to ``'<other>'``.
    """

    params: dict[str, int]
    macs: dict[str, int]

    @property
    def total_params(self) -> int:
        """The number of parameters."""
        return sum(self.params.values())

    @property
    def total_macs(self) -> int:
        """The number of multiply-adds."""
        return sum(self.macs.values())

    @property
    def flops(self) -> int:
        """``2 * total_macs``."""
        return 2 * self.total_macs


def _layer(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else path


# Primitives whose output is still the tensor read from its first operand (for charging).
_SAME_TENSOR = ("convert_element_type", "reshape", "transpose", "copy", "copy_p")


class _MacCounter(JaxprWalker[str | None]):
    """Values are the parameter path a tensor was read from (``None``: not a parameter).

    ``dot_general`` and ``conv_general_dilated`` add their MACs, times the trip counts of the
    enclosing ``scan`` loops, to ``macs``. The bodies of ``cond`` and ``while`` are not
    entered (their trip count is unknown).
    """

    def __init__(self, macs: dict[str, int]):
        self.macs = macs
        self.mult = 1

    def scan(self, eqn, ins):
        outer = self.mult
        self.mult = outer * eqn.params["length"]
        try:
            self.walk(eqn.params["jaxpr"], [None] * len(eqn.invars))
        finally:
            self.mult = outer
        return [None] * len(eqn.outvars)

    def equation(self, eqn, ins):
        name = eqn.primitive.name
        outs: list[str | None] = [None] * len(eqn.outvars)
        if name in _SAME_TENSOR:
            outs[0] = ins[0]
            return outs
        if name == "dot_general":
            out = math.prod(eqn.outvars[0].aval.shape)
            (lc, _), _ = eqn.params["dimension_numbers"]
            shape = eqn.invars[0].aval.shape
            n = out * math.prod(shape[d] for d in lc)
        elif name == "conv_general_dilated":
            out = math.prod(eqn.outvars[0].aval.shape)
            rs = eqn.params["dimension_numbers"].rhs_spec
            shape = eqn.invars[1].aval.shape
            n = out * math.prod(shape[d] for d in rs[1:])
        else:
            return outs
        layer = ins[1] or ins[0]
        key = _layer(layer) if layer else OTHER
        self.macs[key] = self.macs.get(key, 0) + int(n) * self.mult
        return outs


def count(apply_fn: Callable[..., Any], variables: Any, *example_inputs: Any) -> Count:
    """Counts parameters and MACs of ``apply_fn(variables, *example_inputs)`` per layer.

    Parameters are the sizes of the leaves of ``variables`` (batch statistics included if
    passed); MACs come from the jaxpr (see the module doc for the convention).

    Args:
      apply_fn: The model function, called as ``apply_fn(variables, *example_inputs)``.
      variables: The variables (arrays or ``jax.ShapeDtypeStruct``).
      *example_inputs: Inputs of the right shapes (the batch size scales the MACs).

    Returns:
      A :class:`Count`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune import count
      >>> p = {"fc": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)}}
      >>> c = count(lambda p, x: x @ p["fc"]["kernel"] + p["fc"]["bias"][None], p, jnp.ones((1, 4)))
      >>> c.params, c.macs, c.flops
      ({'fc': 15}, {'fc': 12}, 24)
    """

    def spec(x):
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype)

    abstract = jax.tree.map(spec, (variables, example_inputs))
    closed = jax.make_jaxpr(lambda v, xs: apply_fn(v, *xs))(*abstract)
    flat, _ = jax.tree_util.tree_flatten_with_path(abstract[0])
    params: dict[str, int] = {}
    sources: list[str | None] = []
    for path, leaf in flat:
        name = base.path_str(path)
        params[_layer(name)] = params.get(_layer(name), 0) + math.prod(leaf.shape)
        sources.append(name)
    sources += [None] * (len(closed.jaxpr.invars) - len(sources))
    macs: dict[str, int] = {}
    _MacCounter(macs).walk(closed, sources)
    return Count(params, macs)
