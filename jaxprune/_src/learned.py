"""Learned sparsity: gate math, gate and scale labels, folding, and selection after training.

Methods that *learn* which units to remove (network slimming, SSL group lasso, Srinivas
gates, hard-concrete L0 gates) end with a selection step that turns what was learned into
masks. This module holds that step and the framework-free math the gate layers of
:mod:`jaxprune.linen` and :mod:`jaxprune.nnx` share:

* the hard-concrete distribution of Louizos, Welling & Kingma (ICLR 2018): sampling, the
  probability that a gate is non-zero (the expected L0 norm) and the deterministic test gate;
* the straight-through Bernoulli gate of Srinivas, Subramanya & Babu (CVPR-W 2017);
* reserved parameter names, so that gates are found by what they are rather than by guessing:
  ``l0_log_alpha`` (hard-concrete gates), ``bernoulli_gate`` (Srinivas gates) and
  ``channel_gate`` (deterministic per-channel scales). The Linen and the NNX layers both store
  their parameter under these names (NNX additionally gives them their own ``Variable`` types);
* selection: network slimming's global percentile over scales with a per-layer floor, group
  norm thresholding after SSL, and gate thresholds after L0, all returning group masks
  expanded onto every coupled axis with :func:`jaxprune.expand_group_masks`;
* :func:`fold_gates`, which multiplies trained gates into the weights they scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src import base
from jaxprune._src import groups as groups_lib

# Hard-concrete constants of Louizos et al. (2018) and their official code.
HC_BETA = 2.0 / 3.0
HC_GAMMA = -0.1
HC_ZETA = 1.1
HC_EPS = 1e-6
LOG_ALPHA_BOUNDS = (math.log(1e-2), math.log(1e2))

# Reserved parameter names (Linen param names and NNX attribute names).
L0_NAME = "l0_log_alpha"
BERNOULLI_NAME = "bernoulli_gate"
CHANNEL_NAME = "channel_gate"
GATE_NAMES = (L0_NAME, BERNOULLI_NAME, CHANNEL_NAME)

_KIND_BY_NAME = {L0_NAME: "hard_concrete", BERNOULLI_NAME: "bernoulli", CHANNEL_NAME: "channel"}


# ---------------------------------------------------------------------------------------
# Gate math.


def _check_hc_constants(beta: float, gamma: float, zeta: float) -> None:
    if not (base.is_concrete(beta) and base.is_concrete(gamma) and base.is_concrete(zeta)):
        return
    if not float(beta) > 0:
        raise ValueError(f"`beta` must be > 0, got {beta}.")
    if not (float(gamma) < 0 < 1 < float(zeta)):
        raise ValueError(
            f"the stretch interval needs gamma < 0 and zeta > 1, got gamma={gamma}, zeta={zeta}."
        )


def _float_array(x: Any, name: str) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"`{name}` must be a floating-point array, got {x.dtype}.")
    return x


def hard_concrete_sample(
    key: jax.Array,
    log_alpha: jax.Array,
    shape: Sequence[int] | None = None,
    *,
    beta: float = HC_BETA,
    gamma: float = HC_GAMMA,
    zeta: float = HC_ZETA,
    eps: float = HC_EPS,
) -> jax.Array:
    """Draws hard-concrete gates ``z in [0, 1]``, differentiable with respect to ``log_alpha``.

    With ``u ~ U(eps, 1 - eps)``::

        s = sigmoid((log u - log(1 - u) + log_alpha) / beta)
        z = clip(s * (zeta - gamma) + gamma, 0, 1)

    The stretch to ``(gamma, zeta)`` followed by the clip gives exact zeros and ones with
    positive probability; the gradient reaches ``log_alpha`` through ``s`` wherever ``z`` is
    not clipped (the reparameterization trick).

    Args:
      key: A ``jax.random`` key.
      log_alpha: Location parameters, one per gate.
      shape: Shape of the sample; its trailing axes must broadcast against ``log_alpha``
        (e.g. ``(batch, features)`` for one gate draw per example). Default:
        ``log_alpha.shape``.
      beta: Temperature (2/3 in the paper).
      gamma: Lower end of the stretch interval (< 0).
      zeta: Upper end of the stretch interval (> 1).
      eps: Keeps ``u`` away from 0 and 1.

    Returns:
      Gates of ``shape`` in the dtype of ``log_alpha``.

    Raises:
      ValueError: If ``beta <= 0`` or not ``gamma < 0 < 1 < zeta``.
      TypeError: If ``log_alpha`` is not floating point.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxprune
      >>> z = jaxprune.hard_concrete_sample(jax.random.key(0), jnp.zeros(4))
      >>> bool(jnp.all((z >= 0) & (z <= 1)))
      True

    References:
      Louizos, Welling, Kingma, "Learning Sparse Neural Networks through L0 Regularization",
      ICLR 2018. https://arxiv.org/abs/1712.01312
    """
    log_alpha = _float_array(log_alpha, "log_alpha")
    _check_hc_constants(beta, gamma, zeta)
    shape = tuple(log_alpha.shape) if shape is None else tuple(shape)
    la = log_alpha.astype(jnp.float32)
    if la.ndim < len(shape):
        la = la.reshape((1,) * (len(shape) - la.ndim) + la.shape)
    u = jax.random.uniform(key, shape, jnp.float32, eps, 1.0 - eps)
    s = jax.nn.sigmoid((jnp.log(u) - jnp.log1p(-u) + la) / beta)
    z = jnp.clip(s * (zeta - gamma) + gamma, 0.0, 1.0)
    return z.astype(log_alpha.dtype)


def hard_concrete_prob_nonzero(
    log_alpha: jax.Array,
    *,
    beta: float = HC_BETA,
    gamma: float = HC_GAMMA,
    zeta: float = HC_ZETA,
) -> jax.Array:
    """``P(z != 0) = sigmoid(log_alpha - beta * log(-gamma / zeta))``, the expected L0 per gate.

    Summed over the gates (weighted by how many weights each gate controls) this is the
    differentiable L0 penalty of Louizos et al.; :func:`jaxprune.add_gate_penalty` adds its
    gradient.

    Args:
      log_alpha: Location parameters.
      beta: Temperature.
      gamma: Lower end of the stretch interval (< 0).
      zeta: Upper end of the stretch interval (> 1).

    Returns:
      Probabilities shaped like ``log_alpha`` (float32 for lower-precision inputs).

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> jaxprune.hard_concrete_prob_nonzero(jnp.array([-10.0, 0.0, 10.0])).round(4)
      Array([2.000e-04, 8.318e-01, 1.000e+00], dtype=float32)

    References:
      Louizos, Welling, Kingma, ICLR 2018 (Eq. 12). https://arxiv.org/abs/1712.01312
    """
    log_alpha = _float_array(log_alpha, "log_alpha")
    _check_hc_constants(beta, gamma, zeta)
    la = log_alpha.astype(jnp.promote_types(log_alpha.dtype, jnp.float32))
    return jax.nn.sigmoid(la - beta * math.log(-gamma / zeta))


def hard_concrete_deterministic(
    log_alpha: jax.Array, *, gamma: float = HC_GAMMA, zeta: float = HC_ZETA
) -> jax.Array:
    """The test-time hard-concrete gate ``clip(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1)``.

    It is exactly ``0`` for ``log_alpha <= logit(-gamma / (zeta - gamma))`` (about -2.398 with
    the default constants) and exactly ``1`` for ``log_alpha >= logit((1 - gamma) / (zeta -
    gamma))`` (about 2.398).

    Args:
      log_alpha: Location parameters.
      gamma: Lower end of the stretch interval (< 0).
      zeta: Upper end of the stretch interval (> 1).

    Returns:
      Gates in ``[0, 1]`` shaped like ``log_alpha``, in its dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> jaxprune.hard_concrete_deterministic(jnp.array([-3.0, 0.0, 3.0]))
      Array([0. , 0.5, 1. ], dtype=float32)

    References:
      Louizos, Welling, Kingma, ICLR 2018. https://arxiv.org/abs/1712.01312
    """
    log_alpha = _float_array(log_alpha, "log_alpha")
    _check_hc_constants(HC_BETA, gamma, zeta)
    z = jax.nn.sigmoid(log_alpha.astype(jnp.float32)) * (zeta - gamma) + gamma
    return jnp.clip(z, 0.0, 1.0).astype(log_alpha.dtype)


def bernoulli_gate_sample(
    key: jax.Array, gate: jax.Array, shape: Sequence[int] | None = None
) -> jax.Array:
    """Samples ``z ~ Bernoulli(g)`` with a straight-through gradient ``dz/dg = 1``.

    The forward value is exactly ``0`` or ``1``; the backward pass treats the sample as ``g``
    (``z = g + stop_gradient(b - g)``), the estimator METHODS.md 3a records for Srinivas et
    al.'s gates. ``g`` is clipped to ``[0, 1]`` for the draw only.

    Args:
      key: A ``jax.random`` key.
      gate: Gate probabilities ``g``.
      shape: Sample shape, broadcasting against ``gate`` as in :func:`hard_concrete_sample`.

    Returns:
      Gates of ``shape`` in ``gate``'s dtype.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxprune
      >>> jaxprune.bernoulli_gate_sample(jax.random.key(0), jnp.array([0.0, 1.0]))
      Array([0., 1.], dtype=float32)

    References:
      Srinivas, Subramanya, Babu, "Training Sparse Neural Networks", CVPR Workshops 2017.
      https://arxiv.org/abs/1611.06694
    """
    gate = _float_array(gate, "gate")
    shape = tuple(gate.shape) if shape is None else tuple(shape)
    g = gate
    if g.ndim < len(shape):
        g = g.reshape((1,) * (len(shape) - g.ndim) + g.shape)
    u = jax.random.uniform(key, shape, jnp.float32)
    b = (u < jnp.clip(jax.lax.stop_gradient(g).astype(jnp.float32), 0.0, 1.0)).astype(gate.dtype)
    return g + jax.lax.stop_gradient(b - g)


def bernoulli_gate_deterministic(gate: jax.Array) -> jax.Array:
    """The test-time Srinivas gate ``1[g > 0.5]`` in the gate's dtype.

    Args:
      gate: Gate probabilities ``g``.

    Returns:
      ``0``/``1`` values shaped like ``gate``.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> jaxprune.bernoulli_gate_deterministic(jnp.array([0.2, 0.5, 0.9]))
      Array([0., 0., 1.], dtype=float32)
    """
    gate = _float_array(gate, "gate")
    return (gate > 0.5).astype(gate.dtype)


# ---------------------------------------------------------------------------------------
# Labels: which leaves are gates or normalization scales.


def leaf_name(path: str) -> str:
    """The last component of a '/'-joined parameter path."""
    return path.rsplit("/", 1)[-1]


def gate_kind(path: str) -> str | None:
    """``"hard_concrete"``, ``"bernoulli"``, ``"channel"`` or ``None`` from a leaf's name."""
    return _KIND_BY_NAME.get(leaf_name(path))


