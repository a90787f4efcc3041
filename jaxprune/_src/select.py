"""Score -> mask selection: exact top-k (per leaf and global), thresholds, N:M, hysteresis.

The public namespace is :mod:`jaxprune.select`, whose docstring explains how the exact top-k
works without sorting. Internals: scores become order-preserving ``uint32`` keys
(:func:`_order_keys`); :func:`_find_cutoff` returns a cut-off ``(t, cut)`` meaning "keep
``key > t``, and ``key == t`` with global index ``< cut``", found by :func:`_cutoff_radix` or
:func:`_cutoff_bisect`; :func:`_masks` turns a cut-off into masks. Keys are recomputed from the
scores inside every consumer (:class:`_Keys`) rather than stored.
"""

from __future__ import annotations

import fractions
import functools
import math
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxprune._src import base

Method = Literal["auto", "radix", "bisect"]

_METHODS = ("auto", "radix", "bisect")
_KEY_MAX = 0xFFFFFFFF  # Above every real key (+inf maps to 0xFF800000): "forced" entries.
_INT_MAX = 2**31 - 1  # "No cut-off" sentinel for the global index.
_MAX_ENTRIES = 2**31 - 2  # Global indices and counts are int32.


# ---------------------------------------------------------------------------------------
# Keys, indices and exact counts.


def _as_f32(x: jax.Array) -> jax.Array:
    """Float32 copy of ``x`` with NaN, +inf -> -inf and -0.0 -> +0.0 (the selectors' order).

    The NaN/inf rule: a non-finite score (NaN, +inf or -inf) ranks as the least important,
    below every finite score, so a broken weight is pruned first rather than kept forever.
    """
    x = jnp.asarray(x)
    if x.dtype != jnp.float32:
        x = x.astype(jnp.float32)
    x = jnp.where(jnp.isfinite(x), x, -jnp.inf)
    return jnp.where(x == 0, 0.0, x)


def _order_keys(x: jax.Array) -> jax.Array:
    """Maps floats to ``uint32`` keys with ``key(a) > key(b)`` iff ``a > b`` (non-finite lowest)."""
    u = lax.bitcast_convert_type(_as_f32(x), jnp.uint32)
    return jnp.where(u >= jnp.uint32(0x80000000), ~u, u | jnp.uint32(0x80000000))


def _flat_index(shape: tuple[int, ...], offset: int = 0) -> jax.Array:
    """Row-major flat index of every entry of an array of ``shape``, plus ``offset`` (int32).

    A reshaped 1-D iota: inside a fused loop it is the loop counter, where a sum of
    multi-dimensional iotas would cost a division per axis and entry.
    """
    size = int(np.prod(shape, dtype=np.int64))
    idx = lax.iota(jnp.int32, size).reshape(shape)
    return idx + offset if offset else idx


def _decimal_dropped(s: Any, n: int) -> int:
    """``floor(d * n)`` for the shortest decimal ``d`` that reads back as float32 ``s``.

    The count a user expects from a concrete sparsity: ``0.9`` of 235,200 drops 211,680,
    although float32 ``0.9`` times 235,200 is 211,679.994.
    """
    value = np.float32(np.asarray(s, np.float32))
    if not value > 0:  # also -0.0
        return 0
    if value >= 1:
        return n
    decimal = fractions.Fraction(np.format_float_positional(value, unique=True, trim="-"))
    return min(n, math.floor(decimal * n))


def num_dropped(s: jax.Array, n: int) -> jax.Array:
    """The number of entries a sparsity ``s`` drops out of ``n`` (see :func:`topk_mask`).

    A concrete ``s`` (a Python or NumPy number, or an array with a value) drops the decimal
    floor (:func:`_decimal_dropped`). A traced one:

    ``floor(s * n + min(n, 2**16) * 2**-24)`` computed exactly for the float32 value of ``s``
    and a static ``0 <= n < 2**31``. The small slack absorbs the float32 representation error
    of decimal sparsities (``0.9`` is stored as ``0.89999998``, and ``0.9 * 10`` must drop 9),
    and is below ``2**-8``, so large ``n`` never round up by more than that.

    ``s = mantissa * 2**-r`` and the 55-bit product ``mantissa * n`` (plus the slack scaled by
    ``2**r``) is formed from 16-bit limbs in ``uint32`` (x64 is off). ``s <= 0`` gives 0 and
    ``s >= 1`` gives ``n`` (traced values cannot be checked; callers check concrete ones).
    """
    if base.is_concrete(s):
        return jnp.int32(_decimal_dropped(s, n))
    u32 = jnp.uint32
    s = jnp.asarray(s, jnp.float32)
    bits = lax.bitcast_convert_type(s, u32)
    exp = (bits >> 23) & u32(0xFF)
    frac = bits & u32(0x7FFFFF)
    mant = jnp.where(exp > 0, frac | u32(0x800000), frac)
    r = u32(150) - jnp.maximum(exp, u32(1))  # s = mant * 2**-r; s < 1 means r >= 24
    nh, nl = u32(n >> 16), u32(n & 0xFFFF)
    mh, ml = mant >> 16, mant & u32(0xFFFF)
    a = ml * nl  # < 2**32
    b = mh * nl + ml * nh  # < 2**24 + 2**31
    c = mh * nh  # < 2**23
    lo = a + (b << 16)
    hi = c + (b >> 16) + (lo < a).astype(u32)
    # + slack * 2**r = min(n, 2**16) << (r - 24) when r <= 55 (else the answer is 0 anyway).
    sh = jnp.clip(r, u32(24), u32(55)) - u32(24)  # 0 <= sh <= 31
    slack = u32(min(n, 2**16))
    slack_lo = slack << sh
    slack_hi = jnp.where(sh == 0, u32(0), slack >> (u32(32) - jnp.maximum(sh, u32(1))))
    new_lo = lo + slack_lo
    hi = hi + slack_hi + (new_lo < lo).astype(u32)
    lo = new_lo
    r_small = jnp.clip(r, u32(24), u32(31))
    below_32 = (lo >> r_small) | (hi << (u32(32) - r_small))
    below_64 = hi >> jnp.clip(r, u32(32), u32(63)) - u32(32)
    q = jnp.where(r < 32, below_32, jnp.where(r < 64, below_64, u32(0)))
    q = jnp.where((bits >> 31) == 1, u32(0), q)  # negative (or -0.0)
    q = jnp.where(s >= 1, u32(n), jnp.minimum(q, u32(n)))
    return q.astype(jnp.int32)


