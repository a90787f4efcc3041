"""Applying masks, validating them, and counting what they keep.

A mask leaf is a bool array broadcastable to its parameter (its shape is its granularity) or
``None`` (never pruned). Masks apply with ``jnp.where(mask, w, 0)``, which keeps the dtype and
never turns ``inf * 0`` into ``nan``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src import base


def check_masks(params: base.Params, masks: base.Mask) -> None:
    """Raises unless ``masks`` fits ``params``: same structure, bool leaves that broadcast.

    Args:
      params: A tree of arrays (or ``jax.ShapeDtypeStruct``).
      masks: A tree with the structure of ``params``; leaves are bool arrays broadcastable
        to the parameter, or ``None``.

    Returns:
      ``None``; it only raises.

    Raises:
      ValueError: If the structures differ or a mask leaf does not broadcast (the message
        names the path).
      TypeError: If a mask leaf is not a bool array.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> jaxprune.check_masks({"w": jnp.ones((2, 3))}, {"w": jnp.ones((1, 3), bool)})
    """
    params, masks = base.unwrap_variables(params), base.unwrap_variables(masks)
    base.check_structure(params, masks, "masks")
    for (path, p), (_, m) in zip(
        base.leaves_with_paths(params), base.leaves_with_paths(masks), strict=True
    ):
        if m is None:
            continue
        if p is None:
            raise ValueError(f"masks has an array at {path!r}, where the params hold None.")
        base.check_mask_leaf(path, m, p)


@jax.custom_jvp
def _straight_through_where(m: jax.Array, w: jax.Array) -> jax.Array:
    # Forward: exactly ``where(m, w, 0)``, for every value of w (an arithmetic form such as
    # ``w + stop_gradient(where(m, w, 0) - w)`` gives NaN for an infinite pruned weight).
    # Derivative: the identity, so pruned weights keep receiving the gradient of the masked
    # product (Dynamic Network Surgery).
    return jnp.where(m, w, jnp.zeros((), w.dtype))


@_straight_through_where.defjvp
def _straight_through_where_jvp(primals, tangents):
    m, w = primals
    _, dw = tangents
    return _straight_through_where(m, w), dw


def apply_masks(
    params: base.Params, masks: base.Mask, *, straight_through: bool = False
) -> base.Params:
    """Zeroes the pruned entries of ``params``.

    Args:
      params: A tree of arrays; ``None`` leaves stay ``None``. An NNX
        ``nnx.state(model, nnx.Param)`` works with the masks of an ``nnx.Optimizer`` (the
        result keeps the ``Param`` wrappers, ready for ``nnx.update(model, ...)``).
      masks: A tree with the structure of ``params``: bool leaves broadcastable to the
        parameter (``True`` = kept) or ``None`` (leaf left unchanged).
      straight_through: If ``True``, the forward value is the masked parameter but the
        gradient flows to every entry as if no mask were applied (the straight-through
        estimator of Dynamic Network Surgery, Guo et al. 2016): pruned weights keep learning
        and can be spliced back.

    Returns:
      A tree like ``params`` with pruned entries exactly ``0`` and dtypes unchanged.

    Raises:
      ValueError: If ``masks`` does not have the structure of ``params`` or a leaf does not
        broadcast; the message names the path.
      TypeError: If a mask leaf is not boolean.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> params = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]]), "b": jnp.ones(2)}
      >>> masks = {"w": jnp.array([[True, False]]), "b": None}
      >>> jaxprune.apply_masks(params, masks)["w"]
      Array([[1., 0.],
             [3., 0.]], dtype=float32)
    """
    check_masks(params, masks)
    if straight_through:
        fn = _straight_through_where
    else:
        fn = lambda m, w: jnp.where(m, w, jnp.zeros((), w.dtype))
    out = jax.tree.map(
        lambda w, m: w if (w is None or m is None) else fn(m, w),
        base.unwrap_variables(params),
        base.unwrap_variables(masks),
        is_leaf=base.is_none,
    )
    return base.rewrap_variables(params, out)


def full_masks(params: base.Params, masks: base.Mask) -> base.Mask:
    """Broadcasts every mask leaf to its parameter's full shape (``None`` stays ``None``).

    Args:
      params: A tree of arrays (or ``jax.ShapeDtypeStruct``).
      masks: A mask tree for ``params``.

    Returns:
      A tree of bool arrays with the parameters' shapes, ``None`` where ``masks`` is ``None``.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> jaxprune.full_masks({"w": jnp.ones((2, 2))}, {"w": jnp.array([[True, False]])})["w"]
      Array([[ True, False],
             [ True, False]], dtype=bool)
    """
    check_masks(params, masks)
    params, masks = base.unwrap_variables(params), base.unwrap_variables(masks)
    return base.map_prunable(lambda p, m: jnp.broadcast_to(m, p.shape), params, masks)


def count_kept(params: base.Params, masks: base.Mask) -> Any:
    """Counts, per leaf, the parameter entries a mask keeps (in entries of the full shape).

    Jittable. A channel mask of shape ``(1, 1, 1, C)`` on a ``(3, 3, 16, C)`` kernel that
    keeps ``c`` channels counts ``c * 3 * 3 * 16``.

    Args:
      params: A tree of arrays (or ``jax.ShapeDtypeStruct``).
      masks: A mask tree for ``params``; ``None`` leaves count as fully kept.

    Returns:
      A tree like ``params`` of int32 scalars (``None`` where ``params`` is ``None``).
    """
    check_masks(params, masks)
    params, masks = base.unwrap_variables(params), base.unwrap_variables(masks)

    def kept(p, m):
        if m is None:
            return jnp.asarray(int(np.prod(p.shape)), jnp.int32)
        factor = int(np.prod(p.shape)) // int(np.prod(m.shape))
        return jnp.sum(m, dtype=jnp.int32) * jnp.int32(factor)

    return jax.tree.map(
        lambda p, m: None if p is None else kept(p, m), params, masks, is_leaf=base.is_none
    )


class LayerStats(NamedTuple):
    """One row of :func:`summary`."""

    path: str
    shape: tuple[int, ...]
    size: int  # Entries of the parameter.
    kept: int  # Entries the mask keeps (the full size when unmasked).
    nonzero: int  # Non-zero entries of the parameter after masking.
    masked: bool  # Whether the leaf has a mask.
    weight_nonzero: int = -1  # Non-zero entries of the weights as given (before masking).

    @property
    def sparsity(self) -> float:
        """Fraction of entries that are zero after masking."""
        return 1.0 - self.nonzero / self.size if self.size else 0.0

    @property
    def weight_sparsity(self) -> float:
        """Fraction of entries that are zero in the weights as given (before masking)."""
        return 1.0 - self.weight_nonzero / self.size if self.size else 0.0

    @property
    def pruned_nonzero(self) -> int:
        """Entries the mask prunes whose weight is not zero (the masks and weights disagree)."""
        return self.weight_nonzero - self.nonzero


class SparsityStats(NamedTuple):
    """Totals and per-layer rows returned by :func:`summary`."""

    layers: tuple[LayerStats, ...]
    size: int  # All parameter entries, weights and biases (Han's convention).
    nonzero: int  # Non-zero entries after masking.
    prunable_size: int  # Entries of masked leaves only.
    prunable_nonzero: int
    weight_nonzero: int = -1  # Non-zero entries of the weights as given (before masking).

    @property
    def weight_sparsity(self) -> float:
        """Global sparsity of the weights as given (their own zeros, masks not applied)."""
        return 1.0 - self.weight_nonzero / self.size if self.size else 0.0

    @property
    def pruned_nonzero(self) -> int:
        """Entries the masks prune whose weight is not zero (``0`` when they agree)."""
        return self.weight_nonzero - self.nonzero

    @property
    def sparsity(self) -> float:
        """Global sparsity over every parameter."""
        return 1.0 - self.nonzero / self.size if self.size else 0.0

    @property
    def prunable_sparsity(self) -> float:
        """Sparsity over the masked leaves only."""
        if not self.prunable_size:
            return 0.0
        return 1.0 - self.prunable_nonzero / self.prunable_size

    @property
    def compression(self) -> float:
        """``size / nonzero``: the compression ratio that Han et al. and DNS report."""
        return self.size / self.nonzero if self.nonzero else float("inf")

    def by_path(self) -> dict[str, LayerStats]:
        """The rows keyed by parameter path."""
        return {row.path: row for row in self.layers}


def summary(
    params: base.Params,
    masks: base.Mask | None = None,
    *,
    print_fn: Callable[[str], Any] | None = print,
) -> SparsityStats:
    """Prints a per-layer sparsity table and returns the numbers. Runs on the host.

    Non-zeros are counted in the masked parameters (entries that are zero in the dense
    weights count as zero too), in entries of the full parameter shape. The weights' own
    non-zeros (before masking) are counted too: where the masks prune entries that are not
    zero in the weights, the table says so per leaf and in a final warning line (the
    sparsity shown then holds only after ``jaxprune.apply_masks``; for masks read from an
    optimizer state, ``optax_sparsity`` was probably not last in the chain). Leaves without a
    mask are marked ``(no mask)``; their sparsity is that of their own zeros.

    Args:
      params: A tree of arrays.
      masks: An optional mask tree; without it the parameters' own zeros are counted.
      print_fn: Where the table goes (``None`` prints nothing).

    Returns:
      A :class:`SparsityStats` with one :class:`LayerStats` per non-``None`` leaf.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> p = {"w": jnp.array([[0.0, 2.0], [3.0, 4.0]]), "b": jnp.ones(2)}
      >>> stats = jaxprune.summary(p, print_fn=None)
      >>> stats.nonzero, stats.size, round(stats.sparsity, 3)
      (5, 6, 0.167)
    """
    params = base.unwrap_variables(params)
    if masks is not None:
        masks = base.unwrap_variables(masks)
        masked = apply_masks(params, masks)
        mask_leaves = dict(base.leaves_with_paths(masks))
        kept_leaves = dict(base.leaves_with_paths(count_kept(params, masks)))
    else:
        masked, mask_leaves, kept_leaves = params, {}, {}
    weights = dict(base.leaves_with_paths(params))
    rows = []
    for path, x in base.leaves_with_paths(masked):
        if x is None:
            continue
        size = int(np.prod(x.shape))
        nonzero = int(np.count_nonzero(np.asarray(jax.device_get(x))))
        has_mask = mask_leaves.get(path) is not None
        kept = int(kept_leaves[path]) if has_mask else size
        own = (
            int(np.count_nonzero(np.asarray(jax.device_get(weights[path]))))
            if has_mask
            else nonzero
        )
        rows.append(LayerStats(path, tuple(x.shape), size, kept, nonzero, has_mask, own))
    stats = SparsityStats(
        layers=tuple(rows),
        size=sum(r.size for r in rows),
        nonzero=sum(r.nonzero for r in rows),
        prunable_size=sum(r.size for r in rows if r.masked),
        prunable_nonzero=sum(r.nonzero for r in rows if r.masked),
        weight_nonzero=sum(r.weight_nonzero for r in rows),
    )
    if print_fn is not None:
        print_fn(format_summary(stats))
    return stats


def format_summary(stats: SparsityStats) -> str:
    """Formats :class:`SparsityStats` as a fixed-width table."""
    width = max([len("path"), *(len(r.path) for r in stats.layers)])
    header = f"{'path':<{width}}  {'shape':>18}  {'params':>11}  {'non-zeros':>11}  sparsity"
    lines = [header, "-" * len(header)]
    for r in stats.layers:
        shape = "x".join(map(str, r.shape)) or "scalar"
        if not r.masked:
            mark = "  (no mask)"
        elif r.pruned_nonzero > 0:
            mark = (
                f"  ! weights {r.weight_sparsity:.2%} zero: {r.pruned_nonzero:,} pruned entries "
                "are non-zero"
            )
        else:
            mark = ""
        lines.append(
            f"{r.path:<{width}}  {shape:>18}  {r.size:>11,}  {r.nonzero:>11,}  "
            f"{r.sparsity:>8.2%}{mark}"
        )
    lines.append("-" * len(header))
    lines.append(
        f"{'total':<{width}}  {'':>18}  {stats.size:>11,}  {stats.nonzero:>11,}  "
        f"{stats.sparsity:>8.2%}  (compression {stats.compression:.1f}x)"
    )
    if stats.pruned_nonzero > 0:
        lines.append(
            f"WARNING: the masks prune {stats.pruned_nonzero:,} entries that are not zero in the "
            f"weights (the weights themselves are {stats.weight_sparsity:.2%} zero). The "
            "sparsity above holds only after jaxprune.apply_masks(params, masks); if the masks "
            "come from optax_sparsity, it is not last in the optax chain."
        )
    return "\n".join(lines)