_ALL_KINDS = ("hard_concrete", "bernoulli", "channel")


def _check_kinds(kinds: Any) -> tuple[str, ...]:
    if kinds is None:
        return _ALL_KINDS
    if isinstance(kinds, str):
        kinds = (kinds,)
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in _ALL_KINDS]
    if bad:
        raise ValueError(f"`kinds` must be among {_ALL_KINDS}, got {bad}.")
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
    kinds = _check_kinds(kinds)
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


def deterministic_gate_values(path: str, leaf: jax.Array, kind: str | None = None) -> jax.Array:
    """Deterministic (evaluation) gate values of one gate leaf, by its kind.

    Args:
      path: The leaf's path (its name gives the kind unless ``kind`` is set).
      leaf: The gate parameter.
      kind: ``"hard_concrete"``, ``"bernoulli"`` or ``"channel"`` (default: from the name).

    Returns:
      The gate's test-time values in the leaf's dtype.

    Raises:
      ValueError: If the kind cannot be determined.
    """
    kind = kind or gate_kind(path)
    if kind == "hard_concrete":
        return hard_concrete_deterministic(leaf)
    if kind == "bernoulli":
        return bernoulli_gate_deterministic(leaf)
    if kind == "channel":
        return jnp.asarray(leaf)
    raise ValueError(
        f"{path!r} is not a jaxprune gate (its name is not one of {GATE_NAMES}); pass `kind`."
    )


