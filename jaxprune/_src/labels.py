"""Labels: which leaves are jaxprune gates or normalization scales, found by their names.

Reserved parameter names, so that gates are found by what they are rather than by guessing:
``l0_log_alpha`` (hard-concrete gates), ``bernoulli_gate`` (Srinivas gates) and
``channel_gate`` (deterministic per-channel scales). The Linen and the NNX layers both store
their parameter under these names (NNX additionally gives them their own ``Variable`` types).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jaxprune._src import base
from jaxprune._src import groups as groups_lib

# Reserved parameter names (Linen param names and NNX attribute names).
L0_NAME = "l0_log_alpha"
BERNOULLI_NAME = "bernoulli_gate"
CHANNEL_NAME = "channel_gate"
GATE_NAMES = (L0_NAME, BERNOULLI_NAME, CHANNEL_NAME)

_KIND_BY_NAME = {L0_NAME: "hard_concrete", BERNOULLI_NAME: "bernoulli", CHANNEL_NAME: "channel"}
ALL_KINDS = ("hard_concrete", "bernoulli", "channel")


def leaf_name(path: str) -> str:
    """The last component of a '/'-joined parameter path."""
    return path.rsplit("/", 1)[-1]


def gate_kind(path: str) -> str | None:
    """``"hard_concrete"``, ``"bernoulli"``, ``"channel"`` or ``None`` from a leaf's name."""
    return _KIND_BY_NAME.get(leaf_name(path))


def check_kinds(kinds: Any) -> tuple[str, ...]:
    if kinds is None:
        return ALL_KINDS
    if isinstance(kinds, str):
        kinds = (kinds,)
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in ALL_KINDS]
    if bad:
        raise ValueError(f"`kinds` must be among {ALL_KINDS}, got {bad}.")
    return kinds


def gate_labels(params: base.Params, kinds: str | Sequence[str] | None = None) -> Any:
    """``True`` for the gate parameters of jaxprune's gate layers (Linen or NNX), else ``False``.

    Gates are recognized by their reserved names (``l0_log_alpha``, ``bernoulli_gate``,
    ``channel_gate``), which the Linen and the NNX layers share, so the labels work on a Linen
    ``params`` dict and on ``nnx.state(model, nnx.Param)`` alike (and, matched by path, inside
    ``nnx.Optimizer``). For NNX, :func:`jaxprune.nnx.labels` selects by ``Variable`` type.

    Args:
      params: A params tree.
      kinds: Restrict to some of ``"hard_concrete"``, ``"bernoulli"``, ``"channel"``.

    Returns:
      A tree of Python bools with the structure of ``params`` (``None`` stays ``None``).

    Raises:
      ValueError: For an unknown kind.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> p = {"gate": {"l0_log_alpha": jnp.zeros(3)}, "fc": {"kernel": jnp.ones((3, 2))}}
      >>> jaxprune.gate_labels(p)
      {'fc': {'kernel': False}, 'gate': {'l0_log_alpha': True}}
    """
    kinds = check_kinds(kinds)
    return base.map_with_path(lambda path, _: gate_kind(path) in kinds, params)


def scale_labels(params: base.Params, *, include_gates: bool = True) -> Any:
    """Network-slimming targets by name: rank-1 leaves named ``scale``, and ``channel_gate`` leaves.

    This is the framework-free default of ``optax_sparsity(slimming=...)``: it finds the
    scales of Flax's ``BatchNorm`` (Linen and NNX) but also those of ``LayerNorm`` and
    ``GroupNorm``, which share the name. To select BatchNorm scales only, use
    :func:`jaxprune.linen.slimming_labels` (pairs scales with ``batch_stats``) or
    :func:`jaxprune.nnx.slimming_labels` (by module type).

    Args:
      params: A params tree.
      include_gates: Also label ``channel_gate`` parameters (slimming without BN).

    Returns:
      A tree of Python bools with the structure of ``params``.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> p = {"bn": {"scale": jnp.ones(3), "bias": jnp.zeros(3)}}
      >>> jaxprune.scale_labels(p)
      {'bn': {'bias': False, 'scale': True}}
    """

    def one(path, x):
        name = leaf_name(path)
        if include_gates and name == CHANNEL_NAME:
            return True
        return name == "scale" and len(x.shape) == 1

    return base.map_with_path(one, params)


def gate_member(g: groups_lib.Group, kinds: tuple[str, ...]) -> groups_lib.Member | None:
    """The one member of ``g`` whose name marks a gate of one of ``kinds`` (or ``None``).

    Raises:
      ValueError: If the group has several gate members.
    """
    found = [m for m in g.members if gate_kind(m.path) in kinds]
    if len(found) > 1:
        raise ValueError(
            f"group {g.name!r} has several gate members {[m.path for m in found]}; use one."
        )
    return found[0] if found else None
