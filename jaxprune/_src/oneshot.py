"""One-shot pruning of linear layers from calibration statistics: Wanda, SparseGPT, magnitude.

Every function takes a kernel in Flax's layout, ``(in_features, out_features)`` (``in_axis=0``;
pass ``in_axis=1`` for PyTorch-style ``(out, in)`` matrices), and the layer's
:class:`InputStats`, accumulated over calibration batches of the layer's *inputs*. Internally
the weight is handled as ``W`` with one row per output, so that "per output row" below is the
comparison group of the Wanda paper.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src import base
from jaxprune._src import select as select_lib


class InputStats(NamedTuple):
    """Streaming statistics of a linear layer's inputs ``x`` (``(..., in_features)``).

    Attributes:
      sq_norms: ``(in_features,)`` float32, the sum over tokens of ``x_j ** 2`` (the squared
        L2 norm of each input feature, Wanda's ``||X_j||_2 ** 2``).
      gram: ``(in_features, in_features)`` float32, ``X^T X`` summed over tokens (SparseGPT's
        Hessian up to the factor 2), or ``None`` when not requested.
      count: int32 scalar, the number of tokens seen.
    """

    sq_norms: jax.Array
    gram: jax.Array | None
    count: jax.Array


class Pruned(NamedTuple):
    """A pruned kernel and its keep mask (``True`` = kept), both in the input's layout."""

    kernel: jax.Array
    mask: jax.Array


def input_stats_init(features: int, *, gram: bool = True) -> InputStats:
    """Empty :class:`InputStats` for a layer with ``features`` inputs.

    Args:
      features: the layer's input width.
      gram: whether to accumulate ``X^T X`` (needed by SparseGPT and the reconstruction
        error; Wanda needs only the norms).

    Returns:
      Zero statistics.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> s = jaxprune.oneshot.input_stats_init(3)
      >>> s = jaxprune.oneshot.input_stats_update(s, jnp.ones((2, 5, 3)))
      >>> int(s.count), s.sq_norms.tolist()
      (10, [10.0, 10.0, 10.0])
    """
    if not isinstance(features, (int, np.integer)) or features < 1:
        raise ValueError(f"features must be a positive int, got {features!r}")
    g = jnp.zeros((features, features), jnp.float32) if gram else None
    return InputStats(jnp.zeros((features,), jnp.float32), g, jnp.zeros((), jnp.int32))


def _gram(x: jax.Array) -> jax.Array:
    """``x^T x`` in float32 for ``x`` of shape ``(tokens, features)``, replicated."""
    x = x.astype(jnp.float32)
    kwargs = {}
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is not None and not mesh.empty and any(sharding.spec):
        kwargs["out_sharding"] = jax.sharding.PartitionSpec()  # explicit-sharded tokens
    return jnp.einsum("ti,tj->ij", x, x, precision=jax.lax.Precision.HIGHEST, **kwargs)


def input_stats_update(stats: InputStats, x: jax.Array, *, axis_name: Any = None) -> InputStats:
    """Adds a batch of layer inputs to ``stats`` (float32 accumulation whatever ``x.dtype``).

    Args:
      stats: the running statistics.
      x: the layer's inputs, ``(..., in_features)``; every leading axis is a token axis.
      axis_name: a mapped axis name (``shard_map``/``pmap``) over which the batch is split;
        the batch's contribution is ``psum``-reduced over it, so that every device holds the
        statistics of the whole batch.

    Returns:
      The updated statistics.

    Raises:
      ValueError: if ``x``'s last axis is not the layer's input width.
    """
    features = stats.sq_norms.shape[0]
    if x.ndim < 1 or x.shape[-1] != features:
        raise ValueError(f"inputs of shape {x.shape} do not end in the {features} features")
    x2 = x.reshape(-1, features).astype(jnp.float32)
    sq = jnp.sum(x2 * x2, axis=0)
    g = None if stats.gram is None else _gram(x2)
    n = jnp.asarray(x2.shape[0], jnp.int32)
    if axis_name is not None:
        sq, g, n = jax.lax.psum((sq, g, n), axis_name)
    gram = None if stats.gram is None else stats.gram + g
    return InputStats(stats.sq_norms + sq, gram, stats.count + n)


def _rows(kernel: jax.Array, in_axis: int) -> jax.Array:
    if kernel.ndim != 2:
        raise ValueError(f"one-shot pruning needs a 2-D kernel, got shape {kernel.shape}")
    if in_axis not in (0, 1, -1, -2):
        raise ValueError(f"in_axis must be 0 or 1, got {in_axis!r}")
    return kernel.T if in_axis % 2 == 0 else kernel


def _unrows(w: jax.Array, in_axis: int) -> jax.Array:
    return w.T if in_axis % 2 == 0 else w


def _check_stats(stats: InputStats, features: int, need_gram: bool) -> None:
    if not isinstance(stats, InputStats):
        raise TypeError(f"stats must be an InputStats, got {type(stats).__name__}")
    if stats.sq_norms.shape != (features,):
        raise ValueError(
            f"stats are for {stats.sq_norms.shape[0]} inputs; the kernel has {features}"
        )
    if need_gram and stats.gram is None:
        raise ValueError("this method needs the input Gram matrix: input_stats_init(gram=True)")


def num_pruned(sparsity: Any, n: int) -> jax.Array | int:
    """How many of ``n`` entries a sparsity prunes: the decimal floor for Python floats."""
    if isinstance(sparsity, (int, float)):
        if not 0.0 <= sparsity < 1.0 or math.isnan(sparsity):
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
        return math.floor(round(sparsity * n, 6))
    return jnp.floor(jnp.asarray(sparsity, jnp.float32) * n + 1e-4).astype(jnp.int32)


def _check_n_of_m(n_of_m: Any, features: int) -> tuple[int, int] | None:
    if n_of_m is None:
        return None
    try:
        n, m = (int(v) for v in n_of_m)
    except (TypeError, ValueError) as e:
        raise TypeError(f"n_of_m must be a pair (n, m) of ints, got {n_of_m!r}") from e
    if not 0 < n < m:
        raise ValueError(f"n_of_m={n_of_m!r}: need 0 < n < m (keep n of every m)")
    if features % m:
        raise ValueError(f"n_of_m={n_of_m!r}: m={m} does not divide the {features} inputs")
    return n, m


def _keep_lowest_pruned(scores: jax.Array, k: Any) -> jax.Array:
    """Keep mask of each row of ``scores`` pruning its ``k`` lowest (ties: lower index first).

    Short rows (N:M groups) are ranked by pairwise comparison, without sorting; longer ones
    by one stable sort whose ranks are scattered back. Non-finite scores (NaN, +-inf) rank
    lowest and are pruned first, as in every jaxprune selector.
    """
    m = scores.shape[-1]
    scores = jnp.where(jnp.isfinite(scores), scores, -jnp.inf)
    if m <= 16:
        a, b = scores[..., :, None], scores[..., None, :]
        before = jnp.tril(jnp.ones((m, m), bool), -1)  # before[i, j]: j < i
        before = jnp.broadcast_to(before, (*scores.shape, m))
        rank = jnp.sum((b < a) | ((b == a) & before), axis=-1)
        return rank >= k
    order = jnp.argsort(scores, axis=-1, stable=True)
    kept = jnp.broadcast_to(jnp.arange(m) >= k, scores.shape)
    return jnp.put_along_axis(jnp.zeros(scores.shape, bool), order, kept, axis=-1, inplace=False)


def _keep_lowest_pruned_flat(scores: jax.Array, sparsity: jax.Array) -> jax.Array:
    """:func:`_keep_lowest_pruned` of one long vector by radix select (no sort).

    ``topk_mask`` keeps the lowest index among ties; reversing the vector makes it prune the
    lowest index first, as the row-wise selection does.
    """
    return select_lib.topk_mask(scores[::-1], sparsity)[::-1]


def _row_or_nm_mask(scores: jax.Array, sparsity: Any, nm: tuple[int, int] | None) -> jax.Array:
    rows, cols = scores.shape
    if nm is None:
        return _keep_lowest_pruned(scores, num_pruned(sparsity, cols))
    n, m = nm
    grouped = scores.reshape(rows, cols // m, m)
    return _keep_lowest_pruned(grouped, m - n).reshape(rows, cols)


def _apply(kernel, w, keep, in_axis) -> Pruned:
    pruned = jnp.where(keep, w, jnp.zeros((), w.dtype))
    return Pruned(_unrows(pruned, in_axis).astype(kernel.dtype), _unrows(keep, in_axis))


def magnitude(
    kernel: jax.Array, sparsity: Any = 0.5, *, n_of_m: Any = None, in_axis: int = 0
) -> Pruned:
    """Magnitude pruning compared within each output row (the baseline of the Wanda paper).

    Args:
      kernel: ``(in, out)`` (``in_axis=0``) or ``(out, in)`` (``in_axis=1``).
      sparsity: fraction pruned in each output row, in ``[0, 1)``; ignored with ``n_of_m``.
      n_of_m: ``(n, m)`` keeps the ``n`` largest of every ``m`` consecutive inputs of a row.
      in_axis: which axis of ``kernel`` holds the inputs.

    Returns:
      :class:`Pruned` kernel and keep mask.

    Raises:
      ValueError: on a sparsity outside ``[0, 1)`` or an ``m`` that does not divide the inputs.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> k = jnp.array([[1.0, -4.0], [3.0, 2.0]])  # (in=2, out=2)
      >>> jaxprune.oneshot.magnitude(k, 0.5).kernel.tolist()
      [[0.0, -4.0], [3.0, 0.0]]
    """
    w = _rows(kernel, in_axis)
    nm = _check_n_of_m(n_of_m, w.shape[1])
    keep = _row_or_nm_mask(jnp.abs(w.astype(jnp.float32)), sparsity, nm)
    return _apply(kernel, w, keep, in_axis)


def wanda_scores(kernel: jax.Array, stats: InputStats, *, in_axis: int = 0) -> jax.Array:
    """Wanda's importance ``|W_ij| * ||X_j||_2`` (Sun et al., 2023), in ``kernel``'s layout.

    Args:
      kernel: the layer's kernel.
      stats: the layer's :class:`InputStats`.
      in_axis: which axis of ``kernel`` holds the inputs.

    Returns:
      float32 scores shaped like ``kernel``.
    """
    w = _rows(kernel, in_axis)
    _check_stats(stats, w.shape[1], need_gram=False)
    s = jnp.abs(w.astype(jnp.float32)) * jnp.sqrt(stats.sq_norms)[None, :]
    return _unrows(s, in_axis)


def wanda(
    kernel: jax.Array,
    stats: InputStats,
    sparsity: Any = 0.5,
    *,
    n_of_m: Any = None,
    in_axis: int = 0,
) -> Pruned:
    """Wanda: prunes the lowest ``|W_ij| * ||X_j||_2`` within each output row.

    Sun, Liu, Bair and Kolter, "A Simple and Effective Pruning Approach for Large Language
    Models", ICLR 2024 (arXiv:2306.11695). No weight update; the comparison group is the
    output row (the paper's choice for LLMs), or each run of ``m`` inputs for N:M.

    Args:
      kernel: ``(in, out)`` (``in_axis=0``) or ``(out, in)`` (``in_axis=1``).
      stats: the layer's :class:`InputStats` (the Gram matrix is not needed).
      sparsity: fraction pruned in each output row, in ``[0, 1)``; ignored with ``n_of_m``.
      n_of_m: ``(n, m)``, e.g. ``(2, 4)``: keep ``n`` of every ``m`` consecutive inputs.
      in_axis: which axis of ``kernel`` holds the inputs.

    Returns:
      :class:`Pruned` kernel and keep mask.

    Raises:
      ValueError: on a sparsity outside ``[0, 1)``, an ``m`` that does not divide the inputs,
        or statistics of another width.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> k = jnp.array([[1.0, 1.0], [2.0, 2.0]])  # (in=2, out=2)
      >>> s = jaxprune.oneshot.input_stats_update(
      ...     jaxprune.oneshot.input_stats_init(2), jnp.array([[3.0, 1.0]]))
      >>> jaxprune.oneshot.wanda(k, s, 0.5).kernel.tolist()  # input 0 is 3x louder
      [[1.0, 1.0], [0.0, 0.0]]
    """
    w = _rows(kernel, in_axis)
    nm = _check_n_of_m(n_of_m, w.shape[1])
    scores = _rows(wanda_scores(kernel, stats, in_axis=in_axis), in_axis)
    return _apply(kernel, w, _row_or_nm_mask(scores, sparsity, nm), in_axis)


def _sparsegpt_block(w1, u1, keep1, nm):
    """Prunes one column block column by column, spreading each error on the later columns."""
    d1 = jnp.diag(u1)

    def column(i, carry):
        w1, q1, err1, keep1 = carry
        if nm is not None:
            n, m = nm

            def pick(keep1):
                j0 = (i // m) * m
                blk = jax.lax.dynamic_slice_in_dim(w1, j0, m, axis=1)
                dd = jax.lax.dynamic_slice_in_dim(d1, j0, m)
                km = _keep_lowest_pruned((blk / dd[None, :]) ** 2, m - n)
                return jax.lax.dynamic_update_slice_in_dim(keep1, km, j0, axis=1)

            keep1 = jax.lax.cond(i % m == 0, pick, lambda k: k, keep1)
        col = w1[:, i]
        q = jnp.where(keep1[:, i], col, 0.0)
        e = (col - q) / d1[i]
        # u1[i, :] is zero left of i: this updates columns i.. only (column i becomes q).
        w1 = w1 - e[:, None] * u1[i][None, :]
        q1 = q1.at[:, i].set(q)
        err1 = err1.at[:, i].set(e)
        return w1, q1, err1, keep1

    zeros = jnp.zeros_like(w1)
    _, q1, err1, keep1 = jax.lax.fori_loop(0, w1.shape[1], column, (w1, zeros, zeros, keep1))
    return q1, err1, keep1


def _upper_cholesky_of_inverse(h: jax.Array) -> jax.Array:
    """The upper Cholesky factor ``U`` of ``h^-1`` (``h^-1 = U^T U``), from one factorization.

    With ``P`` the reversal permutation and ``P h P = L L^T``, ``h = M M^T`` for the upper
    triangular ``M = P L P``, so ``h^-1 = M^-T M^-1`` and ``U = M^-1``: one Cholesky and one
    triangular solve instead of the reference code's Cholesky, inverse and second Cholesky.
    """
    m = jnp.linalg.cholesky(h[::-1, ::-1])[::-1, ::-1]
    eye = jnp.eye(h.shape[0], dtype=h.dtype)
    return jax.scipy.linalg.solve_triangular(m, eye, lower=False)


def _sparsegpt_rows(w, gram, sparsity, nm, blocksize, percdamp):
    """SparseGPT on ``w`` (out, in) float32; see :func:`sparsegpt`. Traceable."""
    rows, cols = w.shape
    diag = jnp.diag(gram)
    dead = diag == 0
    h = gram + jnp.diag(jnp.where(dead, 1.0, 0.0))
    w = jnp.where(dead[None, :], 0.0, w)
    damp = percdamp * jnp.mean(jnp.diag(h))
    h = h + damp * jnp.eye(cols, dtype=h.dtype)
    # Upper Cholesky factor U of H^-1 (H^-1 = U^T U): row i holds the OBS update of column i
    # on the columns after it.
    u = _upper_cholesky_of_inverse(h)
    keep_all = []
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        w1 = w[:, i1:i2]
        u1 = u[i1:i2, i1:i2]
        d1 = jnp.diag(u1)
        if nm is None:
            tmp = (w1 / d1[None, :]) ** 2
            keep1 = _keep_lowest_pruned_flat(tmp.reshape(-1), sparsity).reshape(rows, count)
        else:
            keep1 = jnp.ones((rows, count), bool)

        q1, err1, keep1 = _sparsegpt_block(w1, u1, keep1, nm)
        w = w.at[:, i1:i2].set(q1)
        if i2 < cols:
            w = w.at[:, i2:].add(-err1 @ u[i1:i2, i2:])
        keep_all.append(keep1)
    return w, jnp.concatenate(keep_all, axis=1), jnp.all(jnp.isfinite(u))


def sparsegpt(
    kernel: jax.Array,
    stats: InputStats,
    sparsity: Any = 0.5,
    *,
    n_of_m: Any = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    in_axis: int = 0,
) -> Pruned:
    """SparseGPT: OBS pruning with weight reconstruction, column block by column block.

    Frantar and Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
    One-Shot", ICML 2023 (arXiv:2301.00774). With ``H = X^T X`` (inputs with a zero diagonal
    entry are dead: their column is zeroed and ``H_jj`` set to 1), dampened by ``percdamp``
    times the mean diagonal, and ``U`` the upper Cholesky factor of ``H^-1``: columns are
    visited left to right in blocks of ``blocksize``; at each block's start the mask is
    chosen by ``w^2 / U_jj^2`` over the block (the ``floor(sparsity * rows * block)`` lowest
    are pruned; for N:M, at the start of every run of ``m`` columns, the ``m - n`` lowest of
    each row's run), each pruned column's error ``(w - q) / U_jj`` is spread over the later
    columns of the block through row ``j`` of ``U``, and the block's errors update the
    remaining columns in one matrix product (the lazy batched update).

    The paper's reference code prunes ``tmp <= threshold``, one entry more than the fraction
    on exact ties; here the count is exact.

    Args:
      kernel: ``(in, out)`` (``in_axis=0``) or ``(out, in)`` (``in_axis=1``).
      stats: the layer's :class:`InputStats`, with the Gram matrix.
      sparsity: fraction pruned in each column block, in ``[0, 1)``; ignored with ``n_of_m``.
      n_of_m: ``(n, m)``: keep ``n`` of every ``m`` consecutive inputs of each row.
      blocksize: columns per block (a multiple of ``m`` with ``n_of_m``).
      percdamp: dampening, a fraction of the mean diagonal of ``H``.
      in_axis: which axis of ``kernel`` holds the inputs.

    Returns:
      :class:`Pruned` kernel (the kept weights updated) and keep mask.

    Raises:
      ValueError: on bad arguments, or a Gram matrix whose dampened form is not positive
        definite (non-finite statistics).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxprune
      >>> x = jax.random.normal(jax.random.key(0), (64, 8))
      >>> k = jax.random.normal(jax.random.key(1), (8, 4))
      >>> s = jaxprune.oneshot.input_stats_update(jaxprune.oneshot.input_stats_init(8), x)
      >>> p = jaxprune.oneshot.sparsegpt(k, s, 0.5, blocksize=4)
      >>> int(p.mask.sum())
      16
    """
    w = _rows(kernel, in_axis)
    cols = w.shape[1]
    _check_stats(stats, cols, need_gram=True)
    nm = _check_n_of_m(n_of_m, cols)
    if not isinstance(blocksize, (int, np.integer)) or blocksize < 1:
        raise ValueError(f"blocksize must be a positive int, got {blocksize!r}")
    if nm is not None and blocksize % nm[1]:
        raise ValueError(f"blocksize={blocksize} must be a multiple of m={nm[1]}")
    if not isinstance(percdamp, (int, float)) or not percdamp > 0:
        raise ValueError(f"percdamp must be a positive float, got {percdamp!r}")
    if nm is None:
        num_pruned(sparsity, 1)  # range check for Python floats
    new, keep, ok = _sparsegpt_jit(
        w.astype(jnp.float32),
        stats.gram,
        jnp.asarray(sparsity, jnp.float32) if nm is None else jnp.float32(0),
        nm,
        int(min(blocksize, cols)),
        float(percdamp),
    )
    if base.is_concrete(ok) and not bool(ok):
        raise ValueError(
            "the dampened Gram matrix is not positive definite (non-finite statistics?); "
            "check the calibration inputs or raise percdamp"
        )
    return Pruned(_unrows(new, in_axis).astype(kernel.dtype), _unrows(keep, in_axis))


_sparsegpt_jit = jax.jit(_sparsegpt_rows, static_argnums=(3, 4, 5))


def reconstruction_error(
    kernel: jax.Array, pruned: jax.Array, stats: InputStats, *, in_axis: int = 0
) -> jax.Array:
    """Relative output error ``||X W - X W'||_F^2 / ||X W||_F^2`` over the calibration inputs.

    Computed from the Gram matrix: ``tr(D G D^T) / tr(W G W^T)`` with ``D = W - W'``.

    Args:
      kernel: the dense kernel.
      pruned: the pruned kernel, same layout.
      stats: the layer's :class:`InputStats` with the Gram matrix.
      in_axis: which axis holds the inputs.

    Returns:
      A float32 scalar (0 when nothing changed).
    """
    w = _rows(kernel, in_axis).astype(jnp.float32)
    _check_stats(stats, w.shape[1], need_gram=True)
    d = w - _rows(pruned, in_axis).astype(jnp.float32)
    hp = jax.lax.Precision.HIGHEST
    num = jnp.sum(jnp.matmul(d, stats.gram, precision=hp) * d)
    den = jnp.sum(jnp.matmul(w, stats.gram, precision=hp) * w)
    return num / jnp.where(den > 0, den, 1.0)


def outlier_ratio(scores: Any, threshold: float = 5.0) -> jax.Array:
    """OWL's layer outlier ratio: the fraction of scores above ``threshold`` times their mean.

    Args:
      scores: an array, or a list of arrays pooled together (OWL pools the Wanda scores of
        every linear layer of a transformer block).
      threshold: OWL's ``M``.

    Returns:
      A float32 scalar in ``[0, 1]``.
    """
    flat = jnp.concatenate(
        [jnp.ravel(s) for s in (scores if isinstance(scores, list) else [scores])]
    )
    return jnp.mean((flat > threshold * jnp.mean(flat)).astype(jnp.float32))


def owl_sparsities(ratios: Any, target: float, lam: float = 0.08) -> np.ndarray:
    """OWL's layer-wise sparsities from outlier ratios (Yin et al., ICML 2024).

    Yin et al., "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning
    LLMs to High Sparsity", arXiv:2310.05175. The ratios are min-max scaled to
    ``[0, 2 * lam]``, centred on the target density ``1 - target``, and a layer's sparsity is
    one minus its density: layers with more outliers are pruned less, every layer stays within
    ``lam`` of the target, and the mean sparsity equals ``target`` (layers of equal size, as
    transformer blocks are).

    Args:
      ratios: one outlier ratio per layer (block).
      target: the mean sparsity, in ``[0, 1)``.
      lam: half-width of the band around the target.

    Returns:
      float64 NumPy array of sparsities, one per ratio.

    Raises:
      ValueError: if a sparsity would leave ``[0, 1)``.

    Example:
      >>> import jaxprune
      >>> jaxprune.oneshot.owl_sparsities([0.01, 0.03, 0.02], 0.7, lam=0.1).round(3).tolist()
      [0.8, 0.6, 0.7]
    """
    r = np.asarray(ratios, np.float64)
    if r.ndim != 1 or r.size == 0 or not np.all(np.isfinite(r)):
        raise ValueError(f"ratios must be a non-empty 1-D array of finite values, got {ratios!r}")
    num_pruned(float(target), 1)
    if not 0 <= lam < 1:
        raise ValueError(f"lam must be in [0, 1), got {lam!r}")
    span = r.max() - r.min()
    scaled = (r - r.min()) / span * 2 * lam if span > 0 else np.zeros_like(r)
    density = scaled - scaled.mean() + (1 - target)
    s = 1 - density
    if np.any(s < 0) or np.any(s >= 1):
        raise ValueError(f"target={target} with lam={lam} gives sparsities outside [0, 1): {s}")
    return s
