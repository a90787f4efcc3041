"""Pruning granularity as data: which axes of a parameter a mask keeps.

A mask's shape *is* its granularity: for a conv kernel ``(kh, kw, cin, cout)`` a
filter mask has shape ``(1, 1, 1, cout)``, an input-channel mask ``(1, 1, cin, 1)``, an SSL
filter-shape mask ``(kh, kw, cin, 1)``, a connection (Changpinyo) mask ``(1, 1, cin, cout)``, a
layer mask ``(1, 1, 1, 1)``, and unstructured and N:M masks the full shape. A
:class:`Granularity` is a small hashable spec that computes that shape for any leaf and reduces
element scores to it.

For a Dense kernel ``(in, out)`` the same specs read as: filter = output neuron (a column),
input channel = input neuron (a row), filter shape = input neuron, connection = unstructured.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import jax.numpy as jnp

from jaxprune._src import base

Reduction = Literal["sum", "mean", "max", "l1", "l2"]


@dataclasses.dataclass(frozen=True)
class Granularity:
    """Which axes a mask keeps; every other axis is pruned together (size 1 in the mask).

    A frozen dataclass (hashable, and a leaf for ``jax.tree`` functions, unlike a tuple).

    Exactly one of ``keep`` and ``reduce`` is set. Axes are negative (counted from the end) so
    one spec fits a Dense kernel and a conv kernel alike.

    Attributes:
      name: A short name used in messages and summaries.
      keep: Axes the mask keeps, e.g. ``(-1,)`` for filters; the others are reduced.
      reduce: Axes the mask reduces, e.g. ``(-1,)`` for SSL filter shapes; the others are kept.
      min_ndim: The smallest parameter rank this granularity applies to.
      n: For N:M, the number of entries kept in every group of ``m``.
      m: For N:M, the group size.
      axis: For N:M, the axis the groups run along (the input / reduction axis, ``-2``).
    """

    name: str
    keep: tuple[int, ...] | None = None
    reduce: tuple[int, ...] | None = None
    min_ndim: int = 1
    n: int = 0
    m: int = 0
    axis: int = -2

    @property
    def is_n_of_m(self) -> bool:
        return self.m > 0

    def mask_axes(self, ndim: int) -> tuple[int, ...]:
        """Returns the (non-negative) axes of an ``ndim``-D parameter that the mask keeps."""
        if self.keep is not None:
            return tuple(sorted(a % ndim for a in self.keep))
        reduced = {a % ndim for a in (self.reduce or ())}
        return tuple(a for a in range(ndim) if a not in reduced)

    def check(self, shape: tuple[int, ...], path: str) -> None:
        """Raises ``ValueError`` if this granularity does not fit a parameter of ``shape``."""
        ndim = len(shape)
        if ndim < self.min_ndim:
            raise ValueError(
                f"granularity {self.name!r} needs a parameter of rank >= {self.min_ndim}, but "
                f"{path!r} has shape {tuple(shape)}. Leave such leaves out: pass "
                "jaxprune.only_prunable(params) (None for every leaf of rank < 2, as "
                "optax_sparsity prunes by default) to the pure functions, or select the "
                "leaves with `prunable`."
            )
        if self.is_n_of_m:
            ax = self.axis % ndim
            if shape[ax] % self.m:
                raise ValueError(
                    f"N:M sparsity {self.n}:{self.m} runs along axis {self.axis} of {path!r}, "
                    f"whose size {shape[ax]} is not divisible by M={self.m}; exclude the leaf "
                    "(e.g. with `prunable`) or choose another M."
                )

    def mask_shape(self, shape: tuple[int, ...], path: str = "<leaf>") -> tuple[int, ...]:
        """Returns the shape of the mask this granularity gives a parameter of ``shape``."""
        self.check(shape, path)
        if self.is_n_of_m:
            return tuple(shape)
        kept = set(self.mask_axes(len(shape)))
        return tuple(d if a in kept else 1 for a, d in enumerate(shape))


def resolve(g: Any) -> Granularity:
    """The :class:`Granularity` that ``g`` (a granularity or its name) stands for.

    Args:
      g: A :class:`Granularity` or one of the names of the predefined ones.

    Returns:
      The granularity.

    Raises:
      TypeError: If ``g`` is neither (the valid names are listed).
    """
    if isinstance(g, Granularity):
        return g
    if isinstance(g, str) and g in _BY_NAME:
        return _BY_NAME[g]
    raise TypeError(
        f"granularity must be a jaxprune.Granularity or one of {sorted(_BY_NAME)}, got {g!r}."
    )


def single(granularity: Any) -> Granularity | None:
    """The granularity ``granularity`` names, or ``None`` when it is a prefix tree of them.

    The one place that tells the two forms of a ``granularity=`` argument apart.

    Args:
      granularity: A :class:`Granularity`, its name, or a prefix tree of them.

    Returns:
      The resolved granularity, or ``None`` for a tree.
    """
    if isinstance(granularity, (Granularity, str)):
        return resolve(granularity)
    return None


UNSTRUCTURED = Granularity("unstructured", reduce=(), min_ndim=0)
FILTER = Granularity("filter", keep=(-1,), min_ndim=1)
INPUT_CHANNEL = Granularity("input_channel", keep=(-2,), min_ndim=2)
FILTER_SHAPE = Granularity("filter_shape", reduce=(-1,), min_ndim=2)
CONNECTION = Granularity("connection", keep=(-2, -1), min_ndim=2)
LAYER = Granularity("layer", keep=(), min_ndim=0)

_BY_NAME = {
    g.name: g for g in (UNSTRUCTURED, FILTER, INPUT_CHANNEL, FILTER_SHAPE, CONNECTION, LAYER)
}


def n_of_m(n: int, m: int, axis: int = -2) -> Granularity:
    """N:M granularity: keep ``n`` of every ``m`` consecutive entries along ``axis``.

    The default axis is the input (reduction) axis of Flax kernels: axis 0 of a Dense kernel
    ``(in, out)`` and ``cin`` of an HWIO conv kernel, as NVIDIA's 2:4 sparsity requires.

    Args:
      n: Entries kept per group.
      m: Group size.
      axis: Axis along which groups of ``m`` consecutive entries are formed.

    Returns:
      A :class:`Granularity` whose masks have the parameter's full shape.

    Raises:
      ValueError: If ``not 0 < n <= m``.

    Example:
      >>> import jaxprune
      >>> jaxprune.n_of_m(2, 4).mask_shape((8, 3))
      (8, 3)
    """
    n = base.check_int(n, "n", 0)
    m = base.check_int(m, "m", 1)
    if not 0 < n <= m:
        raise ValueError(
            f"N:M needs 0 < n <= m, got n={n}, m={m}: n is the number of entries KEPT in every "
            f"group of m (n=0 would prune everything; 2:4 keeps half)."
        )
    return Granularity(
        f"{n}:{m}", reduce=(), min_ndim=1 if axis in (0, -1) else 2, n=n, m=m, axis=axis
    )


def reduce_scores(
    scores: jax.Array,
    granularity: Granularity | str,
    reduction: Reduction = "sum",
    path: str = "<leaf>",
) -> jax.Array:
    """Reduces element scores to the mask shape of ``granularity``.

    Args:
      scores: Element-level scores with the parameter's shape.
      granularity: The target granularity.
      reduction: ``"sum"``, ``"mean"``, ``"max"``, ``"l1"`` (sum of absolute values) or
        ``"l2"`` (Euclidean norm) over the pruned-together axes.
      path: Used in error messages.

    Returns:
      An array shaped ``granularity.mask_shape(scores.shape)`` (float32 for low-precision
      inputs, so that reductions do not lose precision).
    """
    g = resolve(granularity)
    g.check(scores.shape, path)
    if jnp.issubdtype(scores.dtype, jnp.floating) and jnp.finfo(scores.dtype).bits < 32:
        scores = scores.astype(jnp.float32)
    if g.is_n_of_m:
        return scores
    kept = set(g.mask_axes(scores.ndim))
    axes = tuple(a for a in range(scores.ndim) if a not in kept)
    if not axes:
        return scores
    if reduction == "sum":
        return jnp.sum(scores, axis=axes, keepdims=True)
    if reduction == "mean":
        return jnp.mean(scores, axis=axes, keepdims=True)
    if reduction == "max":
        return jnp.max(scores, axis=axes, keepdims=True)
    if reduction == "l1":
        return jnp.sum(jnp.abs(scores), axis=axes, keepdims=True)
    if reduction == "l2":
        return jnp.sqrt(jnp.sum(jnp.square(scores), axis=axes, keepdims=True))
    raise ValueError(
        f"`reduction` must be one of 'sum', 'mean', 'max', 'l1', 'l2', got {reduction!r}."
    )


def resolve_granularity_tree(granularity: Any, params: base.Params) -> Any:
    """Broadcasts a granularity (or a prefix tree of them, ``None`` = not pruned) to params."""
    g = single(granularity)
    if g is not None:
        return base.map_prunable(lambda _: g, params)
    tree = base.broadcast_prefix(granularity, params, "granularity")
    return base.map_prunable(lambda _, g: resolve(g), params, tree)
