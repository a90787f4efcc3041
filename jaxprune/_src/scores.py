"""Importance scores: pure functions from parameters (and gradients) to score trees.

Every score function has the signature ``fn(params, grads=None) -> scores``; scores have the
structure of ``params`` with ``None`` where a leaf is not scored. Element scores can be reduced
to any :class:`~jaxprune.Granularity` with :func:`reduce`, which is how group (filter,
channel, connection, ...) scores are formed.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxprune._src import base
from jaxprune._src import granularity as gran_lib


def _f32(x: jax.Array) -> jax.Array:
    """Upcasts low-precision floats so that scores and sums keep precision."""
    if jnp.finfo(x.dtype).bits < 32:
        return x.astype(jnp.float32)
    return x


def _check_float(params: base.Params, what: str = "params") -> None:
    dtype = getattr(params, "dtype", None)
    if (
        getattr(params, "shape", None) == ()
        and dtype is not None
        and jnp.issubdtype(dtype, jnp.integer)
    ):  # A step count: optax.inject_hyperparams took a score function for a schedule.
        raise TypeError(
            f"a score function was called with an integer scalar ({dtype}) instead of params: "
            "optax.inject_hyperparams calls every callable argument as a schedule of the step "
            "count. List the non-numeric arguments in `static_args`, e.g. "
            "optax.inject_hyperparams(jaxprune.optax_sparsity, static_args=('score_fn', "
            "'granularity', 'reduction', 'distribution', 'prunable', 'update_when', 'min_keep', "
            "'straight_through', 'select_fn', 'method', 'group_lasso_groups', "
            "'slimming_prunable'))."
        )
    for path, x in base.leaves_with_paths(params):
        if x is not None:
            base.check_float_leaf(path, x, f"{what} leaf")


def magnitude(params: base.Params, grads: base.Updates | None = None) -> base.Scores:
    """Scores each weight by its absolute value ``|w|``.

    Args:
      params: A tree of float arrays; ``None`` leaves stay unscored.
      grads: Unused; accepted so that every score function has one signature.

    Returns:
      A tree with the structure of ``params`` holding ``|w|`` (float32 for bf16/f16 params).

    Raises:
      TypeError: If a leaf is not a floating-point array (the message names its path).

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> jaxprune.scores.magnitude({"w": jnp.array([-2.0, 0.5]), "b": None})
      {'b': None, 'w': Array([2. , 0.5], dtype=float32)}

    References:
      Han et al., "Learning both Weights and Connections for Efficient Neural Networks",
      NeurIPS 2015. https://arxiv.org/abs/1506.02626
    """
    del grads
    _check_float(params)
    return base.map_prunable(lambda w: jnp.abs(_f32(w)), params)


def taylor(params: base.Params, grads: base.Updates | None = None) -> base.Scores:
    """Scores each weight by the first-order Taylor estimate ``|w * dL/dw|``.

    Zeroing weight ``w`` changes the loss by about ``-w * g``; its magnitude ranks weights by
    how much removing them costs, to first order. Accumulate it over batches with
    :func:`taylor_init` / :func:`taylor_update` / :func:`taylor_finalize`.

    Args:
      params: A tree of float arrays.
      grads: Gradients of the loss with the structure of ``params``.

    Returns:
      A tree with the structure of ``params`` holding ``|w * g|``.

    Raises:
      ValueError: If ``grads`` is missing or its structure differs from ``params``.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> jaxprune.scores.taylor({"w": jnp.array([2.0, -1.0])}, {"w": jnp.array([0.5, 3.0])})
      {'w': Array([1., 3.], dtype=float32)}

    References:
      Molchanov et al., "Pruning Convolutional Neural Networks for Resource Efficient
      Inference", ICLR 2017. https://arxiv.org/abs/1611.06440
    """
    if grads is None:
        raise ValueError(
            "`taylor` needs gradients: call it as taylor(params, grads); inside "
            "`optax_sparsity` pass them to `update` as the extra argument `raw_grads=`."
        )
    _check_float(params)
    base.check_structure(params, grads, "grads")
    return base.map_prunable(lambda w, g: jnp.abs(_f32(w) * _f32(g)), params, grads)


def random(key: jax.Array, params: base.Params, granularity: Any = "unstructured") -> base.Scores:
    """Draws uniform random scores, one per mask entry of ``granularity``.

    With ``granularity=jaxprune.CONNECTION`` and top-k selection this is Changpinyo et al.'s
    random channel-to-channel connection sparsity: each ``(cin, cout)`` kernel slice is kept
    or dropped as a whole, independently of the data.

    Args:
      key: A ``jax.random`` key; each leaf uses its own fold of it (by leaf position).
      params: A tree of arrays (or ``jax.ShapeDtypeStruct``); only shapes are read.
      granularity: A :class:`~jaxprune.Granularity`, its name, or a prefix tree of them
        (``None`` = leaf not scored).

    Returns:
      A tree of float32 scores shaped like the masks of ``granularity``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxprune
      >>> s = jaxprune.scores.random(jax.random.key(0), {"k": jnp.ones((3, 3, 4, 8))},
      ...                            jaxprune.CONNECTION)
      >>> s["k"].shape
      (1, 1, 4, 8)

    References:
      Changpinyo, Sandler, Zhmoginov, "The Power of Sparsity in Convolutional Neural
      Networks", 2017. https://arxiv.org/abs/1702.06257
    """
    grans = gran_lib.resolve_granularity_tree(granularity, params)
    leaves = base.leaves_with_paths(params)
    index = {path: i for i, (path, _) in enumerate(leaves)}

    def draw(path, x, g):
        shape = g.mask_shape(tuple(x.shape), path)
        return jax.random.uniform(jax.random.fold_in(key, index[path]), shape, jnp.float32)

    return base.map_with_path(draw, params, grans)


def norm(params: base.Params, granularity: Any = "filter", ord: int | str = 1) -> base.Scores:
    """Scores every group of weights by its L1 or L2 norm (Li et al. 2017 for filters).

    Args:
      params: A tree of float arrays.
      granularity: A :class:`~jaxprune.Granularity`, its name, or a prefix tree of them.
      ord: ``1`` (sum of ``|w|``, Li et al.) or ``2`` (Euclidean norm, as in group lasso).

    Returns:
      A tree of float scores shaped like the masks of ``granularity``.

    Raises:
      ValueError: If ``ord`` is not 1 or 2, or a granularity does not fit a leaf.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> k = jnp.array([[1.0, -2.0], [3.0, 0.0]])  # Dense kernel (in=2, out=2)
      >>> jaxprune.scores.norm({"k": k}, jaxprune.FILTER, ord=1)["k"]
      Array([[4., 2.]], dtype=float32)

    References:
      Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017.
      https://arxiv.org/abs/1608.08710
    """
    if ord not in (1, 2):
        raise ValueError(f"`ord` must be 1 or 2, got {ord!r}.")
    _check_float(params)
    reduction = "l1" if ord == 1 else "l2"
    grans = gran_lib.resolve_granularity_tree(granularity, params)
    return base.map_with_path(
        lambda path, w, g: gran_lib.reduce_scores(_f32(w), g, reduction, path), params, grans
    )


def reduce(
    scores: base.Scores, granularity: Any, reduction: gran_lib.Reduction = "sum"
) -> base.Scores:
    """Reduces element scores to group scores of ``granularity`` (sum, mean, max, l1, l2).

    Args:
      scores: Element scores with the parameters' shapes.
      granularity: A :class:`~jaxprune.Granularity`, its name, or a prefix tree of them
        (``None`` = leaf not scored).
      reduction: How the entries of one group combine.

    Returns:
      A tree of scores shaped like the masks of ``granularity``.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> s = {"k": jnp.arange(6.0).reshape(3, 2)}
      >>> jaxprune.scores.reduce(s, jaxprune.INPUT_CHANNEL, "max")["k"]
      Array([[1.],
             [3.],
             [5.]], dtype=float32)
    """
    grans = gran_lib.resolve_granularity_tree(granularity, scores)
    return base.map_with_path(
        lambda path, s, g: gran_lib.reduce_scores(s, g, reduction, path), scores, grans
    )


class TaylorState(NamedTuple):
    """Running sums of :func:`taylor_update`."""

    total: base.Scores  # float32 leaves shaped like params: sum over batches.
    count: jax.Array  # int32 scalar: number of batches accumulated.


def taylor_init(params: base.Params) -> TaylorState:
    """Starts a Taylor-score accumulator (zeros shaped like ``params``, float32).

    Works on abstract params (``jax.eval_shape``).

    Args:
      params: A tree of float arrays; ``None`` leaves are not accumulated.

    Returns:
      A :class:`TaylorState` with zero sums and a zero count.
    """
    _check_float(params)
    return TaylorState(
        total=base.map_prunable(lambda w: jnp.zeros(w.shape, jnp.float32), params),
        count=jnp.zeros([], jnp.int32),
    )


def taylor_update(
    state: TaylorState, params: base.Params, grads: base.Updates, *, abs_per_batch: bool = False
) -> TaylorState:
    """Adds one batch's ``w * g`` (or ``|w * g|``) to the accumulator. Jittable.

    Args:
      state: The accumulator from :func:`taylor_init` or a previous update.
      params: The parameters at which ``grads`` were taken.
      grads: The batch gradients, with the structure of ``params``.
      abs_per_batch: If ``False`` (default), accumulate the signed product and take the
        absolute value at the end: ``|w * mean_b g_b|`` is the first-order change of the
        *full-data* loss. If ``True``, accumulate ``|w * g_b|`` per batch (Molchanov's
        per-example averaging of absolute values, applied per batch). Use the same value in
        :func:`taylor_finalize`.

    Returns:
      The updated accumulator.
    """
    base.check_structure(params, grads, "grads")

    def add(t, w, g):
        prod = _f32(w) * _f32(g)
        return t + (jnp.abs(prod) if abs_per_batch else prod)

    total = base.map_prunable(add, state.total, params, grads)
    return TaylorState(total=total, count=state.count + 1)


def taylor_finalize(state: TaylorState) -> base.Scores:
    """Returns the Taylor scores ``|sum / count|`` from an accumulator.

    Args:
      state: The accumulator after one or more :func:`taylor_update` calls.

    Returns:
      A tree of float32 scores with the structure of the params.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> p = {"w": jnp.array([1.0, 2.0])}
      >>> st = jaxprune.scores.taylor_init(p)
      >>> st = jaxprune.scores.taylor_update(st, p, {"w": jnp.array([1.0, -1.0])})
      >>> st = jaxprune.scores.taylor_update(st, p, {"w": jnp.array([1.0, 1.0])})
      >>> jaxprune.scores.taylor_finalize(st)["w"]
      Array([1., 0.], dtype=float32)
    """
    n = jnp.maximum(state.count, 1).astype(jnp.float32)
    return base.map_prunable(lambda t: jnp.abs(t / n), state.total)