def num_keep(sparsity: jax.Array, n: int, floor: int) -> jax.Array:
    """``max(n - dropped, floor)`` as an int32 scalar (``dropped`` from :func:`num_dropped`)."""
    return jnp.maximum(jnp.int32(n) - num_dropped(sparsity, n), jnp.int32(floor))


# ---------------------------------------------------------------------------------------
# Validation.


def _check_method(method: Any) -> None:
    if method not in _METHODS:
        raise ValueError(f"`method` must be one of {_METHODS}, got {method!r}.")


def check_scalar(value: Any, name: str, *, fraction: bool = True) -> jax.Array:
    """Validates a (possibly traced) scalar argument and returns it as a float32 array."""
    if value is None or callable(value) or isinstance(value, (str, bytes)):
        raise TypeError(
            f"`{name}` must be a number or a scalar array, got {value!r}"
            + (" (evaluate schedules before selecting)." if callable(value) else ".")
        )
    if isinstance(value, (dict, list, tuple)):
        raise TypeError(f"`{name}` must be a number or a scalar array, got a {type(value)}.")
    if np.ndim(value) != 0:
        raise ValueError(f"`{name}` must be a scalar, got shape {np.shape(value)}.")
    dtype = np.asarray(value).dtype if base.is_concrete(value) else value.dtype
    if not (jnp.issubdtype(dtype, jnp.number) or dtype == jnp.bool_):
        raise TypeError(f"`{name}` must be a real number, got dtype {dtype}.")
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError(f"`{name}` must be a real number, got dtype {dtype}.")
    if fraction:
        base.check_fraction(value, name)
    elif base.is_concrete(value) and np.isnan(np.asarray(value, np.float64)):
        raise ValueError(f"`{name}` must not be NaN.")
    if base.is_concrete(value):  # stays concrete under jit (exact decimal counts)
        return np.asarray(value, np.float32)
    return jnp.asarray(value, jnp.float32)


def _check_scores(path: str, x: Any) -> None:
    base.check_float_leaf(path, x, "scores leaf")


def _check_size(n: int, what: str) -> None:
    if n > _MAX_ENTRIES:
        raise ValueError(
            f"{what} has {n} entries; exact selection supports at most {_MAX_ENTRIES} (int32 "
            "indices). Select per layer or per shard."
        )


def _explicit_spec(x: Any) -> Any:
    """Returns the explicit (non-replicated) sharding spec of ``x``, or ``None``."""
    try:
        spec = jax.typeof(x).sharding.spec
    except (AttributeError, TypeError):
        return None
    return spec if any(s is not None for s in spec) else None


def resolve_method(method: str, items: list[tuple[str, jax.Array]]) -> str:
    explicit = [(p, _explicit_spec(x)) for p, x in items]
    explicit = [(p, s) for p, s in explicit if s is not None]
    if method == "auto":
        return "bisect" if explicit else "radix"
    if method == "radix" and explicit:
        path, spec = explicit[0]
        raise ValueError(
            f"method='radix' cannot histogram the explicitly sharded scores at {path!r} (spec "
            f"{spec}); use method='bisect' or 'auto', which count with a scalar all-reduce."
        )
    return method


# ---------------------------------------------------------------------------------------
# The k-th largest key over a list of leaves.


class _Keys:
    """The ``uint32`` keys of one leaf, rebuilt from the scores wherever they are used.

    Calling the object traces the key computation again, inside each histogram pass, loop body
    and ``lax.cond`` branch, so that XLA fuses it into the consumer instead of storing a key
    array (and ``cond`` operands stay the score arrays themselves).

    Attributes:
      shape: The leaf's shape.
      fn: A function of no arguments returning the keys (``uint32``, shaped ``shape``).
    """

    def __init__(self, shape: tuple[int, ...], fn: Any):
        self.shape = tuple(shape)
        self.fn = fn

    def __call__(self) -> jax.Array:
        return self.fn()


class _AllEntries:
    """``forced=ALL_ENTRIES``: every entry of the leaf is forced (kept)."""

    def __repr__(self) -> str:
        return "ALL_ENTRIES"


ALL_ENTRIES = _AllEntries()


