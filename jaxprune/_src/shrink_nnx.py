"""Shrinking a Flax NNX module in place: its variables and its feature attributes.

The pytree surgery is :func:`jaxprune.shrink` (``shrink.py``, no flax); this module applies it
to ``nnx.state(module)`` and updates the layer attributes the forward pass reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flax import nnx

from jaxprune._src import base
from jaxprune._src.groups import Group
from jaxprune._src.shrink import shrink


def _new_in_features(sub: Any, kshape: tuple[int, ...]) -> dict[str, int]:
    """Updated ``in_features``/``feature_group_count`` of a convolution with a new kernel."""
    groups = int(getattr(sub, "feature_group_count", 1) or 1)
    old_in, old_out = sub.in_features, sub.out_features
    if groups > 1 and groups == old_in:  # depthwise, possibly with a channel multiplier
        new_groups = kshape[-1] // (old_out // groups)
        return {"in_features": new_groups, "feature_group_count": new_groups}
    return {"in_features": kshape[-2] * groups}


def _update_features(sub: Any, reshaped: dict[tuple[int, ...], tuple[int, ...]]) -> None:
    """Sets a gate-like module's ``features`` (an int or a shape) to its variable's new shape.

    Modules such as :class:`jaxprune.nnx.HardConcreteGate` read ``features`` in the forward
    pass; it equals the shape of their parameter, so a shrunk parameter shrinks it too.
    """
    feats = getattr(sub, "features", None)
    if isinstance(feats, bool) or not reshaped:
        return
    if isinstance(feats, int):
        new = reshaped.get((feats,))
        if new is not None:
            sub.features = new[0]
    elif isinstance(feats, (tuple, list)) and all(isinstance(d, int) for d in feats):
        new = reshaped.get(tuple(feats))
        if new is not None:
            sub.features = type(feats)(new)


def shrink_module(module: Any, group_masks: Mapping[str, Any], groups: Sequence[Group]) -> Any:
    """Shrinks a Flax NNX module in place and updates its feature attributes.

    Every ``nnx.Variable`` whose path is matched by a member (paths as in
    ``nnx.state(module)``, the tree ``trace_groups`` saw) gets its smaller value with
    ``Variable.set_value``; then ``in_features``/``out_features``/``kernel_shape`` of
    ``Linear`` and ``Conv`` layers (and ``feature_group_count`` of depthwise convolutions,
    which the forward pass reads), ``num_features`` of normalization layers, and the
    ``features`` of gate layers (:class:`jaxprune.nnx.HardConcreteGate` and the like) are set
    from the new shapes. Optimizers (``nnx.Optimizer``) built before must be re-created, or
    their state shrunk with :func:`shrink`.

    Args:
      module: An ``nnx.Module``.
      group_masks: ``{group name: bool vector}`` (``True`` = kept).
      groups: Groups naming paths of ``nnx.state(module)``.

    Returns:
      ``module`` itself, smaller.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxprune
      >>> from jaxprune import shrink_module
      >>> m = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.Linear(4, 2, rngs=nnx.Rngs(1)))
      >>> g = jaxprune.Group("h", (jaxprune.Member("layers/0/kernel", 1),
      ...     jaxprune.Member("layers/0/bias", 0), jaxprune.Member("layers/1/kernel", 0)))
      >>> m = shrink_module(m, {"h": jnp.array([True, False, True, True])}, [g])
      >>> m.layers[0].out_features, m.layers[1].in_features, m(jnp.ones((1, 3))).shape
      (3, 3, (1, 2))
    """
    small = dict(base.leaves_with_paths(shrink(nnx.state(module), group_masks, groups)))
    for parts, sub in nnx.iter_modules(module):
        prefix = "/".join(str(p) for p in parts)
        reshaped = {}  # old shape -> new shape of this module's shrunk variables
        for name, var in list(vars(sub).items()):
            if not isinstance(var, nnx.Variable):
                continue
            path = f"{prefix}/{name}" if prefix else name
            new = small.get(path)
            if new is not None and tuple(new.shape) != tuple(var.get_value().shape):
                reshaped[tuple(var.get_value().shape)] = tuple(new.shape)
                var.set_value(new)
        _update_features(sub, reshaped)
        kernel = getattr(sub, "kernel", None)
        if isinstance(kernel, nnx.Variable) and hasattr(sub, "out_features"):
            kshape = tuple(kernel.get_value().shape)
            updates = {"out_features": kshape[-1]}
            if hasattr(sub, "kernel_shape"):
                updates["kernel_shape"] = kshape
                updates.update(_new_in_features(sub, kshape))
            elif len(kshape) == 2:
                updates["in_features"] = kshape[0]
            for k, v in updates.items():
                setattr(sub, k, v)
        if hasattr(sub, "num_features"):
            for stat in ("scale", "mean", "bias", "var"):
                v = getattr(sub, stat, None)
                if isinstance(v, nnx.Variable):
                    sub.num_features = int(v.get_value().shape[-1])
                    break
    return module