def _identity_value(kind: str, leaf: jax.Array) -> jax.Array:
    if kind == "hard_concrete":  # The upper clamp bound: the test gate is exactly 1 there.
        return jnp.full(leaf.shape, LOG_ALPHA_BOUNDS[1], leaf.dtype)
    return jnp.ones(leaf.shape, leaf.dtype)


# ---------------------------------------------------------------------------------------
# Per-channel values spread onto group members.


def expand_channel_values(
    values: dict[str, jax.Array],
    groups: Sequence[groups_lib.Group],
    params: base.Params,
    *,
    fill: float,
    combine: str,
    skip: Callable[[groups_lib.Member], bool] | None = None,
) -> dict[str, jax.Array]:
    """Spreads one float vector per group onto each member's axis (float32, broadcastable).

    A member spanning its axis gets ``(1, ..., C, ..., 1)``; a strided or offset member gets
    its whole axis with ``fill`` outside the group's segment. Several members on one leaf
    combine with ``combine`` (``"add"`` or ``"mul"``).

    Returns:
      ``{path: array}`` for every leaf that is a member of some group (minus ``skip``).
    """
    sizes = groups_lib.check_groups(groups, params)
    leaves = {p: x for p, x in base.leaves_with_paths(params) if x is not None}
    out: dict[str, jax.Array] = {}
    for g in groups:
        c = sizes[g.name]
        vec = jnp.asarray(values[g.name], jnp.float32)
        if vec.shape != (c,):
            raise ValueError(f"values of group {g.name!r} have shape {vec.shape}, expected ({c},).")
        for m in g.members:
            if skip is not None and skip(m):
                continue
            shape = tuple(leaves[m.path].shape)
            axis = m.axis % len(shape)
            length = shape[axis]
            line = groups_lib.member_line(vec, m, c, length, fill)
            target = [1] * len(shape)
            target[axis] = length
            arr = line.reshape(target)
            old = out.get(m.path)
            if old is None:
                out[m.path] = arr
            elif combine == "add":
                out[m.path] = old + arr
            else:
                out[m.path] = old * arr
    return out


