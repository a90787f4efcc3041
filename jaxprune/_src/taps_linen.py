"""Collecting activations and gradients from Flax Linen models (:func:`linen_taps`).

Explicit taps (:func:`jaxprune.importance.tap`) are ``perturb`` plus ``sow`` into the
collections named in ``taps.py``; with ``modules=`` the outputs of chosen submodules are tapped
through ``nn.intercept_methods``, without changing the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxprune._src.taps import (
    PERTURBATIONS,
    TAP_OUTPUT,
    TAP_SUFFIX,
    TAPS,
    Taps,
    check_loss,
    flatten_taps,
)


def tap_linen(module: nn.Module, name: str, x: jax.Array) -> jax.Array:
    """:func:`jaxprune.importance.tap` for a Linen module: ``perturb`` plus ``sow``."""
    if module.scope is None:
        raise TypeError(f"tap {name!r}: the Linen module is not bound (call it in apply).")
    if module.is_initializing():
        return x
    x = module.perturb(name + TAP_SUFFIX, x, collection=PERTURBATIONS)
    module.sow(TAPS, name + TAP_SUFFIX, x)
    return x


def _module_selector(modules: Any) -> tuple[Callable[[nn.Module], bool], set[str] | None]:
    if callable(modules) and not isinstance(modules, (str, type)):
        return modules, None
    if isinstance(modules, str) or not isinstance(modules, Iterable):
        raise TypeError(
            "`modules` must be an iterable of module paths (e.g. ['conv1', 'Block_0/Dense_1']) "
            f"or a predicate module -> bool, got {modules!r}."
        )
    names = set(modules)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(f"`modules` entries must be strings, got {bad}.")
    return (lambda m: "/".join(m.path) in names), names


@contextlib.contextmanager
def _intercept(modules: Any):
    if modules is None:
        yield None
        return
    select, names = _module_selector(modules)

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name != "__call__" or module.is_initializing() or not select(module):
            return out
        if not isinstance(out, jax.Array):
            raise TypeError(
                f"module {'/'.join(module.path)!r} returns {type(out).__name__}; only modules "
                "returning one array can be tapped."
            )
        out = module.perturb(TAP_OUTPUT, out, collection=PERTURBATIONS)
        module.sow(TAPS, TAP_OUTPUT, out)
        return out

    with nn.intercept_methods(interceptor):
        yield names


def linen_taps(
    apply_fn: Callable[..., Any],
    variables: Mapping[str, Any],
    *args: Any,
    loss_fn: Callable[[Any], jax.Array] | None = None,
    modules: Any = None,
    **kwargs: Any,
) -> Taps:
    """Runs a Linen model and returns its tapped activations (and their loss gradients).

    Args:
      apply_fn: The model's ``apply`` (``model.apply``).
      variables: Its variables (``{"params": ...}``, plus ``"batch_stats"`` etc.).
      *args: Positional arguments of the model call (the batch).
      loss_fn: ``None`` for activations only, or a function of the model output returning a
        float scalar; its gradient with respect to each tapped activation is returned. Use
        the sum of per-example losses for per-example criteria (Taylor).
      modules: ``None`` (explicit :func:`jaxprune.importance.tap` calls only), or the
        submodules whose outputs to tap without changing the model: an iterable of module
        paths (``"conv1"``, ``"Block_0/Conv_0"``) or a predicate ``module -> bool`` (e.g.
        ``lambda m: isinstance(m, nn.Conv)``). Tap names are then the module paths.
      **kwargs: Keyword arguments of the model call (e.g. ``train=False``).

    Returns:
      A :class:`Taps`.

    Raises:
      ValueError: If no activation was tapped, a tap ran twice, a module named in
        ``modules`` was not found, or ``loss_fn`` does not return a scalar.
      TypeError: If ``variables`` already holds the tap collections or ``mutable`` is given.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import linen as nn
      >>> from jaxprune import importance
      >>> class Net(nn.Module):  # unchanged model
      ...     @nn.compact
      ...     def __call__(self, x):
      ...         return nn.Dense(2, name="out")(nn.relu(nn.Dense(3, name="fc")(x)))
      >>> net, x = Net(), jnp.ones((4, 5))
      >>> v = net.init(jax.random.key(0), x)
      >>> taps = importance.linen_taps(net.apply, v, x, modules=["fc"])
      >>> taps.activations["fc"].shape, taps.gradients
      ((4, 3), None)
    """
    if "mutable" in kwargs:
        raise TypeError("`mutable` is set by linen_taps; run the model in evaluation mode.")
    if not isinstance(variables, Mapping):
        raise TypeError(f"`variables` must be a dict of collections, got {type(variables)}.")
    for col in (TAPS, PERTURBATIONS):
        if col in variables:
            raise TypeError(
                f"`variables` holds the collection {col!r}, which linen_taps manages; pass "
                "only the model's own collections (e.g. {'params': params})."
            )
    base_vars = dict(variables)

    def run(perts):
        vs = dict(base_vars)
        if perts is not None:
            vs[PERTURBATIONS] = perts
        with _intercept(modules) as names:
            out, state = apply_fn(vs, *args, mutable=[TAPS], **kwargs)
        acts = flatten_taps(state.get(TAPS, {}), "activations")
        if names is not None:
            missing = sorted(names - set(acts))
            if missing:
                raise ValueError(
                    f"`modules` names {missing} matched no submodule call; tapped: {sorted(acts)}."
                )
        if not acts:
            raise ValueError(
                "no activation was tapped: add `x = jaxprune.importance.tap(self, 'name', x)` "
                "to the model, or pass `modules=`."
            )
        return out, acts

    if loss_fn is None:
        out, acts = run(None)
        return Taps(out, None, acts, None)

    def shapes():
        with _intercept(modules):
            _, state = apply_fn(base_vars, *args, mutable=[PERTURBATIONS], **kwargs)
        return state.get(PERTURBATIONS, {})

    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(shapes))

    def objective(perts):
        out, acts = run(perts)
        return check_loss(loss_fn(out)), (out, acts)

    (loss, (out, acts)), grads = jax.value_and_grad(objective, has_aux=True)(zeros)
    return Taps(out, loss, acts, flatten_taps(grads, "gradients"))
