"""Sparsity-inducing penalties as optax transformations.

Two families, which go to different places of an ``optax.chain`` (see
``docs/guides/chain_order.md``); every transform follows optax's pattern, a factory, an
``init_fn``, an ``update_fn`` and a ``NamedTuple`` state (``docs/guides/architecture_optax.md``):

* **Coupled** terms -- :func:`add_l1`, :func:`add_group_lasso`, :func:`add_gate_penalty` --
  add the (sub)gradient of a penalty to the incoming gradients, exactly as if the penalty were
  part of the loss. Place them **before** the optimizer, as the papers did with SGD::

      optax.chain(jaxprune.add_group_lasso(1e-4, groups), optax.sgd(0.1, momentum=0.9))

  With Adam the added term is rescaled per coordinate like any loss gradient.
* **Decoupled proximal** steps -- :func:`prox_l1`, :func:`prox_group_lasso`,
  :func:`prox_gates`, and the projections :func:`zero_small` (SSL's small-weight zeroing) and
  :func:`clip_gates` -- rewrite the optimizer's update so that the new parameters are the
  proximal point of the penalty at ``params + update``. Place them **after** the optimizer
  (and before :func:`jaxprune.optax_sparsity`, which stays last). They need the step size,
  ``learning_rate``, and produce exact zeros.

Every strength (and learning rate) is an ``optax.ScalarOrSchedule``: a schedule is read from
the ``count`` of the transform's state (a ``NamedTuple`` named after the transform), so
changing a strength never recompiles. Leaf selections (``prunable``) are bool trees matched to
the parameters by path (a prefix is enough, and a plain dict fits an NNX ``State``), or
callables ``params -> tree``. With ``optax.inject_hyperparams`` pass the selection arguments
(``prunable``, ``groups``, ``kind``, ``weighting``, ``weight``) in ``static_args``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune._src import base, gates_math
from jaxprune._src import granularity as gran_lib
from jaxprune._src import groups as groups_lib
from jaxprune._src import labels as labels_lib

# ---------------------------------------------------------------------------------------
# States.


class AddL1State(NamedTuple):
    """State of :func:`add_l1`."""

    count: jax.Array  # int32 scalar: number of updates so far (reads schedules).


class AddGroupLassoState(NamedTuple):
    """State of :func:`add_group_lasso`."""

    count: jax.Array


class AddGatePenaltyState(NamedTuple):
    """State of :func:`add_gate_penalty`."""

    count: jax.Array


class ProxL1State(NamedTuple):
    """State of :func:`prox_l1`."""

    count: jax.Array


class ProxGroupLassoState(NamedTuple):
    """State of :func:`prox_group_lasso`."""

    count: jax.Array


class ProxGatesState(NamedTuple):
    """State of :func:`prox_gates`."""

    count: jax.Array


class ZeroSmallState(NamedTuple):
    """State of :func:`zero_small`."""

    count: jax.Array


# ---------------------------------------------------------------------------------------
# Helpers.


def _zero_count() -> jax.Array:
    return jnp.zeros([], jnp.int32)


def _check_strength(value: Any, name: str) -> None:
    """Concrete, non-callable strengths must be finite and >= 0."""
    if value is None:
        raise TypeError(f"`{name}` must be a number, an array or a schedule, got None.")
    if callable(value) or not base.is_concrete(value):
        return
    arr = np.asarray(value)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)):
        raise TypeError(f"`{name}` must be a number, an array or a schedule, got {value!r}.")
    if arr.shape != ():
        raise ValueError(f"`{name}` must be a scalar, got shape {arr.shape}.")
    if not np.isfinite(arr) or arr < 0:
        raise ValueError(f"`{name}` must be finite and >= 0, got {value!r}.")


def _value(value: Any, count: jax.Array) -> jax.Array:
    """The float32 value of a ScalarOrSchedule at ``count``."""
    v = value(count) if callable(value) else value
    return jnp.asarray(v, jnp.float32)


def _f32(x: jax.Array) -> jax.Array:
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _all_float(params: base.Params) -> Any:
    return base.map_prunable(lambda p: bool(jnp.issubdtype(p.dtype, jnp.floating)), params)


_resolve_flags = base.leaf_flags
_selected = base.select_leaves


def _check_params(params: Any, updates: Any) -> None:
    if params is None:
        raise ValueError(base.NO_PARAMS_MSG)
    base.check_structure(params, updates, "updates")


def _map_selected(f: Callable, updates: Any, params: Any, flags: Any, *rest: Any) -> Any:
    """``f(path, u, p, *r)`` on selected leaves; other updates pass through unchanged."""
    return jax.tree_util.tree_map_with_path(
        lambda path, u, p, fl, *r: (
            u if (u is None or p is None or not fl) else f(base.path_str(path), u, p, *r)
        ),
        updates,
        params,
        flags,
        *rest,
        is_leaf=base.is_none,
    )


def _new_update(new: jax.Array, p: jax.Array, u: jax.Array) -> jax.Array:
    """The update that takes ``p`` to ``new`` (exactly, when ``new`` is 0: ``p + -p == 0``)."""
    return (new.astype(p.dtype) - p).astype(u.dtype)


def _stepped(u: jax.Array, p: jax.Array) -> jax.Array:
    """``p + u`` as ``optax.apply_updates`` computes it, in float32 or wider."""
    return _f32((p + u.astype(p.dtype)).astype(p.dtype))


# ---------------------------------------------------------------------------------------
# L1.


def add_l1(strength: optax.ScalarOrSchedule, prunable: Any = None) -> optax.GradientTransformation:
    """Adds ``strength * sign(params)``, the subgradient of ``strength * sum |w|``.

    Coupled: place it **before** the optimizer. On the normalization scales (or channel
    gates) of a network this is network slimming's sparsity term (the authors add
    ``lam * sign(gamma)`` to the scale gradients before an SGD step). At ``w = 0`` the
    subgradient used is ``0`` (``sign(0)``), the minimum-norm one.

    Args:
      strength: Penalty coefficient ``lam``, or a schedule ``count -> lam``.
      prunable: Leaves to penalize: a bool tree (or prefix, matched by path) or a callable
        ``params -> tree``. ``None`` penalizes every floating-point leaf. For slimming pass
        :func:`jaxprune.scale_labels`, :func:`jaxprune.linen.slimming_labels` or
        :func:`jaxprune.nnx.slimming_labels`.

    Returns:
      An ``optax.GradientTransformation`` with an :class:`AddL1State`; ``update`` needs
      ``params``.

    Raises:
      ValueError: For a negative strength or a ``prunable`` selection that does not fit the
        params (naming the path).
      TypeError: If ``prunable`` selects a non-float leaf or holds a non-bool.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import jaxprune
      >>> params = {"bn": {"scale": jnp.array([0.5, -0.1])}, "w": jnp.ones(2)}
      >>> tx = jaxprune.add_l1(1e-2, prunable=jaxprune.scale_labels)
      >>> grads = {"bn": {"scale": jnp.zeros(2)}, "w": jnp.zeros(2)}
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> updates["bn"]["scale"], updates["w"]
      (Array([ 0.01, -0.01], dtype=float32), Array([0., 0.], dtype=float32))

    References:
      Liu et al., "Learning Efficient Convolutional Networks through Network Slimming",
      ICCV 2017. https://arxiv.org/abs/1708.06519
    """
    _check_strength(strength, "strength")

    def init_fn(params):
        _resolve_flags(prunable, params, "prunable", _all_float)
        return AddL1State(count=_zero_count())

    def update_fn(updates, state, params=None):
        _check_params(params, updates)
        flags = _resolve_flags(prunable, params, "prunable", _all_float)
        s = _value(strength, state.count)

        def one(path, u, p):
            return (_f32(u) + s * jnp.sign(_f32(p))).astype(u.dtype)

        updates = _map_selected(one, updates, params, flags)
        return updates, AddL1State(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def prox_l1(
    strength: optax.ScalarOrSchedule,
    learning_rate: optax.ScalarOrSchedule,
    prunable: Any = None,
) -> optax.GradientTransformation:
    """Proximal step of ``strength * sum |w|``: soft-thresholding by ``learning_rate * strength``.

    Decoupled: place it **after** the optimizer (and before :func:`jaxprune.optax_sparsity`).
    With ``x = params + update`` (the point the optimizer would move to) and
    ``t = learning_rate * strength``, the new parameters are
    ``sign(x) * max(|x| - t, 0)``: entries with ``|x| <= t`` become exactly ``0``. Pass the
    learning rate (or schedule) of the optimizer before it, so that ``t`` is the step of the
    proximal gradient method; both are read at the same step count.

    Args:
      strength: Penalty coefficient, or a schedule.
      learning_rate: Step size, or a schedule (the optimizer's).
      prunable: Leaves to shrink, as in :func:`add_l1`; ``None`` = every float leaf.

    Returns:
      An ``optax.GradientTransformation`` with a :class:`ProxL1State`; ``update`` needs
      ``params``.

    Raises:
      ValueError: For a negative strength or learning rate, or a ``prunable`` selection that
        does not fit.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import jaxprune
      >>> params = {"w": jnp.array([0.125, -1.0, 0.75])}
      >>> tx = optax.chain(optax.sgd(0.5), jaxprune.prox_l1(0.25, 0.5))  # t = 0.125
      >>> updates, _ = tx.update({"w": jnp.zeros(3)}, tx.init(params), params)
      >>> optax.apply_updates(params, updates)["w"]
      Array([ 0.   , -0.875,  0.625], dtype=float32)

    References:
      Beck & Teboulle, "A Fast Iterative Shrinkage-Thresholding Algorithm", SIAM J. Imaging
      Sciences 2009 (the proximal gradient step); Liu et al., ICCV 2017 (slimming).
    """
    _check_strength(strength, "strength")
    _check_strength(learning_rate, "learning_rate")

    def init_fn(params):
        _resolve_flags(prunable, params, "prunable", _all_float)
        return ProxL1State(count=_zero_count())

    def update_fn(updates, state, params=None):
        _check_params(params, updates)
        flags = _resolve_flags(prunable, params, "prunable", _all_float)
        t = _value(learning_rate, state.count) * _value(strength, state.count)

        def one(path, u, p):
            x = _stepped(u, p)
            new = jnp.sign(x) * jnp.maximum(jnp.abs(x) - t, 0.0)
            return _new_update(new, p, u)

        updates = _map_selected(one, updates, params, flags)
        return updates, ProxL1State(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------------------
# Group lasso.


@dataclasses.dataclass(frozen=True)
class ExplicitGroups:
    """A group lasso over explicit :class:`jaxprune.Group` s (every channel is one group)."""

    groups: tuple[groups_lib.Group, ...]

    def check(self, params: base.Params, disjoint: str | None = None) -> None:
        """Validates the groups against ``params`` (and that they are disjoint if named)."""
        if disjoint is None:
            groups_lib.check_groups(self.groups, params)
        else:
            groups_lib.check_disjoint(self.groups, params, disjoint)

    def per_group(
        self, x: base.Params, params: base.Params, weighting: Callable, f: Callable, **expand
    ) -> dict:
        """``{path: f(norm, w_g)}`` for the groups' leaves, broadcastable to them.

        ``norm`` is each channel's Euclidean norm in ``x`` (params-shaped) and ``w_g`` its
        weight; the per-channel values are expanded onto the members with ``expand``
        (``fill``, ``combine``) as :func:`jaxprune.groups_lib.expand_group_values` does.
        """
        norms = groups_lib.group_norms(x, self.groups)
        sizes = _entries_per_channel(self.groups, params)
        values = {g.name: f(norms[g.name], weighting(sizes[g.name])) for g in self.groups}
        return groups_lib.expand_group_values(values, self.groups, params, **expand)


@dataclasses.dataclass(frozen=True)
class GranularityGroups:
    """A group lasso whose groups are the units of a granularity on the ``prunable`` leaves."""

    granularity: Any  # a Granularity, its name, or a prefix tree of them
    prunable: Any  # leaf selector (bool tree, prefix or callable); None = rank >= 2

    def leaves(self, params: base.Params) -> list[tuple[str, jax.Array, tuple[int, ...]]]:
        """``(path, leaf, reduced axes)`` for every penalized leaf of ``params``."""
        flags = _resolve_flags(self.prunable, params, "prunable", _default_kernels)
        grans = _granularity_tree(self.granularity, params, flags)
        return [
            (path, p, _reduced_axes(g, tuple(p.shape), path))
            for (path, p), (_, g) in zip(
                base.leaves_with_paths(params), base.leaves_with_paths(grans), strict=True
            )
            if p is not None and g is not None
        ]

    def check(self, params: base.Params, disjoint: str | None = None) -> None:
        """Validates the selection and the granularities against ``params``."""
        del disjoint  # the units of one granularity never overlap
        self.leaves(params)

    def per_group(
        self, x: base.Params, params: base.Params, weighting: Callable, f: Callable, **expand
    ) -> dict:
        """``{path: f(norm, w_g)}`` per penalized leaf, one entry per unit (keepdims)."""
        del expand  # every unit lies in one leaf
        xs = dict(base.leaves_with_paths(x))
        out = {}
        for path, p, axes in self.leaves(params):
            size = int(np.prod([p.shape[a] for a in axes], dtype=np.int64))
            norm = jnp.sqrt(jnp.sum(jnp.square(_f32(xs[path])), axis=axes, keepdims=True))
            out[path] = f(norm, weighting(size))
        return out


GroupSpec = ExplicitGroups | GranularityGroups


def group_spec(groups: Any, prunable: Any = None, name: str = "groups") -> GroupSpec:
    """Normalizes a ``groups=`` argument (explicit groups or a granularity) once.

    Args:
      groups: A non-empty sequence of :class:`jaxprune.Group`, or a granularity (a
        :class:`jaxprune.Granularity`, its name, or a prefix tree of them).
      prunable: With a granularity: the leaves to penalize (default: rank >= 2).
      name: The argument's name, for error messages.

    Returns:
      An :class:`ExplicitGroups` or a :class:`GranularityGroups`.

    Raises:
      TypeError: If ``groups`` is missing or mixes groups with other values.
      ValueError: For an empty list of groups, or ``prunable`` with explicit groups.
    """
    if isinstance(groups, (ExplicitGroups, GranularityGroups)):
        if prunable is not None:
            raise ValueError(f"`{name}` is already a group spec; pass `prunable` to it.")
        return groups
    seq = isinstance(groups, (list, tuple))
    if seq and groups and all(isinstance(g, groups_lib.Group) for g in groups):
        if prunable is not None:
            raise ValueError(
                "`prunable` applies to a granularity; explicit groups name their leaves."
            )
        return ExplicitGroups(tuple(groups))
    if seq and not groups:
        raise ValueError(f"`{name}` is an empty list of groups.")
    if seq and any(isinstance(g, groups_lib.Group) for g in groups):
        raise TypeError(f"`{name}` mixes jaxprune.Group objects with other values.")
    if groups is None:
        raise TypeError(
            f"`{name}` is required: a sequence of jaxprune.Group or a granularity (e.g. "
            "jaxprune.FILTER) or a prefix tree of granularities."
        )
    return GranularityGroups(groups, prunable)


def _weighting_fn(weighting: Any) -> Callable[[int], float]:
    """Normalizes ``weighting=`` (a name or a callable) to a checked ``size -> w_g``."""
    if isinstance(weighting, str) and weighting in _WEIGHTINGS:
        return _WEIGHTINGS[weighting]
    if isinstance(weighting, str) or not callable(weighting):
        raise ValueError(
            "`weighting` must be 'none', 'sqrt_size' or a callable size -> weight, got "
            f"{weighting!r}."
        )

    def checked(size: int) -> float:
        w = float(weighting(size))
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"`weighting({size})` returned {w}; weights must be finite and >= 0.")
        return w

    return checked


_WEIGHTINGS: dict[str, Callable[[int], float]] = {
    "none": lambda size: 1.0,
    "sqrt_size": math.sqrt,
}


def _granularity_tree(groups: Any, params: base.Params, flags: Any) -> Any:
    """Granularity per selected leaf (None elsewhere); rejects N:M."""
    selected = _selected(params, flags)
    grans = gran_lib.resolve_granularity_tree(groups, selected)
    for path, g in base.leaves_with_paths(grans):
        if g is not None and g.is_n_of_m:
            raise ValueError(
                f"group lasso needs groups, not an N:M granularity ({g.name}) at {path!r}."
            )
    return grans


def _reduced_axes(g: gran_lib.Granularity, shape: tuple[int, ...], path: str) -> tuple[int, ...]:
    g.check(shape, path)
    kept = set(g.mask_axes(len(shape)))
    return tuple(a for a in range(len(shape)) if a not in kept)


def _entries_per_channel(groups: Sequence[groups_lib.Group], params: base.Params) -> dict:
    """Number of parameter entries of one channel of each group (all members)."""
    leaves = {p: x for p, x in base.leaves_with_paths(params) if x is not None}
    out = {}
    for g in groups:
        n = 0
        for m in g.members:
            shape = tuple(leaves[m.path].shape)
            others = int(np.prod(shape)) // shape[m.axis % len(shape)]
            n += others * m.outer * m.inner
        out[g.name] = n
    return out


def add_group_lasso(
    strength: optax.ScalarOrSchedule,
    groups: Any,
    *,
    prunable: Any = None,
    weighting: Any = "none",
) -> optax.GradientTransformation:
    """Adds the subgradient of the group lasso ``strength * sum_g w_g ||W_g||_2``.

    Coupled: place it **before** the optimizer. For every element of group ``g`` it adds
    ``strength * w_g * w / ||W_g||_2``, and ``0`` for groups whose norm is exactly zero (the
    minimum-norm subgradient; no NaN), as in Wen et al.'s code. Overlapping groups (SSL's
    filter-wise and channel-wise groups of one kernel) add up.

    ``groups`` is either

    * a sequence of :class:`jaxprune.Group` -- explicit groups that may span several layers,
      e.g. a conv filter with its bias, its BatchNorm scale and shift and the next layer's
      input channel; every channel ``c`` of a group is one lasso group ``W_c`` over all its
      members; or
    * a :class:`jaxprune.Granularity` (or its name, or a prefix tree of them with ``None``
      for leaves without penalty) applied to the leaves ``prunable`` selects: each mask entry of
      the granularity is one group. SSL's group types on a conv kernel ``(kh, kw, cin, cout)``
      are ``FILTER`` (filter-wise), ``INPUT_CHANNEL`` (channel-wise), ``FILTER_SHAPE``
      (shape-wise, which is also Lebedev & Lempitsky's group ``W[i, j, s, :]``) and
      ``LAYER`` (depth-wise); on a Dense kernel ``(in, out)``, ``FILTER`` groups columns
      (output neurons) and ``INPUT_CHANNEL`` rows (input neurons).

    ``weighting`` sets ``w_g``: ``"none"`` (``1``, SSL's code), ``"sqrt_size"`` (the square root
    of the number of entries in the group, Yuan & Lin's group lasso, which makes groups of
    different sizes comparable) or a callable ``size -> weight``.

    Args:
      strength: Coefficient ``lam_g``, or a schedule ``count -> lam_g``.
      groups: Group specs or a granularity, see above.
      prunable: With a granularity: leaves to penalize (bool tree, prefix or callable). Default:
        leaves of rank >= 2 (kernels). Not allowed with explicit groups.
      weighting: ``"none"``, ``"sqrt_size"`` or a callable.

    Returns:
      An ``optax.GradientTransformation`` with an :class:`AddGroupLassoState`.

    Raises:
      ValueError: For a negative strength, groups that do not fit the params (naming the
        group and path), an N:M granularity, or an unknown weighting.
      TypeError: If ``groups`` is missing or mixes types.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> params = {"k": jnp.array([[3.0, 0.0], [4.0, 0.0]])}
      >>> tx = jaxprune.add_group_lasso(0.5, jaxprune.FILTER)  # one group per column
      >>> updates, _ = tx.update({"k": jnp.zeros((2, 2))}, tx.init(params), params)
      >>> updates["k"]  # 0.5 * w / 5 for column 0; the zero column gets 0
      Array([[0.3, 0. ],
             [0.4, 0. ]], dtype=float32)

    References:
      Wen et al., "Learning Structured Sparsity in Deep Neural Networks", NeurIPS 2016,
      https://arxiv.org/abs/1608.03665; Lebedev & Lempitsky, "Fast ConvNets Using Group-wise
      Brain Damage", CVPR 2016; Yuan & Lin, "Model selection and estimation in regression
      with grouped variables", JRSS-B 2006.
    """
    _check_strength(strength, "strength")
    weighting = _weighting_fn(weighting)
    spec = group_spec(groups, prunable)

    def coefficient(norm, w, s):  # gradient of s * w * ||W_g|| is coefficient * W
        nz = norm > 0
        return jnp.where(nz, s * w / jnp.where(nz, norm, 1.0), 0.0)

    def init_fn(params):
        spec.check(params)
        return AddGroupLassoState(count=_zero_count())

    def update_fn(updates, state, params=None):
        _check_params(params, updates)
        s = _value(strength, state.count)
        f = functools.partial(coefficient, s=s)
        coef = spec.per_group(params, params, weighting, f, fill=0.0, combine="add")

        def one(path, u, p):
            c = coef.get(path)
            return u if c is None else (_f32(u) + c * _f32(p)).astype(u.dtype)

        updates = base.map_with_path(one, updates, params)
        return updates, AddGroupLassoState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def _default_kernels(params: base.Params) -> Any:
    return base.map_prunable(lambda p: len(p.shape) >= 2, params)


def prox_group_lasso(
    strength: optax.ScalarOrSchedule,
    learning_rate: optax.ScalarOrSchedule,
    groups: Any,
    *,
    prunable: Any = None,
    weighting: Any = "none",
) -> optax.GradientTransformation:
    """Proximal step of the group lasso: block soft-thresholding by ``learning_rate * strength``.

    Decoupled: place it **after** the optimizer (and before :func:`jaxprune.optax_sparsity`).
    With ``x = params + update``, ``t = learning_rate * strength`` and the group's weight
    ``w_g``, every group becomes ``max(0, 1 - t * w_g / ||x_g||_2) * x_g``: a group whose norm
    is at most ``t * w_g`` becomes exactly ``0`` (Wen et al. recommend this proximal form for
    exact zeros; it is SSL's update with the subgradient replaced by the proximal operator).

    ``groups`` and ``weighting`` are as in :func:`add_group_lasso`, except that the groups
    must not overlap (the proximal operator of overlapping groups has no closed form; chain
    two transforms for SSL's filter-wise plus channel-wise penalties).

    Args:
      strength: Coefficient, or a schedule.
      learning_rate: Step size, or a schedule (the optimizer's).
      groups: Group specs or a granularity.
      prunable: With a granularity: leaves to shrink (default: rank >= 2).
      weighting: ``"none"``, ``"sqrt_size"`` or a callable.

    Returns:
      An ``optax.GradientTransformation`` with a :class:`ProxGroupLassoState`.

    Raises:
      ValueError: For overlapping groups (naming them and the path), a negative strength or
        learning rate, or groups that do not fit.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import jaxprune
      >>> params = {"k": jnp.array([[3.0, 0.1], [4.0, 0.1]])}
      >>> tx = jaxprune.prox_group_lasso(1.0, 1.0, jaxprune.FILTER)
      >>> updates, _ = tx.update({"k": jnp.zeros((2, 2))}, tx.init(params), params)
      >>> optax.apply_updates(params, updates)["k"]  # column 0 scaled by 1 - 1/5; column 1 -> 0
      Array([[2.4, 0. ],
             [3.2, 0. ]], dtype=float32)

    References:
      Wen et al., NeurIPS 2016, https://arxiv.org/abs/1608.03665; Lebedev & Lempitsky,
      CVPR 2016.
    """
    _check_strength(strength, "strength")
    _check_strength(learning_rate, "learning_rate")
    weighting = _weighting_fn(weighting)
    spec = group_spec(groups, prunable)

    def factor(norm, w, t):  # block soft-thresholding of a group with norm ``norm``
        tw = t * w
        return jnp.where(norm > tw, 1.0 - tw / jnp.where(norm > 0, norm, 1.0), 0.0)

    def init_fn(params):
        spec.check(params, disjoint="prox_group_lasso")
        return ProxGroupLassoState(count=_zero_count())

    def update_fn(updates, state, params=None):
        _check_params(params, updates)
        t = _value(learning_rate, state.count) * _value(strength, state.count)
        x = base.map_prunable(lambda u, p: _stepped(u, p), updates, params)
        spec.check(params, disjoint="prox_group_lasso")
        f = functools.partial(factor, t=t)
        factors = spec.per_group(x, params, weighting, f, fill=1.0, combine="mul")

        def one(path, u, p, xv):
            f = factors.get(path)
            return u if f is None else _new_update(xv * f, p, u)

        updates = base.map_with_path(one, updates, params, x)
        return updates, ProxGroupLassoState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------------------
# SSL's small-weight zeroing.


def zero_small(
    threshold: optax.ScalarOrSchedule = 1e-4, prunable: Any = None
) -> optax.GradientTransformation:
    """Sets weights with ``|params + update| < threshold`` to exactly zero after the update.

    SSL's authors zero every weight below ``1e-4`` in magnitude after each update to stabilize
    the sparsity the (sub)gradient group lasso creates. Place it **after** the optimizer (and
    after any penalties), before :func:`jaxprune.optax_sparsity`.

    Args:
      threshold: The magnitude below which weights become zero, or a schedule.
      prunable: Leaves to zero (bool tree, prefix or callable); ``None`` = every float leaf.

    Returns:
      An ``optax.GradientTransformation`` with a :class:`ZeroSmallState`.

    Raises:
      ValueError: For a negative threshold or a ``prunable`` selection that does not fit.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import jaxprune
      >>> params = {"w": jnp.array([5e-5, -1.0])}
      >>> tx = jaxprune.zero_small(1e-4)
      >>> updates, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
      >>> optax.apply_updates(params, updates)["w"]
      Array([ 0., -1.], dtype=float32)

    References:
      Wen et al., "Learning Structured Sparsity in Deep Neural Networks", NeurIPS 2016
      (code: github.com/wenwei202/caffe, branch scnn).
    """
    _check_strength(threshold, "threshold")

    def init_fn(params):
        _resolve_flags(prunable, params, "prunable", _all_float)
        return ZeroSmallState(count=_zero_count())

    def update_fn(updates, state, params=None):
        _check_params(params, updates)
        flags = _resolve_flags(prunable, params, "prunable", _all_float)
        t = _value(threshold, state.count)

        def one(path, u, p):
            x = _stepped(u, p)
            return jnp.where(jnp.abs(x) < t, (-p).astype(u.dtype), u)

        updates = _map_selected(one, updates, params, flags)
        return updates, ZeroSmallState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------------------
# Gates.

_GATE_KINDS = ("auto", "hard_concrete", "bernoulli")


def _gate_labels_default(params):
    return labels_lib.gate_labels(params, ("hard_concrete", "bernoulli"))


def _gate_kind(path: str, kind: str) -> str:
    if kind != "auto":
        return kind
    k = labels_lib.gate_kind(path)
    if k not in ("hard_concrete", "bernoulli"):
        raise ValueError(
            f"cannot tell the gate kind of {path!r} from its name (expected "
            f"{labels_lib.L0_NAME!r} or {labels_lib.BERNOULLI_NAME!r}); pass `kind`."
        )
    return k


def _check_kind(kind: str) -> None:
    if kind not in _GATE_KINDS:
        raise ValueError(f"`kind` must be one of {_GATE_KINDS}, got {kind!r}.")


def _weights_tree(weight: Any, params: base.Params) -> Any:
    if weight is None:
        return base.map_prunable(lambda _: 1.0, params)
    tree = base.broadcast_prefix(weight, params, "weight")
    for path, w in base.leaves_with_paths(tree):
        if w is not None:
            if callable(w):
                raise TypeError(f"`weight` must hold numbers, got a callable at {path!r}.")
            _check_strength(w, f"weight[{path!r}]")
    return tree


def _check_gate_selection(prunable: Any, kind: Any, weight: Any, params: base.Params) -> None:
    """Validates a gate transform's leaf selection, gate kinds and weights at ``init``."""
    flags = _resolve_flags(prunable, params, "prunable", _gate_labels_default)
    for path, f in base.leaves_with_paths(flags):
        if f:
            _gate_kind(path, kind)
    _weights_tree(weight, params)


def add_gate_penalty(
    strength: optax.ScalarOrSchedule,
    prunable: Any = None,
    *,
    kind: str = "auto",
    bimodal: optax.ScalarOrSchedule = 0.0,
    weight: Any = None,
    beta: float = gates_math.HC_BETA,
    gamma: float = gates_math.HC_GAMMA,
    zeta: float = gates_math.HC_ZETA,
) -> optax.GradientTransformation:
    """Adds the gradient of a gate penalty (expected L0 or Srinivas's) to the gradients.

    Coupled: place it **before** the optimizer. The penalty, summed over the selected gates
    with per-leaf weights ``w`` (default 1; e.g. the number of weights each gate controls, as
    Louizos et al. weight it), is

    * hard-concrete gates (``l0_log_alpha``): ``strength * sum w * sigmoid(log_alpha - beta *
      log(-gamma / zeta))``, the expected number of non-zero gates
      (:func:`jaxprune.hard_concrete_prob_nonzero`); its gradient is ``strength * w * P * (1 -
      P)``;
    * Bernoulli gates (``bernoulli_gate``, Srinivas et al.): ``strength * sum w * g + bimodal *
      sum w * g * (1 - g)``; the second term pushes gates towards 0 or 1. Keep ``g`` in
      ``[0, 1]`` with :func:`clip_gates` after the optimizer.

    Louizos et al. divide the penalty by the training-set size ``N`` (they minimize the mean
    loss); pass ``strength = lam / N`` to match.

    Args:
      strength: Penalty coefficient, or a schedule.
      prunable: Gate leaves (bool tree, prefix or callable). Default: every leaf named
        ``l0_log_alpha`` or ``bernoulli_gate`` (the parameters of jaxprune's gate layers).
      kind: ``"auto"`` (from the leaf name), ``"hard_concrete"`` or ``"bernoulli"``.
      bimodal: Coefficient of Srinivas's ``g (1 - g)`` term, or a schedule.
      weight: Per-leaf weights: a number or a prefix tree of numbers (by path).
      beta: Hard-concrete temperature.
      gamma: Hard-concrete stretch lower end.
      zeta: Hard-concrete stretch upper end.

    Returns:
      An ``optax.GradientTransformation`` with an :class:`AddGatePenaltyState`.

    Raises:
      ValueError: For a negative strength, an unknown kind, or a selected leaf whose kind
        cannot be told from its name with ``kind="auto"``.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> params = {"gate": {"l0_log_alpha": jnp.zeros(2)}}
      >>> tx = jaxprune.add_gate_penalty(1.0)
      >>> updates, _ = tx.update({"gate": {"l0_log_alpha": jnp.zeros(2)}}, tx.init(params), params)
      >>> updates["gate"]["l0_log_alpha"].round(4)  # P * (1 - P) with P = 0.8318
      Array([0.1399, 0.1399], dtype=float32)

    References:
      Louizos, Welling, Kingma, "Learning Sparse Neural Networks through L0 Regularization",
      ICLR 2018, https://arxiv.org/abs/1712.01312; Srinivas, Subramanya, Babu, "Training
      Sparse Neural Networks", CVPR-W 2017, https://arxiv.org/abs/1611.06694.
    """
    _check_strength(strength, "strength")
    _check_strength(bimodal, "bimodal")
    _check_kind(kind)
    gates_math.check_hc_constants(beta, gamma, zeta)
    shift = beta * math.log(-gamma / zeta)

    def init_fn(params):
        _check_gate_selection(prunable, kind, weight, params)
        return AddGatePenaltyState(count=_zero_count())

    def update_fn(updates, state, params=None):
        _check_params(params, updates)
        flags = _resolve_flags(prunable, params, "prunable", _gate_labels_default)
        weights = _weights_tree(weight, params)
        s = _value(strength, state.count)
        b = _value(bimodal, state.count)

        def one(path, u, p, w):
            w = jnp.asarray(w, jnp.float32)
            x = _f32(p)
            if _gate_kind(path, kind) == "hard_concrete":
                prob = jax.nn.sigmoid(x - shift)
                g = s * w * prob * (1.0 - prob)
            else:
                g = s * w + b * w * (1.0 - 2.0 * x)
            return (_f32(u) + g).astype(u.dtype)

        updates = _map_selected(one, updates, params, flags, weights)
        return updates, AddGatePenaltyState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def _check_bounds(bounds: Any, name: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in bounds)
    if not lo < hi:
        raise ValueError(f"`{name}` must be (low, high) with low < high, got {bounds!r}.")
    return lo, hi


def clip_gates(
    prunable: Any = None,
    *,
    kind: str = "auto",
    log_alpha_bounds: tuple[float, float] = gates_math.LOG_ALPHA_BOUNDS,
    gate_bounds: tuple[float, float] = (0.0, 1.0),
) -> optax.GradientTransformation:
    """Projects gates into their box after the update: ``log_alpha`` and Bernoulli ``g``.

    Louizos et al.'s code clamps ``log_alpha`` to ``[log 0.01, log 100]`` after every step;
    Srinivas et al. clip the gate probabilities ``g`` to ``[0, 1]``. Place it **after** the
    optimizer (before :func:`jaxprune.optax_sparsity`).

    Args:
      prunable: Gate leaves (default: leaves named ``l0_log_alpha`` or ``bernoulli_gate``).
      kind: ``"auto"``, ``"hard_concrete"`` or ``"bernoulli"``.
      log_alpha_bounds: ``(low, high)`` for hard-concrete gates.
      gate_bounds: ``(low, high)`` for Bernoulli gates.

    Returns:
      A stateless ``optax.GradientTransformation``.

    Raises:
      ValueError: For bad bounds or a leaf whose kind cannot be told.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> params = {"g": {"bernoulli_gate": jnp.array([0.5, 0.75])}}
      >>> tx = jaxprune.clip_gates()
      >>> u, _ = tx.update({"g": {"bernoulli_gate": jnp.array([-1.0, 0.5])}}, tx.init(params),
      ...                  params)
      >>> u["g"]["bernoulli_gate"]  # 0.5 - 1 -> 0 and 0.75 + 0.5 -> 1
      Array([-0.5 ,  0.25], dtype=float32)
    """
    _check_kind(kind)
    la_lo, la_hi = _check_bounds(log_alpha_bounds, "log_alpha_bounds")
    g_lo, g_hi = _check_bounds(gate_bounds, "gate_bounds")

    def init_fn(params):
        flags = _resolve_flags(prunable, params, "prunable", _gate_labels_default)
        for path, f in base.leaves_with_paths(flags):
            if f:
                _gate_kind(path, kind)
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        _check_params(params, updates)
        flags = _resolve_flags(prunable, params, "prunable", _gate_labels_default)

        def one(path, u, p):
            lo, hi = (la_lo, la_hi) if _gate_kind(path, kind) == "hard_concrete" else (g_lo, g_hi)
            return _new_update(jnp.clip(_stepped(u, p), lo, hi), p, u)

        return _map_selected(one, updates, params, flags), state

    return optax.GradientTransformation(init_fn, update_fn)


def prox_gates(
    strength: optax.ScalarOrSchedule,
    learning_rate: optax.ScalarOrSchedule,
    prunable: Any = None,
    *,
    kind: str = "auto",
    bimodal: optax.ScalarOrSchedule = 0.0,
    weight: Any = None,
    beta: float = gates_math.HC_BETA,
    gamma: float = gates_math.HC_GAMMA,
    zeta: float = gates_math.HC_ZETA,
    log_alpha_bounds: tuple[float, float] = gates_math.LOG_ALPHA_BOUNDS,
    gate_bounds: tuple[float, float] = (0.0, 1.0),
) -> optax.GradientTransformation:
    """Decoupled gate penalty step plus the box projection, after the optimizer.

    With ``x = params + update`` and ``eta = learning_rate``:

    * hard-concrete gates: the expected-L0 penalty has no closed-form proximal operator, so
      the step is a decoupled gradient step at the current parameters (as AdamW decouples
      weight decay), then the clamp of :func:`clip_gates`:
      ``clip(x - eta * strength * w * P * (1 - P), *log_alpha_bounds)``, ``P =
      sigmoid(log_alpha - beta log(-gamma/zeta))``;
    * Bernoulli gates: the exact proximal operator of ``strength * w * g`` plus the box
      ``[0, 1]`` (after a decoupled gradient step of the ``bimodal`` term at the current
      ``g``): ``clip(x - eta * bimodal * w * (1 - 2 g) - eta * strength * w, *gate_bounds)``,
      which sets gates to exactly ``0``.

    Args:
      strength: Penalty coefficient, or a schedule.
      learning_rate: Step size, or a schedule (the optimizer's).
      prunable: Gate leaves (default: leaves named ``l0_log_alpha`` or ``bernoulli_gate``).
      kind: ``"auto"``, ``"hard_concrete"`` or ``"bernoulli"``.
      bimodal: Coefficient of Srinivas's ``g (1 - g)`` term.
      weight: Per-leaf weights (a number or prefix tree).
      beta: Hard-concrete temperature.
      gamma: Hard-concrete stretch lower end.
      zeta: Hard-concrete stretch upper end.
      log_alpha_bounds: Clamp for ``log_alpha``.
      gate_bounds: Box for Bernoulli gates.

    Returns:
      An ``optax.GradientTransformation`` with a :class:`ProxGatesState`.

    Raises:
      ValueError: As :func:`add_gate_penalty` and :func:`clip_gates`.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import jaxprune
      >>> params = {"g": {"bernoulli_gate": jnp.array([0.0625, 0.875])}}
      >>> tx = jaxprune.prox_gates(1.0, 0.125)  # g -> clip(g - 0.125, 0, 1)
      >>> u, _ = tx.update({"g": {"bernoulli_gate": jnp.zeros(2)}}, tx.init(params), params)
      >>> optax.apply_updates(params, u)["g"]["bernoulli_gate"]
      Array([0.  , 0.75], dtype=float32)

    References:
      Louizos, Welling, Kingma, ICLR 2018; Srinivas, Subramanya, Babu, CVPR-W 2017.
    """
    _check_strength(strength, "strength")
    _check_strength(learning_rate, "learning_rate")
    _check_strength(bimodal, "bimodal")
    _check_kind(kind)
    gates_math.check_hc_constants(beta, gamma, zeta)
    la_lo, la_hi = _check_bounds(log_alpha_bounds, "log_alpha_bounds")
    g_lo, g_hi = _check_bounds(gate_bounds, "gate_bounds")
    shift = beta * math.log(-gamma / zeta)

    def init_fn(params):
        _check_gate_selection(prunable, kind, weight, params)
        return ProxGatesState(count=_zero_count())

    def update_fn(updates, state, params=None):
        _check_params(params, updates)
        flags = _resolve_flags(prunable, params, "prunable", _gate_labels_default)
        weights = _weights_tree(weight, params)
        eta = _value(learning_rate, state.count)
        s = _value(strength, state.count)
        b = _value(bimodal, state.count)

        def one(path, u, p, w):
            w = jnp.asarray(w, jnp.float32)
            x = _stepped(u, p)
            cur = _f32(p)
            if _gate_kind(path, kind) == "hard_concrete":
                prob = jax.nn.sigmoid(cur - shift)
                new = jnp.clip(x - eta * s * w * prob * (1.0 - prob), la_lo, la_hi)
            else:
                x = x - eta * b * w * (1.0 - 2.0 * cur)
                new = jnp.clip(x - eta * s * w, g_lo, g_hi)
            return _new_update(new, p, u)

        updates = _map_selected(one, updates, params, flags, weights)
        return updates, ProxGatesState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------------------
# The penalty keywords of optax_sparsity.


def proximal_penalties(
    learning_rate: Any,
    prunable: Any,
    granularity: Any,
    group_lasso_groups: Any = None,
    slimming_prunable: Any = None,
    *,
    l1: Any = None,
    group_lasso: Any = None,
    slimming: Any = None,
    gates: Any = None,
) -> list[optax.GradientTransformation]:
    """The proximal transforms behind ``optax_sparsity``'s penalty keywords, in chain order.

    Order: ``l1`` (:func:`prox_l1` on the ``prunable`` leaves), ``group_lasso``
    (:func:`prox_group_lasso` over ``group_lasso_groups`` or the ``granularity`` units of the
    ``prunable`` leaves), ``slimming`` (:func:`prox_l1` on ``slimming_prunable``, default
    :func:`jaxprune.scale_labels`), ``gates`` (:func:`prox_gates`). ``optax_sparsity`` is
    ``optax.chain(*proximal_penalties(...), <its masking transform>)``.

    Args:
      learning_rate: The optimizer's step size; required with any strength.
      prunable: The leaves ``l1`` and a granularity ``group_lasso`` apply to.
      granularity: The groups of ``group_lasso`` when ``group_lasso_groups`` is not given.
      group_lasso_groups: Explicit :class:`jaxprune.Group` list for ``group_lasso``.
      slimming_prunable: The scale leaves of ``slimming``.
      l1: Strength (or schedule) of :func:`prox_l1` on ``prunable``, or ``None``.
      group_lasso: Strength (or schedule) of :func:`prox_group_lasso`, or ``None``.
      slimming: Strength (or schedule) of :func:`prox_l1` on ``slimming_prunable``.
      gates: Strength (or schedule) of :func:`prox_gates`, or ``None``.

    Returns:
      The transforms (an empty list when no strength is given).

    Raises:
      ValueError: For a missing or unused ``learning_rate``, or a selection keyword without
        its strength.
    """
    given = {"l1": l1, "group_lasso": group_lasso, "slimming": slimming, "gates": gates}
    used = [k for k, v in given.items() if v is not None]
    if not used:
        if learning_rate is not None:
            raise ValueError(
                "`learning_rate` is only used by the penalty keywords (l1=, group_lasso=, "
                "slimming=, gates=); none was given."
            )
        if group_lasso_groups is not None or slimming_prunable is not None:
            raise ValueError(
                "`group_lasso_groups` / `slimming_prunable` need `group_lasso=` / `slimming=`."
            )
        return []
    if learning_rate is None:
        raise ValueError(
            f"the penalty keywords {used} are applied as decoupled proximal steps after the "
            "optimizer and need its step size: pass `learning_rate=` (a float or the "
            "optimizer's schedule)."
        )
    if group_lasso_groups is not None and group_lasso is None:
        raise ValueError("`group_lasso_groups` needs `group_lasso=`.")
    if slimming_prunable is not None and slimming is None:
        raise ValueError("`slimming_prunable` needs `slimming=`.")
    out = []
    if l1 is not None:
        out.append(prox_l1(l1, learning_rate, prunable=prunable))
    if group_lasso is not None:
        if group_lasso_groups is not None:
            spec = group_spec(list(group_lasso_groups), name="group_lasso_groups")
        else:
            g = gran_lib.single(granularity)
            if g is not None and g.is_n_of_m:
                raise ValueError(
                    "`group_lasso=` with an N:M granularity: pass `group_lasso_groups=`."
                )
            spec = group_spec(granularity, prunable, name="granularity")
        out.append(prox_group_lasso(group_lasso, learning_rate, spec))
    if slimming is not None:
        scales = labels_lib.scale_labels if slimming_prunable is None else slimming_prunable
        out.append(prox_l1(slimming, learning_rate, prunable=scales))
    if gates is not None:
        out.append(prox_gates(gates, learning_rate))
    return out