def _score_keys(x: jax.Array, forced: Any = None) -> _Keys:
    """Keys of the scores ``x``; ``forced`` entries get ``_KEY_MAX`` (a per-leaf floor).

    ``forced`` is ``None``, :data:`ALL_ENTRIES`, a flat index (one entry), or ``(t, cut)``
    scalars naming the entries with ``key > t``, or ``key == t`` and flat index ``< cut``.
    """
    shape = tuple(np.shape(x))
    if forced is ALL_ENTRIES:  # full_like keeps an explicit sharding
        return _Keys(shape, lambda: jnp.full_like(x, _KEY_MAX, dtype=jnp.uint32))
    if forced is None:
        return _Keys(shape, lambda: _order_keys(x))

    def fn():
        key = _order_keys(x)
        if isinstance(forced, tuple):
            t, cut = forced
            hit = (key > t) | ((key == t) & (_flat_index(shape) < cut))
        else:
            hit = _flat_index(shape) == forced
        return jnp.where(hit, jnp.uint32(_KEY_MAX), key)

    return _Keys(shape, fn)


def _pick_digit(hist: jax.Array, need: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns the digit ``d`` holding the ``need``-th largest entry of a histogram.

    Also returns ``hist[d]`` and ``need`` minus the entries above ``d``. Suffix sums come from
    ``w x w`` triangles (no ``cumsum``, which is slow to compile on XLA:CPU); histograms wider
    than 256 bins are searched in two levels (256-bin blocks, then one block).
    """
    w = hist.shape[0]
    if w > 256:
        block = 256
        totals = jnp.sum(hist.reshape(w // block, block), axis=1)
        b, _, need = _pick_digit(totals, need)
        d, ties, need = _pick_digit(lax.dynamic_slice(hist, (b * block,), (block,)), need)
        return b * block + d, ties, need
    r = jnp.arange(w, dtype=jnp.int32)
    suffix = jnp.sum(jnp.where(r[None, :] >= r[:, None], hist[None, :], 0), axis=1)
    d = jnp.sum(suffix >= need, dtype=jnp.int32) - 1
    ties = jnp.sum(jnp.where(r == d, hist, 0))
    return d, ties, need - jnp.sum(jnp.where(r > d, hist, 0))


def _rev_index(shape: tuple[int, ...], offset: int, nbits: int) -> jax.Array:
    """``2**nbits - 1 - global index`` as ``uint32``: larger for earlier entries."""
    return jnp.uint32(2**nbits - 1) - _flat_index(shape, offset).astype(jnp.uint32)


def _cutoff_radix(
    leaves: list[_Keys], offsets: list[int], k: jax.Array, n: int
) -> tuple[jax.Array, jax.Array]:
    """Radix select of the k-th largest ``(key, -index)`` pair, ``1 <= k <= n``.

    One ``while_loop`` whose body histograms one ``w``-bit digit of every leaf (all scattered
    into one histogram; entries whose higher digits differ from the prefix found so far are
    dropped). The first ``32 / w`` passes fix the key ``t``; when more entries equal ``t``
    than are needed, further passes fix the digits of the reversed global index among them.
    A single loop body keeps the compiled program small (one scatter per leaf).

    Returns:
      ``(t, cut)``: the top k are ``key > t``, or ``key == t`` with global index ``< cut``.
    """
    u32 = jnp.uint32
    nbits = max(1, (n - 1).bit_length())  # every global index is < 2**nbits
    w = 16 if n >= 2**16 else 8  # digit bits; small inputs keep the histograms small
    value_passes, index_passes = 32 // w, -(-nbits // w)
    ibits = index_passes * w  # the reversed index, padded to whole digits
    width = 1 << w
    ones = u32(0xFFFFFFFF)

    def cond(carry):
        p, _, _, _, excess = carry
        return (p < value_passes) | ((p < value_passes + index_passes) & excess)

    def body(carry):
        p, tv, ti, need, excess = carry
        in_value = p < value_passes
        j = jnp.where(in_value, p, p - value_passes).astype(u32)  # pass within its phase
        bits = jnp.where(in_value, u32(32), u32(ibits))
        shift = bits - u32(w) * (j + u32(1))
        above = jnp.where(j == 0, u32(0), ones << jnp.clip(bits - u32(w) * j, u32(1), u32(31)))
        mask_v = jnp.where(in_value, above, ones)
        mask_i = jnp.where(in_value, u32(0), above)
        hist = jnp.zeros((width,), jnp.int32)
        for leaf, off in zip(leaves, offsets, strict=True):  # one histogram, updated in place
            key, rev = leaf(), _rev_index(leaf.shape, off, nbits)
            src = jnp.where(in_value, key, rev)
            digit = ((src >> shift) & u32(width - 1)).astype(jnp.int32)
            match = ((key & mask_v) == tv) & ((rev & mask_i) == ti)
            digit = jnp.where(match, digit, width)  # out of range: dropped by the scatter
            hist = hist.at[jnp.ravel(digit)].add(1, mode="drop")
        d, ties, need = _pick_digit(hist, need)
        d = d.astype(u32) << shift
        tv = jnp.where(in_value, tv | d, tv)
        ti = jnp.where(in_value, ti, ti | d)
        excess = jnp.where(p == value_passes - 1, ties > need, excess)
        return p + 1, tv, ti, need, excess

    init = (jnp.int32(0), u32(0), u32(0), k, jnp.bool_(False))
    _, t, ti, _, _ = lax.while_loop(cond, body, init)
    return t, _cut(ti, nbits)


def _cut(ti: jax.Array, nbits: int) -> jax.Array:
    """Index cut-off from a reversed-index bound (keep ``rev >= ti``, i.e. ``gidx < cut``)."""
    cut = jnp.uint32(2**nbits) - ti  # nbits <= 31
    return jnp.minimum(cut, jnp.uint32(_INT_MAX)).astype(jnp.int32)


def _cutoff_bisect(
    leaves: list[_Keys], offsets: list[int], k: jax.Array, n: int
) -> tuple[jax.Array, jax.Array]:
    """Bisection for the same ``(t, cut)`` as :func:`_cutoff_radix`, one count per round.

    Bit by bit, round ``i`` tries to raise the lower bound ``t`` of the kept keys and keeps the
    raise while at least ``k`` keys stay ``>= t``; it stops early once exactly ``k`` do. When
    more than ``k`` remain (excess ties at ``t``), the same bisection runs over the reversed
    global index of the ties (under ``lax.cond``). Each round is one count per leaf, which
    GSPMD partitions into a local reduction plus a scalar all-reduce.
    """
    u32 = jnp.uint32
    nbits = max(1, (n - 1).bit_length())

    def search(bits, count_ge):
        def cond(carry):
            i, _, count = carry
            return (i < bits) & (count != k)

        def body(carry):
            i, lower, count = carry
            cand = lower | (u32(1) << (bits - 1 - i).astype(u32))
            c = functools.reduce(jnp.add, [count_ge(leaf, off, cand) for leaf, off in live])
            ok = c >= k
            return i + 1, jnp.where(ok, cand, lower), jnp.where(ok, c, count)

        _, lower, count = lax.while_loop(cond, body, (jnp.int32(0), u32(0), jnp.int32(n)))
        return lower, count

    live = list(zip(leaves, offsets, strict=True))
    t, count = search(32, lambda leaf, off, c: jnp.sum(leaf() >= c, dtype=jnp.int32))

    def index_cut():
        def count_ge(leaf, off, c):
            key = leaf()
            pairs_ge = (key > t) | ((key == t) & (_rev_index(leaf.shape, off, nbits) >= c))
            return jnp.sum(pairs_ge, dtype=jnp.int32)

        ti, _ = search(nbits, count_ge)
        return _cut(ti, nbits)

    return t, lax.cond(count > k, index_cut, lambda: jnp.int32(_INT_MAX))


def _find_cutoff(leaves: list[_Keys], k: jax.Array, method: str) -> tuple[jax.Array, jax.Array]:
    """Returns ``(t, cut)``: the top ``k`` are ``key > t`` or ``key == t`` with ``gidx < cut``.

    ``gidx`` is the global index (leaf order, then row-major). ``k`` is clipped to ``[0, n]``;
    ``k = 0`` gives a cut-off that keeps nothing (provided no key equals ``_KEY_MAX``).
    """
    sizes = [int(np.prod(leaf.shape, dtype=np.int64)) for leaf in leaves]
    n = sum(sizes)
    if n == 0:
        return jnp.uint32(_KEY_MAX), jnp.int32(0)
    offsets = [int(o) for o in np.cumsum([0, *sizes[:-1]])]
    live = [(leaf, off) for leaf, off, size in zip(leaves, offsets, sizes, strict=True) if size]
    cutoff = _cutoff_radix if method == "radix" else _cutoff_bisect
    k_eff = jnp.clip(k, 1, n).astype(jnp.int32)
    t, cut = cutoff([lo[0] for lo in live], [lo[1] for lo in live], k_eff, n)
    return jnp.where(k > 0, t, jnp.uint32(_KEY_MAX)), jnp.where(k > 0, cut, 0)


def _masks(leaves: list[_Keys], t: jax.Array, cut: jax.Array) -> list[jax.Array]:
    """The bool masks of the cut-off ``(t, cut)`` (global index = leaf order, row-major)."""
    out, offset = [], 0
    for leaf in leaves:
        key = leaf()
        out.append((key > t) | ((key == t) & (_flat_index(leaf.shape, offset) < cut)))
        offset += int(np.prod(leaf.shape, dtype=np.int64))
    return out


def keep_top_k(x: jax.Array, k: Any, method: str = "auto") -> jax.Array:
    """Keeps exactly the ``k`` largest entries of ``x`` (``k`` may be traced; ties by index).

    The exact top-k of one leaf by count rather than by sparsity, for callers that compute
    ``k`` themselves (sparse training's drop-and-grow). ``k`` is clipped to ``[0, x.size]``;
    ``method`` is ``"auto"``, ``"radix"`` or ``"bisect"`` (see :func:`topk_mask`).
    """
    method = resolve_method(method, [("scores", x)])
    leaf = _score_keys(x)
    t, cut = _find_cutoff([leaf], jnp.asarray(k, jnp.int32), method)
    return _masks([leaf], t, cut)[0]


def _topk_leaf(x: jax.Array, sparsity: jax.Array, min_keep: int, method: str) -> jax.Array:
    n = int(np.prod(np.shape(x), dtype=np.int64))
    return keep_top_k(x, num_keep(sparsity, n, min(min_keep, n)), method)


# ---------------------------------------------------------------------------------------
# Public API.


def topk_mask(
    scores: jax.Array, sparsity: Any, *, min_keep: int = 0, method: Method = "auto"
) -> jax.Array:
    """Keeps the largest scores of one array, dropping exactly ``floor(sparsity * n)``.

    Exactly ``max(n - floor(sparsity * n), min(min_keep, n))`` entries are kept (``n =
    scores.size``): the largest scores, ties broken by keeping the lowest flat (row-major)
    index first, so the mask equals ``lax.top_k`` + scatter on finite scores. Non-finite
    scores (NaN, ``+inf``, ``-inf``) rank as the least important, below every finite score
    (a broken weight is pruned first, never kept because its magnitude is infinite), and
    ``-0.0`` equals ``0.0``. Scores are compared in float32 (bf16/f16 are upcast exactly).

    ``sparsity`` may be traced: changing it never recompiles. A concrete value (a Python
    float, even inside ``jit``) drops the decimal floor of the number as written: ``0.9`` of
    235,200 drops exactly 211,680. A traced value is taken as float32 and
    ``floor(sparsity * n)`` is computed exactly, with a slack of ``min(n, 2**16) * 2**-24``
    so that decimal values behave as written on small leaves (``0.9`` of 10 drops 9,
    although float32 ``0.9`` is ``0.89999998``). Nothing is sorted (see
    :mod:`jaxprune.select`): the k-th largest score is found by a radix select or a
    bisection.

    Args:
      scores: A floating-point array of any shape (0-d and empty included).
      sparsity: Fraction of entries to drop, in ``[0, 1]``; a Python number or a scalar array
        (concrete values are checked; a traced value outside ``[0, 1]`` acts like the nearest
        end, and a traced NaN drops nothing: ``optax_sparsity`` records such updates, see
        :func:`jaxprune.masks`).
      min_keep: Keep at least ``min(min_keep, n)`` entries whatever the sparsity.
      method: ``"radix"`` (histograms; fastest on CPU), ``"bisect"`` (32 counting passes;
        partitions into scalar all-reduces on sharded scores) or ``"auto"`` (``"bisect"`` for
        scores with an explicit non-replicated sharding, else ``"radix"``). Both give the same
        mask.

    Returns:
      A bool array shaped like ``scores``; ``True`` marks kept entries.

    Raises:
      TypeError: If ``scores`` is not a floating-point array, or ``sparsity`` is not a number.
      ValueError: If a concrete ``sparsity`` lies outside ``[0, 1]``, ``min_keep < 0`` or
        ``method`` is unknown.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import select
      >>> select.topk_mask(jnp.array([0.3, 0.1, 0.4, 0.1]), 0.5)
      Array([ True, False,  True, False], dtype=bool)
      >>> select.topk_mask(jnp.array([0.2, 0.2, 0.2]), 0.5)  # ties: lowest index first
      Array([ True,  True, False], dtype=bool)
    """
    _check_scores("scores", scores)
    _check_method(method)
    min_keep = base.check_int(min_keep, "min_keep", 0)
    s = check_scalar(sparsity, "sparsity")
    _check_size(int(np.prod(np.shape(scores), dtype=np.int64)), "`scores`")
    return _topk_leaf(scores, s, min_keep, resolve_method(method, [("scores", scores)]))


def layerwise_topk(
    scores: base.Scores, sparsity: base.Sparsity, *, min_keep: int = 1, method: Method = "auto"
) -> base.Mask:
    """Applies :func:`topk_mask` to every leaf: each layer keeps its own top ``1 - sparsity``.

    This is the per-layer (uniform or distribution-driven) magnitude pruning of Han et al.,
    "Learning both weights and connections for efficient neural networks", NeurIPS 2015, in
    its target-density form, and of Zhu & Gupta, "To prune, or not to prune", 2017.

    Args:
      scores: A tree of float score arrays; ``None`` leaves are not pruned (mask ``None``).
      sparsity: One fraction for every leaf, or a prefix tree of them (Python numbers or
        traced scalars) with ``None`` for subtrees that stay unpruned (mask ``None``).
      min_keep: Per-layer floor: a leaf keeps at least ``min(min_keep, leaf.size)`` entries,
        so no layer is pruned away entirely unless ``min_keep=0``.
      method: ``"auto"``, ``"radix"`` or ``"bisect"``, as for :func:`topk_mask`.

    Returns:
      A bool mask tree with the structure of ``scores``.

    Raises:
      TypeError: If a scores leaf is not floating point (the message names its path).
      ValueError: If ``sparsity`` is not a prefix of the scores' structure, or a concrete value
        lies outside ``[0, 1]`` (the message names the path).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import select
      >>> scores = {"a": jnp.array([1.0, 3.0, 2.0, 0.0]), "b": jnp.array([5.0, 4.0]), "c": None}
      >>> mask = select.layerwise_topk(scores, {"a": 0.5, "b": None, "c": None})
      >>> mask["a"], mask["b"], mask["c"]
      (Array([False,  True,  True, False], dtype=bool), None, None)
    """
    _check_method(method)
    min_keep = base.check_int(min_keep, "min_keep", 0)
    sparsity_tree = base.broadcast_prefix(sparsity, scores, "sparsity")

    def one(path, x, s):
        _check_scores(path, x)
        s = check_scalar(s, f"sparsity[{path!r}]")
        _check_size(int(np.prod(np.shape(x), dtype=np.int64)), f"scores leaf {path!r}")
        return _topk_leaf(x, s, min_keep, resolve_method(method, [(path, x)]))

    return base.map_with_path(one, scores, sparsity_tree)


def global_topk(
    scores: base.Scores, sparsity: Any, *, min_keep: int = 1, method: Method = "auto"
) -> base.Mask:
    """Ranks every scored entry of the tree together and keeps the global top ``1 - sparsity``.

    With ``n`` scored entries in all, exactly ``max(n - floor(sparsity * n), forced)`` entries
    are kept (``floor`` as in :func:`topk_mask`), where each leaf first keeps its own
    ``min(min_keep, leaf.size)`` best entries (``forced`` is their total) and the rest go by
    global rank. Ties are broken by the lowest
    global index (tree leaf order, then row-major), so without the floor the mask equals
    ``lax.top_k`` + scatter on the concatenated scores, which are never actually built.

    Scores of different layers must be comparable (normalize them first if they are not).
    Global magnitude pruning appears in Han et al. (NeurIPS 2015) and as the "global"
    distribution of Zhu & Gupta (2017); the per-layer floor follows network slimming practice
    (Liu et al., ICCV 2017) of never removing a layer.

    Args:
      scores: A tree of float score arrays; ``None`` leaves are not scored and get a ``None``
        mask.
      sparsity: One fraction in ``[0, 1]`` (a Python number or a scalar array, possibly traced).
      min_keep: Per-leaf floor, see above; ``0`` lets a leaf lose every entry.
      method: ``"auto"``, ``"radix"`` or ``"bisect"``, as for :func:`topk_mask`.

    Returns:
      A bool mask tree with the structure of ``scores``.

    Raises:
      TypeError: If a scores leaf is not floating point (the message names its path) or
        ``sparsity`` is not a number.
      ValueError: If a concrete ``sparsity`` lies outside ``[0, 1]``, or there are more than
        ``2**31 - 2`` scored entries.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import select
      >>> scores = {"a": jnp.array([0.1, 0.2]), "b": jnp.array([3.0, 1.0, 2.0]), "c": None}
      >>> mask = select.global_topk(scores, 0.6)  # keep 2 of 5, but at least 1 per leaf
      >>> mask["a"], mask["b"], mask["c"]
      (Array([False,  True], dtype=bool), Array([ True, False, False], dtype=bool), None)
    """
    _check_method(method)
    min_keep = base.check_int(min_keep, "min_keep", 0)
    s = check_scalar(sparsity, "sparsity")
    items = [(p, x) for p, x in base.leaves_with_paths(scores) if x is not None]
    for path, x in items:
        _check_scores(path, x)
    method = resolve_method(method, items)
    sizes = [int(np.prod(np.shape(x), dtype=np.int64)) for _, x in items]
    n = sum(sizes)
    _check_size(n, "`scores`")
    forced = [min(min_keep, size) for size in sizes]

    leaves = []
    for (_, x), size, m in zip(items, sizes, forced, strict=True):
        if m == 0:
            leaves.append(_score_keys(x))
        elif m == size:
            leaves.append(_score_keys(x, ALL_ENTRIES))
        elif m == 1:  # the leaf's best entry: its maximum key, lowest index among equals
            key = _order_keys(x)
            if _explicit_spec(x) is None:  # one variadic reduction
                first = jnp.argmax(jnp.ravel(key)).astype(jnp.int32)
            else:  # no ravel of an explicitly sharded array: max, then the first index
                best = jnp.max(key)
                first = jnp.min(jnp.where(key == best, _flat_index(key.shape), _INT_MAX))
            leaves.append(_score_keys(x, first))
        else:
            own = _find_cutoff([_score_keys(x)], jnp.int32(m), method)
            leaves.append(_score_keys(x, own))
    t, cut = _find_cutoff(leaves, num_keep(s, n, sum(forced)), method)
    masks = iter(_masks(leaves, t, cut))
    return base.map_prunable(lambda _: next(masks), scores)


def threshold(scores: base.Scores, t: Any, *, strict: bool = True) -> base.Mask:
    """Keeps the entries whose score exceeds a threshold: ``score > t`` (or ``>= t``).

    The strict form is the one of the network slimming code (Liu et al., ICCV 2017); with
    ties at ``t`` the kept count depends on the choice, use :func:`topk_mask` for exact counts.
    Non-finite scores (NaN, ``+inf``, ``-inf``) are dropped.

    Args:
      scores: A tree of float score arrays; ``None`` leaves give ``None`` masks.
      t: One threshold for every leaf or a prefix tree of them (scalars, possibly traced;
        ``None`` = unpruned subtree).
      strict: ``True`` keeps ``score > t``; ``False`` keeps ``score >= t``.

    Returns:
      A bool mask tree with the structure of ``scores``.

    Raises:
      TypeError: If a scores leaf is not floating point (the message names its path).
      ValueError: If ``t`` is not a prefix of the scores' structure or not a scalar.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import select
      >>> select.threshold({"w": jnp.array([0.5, 1.0, 2.0])}, 1.0, strict=False)["w"]
      Array([False,  True,  True], dtype=bool)
    """
    t_tree = base.broadcast_prefix(t, scores, "t")

    def one(path, x, tv):
        _check_scores(path, x)
        tv = check_scalar(tv, f"t[{path!r}]", fraction=False)
        x = _as_f32(x)
        return x > tv if strict else x >= tv

    return base.map_with_path(one, scores, t_tree)


def std_threshold(
    scores: base.Params, q: Any, *, reference: base.Params | None = None
) -> base.Mask:
    """Han et al.'s per-layer rule: keeps ``|w| > q * std(w)`` in every leaf.

    From Han, Pool, Tran, Dally, "Learning both weights and connections for efficient neural
    networks", NeurIPS 2015 (Sec. 4: the threshold is a quality parameter times the standard
    deviation of the layer's weights). Pass the *parameters* (not their magnitudes) as
    ``scores``: the standard deviation (``ddof=0``) is taken over the leaf's values, ignoring
    non-finite entries (non-finite weights are dropped). Distiller's implementation computes
    the standard deviation once on the dense weights and keeps the threshold fixed over pruning
    iterations: pass those weights as ``reference``.

    Args:
      scores: A tree of float parameter arrays; ``None`` leaves give ``None`` masks.
      q: The quality parameter(s): a non-negative scalar or a prefix tree of them (``None`` =
        unpruned subtree); may be traced.
      reference: Optional tree with the structure of ``scores`` whose leaves' standard
        deviations are used instead (a ``None`` reference leaf leaves that leaf unpruned).

    Returns:
      A bool mask tree with the structure of ``scores``.

    Raises:
      TypeError: If a leaf is not floating point (the message names its path).
      ValueError: If ``q`` or ``reference`` does not match the scores' structure, or a concrete
        ``q`` is negative or NaN.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import select
      >>> w = {"k": jnp.array([-2.0, -0.1, 0.0, 0.1, 2.0])}  # std(w) = 1.266
      >>> select.std_threshold(w, 1.0)["k"]
      Array([ True, False, False, False,  True], dtype=bool)
    """
    q_tree = base.broadcast_prefix(q, scores, "q")
    if reference is None:
        reference = scores
    else:
        base.check_structure(scores, reference, "reference")

    def one(path, x, qv, ref):
        _check_scores(path, x)
        base.check_float_leaf(path, ref, "reference leaf")
        name = f"q[{path!r}]"
        qv = check_scalar(qv, name, fraction=False)
        if base.is_concrete(qv) and float(qv) < 0:
            raise ValueError(f"`{name}` must be >= 0, got {float(qv)}.")
        ref = jnp.asarray(ref).astype(jnp.float32)
        std = jnp.nanstd(jnp.where(jnp.isfinite(ref), ref, jnp.nan))
        return _as_f32(jnp.abs(x)) > qv * std  # non-finite weights are dropped

    return base.map_with_path(one, scores, q_tree, reference)


def _check_n_of_m(n: Any, m: Any) -> tuple[int, int]:
    n = base.check_int(n, "n", 0)
    m = base.check_int(m, "m", 1)
    if n > m:
        raise ValueError(f"N:M needs n <= m, got n={n}, m={m}.")
    return n, m


def _n_of_m_leaf(x: jax.Array, n: int, m: int, axis: int, path: str) -> jax.Array:
    _check_scores(path, x)
    shape = tuple(np.shape(x))
    if not -len(shape) <= axis < len(shape):
        raise ValueError(
            f"N:M sparsity {n}:{m} runs along axis {axis}, but {path!r} has shape {shape} "
            f"(rank {len(shape)}). Leave such leaves out: pass jaxprune.only_prunable(scores) "
            "(None for every leaf of rank < 2, as optax_sparsity prunes by default)."
        )
    ax = axis % len(shape)
    if shape[ax] % m:
        raise ValueError(
            f"N:M sparsity {n}:{m} runs along axis {axis} of {path!r}, whose size {shape[ax]} is "
            f"not divisible by M={m}."
        )
    if n == m or not x.size:
        return jnp.ones_like(x, dtype=jnp.bool_)
    if n == 0:
        return jnp.zeros_like(x, dtype=jnp.bool_)
    grouped = (*shape[:ax], shape[ax] // m, m, *shape[ax + 1 :])
    key = _order_keys(x).reshape(grouped)
    mine = jnp.expand_dims(key, ax + 2)  # [..., g, i, 1, ...]
    other = jnp.expand_dims(key, ax + 1)  # [..., g, 1, j, ...]
    pos = np.arange(m)
    before = (pos[None, :] < pos[:, None]).reshape(
        (1,) * (ax + 1) + (m, m) + (1,) * (len(shape) - ax - 1)
    )
    beats = (other > mine) | ((other == mine) & before)
    rank = jnp.sum(beats, axis=ax + 2, dtype=jnp.int32)
    return (rank < n).reshape(shape)


def n_of_m_mask(scores: jax.Array, n: int, m: int, axis: int = -2) -> jax.Array:
    """Keeps the ``n`` largest scores of every ``m`` consecutive entries along ``axis``.

    N:M structured sparsity (2:4 for NVIDIA sparse tensor cores; Mishra et al., "Accelerating
    sparse deep neural networks", 2021, and NVIDIA apex ASP). The default ``axis=-2`` is the
    input (reduction) axis of Flax kernels: axis 0 of a Dense ``(in, out)`` kernel and ``cin``
    of an HWIO conv kernel. Ties go to the lower index, non-finite scores count as the lowest.
    No sort: each entry is ranked within its group by ``m * m`` pairwise comparisons.

    Args:
      scores: A floating-point array.
      n: Entries kept per group (``0 <= n <= m``).
      m: Group size.
      axis: Axis along which the groups of ``m`` consecutive entries run.

    Returns:
      A bool array shaped like ``scores`` with exactly ``n`` kept entries per group.

    Raises:
      TypeError: If ``scores`` is not floating point or ``n``/``m`` are not ints.
      ValueError: If ``n > m``, the array has no axis ``axis``, or its size along ``axis`` is
        not divisible by ``m``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import select
      >>> select.n_of_m_mask(jnp.array([[0.1, 0.9, 0.5, 0.3]]), 2, 4, axis=-1)
      Array([[False,  True,  True, False]], dtype=bool)
    """
    n, m = _check_n_of_m(n, m)
    return _n_of_m_leaf(scores, n, m, base.check_int(axis, "axis", -(2**31)), "scores")


def top_n_of_m(scores: base.Scores, n: int, m: int, axis: int = -2) -> base.Mask:
    """Applies :func:`n_of_m_mask` to every leaf of a score tree.

    Args:
      scores: A tree of float score arrays; ``None`` leaves give ``None`` masks. Exclude leaves
        that do not fit (e.g. a first conv with ``cin = 1``) by setting them to ``None``.
      n: Entries kept per group.
      m: Group size.
      axis: Axis along which groups run (default ``-2``: the input axis of Flax kernels).

    Returns:
      A bool mask tree with the structure of ``scores``.

    Raises:
      ValueError: If a leaf's rank is too small or its size along ``axis`` is not divisible by
        ``m`` (the message names the path), or ``n > m``.
      TypeError: If a leaf is not floating point (the message names the path).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import select
      >>> w = jnp.array([[1.0, -4.0], [3.0, 2.0], [0.5, 1.0], [2.0, 0.0]])
      >>> scores = {"kernel": jnp.abs(w), "bias": None}
      >>> select.top_n_of_m(scores, 2, 4)["kernel"]  # 2 of every 4 along the input axis
      Array([[False,  True],
             [ True,  True],
             [False, False],
             [ True, False]], dtype=bool)
    """
    n, m = _check_n_of_m(n, m)
    axis = base.check_int(axis, "axis", -(2**31))
    return base.map_with_path(lambda p, x: _n_of_m_leaf(x, n, m, axis, p), scores)


def hysteresis(scores: base.Scores, old_mask: base.Mask, low: Any, high: Any) -> base.Mask:
    """Dynamic Network Surgery's mask update with a hysteresis band.

    From Guo, Yao, Chen, "Dynamic Network Surgery for Efficient DNNs", NeurIPS 2016: an entry
    is pruned when ``score < low``, spliced back (kept) when ``score > high``, and keeps its
    old mask value in between (``low <= score <= high``). This follows the paper's strict
    inequalities; the official Caffe code prunes ``|w| <= a``, which differs only for scores
    exactly equal to ``low``. NaN scores count as ``-inf`` (pruned). In the paper
    ``score = |w|``, ``low = 0.9 * max(mu + c * sigma, 0)`` and
    ``high = 1.1 * max(mu + c * sigma, 0)``.

    Args:
      scores: A tree of float score arrays; ``None`` leaves give ``None`` masks.
      old_mask: The current bool masks, same structure and leaf shapes as ``scores`` (a
        ``None`` leaf gives a ``None`` mask).
      low: Prune threshold: a scalar or prefix tree of scalars (possibly traced).
      high: Splice threshold (``>= low``): a scalar or prefix tree of scalars.

    Returns:
      The new bool mask tree.

    Raises:
      TypeError: If a leaf is not floating point or an old mask is not bool (the message names
        the path).
      ValueError: If the trees do not match, a mask's shape differs from its scores, or a
        concrete ``low > high`` (the message names the path).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import select
      >>> s = {"w": jnp.array([0.1, 0.5, 0.5, 0.9])}
      >>> old = {"w": jnp.array([True, True, False, False])}
      >>> select.hysteresis(s, old, 0.3, 0.7)["w"]
      Array([False,  True, False,  True], dtype=bool)
    """
    base.check_structure(scores, old_mask, "old_mask")
    low_tree = base.broadcast_prefix(low, scores, "low")
    high_tree = base.broadcast_prefix(high, scores, "high")

    def one(path, x, old, lo, hi):
        _check_scores(path, x)
        if getattr(old, "dtype", None) != jnp.bool_:
            raise TypeError(
                f"old_mask at {path!r} must be a bool array, got "
                f"{getattr(old, 'dtype', type(old).__name__)}."
            )
        if tuple(np.shape(old)) != tuple(np.shape(x)):
            raise ValueError(
                f"old_mask at {path!r} has shape {tuple(np.shape(old))}, but the scores have "
                f"shape {tuple(np.shape(x))}."
            )
        lo = check_scalar(lo, f"low[{path!r}]", fraction=False)
        hi = check_scalar(hi, f"high[{path!r}]", fraction=False)
        if base.is_concrete(lo) and base.is_concrete(hi) and float(lo) > float(hi):
            raise ValueError(
                f"hysteresis at {path!r} needs low <= high, got {float(lo)} > {float(hi)}."
            )
        x = _as_f32(x)
        return (x > hi) | (old & (x >= lo))

    return base.map_with_path(one, scores, old_mask, low_tree, high_tree)