def check_disjoint(groups: Sequence[groups_lib.Group], params: base.Params, what: str) -> None:
    """Raises ``ValueError`` if two groups (or two members) cover one parameter entry."""
    sizes = groups_lib.check_groups(groups, params)
    leaves = {p: x for p, x in base.leaves_with_paths(params) if x is not None}
    by_leaf: dict[str, list[tuple[groups_lib.Group, groups_lib.Member]]] = {}
    for g in groups:
        for m in g.members:
            by_leaf.setdefault(m.path, []).append((g, m))
    for path, entries in by_leaf.items():
        if len(entries) < 2:
            continue
        shape = tuple(leaves[path].shape)
        axes = {m.axis % len(shape) for _, m in entries}
        names = sorted({g.name for g, _ in entries})
        if len(axes) > 1:
            raise ValueError(
                f"{what}: groups {names} cover {path!r} along different axes, so they overlap "
                "(the proximal step of overlapping groups has no closed form)."
            )
        axis = axes.pop()
        count = np.zeros(shape[axis], np.int64)
        for g, m in entries:
            seg = np.zeros(shape[axis], bool)
            block = np.ones((m.outer, sizes[g.name], m.inner), bool).reshape(-1)
            seg[m.offset : m.offset + block.size] = True
            count += seg
        if np.any(count > 1):
            raise ValueError(
                f"{what}: groups {names} share entries of {path!r} (axis {axis}); the proximal "
                "step of overlapping groups has no closed form."
            )


# ---------------------------------------------------------------------------------------
# Folding gates into the weights they scale.


def _gate_member(g: groups_lib.Group, kinds: tuple[str, ...]) -> groups_lib.Member | None:
    found = [m for m in g.members if gate_kind(m.path) in kinds]
    if len(found) > 1:
        raise ValueError(
            f"group {g.name!r} has several gate members {[m.path for m in found]}; use one."
        )
    return found[0] if found else None


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
        gm = _gate_member(g, _ALL_KINDS)
        if gm is None:
            raise ValueError(
                f"group {g.name!r} has no gate member (a leaf named one of {GATE_NAMES})."
            )
        if gm.path not in leaves:
            raise ValueError(f"group {g.name!r}: no parameter at path {gm.path!r}.")
        gate = leaves[gm.path]
        if gate.ndim != 1 or not gm.whole:
            raise ValueError(
                f"group {g.name!r}: the gate {gm.path!r} must be a vector spanning the group's "
                f"channels, got shape {gate.shape}."
            )
        values[g.name] = deterministic_gate_values(gm.path, gate)
        gate_paths[gm.path] = gate_kind(gm.path)
    factors = expand_channel_values(
        values, groups, params, fill=1.0, combine="mul", skip=lambda m: m.path in gate_paths
    )

    def one(path, x):
        if path in gate_paths:
            return _identity_value(gate_paths[path], x)
        if path in factors:
            f = factors[path]
            return (x.astype(jnp.promote_types(x.dtype, jnp.float32)) * f).astype(x.dtype)
        return x

    return base.map_with_path(one, params)


