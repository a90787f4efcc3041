"""Applying masks, validating them, and counting what they keep.

A mask leaf is a bool array broadcastable to its parameter (its shape is its granularity) or
``None`` (never pruned). Masks apply with ``jnp.where(mask, w, 0)``, which keeps the dtype and
never turns ``inf * 0`` into ``nan``. The printed sparsity report (:func:`jaxprune.summary`)
is built on these in ``report.py``.
"""

from __future__ import annotations

from typing import Any

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
