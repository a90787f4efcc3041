"""``optax_sparsity``: pruning inside a jitted optax step, and Dynamic Network Surgery.

The masks of a pruning schedule live in the optimizer state. Every step the transform either
keeps them or (on the schedule's update steps) recomputes them from scores, inside a
``lax.cond`` whose operands are only the parameters, the optional raw gradients and the old
masks, and whose result is only the new masks: ordinary steps pay for one predicate, not for a
copy of the optimizer state. It then rewrites the update of every pruned entry to ``-param``,
so that ``optax.apply_updates`` leaves it exactly ``0.0`` whatever optimizer came before.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune._src import base
from jaxprune._src import distributions as dist_lib
from jaxprune._src import granularity as gran_lib
from jaxprune._src import masking as masking_lib
from jaxprune._src import regularizers as reg_lib
from jaxprune._src import schedules as sched_lib
from jaxprune._src import scores as scores_lib
from jaxprune._src import select as select_lib
from jaxprune._src import sparse_training as sparse_training_lib


class SparsityState(NamedTuple):
    """State of :func:`optax_sparsity`."""

    count: jax.Array  # int32 scalar: number of updates so far.
    masks: base.Mask  # bool leaves shaped like the granularity's masks; None = never pruned.
    # int32 scalar: the most pruned entries of ``params`` found non-zero (or non-finite) at the
    # start of any update so far; 0 when the transform is last in the chain (see ``masks``).
    leaked: Any = None
    # int32 scalar: mask updates so far whose target sparsity was NaN or outside [0, 1]
    # (a traced value or a schedule; NaN keeps every weight, others act like the nearest end).
    bad_sparsity: Any = None


class DynamicSurgeryState(NamedTuple):
    """State of :func:`dynamic_network_surgery`."""

    count: jax.Array  # int32 scalar: number of updates so far.
    masks: base.Mask  # bool leaves shaped like params; None = never pruned.
    low: base.Params  # float32 scalar per prunable leaf: prune below (DNS's ``a``).
    high: base.Params  # float32 scalar per prunable leaf: splice above (DNS's ``b``).
    key: jax.Array  # PRNG key for the stochastic update decision.


def default_prunable(params: base.Params, *, exclude: Any = ()) -> Any:
    """``True`` for leaves of rank >= 2 (kernels and embeddings), ``False`` for the rest.

    Biases and normalization scales/offsets (rank 1) and scalars are never pruned by default.
    ``exclude`` names leaves (or whole subtrees, by path prefix) that stay dense, typically
    the model's output layer under a structured granularity:
    ``prunable=lambda p: jaxprune.default_prunable(p, exclude=["head"])``.

    Args:
      params: A tree of arrays (or ``jax.ShapeDtypeStruct``).
      exclude: Paths or path prefixes (e.g. ``"Dense_2"`` or ``"Dense_2/kernel"``) of leaves
        that are never pruned; a single string is one path.

    Returns:
      A tree of Python bools with the structure of ``params`` (``None`` stays ``None``).

    Raises:
      ValueError: If an ``exclude`` entry matches no parameter path (all are listed).

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> jaxprune.default_prunable({"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)})
      {'bias': False, 'kernel': True}
      >>> p = {"fc": {"kernel": jnp.ones((3, 2))}, "out": {"kernel": jnp.ones((2, 2))}}
      >>> jaxprune.default_prunable(p, exclude="out")
      {'fc': {'kernel': True}, 'out': {'kernel': False}}
    """
    excluded = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    paths = [path for path, x in base.leaves_with_paths(params) if x is not None]

    def covers(prefix: str, path: str) -> bool:
        return path == prefix or path.startswith(prefix.rstrip("/") + "/")

    unknown = [e for e in excluded if not any(covers(e, p) for p in paths)]
    if unknown:
        raise ValueError(
            f"`exclude` names {unknown} that match no parameter path; parameter paths are e.g. "
            f"{paths[:6]}."
        )
    return base.map_with_path(
        lambda path, p: len(p.shape) >= 2 and not any(covers(e, path) for e in excluded),
        params,
    )


def only_prunable(params: base.Params, prunable: Any = None) -> base.Params:
    """``params`` with ``None`` at every leaf that ``prunable`` does not select.

    The pure functions (:mod:`jaxprune.scores`, :mod:`jaxprune.select`) score and prune
    every leaf they are given, biases and normalization scales included, while
    :func:`optax_sparsity` prunes only ``prunable`` leaves (by default :func:`default_prunable`:
    rank >= 2). Pass ``only_prunable(params)`` to a pure function to make it agree with
    :func:`optax_sparsity`: the ``None`` leaves are not scored, and get ``None`` masks, which
    :func:`jaxprune.apply_masks` and the transforms read as "not pruned".

    Args:
      params: A tree of arrays (or ``jax.ShapeDtypeStruct``; NNX ``State`` works).
      prunable: As in :func:`optax_sparsity`: a bool tree (a prefix, matched by path), a
        callable of the params (e.g. ``lambda p: jaxprune.default_prunable(p, exclude=["out"])``)
        or ``None`` for :func:`default_prunable`.

    Returns:
      A tree with the structure of ``params``: the selected leaves, ``None`` elsewhere.

    Raises:
      TypeError: If ``prunable`` does not hold one Python bool per leaf, or selects a leaf
        that is not floating point.
      ValueError: If ``prunable`` does not fit the params' structure.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxprune
      >>> p = {"kernel": jnp.arange(6.0).reshape(3, 2), "bias": jnp.ones(2)}
      >>> jaxprune.select.layerwise_topk(jaxprune.only_prunable(p), 0.5)["bias"] is None
      True
    """
    return base.select_leaves(params, _prunable_flags(prunable, params))


def _prunes_output_units(granularity: Any) -> bool:
    """Whether one unit of ``granularity`` is a whole output unit (or the whole leaf).

    FILTER (a kernel's last axis) and LAYER remove output units: on a model's output layer
    they remove classes. Prefix trees of granularities are the user's explicit choice.
    """
    g = gran_lib.single(granularity)
    if g is None:
        return False
    return not g.is_n_of_m and all(set(g.mask_axes(n)) <= {n - 1} for n in (2, 4))


def _check_output_layer_rule(granularity: Any, flags: Any, params: base.Params) -> None:
    """Refuses a structured output-unit granularity with the default ``prunable``."""
    if not _prunes_output_units(granularity):
        return
    chosen = [path for (path, f) in base.leaves_with_paths(flags) if f]
    name = gran_lib.resolve(granularity).name
    raise ValueError(
        f"granularity {name!r} prunes whole output units of every kernel, and the default "
        "`prunable` (every leaf of rank >= 2) includes the model's output layer, whose output "
        f"units are the model's outputs (a classifier's classes). Prunable leaves: {chosen[:8]}."
        " Pass `prunable=` explicitly, e.g. `prunable=lambda p: jaxprune.default_prunable(p, "
        f"exclude=[{chosen[-1] if chosen else 'OUTPUT_LAYER'!r}])` naming the output layer, or "
        "`prunable=jaxprune.default_prunable` to prune every kernel anyway."
    )


_STEP_ARGS = {"update_every": 1, "begin_step": 0, "end_step": 0}


def _check_step_arg(value: Any, name: str) -> None:
    """Raises unless a schedule step argument is an integer (Python/NumPy int or int array)."""
    if value is None:
        return
    dtype = getattr(value, "dtype", None)
    if (
        dtype is not None
        and getattr(value, "shape", None) == ()
        and not isinstance(value, np.generic)
    ):
        if not jnp.issubdtype(dtype, jnp.integer):
            raise TypeError(
                f"`{name}` must be an integer number of steps, got an array of dtype {dtype}."
            )
        if base.is_concrete(value) and int(value) < _STEP_ARGS[name]:
            raise ValueError(f"`{name}` must be >= {_STEP_ARGS[name]}, got {int(value)}.")
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"`{name}` must be an integer number of steps, got {value!r}; a fractional value "
            "would be truncated."
        )
    if value < _STEP_ARGS[name]:
        raise ValueError(f"`{name}` must be >= {_STEP_ARGS[name]}, got {value}.")


def _prunable_flags(prunable: Any, params: base.Params) -> Any:
    return base.leaf_flags(prunable, params, "prunable", default_prunable)


_only_prunable = base.select_leaves


def _value_at(value: Any, count: jax.Array) -> Any:
    return value(count) if callable(value) else value


def _ones_mask(path: str, p: Any, g: gran_lib.Granularity) -> jax.Array:
    """An all-True mask of ``g``'s shape for ``p``, sharded like the masks selection makes.

    ``ones_like`` (and reductions of it) keep an explicitly sharded parameter's sharding on
    the kept axes, so the masks of ``init`` and of a recomputation have the same type.
    """
    shape = g.mask_shape(tuple(p.shape), path)
    ones = jnp.ones_like(p, dtype=jnp.bool_)
    reduced = tuple(a for a, (m, d) in enumerate(zip(shape, p.shape, strict=True)) if m != d)
    return jnp.all(ones, axis=reduced, keepdims=True) if reduced else ones


def _like(new: jax.Array, old: jax.Array) -> jax.Array:
    """Gives ``new`` the (explicit) sharding of ``old`` when they differ, so that both
    branches of the update ``lax.cond`` have one type."""
    try:
        want, got = jax.typeof(old).sharding, jax.typeof(new).sharding
    except (AttributeError, TypeError):  # pragma: no cover - older JAX
        return new
    if want.mesh.empty or want == got:
        return new
    return jax.sharding.reshard(new, want.spec)


def _array_every(every: Any, begin: Any, end: Any) -> Callable[[jax.Array], jax.Array]:
    """Like ``schedules.every`` for step arguments that are (possibly traced) arrays."""

    def predicate(count):
        t = jnp.asarray(count, jnp.int32)
        n = jnp.maximum(jnp.asarray(every, jnp.int32), 1)
        b = jnp.asarray(begin, jnp.int32)
        ok = (t >= b) & (jnp.remainder(t - b, n) == 0)
        return ok if end is None else ok & (t <= jnp.asarray(end, jnp.int32))

    return predicate


_BISECT_MAX = 2**20  # scored entries up to which "auto" bisects inside the train step


def _step_method(method: str, scores: Any) -> str:
    """The top-k method for mask updates inside the step (see ``optax_sparsity``'s doc)."""
    if method != "auto":
        return method
    n = sum(math.prod(jnp.shape(x)) for x in jax.tree.leaves(scores))
    return "bisect" if n <= _BISECT_MAX else "auto"


def _update_predicate(
    update_when: Callable[[jax.Array], jax.Array] | None,
    update_every: Any,
    begin_step: Any,
    end_step: Any,
) -> Callable[[jax.Array], jax.Array]:
    """Normalizes the schedule arguments of :func:`optax_sparsity` to one predicate."""
    if update_when is not None:
        steps = {"update_every": update_every, "begin_step": begin_step, "end_step": end_step}
        given = [name for name, v in steps.items() if v is not None]
        if given:
            raise ValueError(
                f"`update_when` replaces {given}, which would be ignored: pass either "
                "`update_when` or the step arguments, not both."
            )
        return update_when
    update_every = 100 if update_every is None else update_every
    begin_step = 0 if begin_step is None else begin_step
    step_args = {"update_every": update_every, "begin_step": begin_step, "end_step": end_step}
    for name, v in step_args.items():
        _check_step_arg(v, name)
    if all(v is None or isinstance(v, int) for v in step_args.values()):
        return sched_lib.every(update_every, begin_step=begin_step, end_step=end_step)
    return _array_every(update_every, begin_step, end_step)  # e.g. injected hyperparameters


@dataclasses.dataclass(frozen=True)
class _Selection:
    """How :func:`optax_sparsity` recomputes masks: scores, granularity and selector."""

    score_fn: Callable[..., base.Scores]
    granularity: Any
    reduction: gran_lib.Reduction
    select_fn: Callable[..., base.Mask] | None
    min_keep: Any
    method: str

    def topk(self, scores: base.Scores, target: Any, is_global: bool = False) -> base.Mask:
        """Masks keeping the top scores for a per-leaf target tree (or a global scalar)."""
        if self.select_fn is not None:
            return self.select_fn(scores, target)
        how = _step_method(self.method, scores)
        top = select_lib.global_topk if is_global else select_lib.layerwise_topk
        return top(scores, target, min_keep=self.min_keep, method=how)

    def scores(self, params: base.Params, grads: Any) -> base.Scores:
        """Element scores of ``params`` reduced to the granularity's units."""
        element_scores = self.score_fn(params, grads)
        grans = gran_lib.resolve_granularity_tree(self.granularity, params)
        return base.map_with_path(
            lambda path, s, g: gran_lib.reduce_scores(s, g, self.reduction, path),
            element_scores,
            grans,
        )


@dataclasses.dataclass(frozen=True)
class _Overall:
    """One target sparsity (value or schedule) split over the leaves by a distribution."""

    sparsity: Any
    distribution: Callable[..., Any] | dist_lib.GlobalSelection

    def dense(self, pp: base.Params) -> base.Params:
        return pp

    def given(self) -> list:
        return [self.sparsity]

    def select(self, sel: _Selection, scores: Any, pp: base.Params, count: jax.Array) -> Any:
        target = _value_at(self.sparsity, count)
        if isinstance(self.distribution, dist_lib.GlobalSelection):
            return sel.topk(scores, target, is_global=True)
        return sel.topk(scores, self.distribution(pp, target))


@dataclasses.dataclass(frozen=True)
class _PerLeaf:
    """A target sparsity (value or schedule) per leaf: a prefix tree or a per-path dict."""

    values: Any
    per_path: bool

    def tree(self, pp: base.Params) -> Any:
        if self.per_path:
            return dist_lib.per_path(pp, self.values)
        return base.broadcast_prefix(self.values, pp, "sparsity")

    def dense(self, pp: base.Params) -> base.Params:
        """``pp`` without the leaves whose target is statically ``None`` (they stay dense)."""
        return base.map_prunable(lambda p, s: p, pp, self.tree(pp))

    def given(self) -> list:
        if self.per_path:
            return list(self.values.values())
        return [v for _, v in base.leaves_with_paths(self.values)]

    def select(self, sel: _Selection, scores: Any, pp: base.Params, count: jax.Array) -> Any:
        tree = self.tree(pp)
        if not self.per_path:
            for path, s in base.leaves_with_paths(tree):
                if not callable(s):
                    base.check_fraction(s, f"sparsity[{path!r}]")
        return sel.topk(scores, base.map_prunable(lambda _, s: _value_at(s, count), pp, tree))


@dataclasses.dataclass(frozen=True)
class _NOfM:
    """N:M masks, whose sparsity ``1 - n/m`` the granularity fixes."""

    granularity: gran_lib.Granularity

    def dense(self, pp: base.Params) -> base.Params:
        return pp

    def given(self) -> list:
        return []

    def select(self, sel: _Selection, scores: Any, pp: base.Params, count: jax.Array) -> Any:
        g = self.granularity
        return select_lib.top_n_of_m(scores, g.n, g.m, axis=g.axis)


_Targets = _Overall | _PerLeaf | _NOfM


def _targets(sparsity: Any, granularity: Any, distribution: Any) -> _Targets:
    """Normalizes ``sparsity``/``distribution`` (and N:M granularities) once."""
    g = gran_lib.single(granularity)
    nm = g is not None and g.is_n_of_m
    per_path = isinstance(distribution, Mapping)
    tree = isinstance(sparsity, (Mapping, list, tuple))
    if nm and sparsity is not None:
        raise ValueError("N:M granularity fixes the sparsity at 1 - n/m; do not pass `sparsity`.")
    if not nm and per_path and sparsity is not None:
        raise ValueError(
            "`distribution` is a per-path dict of sparsities; do not pass `sparsity` too."
        )
    if not nm and not per_path and sparsity is None:
        raise ValueError("`sparsity` is required (a float, a schedule, or a prefix tree).")
    if not callable(sparsity) and not tree:
        base.check_fraction(sparsity, "sparsity")
    dist = None if per_path else dist_lib.resolve(distribution)
    if nm:
        return _NOfM(g)
    if per_path:
        return _PerLeaf(distribution, per_path=True)
    if tree:
        return _PerLeaf(sparsity, per_path=False)
    return _Overall(sparsity, dist)


def _out_of_range(targets: _Targets, count: jax.Array) -> jax.Array:
    """Whether a target the user gave (value or schedule) is NaN or outside [0, 1]."""
    bad = jnp.bool_(False)
    for v in targets.given():
        if v is not None:
            x = jnp.asarray(_value_at(v, count), jnp.float32)
            bad = bad | ~((x >= 0) & (x <= 1))  # NaN fails both
    return bad


def _dense_where_none(tree: Any, masks: base.Mask) -> Any:
    """``tree`` with ``None`` wherever ``masks`` is ``None``."""
    return jax.tree.map(lambda x, m: None if m is None else x, tree, masks, is_leaf=base.is_none)


def _enforce(updates: Any, params: base.Params, masks: base.Mask) -> Any:
    """The update of every pruned entry becomes ``-param`` (kept entries pass through)."""
    return jax.tree.map(
        lambda u, p, m: u if (m is None or u is None) else jnp.where(m, u, -p.astype(u.dtype)),
        updates,
        params,
        masks,
        is_leaf=base.is_none,
    )


def _masking(
    targets: _Targets,
    sel: _Selection,
    prunable: Any,
    check_outputs: bool,
    update_when: Callable[[jax.Array], jax.Array],
    straight_through: bool,
) -> optax.GradientTransformationExtraArgs:
    """The masking transform of :func:`optax_sparsity`, without the penalty keywords."""

    def init_fn(params):
        base.check_not_variables(params)
        flags = _prunable_flags(prunable, params)
        if check_outputs:
            _check_output_layer_rule(sel.granularity, flags, params)
        pp = targets.dense(_only_prunable(params, flags))
        grans = gran_lib.resolve_granularity_tree(sel.granularity, pp)
        zero = jnp.zeros([], jnp.int32)
        masks = base.map_with_path(_ones_mask, pp, grans)
        return SparsityState(count=zero, masks=masks, leaked=zero, bad_sparsity=zero)

    def update_fn(updates, state, params=None, *, raw_grads=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(base.NO_PARAMS_MSG)
        base.check_not_variables(params)
        base.check_structure(params, updates, "updates")
        old, count, leaked = state.masks, state.count, state.leaked
        base.check_structure(params, old, "state.masks")
        if not straight_through and leaked is not None:
            leaked = jnp.maximum(leaked, count_leaked(params, old))

        def recompute(operands):
            p, g, old_masks = operands
            p = _dense_where_none(p, old_masks)
            g = None if g is None else _dense_where_none(g, old_masks)
            new = targets.select(sel, sel.scores(p, g), p, count)
            base.check_structure(old_masks, new, "selected masks")
            reshape = lambda n, o: None if o is None else _like(n.reshape(o.shape), o)
            return jax.tree.map(reshape, new, old_masks, is_leaf=base.is_none)

        updating = jnp.asarray(update_when(count), jnp.bool_)
        masks = jax.lax.cond(updating, recompute, lambda ops: ops[2], (params, raw_grads, old))
        bad = state.bad_sparsity
        if bad is not None:
            bad = bad + (updating & _out_of_range(targets, count)).astype(jnp.int32)
        if not straight_through:
            updates = _enforce(updates, params, masks)
        count = optax.safe_increment(count)
        return updates, SparsityState(count, masks, leaked=leaked, bad_sparsity=bad)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _after_penalties(
    penalties: list[optax.GradientTransformation],
    masking: optax.GradientTransformationExtraArgs,
) -> optax.GradientTransformationExtraArgs:
    """``optax.chain(*penalties, masking)``, refusing Linen ``variables`` first."""
    if not penalties:
        return masking
    chain = optax.chain(*penalties, masking)

    def init_fn(params):
        base.check_not_variables(params)
        return chain.init(params)

    return optax.GradientTransformationExtraArgs(init_fn, chain.update)


def optax_sparsity(
    sparsity: Any = None,
    *,
    score_fn: Callable[..., base.Scores] = scores_lib.magnitude,
    granularity: Any = "unstructured",
    reduction: gran_lib.Reduction = "sum",
    distribution: Any = "uniform",
    prunable: Any = None,
    update_every: int | None = None,
    begin_step: int | None = None,
    end_step: int | None = None,
    update_when: Callable[[jax.Array], jax.Array] | None = None,
    min_keep: int = 1,
    straight_through: bool = False,
    select_fn: Callable[..., base.Mask] | None = None,
    method: str = "auto",
    l1: optax.ScalarOrSchedule | None = None,
    group_lasso: optax.ScalarOrSchedule | None = None,
    slimming: optax.ScalarOrSchedule | None = None,
    gates: optax.ScalarOrSchedule | None = None,
    learning_rate: optax.ScalarOrSchedule | None = None,
    group_lasso_groups: Any = None,
    slimming_prunable: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Prunes weights during training, holding the masks in the optimizer state.

    On the schedule's update steps (``update_when(count)``) the masks are recomputed inside
    the jitted step: ``score_fn`` scores the prunable leaves, scores are reduced to
    ``granularity``, ``distribution`` splits ``sparsity`` over the layers, and exactly
    ``floor(s_l * n_l)`` units per layer (or of the model for ``"global"``, see
    :func:`jaxprune.select.topk_mask`) are dropped, keeping ``min_keep`` per layer. Unless
    ``straight_through``, pruned entries get the update ``-param``, so ``apply_updates``
    leaves them exactly ``0.0`` whatever the optimizer before did; kept entries pass bit for
    bit. **Place it last in the chain**: the state's ``leaked`` counts pruned weights found
    non-zero and :func:`jaxprune.masks` raises on it. With ``straight_through`` (Dynamic
    Network Surgery's training) apply the masks in the forward pass,
    ``jaxprune.apply_masks(params, jaxprune.masks(state), straight_through=True)``.
    ``FILTER``/``LAYER`` prune whole output units (a classifier's classes on the output
    layer), so with them ``init`` raises until ``prunable`` is given explicitly.

    The **penalty keywords** ``l1=``, ``group_lasso=``, ``slimming=`` and ``gates=`` are
    decoupled proximal steps of size ``learning_rate * strength``: the transform is then
    ``optax.chain(prox_l1(l1, learning_rate, prunable=prunable), prox_group_lasso(
    group_lasso, learning_rate, group_lasso_groups or granularity, prunable=prunable),
    prox_l1(slimming, learning_rate, prunable=slimming_prunable), prox_gates(gates,
    learning_rate), <masking>)`` with the given ones, whose state is the chain's tuple
    (:class:`SparsityState` last). Coupled forms go before the optimizer (``add_l1``, ...).
    With ``optax.inject_hyperparams`` list the non-numeric arguments in ``static_args``.

    Args:
      sparsity: Fraction of pruned units: a float, a schedule, or a prefix tree of those
        (``None`` = dense; bypasses ``distribution``); omitted for N:M. A traced or scheduled
        value outside ``[0, 1]`` acts like the nearest end (NaN prunes nothing) and is
        counted in ``bad_sparsity``, on which :func:`jaxprune.masks` raises.
      score_fn: ``(params, grads) -> element scores`` (``grads`` is ``raw_grads=``).
      granularity: A :class:`~jaxprune.Granularity`, its name, or a prefix tree of them;
        ``jaxprune.n_of_m(2, 4)`` selects N:M masks.
      reduction: ``"sum"``, ``"mean"``, ``"max"``, ``"l1"`` or ``"l2"`` within a unit.
      distribution: ``"uniform"``, ``"erk"``, ``"er"``, ``"global"``, a callable
        ``(params, sparsity) -> per-leaf tree`` (see ``jaxprune.distributions``) or a dict
        ``path -> sparsity or schedule`` (then ``sparsity`` is omitted).
      prunable: Leaf selector (bool tree, prefix or callable); ``None``:
        :func:`default_prunable`, refused for ``FILTER``/``LAYER`` (see above).
      update_every: Steps between mask updates, an int ``>= 1`` (default 100).
      begin_step: First step of mask updates, an int ``>= 0`` (default 0).
      end_step: Last step of mask updates, or ``None`` for no end.
      update_when: A predicate ``count -> bool`` replacing the three step arguments (passing
        both raises), e.g. ``jaxprune.schedules.at_steps((0, 1000, 2000))``.
      min_keep: Units every layer keeps (``0`` allows emptying a layer).
      straight_through: Leave the updates of pruned entries unchanged (see above).
      select_fn: Optional ``(scores, per_leaf_sparsity) -> masks`` replacing the top-k.
      method: ``"auto"`` (bisection up to ``2**20`` scored entries, radix above; see
        ``benchmarks/step_overhead.py``), ``"radix"`` or ``"bisect"``.
      l1: Strength (or schedule) of :func:`jaxprune.prox_l1` on the ``prunable`` leaves.
      group_lasso: Strength (or schedule) of :func:`jaxprune.prox_group_lasso` over
        ``group_lasso_groups`` or the ``granularity`` units of the ``prunable`` leaves.
      slimming: Strength (or schedule) of :func:`jaxprune.prox_l1` on ``slimming_prunable``.
      gates: Strength (or schedule) of :func:`jaxprune.prox_gates` on jaxprune's gates.
      learning_rate: The optimizer's learning rate (or schedule); required with a penalty.
      group_lasso_groups: Explicit :class:`jaxprune.Group` list for ``group_lasso``.
      slimming_prunable: Leaf selector of ``slimming``; default :func:`jaxprune.scale_labels`
        (or :func:`jaxprune.linen.slimming_labels` / :func:`jaxprune.nnx.slimming_labels`).

    Returns:
      A :class:`optax.GradientTransformationExtraArgs` with a :class:`SparsityState` (see
      above for penalties); ``update(updates, state, params, raw_grads=None)``.

    Raises:
      ValueError: For inconsistent or out-of-range arguments, or Linen ``variables``.
      TypeError: For a non-float prunable leaf or a non-integer step argument.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import jaxprune
      >>> params = {"w": jnp.array([[0.1, -2.0], [0.5, 3.0]]), "b": jnp.ones(2)}
      >>> tx = optax.chain(optax.sgd(0.1), jaxprune.optax_sparsity(0.5, update_every=1))
      >>> grads = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
      >>> updates, state = tx.update(grads, tx.init(params), params)
      >>> optax.apply_updates(params, updates)["w"]
      Array([[ 0. , -2.1],
             [ 0. ,  2.9]], dtype=float32)

    References:
      Han et al., NeurIPS 2015; Zhu & Gupta, 2017, https://arxiv.org/abs/1710.01878.
    """
    targets = _targets(sparsity, granularity, distribution)
    when = _update_predicate(update_when, update_every, begin_step, end_step)
    if base.is_concrete(min_keep):
        min_keep = base.check_int(min_keep, "min_keep")
    sel = _Selection(score_fn, granularity, reduction, select_fn, min_keep, method)
    chosen = default_prunable if prunable is None else prunable
    strengths = {"l1": l1, "group_lasso": group_lasso, "slimming": slimming, "gates": gates}
    penalties = reg_lib.proximal_penalties(
        learning_rate, chosen, granularity, group_lasso_groups, slimming_prunable, **strengths
    )
    masking = _masking(targets, sel, chosen, prunable is None, when, straight_through)
    return _after_penalties(penalties, masking)


def count_leaked(params: base.Params, masks: base.Mask) -> jax.Array:
    """The number of pruned entries of ``params`` that are not exactly zero (NaN included).

    Jittable; the check behind :class:`SparsityState`'s ``leaked`` field.

    Args:
      params: A tree of arrays.
      masks: A mask tree for ``params`` (``None`` leaves are not counted).

    Returns:
      An int32 scalar.
    """
    counts = jax.tree.leaves(
        base.map_prunable(
            lambda p, m: jnp.sum(~m & (p != jnp.zeros((), p.dtype)), dtype=jnp.int32),
            params,
            masks,
        )
    )
    return functools.reduce(jnp.add, counts, jnp.zeros([], jnp.int32))


def _prng_key(key: Any) -> jax.Array:
    """A ``jax.random`` key from a key or an int seed (the ``key=`` argument)."""
    if isinstance(key, numbers.Integral) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if isinstance(key, jax.Array):
        return key
    raise TypeError(f"`key` must be a jax.random key or an int seed, got {key!r}.")


def _check_c_rate(c_rate: Any) -> None:
    """Raises unless every concrete leaf of ``c_rate`` is a finite real number ``>= 0``."""
    for path, c in base.leaves_with_paths(c_rate):
        name = f"c_rate[{path!r}]" if path else "c_rate"
        if c is None or not base.is_concrete(c):
            continue
        if isinstance(c, bool) or not isinstance(c, (numbers.Real, np.ndarray, jax.Array)):
            raise TypeError(f"`{name}` must be a real number, got {c!r}.")
        value = float(np.asarray(c))
        if not math.isfinite(value) or value < 0:
            raise ValueError(
                f"`{name}` must be a finite number >= 0 (the thresholds are "
                f"low/high_factor * (mean + c_rate * std) of |w|), got {value}."
            )


def _dns_thresholds(
    params: base.Params, masks: base.Mask, c_rate: Any, low_factor: float, high_factor: float
) -> tuple[Any, Any]:
    """DNS's ``a`` and ``b`` per leaf: ``factor * max(mu + c_rate * sigma, 0)`` of ``|w|``."""
    rates = base.broadcast_prefix(c_rate, masks, "c_rate")

    def one(w, m, c, factor):
        a = jnp.abs(w.astype(jnp.float32))
        mf = jnp.broadcast_to(m, a.shape).astype(jnp.float32)
        n = jnp.maximum(jnp.sum(mf), 1.0)
        mu = jnp.sum(a * mf) / n
        sigma = jnp.sqrt(jnp.maximum(jnp.sum(a * a * mf) / n - mu * mu, 0.0))
        return factor * jnp.maximum(mu + jnp.asarray(c, jnp.float32) * sigma, 0.0)

    low = base.map_prunable(functools.partial(one, factor=low_factor), params, masks, rates)
    high = base.map_prunable(functools.partial(one, factor=high_factor), params, masks, rates)
    return low, high


def dynamic_network_surgery(
    c_rate: Any = 0.0,
    *,
    key: jax.Array | int = 0,
    gamma: float = 1e-4,
    power: float = 1.0,
    stop_step: int | None = None,
    low_factor: float = 0.9,
    high_factor: float = 1.1,
    prunable: Any = default_prunable,
) -> optax.GradientTransformationExtraArgs:
    """Dynamic Network Surgery: prune and splice weights with a hysteresis on ``|w|``.

    On the first update, per prunable leaf, ``mu`` and ``sigma`` (mean and standard deviation
    of ``|w|``) give the thresholds ``a = low_factor * max(mu + c_rate * sigma, 0)`` and
    ``b = high_factor * max(mu + c_rate * sigma, 0)``, kept fixed afterwards (as the authors'
    code does). At step ``t`` the masks are recomputed with probability
    ``(1 + gamma * t) ** -power`` (and never from ``stop_step`` on): entries with
    ``|w| < a`` are pruned, entries with ``|w| > b`` are spliced back, the rest keep their
    mask. The updates are not masked (straight-through): train with the masked weights in
    the forward pass, ``jaxprune.apply_masks(params, jaxprune.masks(opt_state),
    straight_through=True)``, so that every weight, pruned or not, receives the gradient of
    the masked product. Place it last in the chain (it leaves updates unchanged, so the
    position only matters for the ``params`` it reads).

    Unlike the Caffe code, the statistics are taken per leaf (kernel and bias separately)
    rather than over a layer's weights and biases together.

    Args:
      c_rate: Per-layer multiplier of ``sigma``: a finite float ``>= 0`` or a prefix tree of
        them (negative, NaN or infinite values raise).
      key: A ``jax.random`` key or an int seed for the update decisions.
      gamma: Decay rate of the update probability.
      power: Exponent of the update probability.
      stop_step: Step from which the masks are frozen (``None``: never).
      low_factor: ``a = low_factor * max(mu + c_rate * sigma, 0)``.
      high_factor: ``b = high_factor * max(mu + c_rate * sigma, 0)``.
      prunable: As in :func:`optax_sparsity`.

    Returns:
      A :class:`optax.GradientTransformationExtraArgs` with a :class:`DynamicSurgeryState`.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import jaxprune
      >>> params = {"w": jnp.array([[0.01, -2.0], [0.5, 3.0]])}
      >>> tx = jaxprune.dynamic_network_surgery(c_rate=0.0, gamma=0.0)
      >>> _, state = tx.update(params, tx.init(params), params)
      >>> jaxprune.masks(state)["w"]
      Array([[False,  True],
             [False,  True]], dtype=bool)

    References:
      Guo, Yao, Chen, "Dynamic Network Surgery for Efficient DNNs", NeurIPS 2016.
      https://arxiv.org/abs/1608.04493
    """
    key = _prng_key(key)
    _check_c_rate(c_rate)
    if not (0.0 <= low_factor <= high_factor):
        raise ValueError(
            f"need 0 <= low_factor <= high_factor, got {low_factor} and {high_factor}."
        )
    probability = sched_lib.dns_probability(gamma, power, stop_step)

    def init_fn(params):
        base.check_not_variables(params)
        flags = _prunable_flags(prunable, params)
        pp = _only_prunable(params, flags)
        return DynamicSurgeryState(
            count=jnp.zeros([], jnp.int32),
            masks=base.map_prunable(lambda p: jnp.ones(p.shape, jnp.bool_), pp),
            low=base.map_prunable(lambda p: jnp.zeros([], jnp.float32), pp),
            high=base.map_prunable(lambda p: jnp.zeros([], jnp.float32), pp),
            key=key,
        )

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(base.NO_PARAMS_MSG)
        count = state.count
        pp = _dense_where_none(params, state.masks)
        low, high = jax.lax.cond(
            count == 0,
            lambda ops: _dns_thresholds(ops[0], ops[1], c_rate, low_factor, high_factor),
            lambda ops: (ops[2], ops[3]),
            (pp, state.masks, state.low, state.high),
        )
        key, sub = jax.random.split(state.key)
        go = jax.random.uniform(sub, (), jnp.float32) < probability(count)

        recompute = lambda ops: select_lib.hysteresis(scores_lib.magnitude(ops[0]), *ops[1:])
        masks = jax.lax.cond(go, recompute, lambda ops: ops[1], (pp, state.masks, low, high))
        new_state = DynamicSurgeryState(optax.safe_increment(count), masks, low, high, key)
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _find_states(tree: Any, found: list) -> None:
    if isinstance(
        tree, (SparsityState, DynamicSurgeryState, sparse_training_lib.SparseTrainingState)
    ):
        found.append(tree)
        return
    if hasattr(tree, "get_value") and callable(tree.get_value):  # flax nnx Variable
        _find_states(tree.get_value(), found)
        return
    if isinstance(tree, Mapping):
        for v in tree.values():
            _find_states(v, found)
    elif isinstance(tree, (tuple, list)):
        for v in tree:
            _find_states(v, found)
    elif hasattr(tree, "__dict__") and not isinstance(tree, jax.Array):
        for v in vars(tree).values():
            _find_states(v, found)


def _unwrap(x: Any) -> Any:
    if hasattr(x, "get_value") and callable(x.get_value):
        return x.get_value()
    return x


def _positive(x: Any) -> bool:
    """Whether ``x`` is a concrete (not traced, not abstract) number ``> 0``."""
    has_value = isinstance(x, (jax.Array, np.ndarray, np.integer, int))
    return has_value and base.is_concrete(x) and int(x) > 0


def masks(opt_state: Any, *, check: bool = True) -> base.Mask:
    """Returns the current masks from any optimizer state that holds one sparsity transform.

    Finds the :class:`SparsityState` (or :class:`DynamicSurgeryState`) inside chains,
    ``optax.inject_hyperparams``, ``optax.MultiSteps`` and ``nnx.Optimizer.opt_state``.

    **Chain-order check.** :func:`optax_sparsity` and :func:`jaxprune.keep_masks` promise that
    pruned weights are exactly zero after every ``optax.apply_updates``. At the start of each
    update they count the pruned entries of ``params`` that are not zero (the state's
    ``leaked`` field keeps the largest count seen). A non-zero count means the promise was
    broken: a transformation placed *after* them in the chain (an optimizer, a learning-rate
    scale) rewrote the updates of pruned weights, the params were changed outside the
    optimizer, or a weight at a pruned entry is non-finite (``inf + -inf`` is NaN). On a
    concrete state (outside ``jit``) this function then raises instead of returning masks
    that disagree with the weights; inside ``jit`` nothing is checked (read
    ``state.leaked`` there if needed).

    Args:
      opt_state: An optax state (or an ``nnx.Optimizer``'s ``opt_state``).
      check: Raise if the state recorded non-zero pruned weights (see above), or a mask
        update whose target sparsity (a traced value or a schedule's) was NaN or outside
        ``[0, 1]``; ``False`` returns the masks anyway.

    Returns:
      The mask tree (bool leaves broadcastable to the params, ``None`` for unpruned leaves).

    Raises:
      ValueError: If the state holds no sparsity state, or more than one, or (with
        ``check``) it recorded pruned weights that were not zero or an invalid target.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import jaxprune
      >>> tx = optax.chain(optax.adam(1e-3), jaxprune.optax_sparsity(0.5))
      >>> state = tx.init({"w": jnp.ones((2, 2))})
      >>> jaxprune.masks(state)["w"].shape
      (2, 2)
    """
    found: list = []
    _find_states(opt_state, found)
    if not found:
        raise ValueError(
            "no jaxprune sparsity state found in `opt_state`; was the optimizer built with "
            "jaxprune.optax_sparsity(...) or jaxprune.dynamic_network_surgery(...)?"
        )
    if len(found) > 1:
        raise ValueError(
            f"`opt_state` holds {len(found)} jaxprune sparsity states; pass the one you mean."
        )
    leaked = getattr(found[0], "leaked", None)
    leaked = _unwrap(leaked)
    bad = _unwrap(getattr(found[0], "bad_sparsity", None))
    if check and _positive(bad):
        raise ValueError(
            f"the target sparsity was NaN or outside [0, 1] at {int(bad)} mask update(s), so "
            "the masks are not what was asked for: NaN kept every weight, other values acted "
            "like the nearest end. Check the schedule or traced value passed as `sparsity` "
            "(a fraction, not a percentage: optax.linear_schedule(0.0, 0.9, n), not (0, 90, "
            "n)). Pass `check=False` to read the masks anyway."
        )
    if check and _positive(leaked):
        raise ValueError(
            f"{int(leaked)} pruned weights were not exactly zero at the start of an update, so "
            "the masks in `opt_state` disagree with the weights. jaxprune.optax_sparsity (and "
            "keep_masks) must be the LAST transformation of the chain: anything after it "
            "(optax.adam, optax.scale_by_learning_rate, ...) rewrites the updates of pruned "
            "weights, e.g. optax.chain(optax.adam(1e-3), jaxprune.optax_sparsity(...)). Other "
            "causes: params changed outside the optimizer, or a non-finite weight at a pruned "
            "entry. Pass `check=False` to read the masks anyway."
        )
    return jax.tree.map(
        _unwrap, found[0].masks, is_leaf=lambda x: x is None or hasattr(x, "get_value")
    )


def _find_schedule_free(tree: Any, found: list) -> None:
    if isinstance(tree, optax.contrib.ScheduleFreeState):
        found.append(tree)
        return
    if hasattr(tree, "get_value") and callable(tree.get_value):  # flax nnx Variable
        _find_schedule_free(tree.get_value(), found)
    elif isinstance(tree, Mapping):
        for v in tree.values():
            _find_schedule_free(v, found)
    elif isinstance(tree, (tuple, list)):
        for v in tree:
            _find_schedule_free(v, found)
    elif hasattr(tree, "__dict__") and not isinstance(tree, jax.Array):
        for v in vars(tree).values():
            _find_schedule_free(v, found)


def schedule_free_eval_params(opt_state: Any, params: base.Params) -> base.Params:
    """The evaluation parameters of a schedule-free optimizer, pruned by its masks.

    ``optax.contrib.schedule_free`` (and ``schedule_free_adamw``, ``schedule_free_sgd``)
    trains at points ``y`` and evaluates at ``x = (y - (1 - b1) z) / b1``. Chained with
    :func:`optax_sparsity` last (``optax.chain(optax.contrib.schedule_free_adamw(lr),
    jaxprune.optax_sparsity(...))``) the trained ``params`` (``y``) are exactly zero at pruned
    entries but the sequence ``z`` is not, so ``optax.contrib.schedule_free_eval_params``
    returns non-zero values there: a dense model. The rule: evaluate with this function,
    which computes optax's ``x`` and zeroes the pruned entries with the masks of the same
    state (:func:`masks`, with its checks). Kept entries are exactly optax's values.
    Placing :func:`optax_sparsity` inside the schedule-free wrapper (as its base optimizer's
    last step) prunes ``z`` but not ``y``, which the chain-order check of :func:`masks`
    reports.

    Args:
      opt_state: The state of a chain holding one ``optax.contrib.schedule_free`` state and
        one jaxprune sparsity state (an ``nnx.Optimizer``'s ``opt_state`` works).
      params: The trained parameters (the ``y`` sequence the optimizer updates).

    Returns:
      The evaluation parameters, with the structure of ``params`` and exact zeros at pruned
      entries.

    Raises:
      ValueError: If ``opt_state`` holds no schedule-free state, or more than one; or as
        :func:`masks` (no sparsity state, or a chain-order problem it detected).

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import jaxprune
      >>> tx = optax.chain(optax.contrib.schedule_free_sgd(0.1),
      ...                  jaxprune.optax_sparsity(0.5, update_every=1, prunable=True))
      >>> p = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]])}
      >>> s = tx.init(p)
      >>> u, s = tx.update(p, s, p)
      >>> p = optax.apply_updates(p, u)
      >>> int((jaxprune.schedule_free_eval_params(s, p)["w"] == 0).sum())
      2
    """
    found: list = []
    _find_schedule_free(opt_state, found)
    if len(found) != 1:
        raise ValueError(
            f"`opt_state` holds {len(found)} optax.contrib.schedule_free states; "
            "jaxprune.schedule_free_eval_params needs exactly one (the optimizer built with "
            "optax.contrib.schedule_free* chained before jaxprune.optax_sparsity)."
        )
    mask = masks(opt_state)
    state = jax.tree.map(_unwrap, found[0], is_leaf=lambda x: hasattr(x, "get_value"))
    values = base.unwrap_variables(params)
    evaluated = optax.contrib.schedule_free_eval_params(state, values)
    return base.rewrap_variables(params, masking_lib.apply_masks(evaluated, mask))
