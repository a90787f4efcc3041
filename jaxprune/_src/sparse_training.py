"""Sparse-from-scratch training: static sparse, SET, RigL and straight-through top-k.

:func:`sparse_training` wraps an inner optax optimizer and owns its state, so that on a mask
update it can reset the optimizer moments of the entries whose connectivity changed. The
number of active weights per layer is fixed at ``init`` and never changes: every update
drops exactly as many entries as it grows (both chosen by the exact top-k selection of
:mod:`jaxprune.select`). :func:`ste_topk` and :func:`ste_n_of_m` are the dense-weight,
sparse-forward alternative (straight-through estimator).

References:
  Mocanu et al., "Scalable training of artificial neural networks with adaptive sparse
  connectivity inspired by network science", Nature Communications 2018 (SET).
  Evci et al., "Rigging the lottery: making all tickets winners", ICML 2020 (RigL, ERK).
  Zhou et al., "Learning N:M fine-grained structured sparse neural networks from scratch",
  ICLR 2021 (SR-STE).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune._src import base
from jaxprune._src import distributions as dist_lib
from jaxprune._src import select as select_lib

_METHODS = ("static", "set", "rigl")


class SparseTrainingState(NamedTuple):
    """State of :func:`sparse_training`."""

    count: jax.Array  # int32 scalar: number of updates so far.
    masks: base.Mask  # bool leaves shaped like params; None = dense leaf.
    key: jax.Array  # PRNG key (random init mask, SET regrowth).
    inner_state: Any  # the wrapped optimizer's state.


def drop_fraction_schedule(
    drop_fraction: float, end_step: int, *, decay: str = "cosine"
) -> Callable[[Any], jax.Array]:
    """The fraction of active weights replaced at step ``t`` (RigL's cosine decay).

    ``cosine``: ``f(t) = drop_fraction / 2 * (1 + cos(pi * min(t, end_step) / end_step))``;
    ``constant``: ``f(t) = drop_fraction``.

    Args:
      drop_fraction: Initial fraction, in ``[0, 1)``.
      end_step: Step at which the cosine reaches zero (``>= 1``).
      decay: ``"cosine"`` or ``"constant"``.

    Returns:
      A function of a (possibly traced) step returning a float32 scalar.

    Raises:
      ValueError: If ``drop_fraction`` is outside ``[0, 1)``, ``end_step < 1`` or ``decay``
        is unknown.

    Example:
      >>> from jaxprune import drop_fraction_schedule
      >>> round(float(drop_fraction_schedule(0.3, 100)(50)), 6)
      0.15
    """
    _check_drop_fraction(drop_fraction)
    end_step = base.check_int(end_step, "end_step", 1)
    if decay not in ("cosine", "constant"):
        raise ValueError(f"decay must be 'cosine' or 'constant', got {decay!r}")

    def schedule(step):
        if decay == "constant":
            return jnp.float32(drop_fraction)
        t = jnp.minimum(jnp.asarray(step, jnp.float32), end_step)
        return jnp.float32(drop_fraction) * 0.5 * (1.0 + jnp.cos(jnp.pi * t / end_step))

    return schedule


def _check_drop_fraction(f: Any) -> None:
    if isinstance(f, bool) or not isinstance(f, (int, float)):
        raise TypeError(f"drop_fraction must be a Python number, got {type(f).__name__}")
    if not 0.0 <= f < 1.0:
        raise ValueError(f"drop_fraction must lie in [0, 1), got {f}")


def _like(new: jax.Array, old: jax.Array) -> jax.Array:
    """Gives ``new`` the explicit sharding of ``old`` (one type for both ``cond`` branches)."""
    try:
        want, got = jax.typeof(old).sharding, jax.typeof(new).sharding
    except (AttributeError, TypeError):  # pragma: no cover - older JAX
        return new
    if want.mesh.empty or want == got:
        return new
    return jax.sharding.reshard(new, want.spec)


def _top_count(scores: jax.Array, k: Any) -> jax.Array:
    """Exactly ``k`` (traced) largest scores, ties by lowest flat index (exact top-k)."""
    return select_lib.keep_top_k(scores, k)


def _keep_counts(params: base.Params, sparsity: Any, distribution: Any, prunable: Any) -> Any:
    """Python-int number of active entries per prunable leaf (``None`` for dense leaves)."""
    if prunable is None:
        prunable = base.map_prunable(lambda p: len(p.shape) >= 2, params)
    only = jax.tree.map(lambda p, f: p if f else None, params, prunable, is_leaf=base.is_none)
    fn = dist_lib.resolve(distribution)
    if isinstance(fn, dist_lib.GlobalSelection):
        raise ValueError("distribution 'global' is not supported; use 'uniform' or 'erk'")
    sparsities = base.broadcast_prefix(fn(only, sparsity), only, "distribution result")

    def one(path, p, s):
        n = int(np.prod(p.shape, dtype=np.int64))
        s = float(s)
        if not 0.0 <= s <= 1.0:
            raise ValueError(
                f"distribution asks leaf {path!r} (size {n}) for sparsity {s}: that is "
                f"{n - math.floor(s * n)} active weights, outside [0, {n}]"
            )
        return n - math.floor(s * n + min(n, 2**16) * 2**-24)

    return base.map_with_path(one, only, sparsities)


def _random_masks(params: base.Params, keeps: Any, key: jax.Array) -> base.Mask:
    """A random mask per leaf with exactly ``keeps[leaf]`` active entries (``None`` stays)."""
    leaves, treedef = jax.tree.flatten(keeps, is_leaf=base.is_none)
    pleaves = treedef.flatten_up_to(params)
    out = []
    for i, (k, p) in enumerate(zip(leaves, pleaves, strict=True)):
        if k is None:
            out.append(None)
            continue
        r = jax.random.uniform(jax.random.fold_in(key, i), p.shape)
        out.append(_like(_top_count(r, k), p))
    return treedef.unflatten(out)


def _regrow(params, grads, masks, key, frac, method):
    """Drops the ``floor(frac * k)`` smallest active weights of each leaf, grows as many."""
    leaves, treedef = jax.tree.flatten(masks, is_leaf=base.is_none)
    pleaves = treedef.flatten_up_to(params)
    gleaves = treedef.flatten_up_to(grads) if grads is not None else [None] * len(leaves)
    out = []
    for i, (m, p, g) in enumerate(zip(leaves, pleaves, gleaves, strict=True)):
        if m is None:
            out.append(None)
            continue
        k = jnp.sum(m, dtype=jnp.int32)
        d = jnp.floor(frac * k.astype(jnp.float32)).astype(jnp.int32)
        w = jnp.abs(p.astype(jnp.float32))
        kept = _top_count(jnp.where(m, w, -jnp.inf), k - d)
        if method == "rigl":
            score = jnp.abs(g.astype(jnp.float32))
        else:
            score = jax.random.uniform(jax.random.fold_in(key, i), p.shape)
        grown = _top_count(jnp.where(kept, -jnp.inf, score), d)
        out.append(_like(kept | grown, m))
    return treedef.unflatten(out)


def _reset(inner_state, params, stay):
    """Multiplies the inner state's params-shaped leaves by ``stay`` (moments restart)."""
    ptd = jax.tree.structure(params)

    def is_param_tree(x):
        return x is not None and not isinstance(x, jax.Array) and (jax.tree.structure(x) == ptd)

    def reset(sub):
        if not is_param_tree(sub):
            return sub
        return jax.tree.map(
            lambda m, s, p: (
                s
                if (m is None or not hasattr(s, "shape") or s.shape != p.shape)
                else s * m.astype(s.dtype)
            ),
            stay,
            sub,
            params,
            is_leaf=base.is_none,
        )

    return jax.tree.map(reset, inner_state, is_leaf=is_param_tree)


def _mask_update(ops, method):
    """New masks (drop and regrow) and the inner state with reset moments for regrown entries."""
    params, raw_grads, old, key, frac, inner_state = ops
    new = _regrow(params, raw_grads, old, key, frac, method)
    stay = base.map_prunable(lambda o, n: o & n, old, new)
    return new, _reset(inner_state, params, stay)


def _mask_grads(updates: Any, stay: base.Mask) -> Any:
    """Zeroes the gradient of every inactive entry."""
    return jax.tree.map(
        lambda u, m: u if (m is None or u is None) else jnp.where(m, u, 0).astype(u.dtype),
        updates,
        stay,
        is_leaf=base.is_none,
    )


def _zero_pruned(updates: Any, params: base.Params, stay: base.Mask) -> Any:
    """Updates that set every inactive entry to exactly zero (``-param``)."""
    return jax.tree.map(
        lambda u, p, m: u if (m is None or u is None) else jnp.where(m, u, -p.astype(u.dtype)),
        updates,
        params,
        stay,
        is_leaf=base.is_none,
    )


def sparse_training(
    inner: optax.GradientTransformation,
    sparsity: Any,
    *,
    method: str = "rigl",
    distribution: str | Callable[..., Any] = "erk",
    update_every: int = 100,
    end_step: int = 10_000,
    drop_fraction: float = 0.3,
    decay: str = "cosine",
    prunable: Any = None,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """Trains a fixed number of weights per layer: static sparse, SET or RigL.

    ``init`` draws a random mask per prunable leaf with exactly ``n - floor(s * n)`` active
    entries (``s`` from ``distribution``). ``update`` masks the gradients, runs ``inner``
    and returns updates that keep masked entries exactly zero (``-param``). On steps
    ``t`` with ``0 < t < end_step`` and ``t % update_every == 0`` (``t`` = updates so far),
    ``"set"`` and ``"rigl"`` drop ``d = floor(f(t) * k)`` of the ``k`` active entries of
    each leaf (smallest ``|w|``) and grow exactly ``d`` inactive ones: at random (SET) or
    with the largest ``|raw_grads|`` (RigL). ``f`` is :func:`drop_fraction_schedule`. The
    mask update runs under ``lax.cond`` on the array step counter: it compiles once.

    Optimizer moments: on an update step every array leaf of the inner state that lies in a
    subtree with the params' tree structure and has its param's shape (adam's ``mu``/``nu``,
    sgd's momentum ``trace``, adamw, ...) is multiplied by ``old_mask & new_mask``, so the
    moments of dropped and grown entries restart at zero, and grown weights start at zero.
    Limit: state stored in another layout (factored second moments such as adafactor's, or
    flattened buffers) is not reset.

    Args:
      inner: The optimizer to wrap (its state lives in ``state.inner_state``).
      sparsity: Overall sparsity in ``[0, 1]``, passed to ``distribution``.
      method: ``"static"`` (fixed random mask), ``"set"`` or ``"rigl"``.
      distribution: ``"uniform"``, ``"erk"``, ``"er"`` or a callable ``(params, sparsity)``
        returning a per-leaf sparsity tree.
      update_every: Steps between mask updates (``>= 1``).
      end_step: No mask update from this step on; the cosine decay ends here.
      drop_fraction: Initial drop fraction in ``[0, 1)``.
      decay: ``"cosine"`` (RigL) or ``"constant"``.
      prunable: Optional bool tree; default: leaves of rank >= 2.
      seed: Seed of the random initial mask and of SET's regrowth.

    Returns:
      A :class:`optax.GradientTransformationExtraArgs` with state
      :class:`SparseTrainingState`; ``update(grads, state, params, raw_grads=None)``.
      For ``"rigl"``, pass ``raw_grads`` (the dense gradient with respect to the params; with
      masked weights stored as zeros it is the ordinary gradient, at no extra cost). It is
      read only on update steps.

    Raises:
      ValueError: For an unknown ``method``, ``drop_fraction`` outside ``[0, 1)``, a
        distribution that asks a leaf for more active weights than it has, missing
        ``params``, or ``"rigl"`` without ``raw_grads``.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import jaxprune
      >>> params = {"w": jnp.ones((4, 4))}
      >>> tx = jaxprune.sparse_training(optax.adam(1e-2), 0.75, method="set",
      ...                               distribution="uniform", update_every=1)
      >>> state = tx.init(params)
      >>> params = jaxprune.apply_masks(params, jaxprune.masks(state))
      >>> updates, state = tx.update({"w": jnp.ones((4, 4))}, state, params)
      >>> int(jaxprune.masks(state)["w"].sum())
      4
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    update_every = base.check_int(update_every, "update_every", 1)
    schedule = drop_fraction_schedule(drop_fraction, end_step, decay=decay)

    def init_fn(params):
        keeps = _keep_counts(params, sparsity, distribution, prunable)
        key = jax.random.PRNGKey(seed)
        init_key, key = jax.random.split(key)
        masks = _random_masks(params, keeps, init_key)
        return SparseTrainingState(
            count=jnp.zeros([], jnp.int32), masks=masks, key=key, inner_state=inner.init(params)
        )

    def update_fn(updates, state, params=None, *, raw_grads=None, **extra_args):
        if params is None:
            raise ValueError(base.NO_PARAMS_MSG)
        if method == "rigl" and raw_grads is None:
            raise ValueError(
                "RigL grows by gradient magnitude: pass the dense gradient as "
                "`update(grads, state, params, raw_grads=grads)` (it is read on mask-update "
                "steps only)."
            )
        base.check_structure(params, updates, "updates")
        count, old, inner_state = state.count, state.masks, state.inner_state
        key, sub = jax.random.split(state.key)
        if method == "static":
            new = old
        else:
            when = (count > 0) & (count % update_every == 0) & (count < end_step)
            # One conditional for the masks and the moment reset: ordinary steps pay for a
            # single branch point and carry the state through unchanged.
            new, inner_state = jax.lax.cond(
                when,
                functools.partial(_mask_update, method=method),
                lambda ops: (ops[2], ops[5]),
                (params, raw_grads, old, sub, schedule(count), inner_state),
            )
        stay = base.map_prunable(lambda o, n: o & n, old, new)
        grads = _mask_grads(updates, stay)
        inner_updates, inner_state = inner.update(grads, inner_state, params, **extra_args)
        out = _zero_pruned(inner_updates, params, stay)
        return out, SparseTrainingState(
            count=optax.safe_increment(count), masks=new, key=key, inner_state=inner_state
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _ste_leaf(w: jax.Array, mask: jax.Array, decay: float) -> jax.Array:
    @jax.custom_vjp
    def f(w):
        return jnp.where(mask, w, jnp.zeros_like(w))

    def fwd(w):
        return f(w), w

    def bwd(w, g):
        if decay:
            g = g + decay * jnp.where(mask, jnp.zeros_like(w), w).astype(g.dtype)
        return (g,)

    f.defvjp(fwd, bwd)
    return f(w)


def _ste(params: base.Params, mask_fn: Callable[[jax.Array], jax.Array], decay: float, prunable):
    if isinstance(decay, bool) or not isinstance(decay, numbers.Real):
        raise TypeError(f"decay (SR-STE's lambda_w) must be a number, got {decay!r}.")
    if not (math.isfinite(decay) and decay >= 0):
        raise ValueError(f"decay must be a finite number >= 0 (0 = plain STE), got {decay!r}.")
    if prunable is None:
        prunable = base.map_prunable(lambda p: len(p.shape) >= 2, params)
    return jax.tree.map(
        lambda p, f: (
            p
            if (p is None or not f)
            else _ste_leaf(p, jax.lax.stop_gradient(mask_fn(jnp.abs(p))), decay)
        ),
        params,
        prunable,
        is_leaf=base.is_none,
    )


def ste_topk(
    params: base.Params, sparsity: Any, *, decay: float = 0.0, prunable: Any = None
) -> base.Params:
    """Straight-through top-k: a sparse forward pass over dense weights.

    Each prunable leaf keeps exactly its top ``n - floor(sparsity * n)`` entries by ``|w|``
    (recomputed at every call, exact top-k); the gradient passes straight through to all
    dense weights. With ``decay > 0`` the pruned entries' gradient gets ``decay * w`` added
    (SR-STE's sparse-refined regularization, Zhou et al. 2021). Call it inside the loss.
    At high sparsity plain STE can oscillate: pruned weights keep their full gradient, the
    mask flips between steps, and training may collapse (measured on LeNet-5 at 98%: one
    seed of three ended as a constant predictor); a small ``decay`` (2e-3 there) damps the
    flips (``benchmarks/README.md``, sparse training).

    Args:
      params: A tree of float arrays.
      sparsity: Fraction to drop per leaf, in ``[0, 1]`` (traced values allowed), or a
        tree with the params' structure of per-leaf fractions (``None`` = dense), e.g.
        ``jaxprune.distributions.erk(params, 0.9)``.
      decay: SR-STE decay ``lambda_w`` (``0`` = plain STE).
      prunable: Optional bool tree; default: leaves of rank >= 2.

    Returns:
      The masked params (same structure).

    Raises:
      TypeError: If ``decay`` is not a number.
      ValueError: If ``decay`` is negative or not finite, or ``sparsity`` is outside
        ``[0, 1]`` or a tree of another structure.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxprune
      >>> w = {"k": jnp.array([[1.0, -3.0], [2.0, 0.5]])}
      >>> jaxprune.ste_topk(w, 0.5)["k"]
      Array([[ 0., -3.],
             [ 2.,  0.]], dtype=float32)
      >>> jax.grad(lambda p: jaxprune.ste_topk(p, 0.5)["k"].sum())(w)["k"]
      Array([[1., 1.],
             [1., 1.]], dtype=float32)
    """
    if _is_tree(sparsity):
        base.check_structure(params, sparsity, "sparsity")
        if prunable is None:
            prunable = base.map_prunable(lambda p: len(p.shape) >= 2, params)
        # A ``None`` sparsity leaves its leaf dense, like a False ``prunable`` entry.
        prunable = jax.tree.map(
            lambda f, s: f and s is not None, prunable, sparsity, is_leaf=base.is_none
        )
        return jax.tree.map(
            lambda p, s, f: _ste(p, lambda a: select_lib.topk_mask(a, s), decay, f),
            params,
            sparsity,
            prunable,
            is_leaf=base.is_none,
        )
    return _ste(params, lambda s: select_lib.topk_mask(s, sparsity), decay, prunable)


def _is_tree(x: Any) -> bool:
    return not jax.tree_util.treedef_is_leaf(jax.tree.structure(x, is_leaf=base.is_none))


def ste_n_of_m(
    params: base.Params,
    n: int,
    m: int,
    *,
    axis: int = -2,
    decay: float = 0.0,
    prunable: Any = None,
) -> base.Params:
    """Straight-through N:M: keep the ``n`` largest ``|w|`` of every ``m`` along ``axis``.

    As :func:`ste_topk` with :func:`jaxprune.select.n_of_m_mask` as the mask; ``decay > 0``
    is SR-STE (Zhou et al., ICLR 2021).

    Args:
      params: A tree of float arrays.
      n: Entries kept per group.
      m: Group size (the size of ``axis`` must be a multiple of ``m``).
      axis: Grouping axis (default ``-2``, the input axis of a Dense kernel).
      decay: SR-STE decay ``lambda_w``.
      prunable: Optional bool tree; default: leaves of rank >= 2.

    Returns:
      The masked params (same structure).

    Raises:
      TypeError: If ``decay`` is not a number.
      ValueError: If ``decay`` is negative or not finite, or ``n``/``m`` are invalid (see
        :func:`jaxprune.select.n_of_m_mask`).

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> w = {"k": jnp.array([[1.0], [-3.0], [2.0], [0.5]])}
      >>> jaxprune.ste_n_of_m(w, 2, 4)["k"].ravel()
      Array([ 0., -3.,  2.,  0.], dtype=float32)
    """
    return _ste(params, lambda s: select_lib.n_of_m_mask(s, n, m, axis), decay, prunable)