# ---------------------------------------------------------------------------------------
# Selection from learned sparsity.


class LearnedSelection(NamedTuple):
    """What a learned-sparsity selector returns.

    Attributes:
      group_masks: ``{group name: bool vector}``, ``True`` = channel kept.
      masks: The group masks expanded onto every member
        (:func:`jaxprune.expand_group_masks`); ``None`` for leaves in no group.
      threshold: The threshold used: a float32 scalar, or ``{group name: scalar}`` for
        per-group selection.
    """

    group_masks: dict[str, jax.Array]
    masks: base.Mask
    threshold: Any


def _apply_floor(keep: jax.Array, score: jax.Array, min_keep: int) -> jax.Array:
    """Also keeps the ``min_keep`` best-scored channels (ties: lowest index first)."""
    n = keep.shape[0]
    k = min(min_keep, n)
    if k == 0:
        return keep
    _, idx = jax.lax.top_k(score, k)
    return keep | jnp.zeros((n,), jnp.bool_).at[idx].set(True)


def _percentile_index(n: int, ratio: Any) -> Any:
    if base.is_concrete(ratio) and not isinstance(ratio, jax.Array):
        return min(int(n * float(ratio)), n - 1)
    r = jnp.asarray(ratio, jnp.float32)
    return jnp.minimum(jnp.floor(r * n).astype(jnp.int32), n - 1)


def slimming_threshold(scales: Any, ratio: Any) -> jax.Array:
    """Network slimming's global threshold ``sorted(|gamma|)[int(n * ratio)]``.

    All entries of all leaves of ``scales`` (``None`` leaves skipped) are pooled; the index is
    clamped to ``n - 1``. Channels are kept when ``|gamma| > thr`` (strictly), so even
    ``ratio = 0`` drops the smallest scale and its ties, as the authors' code does.

    Args:
      scales: A tree (or list) of scale arrays.
      ratio: The prune ratio ``p`` in ``[0, 1]`` (a float or a scalar array).

    Returns:
      The threshold as a float32 scalar.

    Raises:
      ValueError: If there are no scales or ``ratio`` is outside ``[0, 1]``.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> jaxprune.slimming_threshold([jnp.array([0.5, -0.1]), jnp.array([0.3, 0.0])], 0.5)
      Array(0.3, dtype=float32)

    References:
      Liu et al., "Learning Efficient Convolutional Networks through Network Slimming",
      ICCV 2017. https://arxiv.org/abs/1708.06519
    """
    base.check_fraction(ratio, "ratio")
    vals = [  # replicated: sort and concatenate need an unsharded axis
        base.replicated_along(jnp.abs(jnp.asarray(x).astype(jnp.float32)).ravel(), 0)
        for x in jax.tree.leaves(scales)
    ]
    if not vals or sum(v.size for v in vals) == 0:
        raise ValueError("`scales` holds no entries.")
    flat = jnp.sort(jnp.concatenate(vals))
    return flat[_percentile_index(flat.shape[0], ratio)]


def _selected_member(
    g: groups_lib.Group, flags: dict[str, bool], leaves: dict[str, Any], what: str
) -> groups_lib.Member:
    found = [m for m in g.members if flags.get(m.path, False)]
    if len(found) != 1:
        raise ValueError(
            f"group {g.name!r} must have exactly one member selected by `{what}`, got "
            f"{[m.path for m in found]}; members are {[m.path for m in g.members]}."
        )
    m = found[0]
    if leaves[m.path].ndim != 1 or not m.whole:
        raise ValueError(
            f"group {g.name!r}: the {what} member {m.path!r} must be a vector spanning the "
            f"group's channels, got shape {tuple(leaves[m.path].shape)}."
        )
    return m


def _flags(select: Any, params: base.Params, what: str) -> dict[str, bool]:
    tree = base.resolve_tree_arg(select, params)
    tree = base.broadcast_prefix(tree, params, what)
    out = {}
    for (path, p), (_, f) in zip(
        base.leaves_with_paths(params), base.leaves_with_paths(tree), strict=True
    ):
        if p is None or f is None:
            continue
        if not isinstance(f, (bool, np.bool_)) and not (
            hasattr(f, "shape") and f.shape == () and base.is_concrete(f)
        ):
            raise TypeError(f"`{what}` must hold one Python bool per leaf; got {f!r} at {path!r}.")
        out[path] = bool(f)
    return out


