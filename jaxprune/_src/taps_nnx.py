"""Collecting activations and gradients from Flax NNX models (:func:`nnx_taps`).

An explicit tap (:func:`jaxprune.importance.tap`) in an NNX module is ``perturb`` with the
variable type :class:`TapPerturbation` plus ``sow`` of :class:`TapIntermediate`, which only
act inside ``nnx.capture``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxprune._src.taps import Taps, check_loss, flatten_taps


class TapIntermediate(nnx.Intermediate):
    """NNX variable type of the activations :func:`jaxprune.importance.tap` records.

    They are recorded only inside ``nnx.capture``.
    """


class TapPerturbation(nnx.Perturbation):
    """NNX variable type of the zero perturbations whose gradients are ``dL/da``."""


def tap_nnx(module: nnx.Module, name: str, x: jax.Array) -> jax.Array:
    """:func:`jaxprune.importance.tap` for an NNX module; records only inside ``nnx.capture``."""
    if not hasattr(module, "__captures__"):  # not inside nnx.capture: nothing to record
        return x
    x = module.perturb(name, x, variable_type=TapPerturbation)
    module.sow(TapIntermediate, name, x)
    return x


def nnx_taps(
    model: nnx.Module,
    *args: Any,
    loss_fn: Callable[[Any], jax.Array] | None = None,
    **kwargs: Any,
) -> Taps:
    """Runs an NNX model and returns its tapped activations (and their loss gradients).

    Uses ``nnx.capture`` on a functional copy (``nnx.split`` / ``nnx.merge``), so the model
    itself is not modified and the call works inside ``nnx.jit`` (model as an argument) or
    ``jax.jit``. Put the model in evaluation mode first (``model.eval()``) if it has dropout
    or batch norm.

    Args:
      model: The NNX model, containing :func:`jaxprune.importance.tap` calls.
      *args: Positional arguments of the model call.
      loss_fn: ``None`` for activations only, or a function of the model output returning a
        float scalar (use the sum of per-example losses for Taylor).
      **kwargs: Keyword arguments of the model call.

    Returns:
      A :class:`Taps`.

    Raises:
      ValueError: If no activation was tapped, a tap ran twice, or ``loss_fn`` does not
        return a scalar.
      TypeError: If ``model`` is not an NNX module.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxprune import importance
      >>> class MLP(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.fc1, self.fc2 = nnx.Linear(5, 4, rngs=rngs), nnx.Linear(4, 2, rngs=rngs)
      ...     def __call__(self, x):
      ...         return self.fc2(importance.tap(self, "h", nnx.relu(self.fc1(x))))
      >>> model, x = MLP(nnx.Rngs(0)), jnp.ones((3, 5))
      >>> model(x).shape  # an ordinary call: the tap does nothing
      (3, 2)
      >>> taps = importance.nnx_taps(model, x, loss_fn=lambda y: y.sum())
      >>> taps.activations["h"].shape, taps.gradients["h"].shape
      ((3, 4), (3, 4))
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"`model` must be an NNX module, got {type(model).__name__}.")
    graphdef, state = nnx.split(model)

    def run(st, perts):
        m = nnx.merge(graphdef, st)
        if perts is None:
            out, inter = nnx.capture(m, TapIntermediate)(*args, **kwargs)
        else:
            out, inter = nnx.capture(m, TapIntermediate, init=perts)(*args, **kwargs)
        acts = flatten_taps(nnx.to_pure_dict(inter), "activations")
        if not acts:
            raise ValueError(
                "no activation was tapped: add `x = jaxprune.importance.tap(self, 'name', x)` "
                "to the model."
            )
        return out, acts

    if loss_fn is None:
        out, acts = run(state, None)
        return Taps(out, None, acts, None)

    def shapes(st):
        return nnx.capture(nnx.merge(graphdef, st), TapPerturbation)(*args, **kwargs)[1]

    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(shapes, state))

    def objective(perts):
        out, acts = run(state, perts)
        return check_loss(loss_fn(out)), (out, acts)

    (loss, (out, acts)), grads = jax.value_and_grad(objective, has_aux=True)(zeros)
    return Taps(out, loss, acts, flatten_taps(nnx.to_pure_dict(grads), "gradients"))
