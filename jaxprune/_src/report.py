"""The per-layer sparsity report: :func:`summary` counts, :func:`format_summary` prints.

Runs on the host. The masks and their counting are :mod:`masking`'s; this module only reads
the numbers back and formats them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxprune._src import base
from jaxprune._src.masking import apply_masks, count_kept


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