def _finish(group_masks, groups, params, threshold) -> LearnedSelection:
    return LearnedSelection(
        group_masks=group_masks,
        masks=groups_lib.expand_group_masks(group_masks, groups, params),
        threshold=threshold,
    )


def slimming_masks(
    params: base.Params,
    groups: Sequence[groups_lib.Group],
    ratio: Any,
    *,
    select: Any = scale_labels,
    min_keep: int = 1,
    per_group: bool = False,
) -> LearnedSelection:
    """Network slimming's selection: prune the channels with the smallest ``|gamma|``.

    Every group must have exactly one member selected by ``select`` (its BatchNorm scale or
    channel gate); that vector scores the group's channels. With ``per_group=False`` one
    global threshold ``thr = sorted(|gamma| of all groups)[int(n * ratio)]`` applies and a
    channel is kept iff ``|gamma| > thr`` (strictly, as in the authors' code); with
    ``per_group=True`` each group uses its own ``sorted(|gamma_g|)[int(n_g * ratio)]`` (the
    paper's MNIST experiment pruned 80% per layer). Then every group keeps at least its
    ``min_keep`` largest scales (the per-layer floor that stops a global threshold from
    emptying a layer). The group masks are expanded onto all members (producer kernel, bias,
    BN scale and shift, the consumer's input axis) by :func:`jaxprune.expand_group_masks`.

    Args:
      params: The trained parameters.
      groups: The channel groups, each including one scale member.
      ratio: Prune ratio ``p`` in ``[0, 1]``.
      select: Bool tree (prefix, by path) or callable ``params -> tree`` marking scale leaves.
        Default :func:`jaxprune.scale_labels`; use :func:`jaxprune.linen.slimming_labels` or
        :func:`jaxprune.nnx.slimming_labels` to pick BatchNorm scales exactly.
      min_keep: Channels every group keeps at least.
      per_group: One threshold per group instead of one global threshold.

    Returns:
      A :class:`LearnedSelection`.

    Raises:
      ValueError: If a group has zero or several selected members, the selected member is not
        a vector over the channels, or ``ratio`` is outside ``[0, 1]``.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> p = {"fc1": {"kernel": jnp.ones((2, 4))}, "bn": {"scale": jnp.array([.9, .1, .5, .05])},
      ...      "fc2": {"kernel": jnp.ones((4, 3))}}
      >>> g = jaxprune.Group("h", (jaxprune.Member("fc1/kernel", 1), jaxprune.Member("bn/scale", 0),
      ...                          jaxprune.Member("fc2/kernel", 0)))
      >>> sel = jaxprune.slimming_masks(p, [g], 0.5)  # thr = sorted(|gamma|)[2] = 0.5
      >>> sel.group_masks["h"], sel.masks["fc2"]["kernel"].shape
      (Array([ True, False, False, False], dtype=bool), (4, 1))

    References:
      Liu et al., "Learning Efficient Convolutional Networks through Network Slimming",
      ICCV 2017. https://arxiv.org/abs/1708.06519
    """
    base.check_fraction(ratio, "ratio")
    min_keep = base.check_int(min_keep, "min_keep")
    groups = list(groups)
    groups_lib.check_groups(groups, params)
    leaves = {p: x for p, x in base.leaves_with_paths(params) if x is not None}
    flags = _flags(select, params, "select")
    scores = {}
    for g in groups:
        m = _selected_member(g, flags, leaves, "select")
        score = jnp.abs(jnp.asarray(leaves[m.path]).astype(jnp.float32))
        scores[g.name] = base.replicated_along(score, 0)
    if per_group:
        thr = {k: slimming_threshold([v], ratio) for k, v in scores.items()}
        keep = {k: v > thr[k] for k, v in scores.items()}
    else:
        thr = slimming_threshold(list(scores.values()), ratio)
        keep = {k: v > thr for k, v in scores.items()}
    keep = {k: _apply_floor(v, scores[k], min_keep) for k, v in keep.items()}
    return _finish(keep, groups, params, thr)


