"""Folding trained gates into the weights they scale (:func:`fold_gates`)."""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

from jaxprune._src import base, gates_math
from jaxprune._src import groups as groups_lib
from jaxprune._src import labels as labels_lib


def fold_gates(params: base.Params, groups: Sequence[groups_lib.Group]) -> base.Params:
    """Multiplies every gate's test-time value into the weights it scales, then resets it.

    Each group names one gate leaf (a member whose name is ``l0_log_alpha``,
    ``bernoulli_gate`` or ``channel_gate``) and the parameter axes that gate multiplies. The
    deterministic gate values ``v`` (``clip(sigmoid(log_alpha) * 1.2 - 0.1, 0, 1)`` for
    hard-concrete gates, ``1[g > 0.5]`` for Bernoulli gates, ``g`` for channel gates) scale
    the other members along their axes, and the gate is set to its identity value (test gate
    exactly 1). Evaluated deterministically, the folded model computes what the gated one
    did, up to float rounding.

    List only the weights *one side* of the gate multiplies: for a gate on the inputs of a
    Dense layer (L0), that layer's kernel rows (``Member("fc/kernel", 0)``); for a gate on a
    conv's output channels before any normalization, the conv kernel's last axis and its
    bias; for a gate after a BatchNorm, the BN ``scale`` and ``bias``. A ReLU between a gate
    and the weights is fine (``relu(v * a) = v * relu(a)`` for ``v >= 0``).

    Args:
      params: A params tree (Linen dict or NNX state).
      groups: Groups, each with exactly one gate member.

    Returns:
      A new params tree.

    Raises:
      ValueError: If a group has no gate member or several, or does not fit the params.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> p = {"gate": {"channel_gate": jnp.array([2.0, 0.0])}, "fc": {"kernel": jnp.ones((2, 1))}}
      >>> g = jaxprune.Group("in", (jaxprune.Member("gate/channel_gate", 0),
      ...                           jaxprune.Member("fc/kernel", 0)))
      >>> f = jaxprune.fold_gates(p, [g])
      >>> f["fc"]["kernel"].ravel(), f["gate"]["channel_gate"]
      (Array([2., 0.], dtype=float32), Array([1., 1.], dtype=float32))
    """
    groups = list(groups)
    leaves = {p: x for p, x in base.leaves_with_paths(params) if x is not None}
    values, gate_paths = {}, {}
    for g in groups:
        gm = labels_lib.gate_member(g, labels_lib.ALL_KINDS)
        if gm is None:
            raise ValueError(
                f"group {g.name!r} has no gate member (a leaf named one of "
                f"{labels_lib.GATE_NAMES})."
            )
        if gm.path not in leaves:
            raise ValueError(f"group {g.name!r}: no parameter at path {gm.path!r}.")
        gate = leaves[gm.path]
        if gate.ndim != 1 or not gm.whole:
            raise ValueError(
                f"group {g.name!r}: the gate {gm.path!r} must be a vector spanning the group's "
                f"channels, got shape {gate.shape}."
            )
        values[g.name] = gates_math.deterministic_gate_values(gm.path, gate)
        gate_paths[gm.path] = labels_lib.gate_kind(gm.path)
    factors = groups_lib.expand_group_values(
        values, groups, params, fill=1.0, combine="mul", skip=lambda m: m.path in gate_paths
    )

    def one(path, x):
        if path in gate_paths:
            return gates_math.identity_gate_value(gate_paths[path], x)
        if path in factors:
            f = factors[path]
            return (x.astype(jnp.promote_types(x.dtype, jnp.float32)) * f).astype(x.dtype)
        return x

    return base.map_with_path(one, params)
