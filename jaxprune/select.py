"""Score -> mask selectors: exact top-k (per layer and global), thresholds, N:M, hysteresis.

Every selector maps a params-shaped tree of scores (``None`` = not scored, never pruned) to a
bool mask tree of the same structure; ``True`` marks kept entries. All of them run under
``jax.jit``, and sparsities and thresholds may be traced (changing them never recompiles).
They prune every leaf they are given, biases and normalization scales included: pass
``jaxprune.only_prunable(params)`` (or its scores) to prune the leaves that
:func:`jaxprune.optax_sparsity` prunes by default (rank >= 2) and leave the rest ``None``.

How the exact top-k works. Nothing is sorted: XLA:CPU sorts ~30x slower than NumPy, and sorting
(``jnp.sort``, ``lax.top_k``, ``jnp.quantile``) gathers a sharded array onto every device.

1. Each float score becomes an order-preserving ``uint32`` key, computed in float32 (bf16/f16
   are upcast): non-finite scores (NaN, ``+inf``, ``-inf``) count as ``-inf``, ``-0.0`` as
   ``0.0``.
2. The k-th largest key is found exactly, leaf by leaf, without concatenating the leaves:

   * ``method="radix"``: passes that histogram one digit of the keys (16-bit digits, 2
     passes, for large inputs; 8-bit digits, 4 passes, for small ones), every leaf scattered
     into the same histogram; each pass keeps only the entries whose higher digits match the
     prefix found so far. Fastest on CPU.
   * ``method="bisect"``: 32 rounds of ``sum(key >= candidate)``, stopping early once exactly
     ``k`` keys pass. GSPMD partitions each round into a local count plus a scalar all-reduce,
     so it runs on explicitly sharded scores (where the scatter of a histogram is refused).
   * ``method="auto"``: ``"bisect"`` when a leaf carries an explicit non-replicated sharding,
     else ``"radix"``. Both give the same masks.

3. The mask keeps ``key > t`` and exactly as many ``key == t`` ties as needed: those with the
   lowest global index (tree leaf order, then row-major). The mask is therefore identical to
   ``lax.top_k`` + scatter on the concatenated scores. The tie-break costs nothing unless more
   entries tie at ``t`` than are needed; then the same kind of search runs over the reversed
   global index of the ties.

The number dropped is ``floor(s * n)``, computed exactly in integer arithmetic for the float32
value of ``s`` plus a slack of ``min(n, 2**16) * 2**-24``, which absorbs the float32 error of
decimal sparsities (``0.9`` of 10 drops 9 although float32 ``0.9`` is ``0.89999998``); a
float32 product would be off by one or more for ``n > 2**24``. Python-float and traced
sparsities give the same count.

Compile time grows with the number of leaves (each leaf adds its own fused loops): keep one
selection per jitted step, inside a ``lax.cond`` on the step count.
"""

from jaxprune._src.select import global_topk as global_topk
from jaxprune._src.select import hysteresis as hysteresis
from jaxprune._src.select import layerwise_topk as layerwise_topk
from jaxprune._src.select import n_of_m_mask as n_of_m_mask
from jaxprune._src.select import std_threshold as std_threshold
from jaxprune._src.select import threshold as threshold
from jaxprune._src.select import top_n_of_m as top_n_of_m
from jaxprune._src.select import topk_mask as topk_mask

__all__ = [
    "global_topk",
    "hysteresis",
    "layerwise_topk",
    "n_of_m_mask",
    "std_threshold",
    "threshold",
    "top_n_of_m",
    "topk_mask",
]