def group_norm_masks(
    params: base.Params,
    groups: Sequence[groups_lib.Group],
    threshold: Any = 0.0,
    *,
    ord: int = 2,
    min_keep: int = 0,
) -> LearnedSelection:
    """SSL's selection: keep the channels whose group norm exceeds ``threshold``.

    After group-lasso training (and :func:`jaxprune.zero_small` or a proximal step) the
    groups to remove have norm exactly 0 (or tiny); a channel is kept iff its norm over all
    members ``||W_c||`` is strictly greater than ``threshold``. Every group keeps at least
    its ``min_keep`` largest-norm channels.

    Args:
      params: The trained parameters.
      groups: The groups (the same ones the penalty used, or the structural groups to remove).
      threshold: A non-negative float (or scalar array).
      ord: ``2`` (group lasso) or ``1``.
      min_keep: Per-group floor.

    Returns:
      A :class:`LearnedSelection` (``threshold`` as a float32 scalar).

    Raises:
      ValueError: If ``threshold`` is negative or the groups do not fit the params.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> p = {"k": jnp.array([[3.0, 0.0], [4.0, 0.0]])}
      >>> g = jaxprune.Group("out", (jaxprune.Member("k", 1),))
      >>> jaxprune.group_norm_masks(p, [g]).group_masks["out"]
      Array([ True, False], dtype=bool)

    References:
      Wen et al., "Learning Structured Sparsity in Deep Neural Networks", NeurIPS 2016.
      https://arxiv.org/abs/1608.03665
    """
    if base.is_concrete(threshold) and float(np.asarray(threshold)) < 0:
        raise ValueError(f"`threshold` must be >= 0, got {threshold}.")
    min_keep = base.check_int(min_keep, "min_keep")
    groups = list(groups)
    norms = groups_lib.group_norms(params, groups, ord=ord)
    t = jnp.asarray(threshold, jnp.float32)
    keep = {k: _apply_floor(v > t, v, min_keep) for k, v in norms.items()}
    return _finish(keep, groups, params, t)


def gate_masks(
    params: base.Params,
    groups: Sequence[groups_lib.Group],
    threshold: Any = 0.0,
    *,
    min_keep: int = 0,
) -> LearnedSelection:
    """Selection after gate training: keep the channels whose test-time gate exceeds ``threshold``.

    Each group must contain one gate member (found by its reserved name). Hard-concrete gates
    use the deterministic gate ``clip(sigmoid(log_alpha) * 1.2 - 0.1, 0, 1)``, which is
    exactly zero for ``log_alpha <= -2.398``, so the default ``threshold = 0`` keeps exactly the
    channels the deterministic model uses (Louizos et al.); Bernoulli gates use ``1[g > 0.5]``;
    channel gates use ``|g|``.

    Args:
      params: The trained parameters.
      groups: Groups, each with exactly one gate member.
      threshold: Keep ``|test gate| > threshold``.
      min_keep: Per-group floor.

    Returns:
      A :class:`LearnedSelection`.

    Raises:
      ValueError: If a group has no or several gate members.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> p = {"g": {"l0_log_alpha": jnp.array([3.0, -3.0])}, "fc": {"kernel": jnp.ones((2, 2))}}
      >>> grp = jaxprune.Group("in", (jaxprune.Member("g/l0_log_alpha", 0),
      ...                             jaxprune.Member("fc/kernel", 0)))
      >>> jaxprune.gate_masks(p, [grp]).group_masks["in"]
      Array([ True, False], dtype=bool)

    References:
      Louizos, Welling, Kingma, ICLR 2018; Srinivas, Subramanya, Babu, CVPR-W 2017.
    """
    min_keep = base.check_int(min_keep, "min_keep")
    groups = list(groups)
    groups_lib.check_groups(groups, params)
    leaves = {p: x for p, x in base.leaves_with_paths(params) if x is not None}
    t = jnp.asarray(threshold, jnp.float32)
    keep = {}
    for g in groups:
        gm = _gate_member(g, _ALL_KINDS)
        if gm is None:
            raise ValueError(
                f"group {g.name!r} has no gate member (a leaf named one of {GATE_NAMES})."
            )
        v = jnp.abs(deterministic_gate_values(gm.path, leaves[gm.path]).astype(jnp.float32))
        keep[g.name] = _apply_floor(v > t, v, min_keep)
    return _finish(keep, groups, params, t)
