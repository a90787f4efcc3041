"""The explicit tap of both Flax APIs (:func:`tap`): the one line to add to a model."""

from __future__ import annotations

from typing import Any

import jax
from flax import linen as nn
from flax import nnx

from jaxprune._src.taps_linen import tap_linen
from jaxprune._src.taps_nnx import tap_nnx


def tap(module: Any, name: str, x: jax.Array) -> jax.Array:
    """Marks an activation for statistics collection: the one line to add to a model.

    Returns ``x`` (plus a zero perturbation while :func:`jaxprune.importance.linen_taps` /
    :func:`jaxprune.importance.nnx_taps` collect gradients); outside those collectors it does
    nothing at all.

    Args:
      module: ``self`` of the Linen or NNX module computing ``x``.
      name: The tap name, unique within the module (pruning groups are named after taps).
      x: The activation, channels last (``(N, ..., C)``).

    Returns:
      ``x``, to be used in place of the original (the gradient flows through it).

    Raises:
      TypeError: If ``module`` is not a Flax module or ``name`` is not a string.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import linen as nn
      >>> from jaxprune import importance
      >>> class MLP(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x):
      ...         x = importance.tap(self, "h", nn.relu(nn.Dense(4)(x)))
      ...         return nn.Dense(2)(x)
      >>> model = MLP()
      >>> x = jnp.ones((3, 5))
      >>> variables = model.init(jax.random.key(0), x)
      >>> sorted(variables)  # the tap adds no variables
      ['params']
      >>> taps = importance.linen_taps(model.apply, variables, x, loss_fn=lambda y: y.sum())
      >>> taps.activations["h"].shape, taps.gradients["h"].shape
      ((3, 4), (3, 4))
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"tap `name` must be a non-empty string, got {name!r}.")
    if isinstance(module, nn.Module):
        return tap_linen(module, name, x)
    if isinstance(module, nnx.Module):
        return tap_nnx(module, name, x)
    raise TypeError(
        f"tap {name!r}: `module` must be a Flax Linen or NNX module (pass `self`), got "
        f"{type(module).__name__}."
    )
