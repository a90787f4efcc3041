"""Collecting activations and activation gradients from Flax Linen and NNX models.

The data-driven criteria need, per tapped activation ``a``, its value and ``dL/da``. Both come
from one forward and one backward pass, with at most a one-line change to the model:

* **Explicit tap** (Linen and NNX): ``x = jaxprune.importance.tap(self, "conv1", x)`` where
  the activation is computed. In Linen it is ``perturb`` (a zero added from the collection
  ``"tap_perturbations"``) plus ``sow`` into ``"taps"``; in NNX it is ``perturb`` with the
  variable type :class:`TapPerturbation` plus ``sow`` of :class:`TapIntermediate`, which
  only act inside ``nnx.capture``. Outside :func:`linen_taps` / :func:`nnx_taps` (ordinary
  training, ``init``) the tap returns ``x`` unchanged, creates no variables and warns
  nothing.
* **No model change** (Linen): :func:`linen_taps` with ``modules=`` taps the outputs of the
  chosen submodules through ``nn.intercept_methods``. A Conv or Dense output is the value
  *before* its ReLU: pass ``pre_relu=True`` to
  :func:`jaxprune.importance.channel_stats_update` (APoZ then counts ``z <= 0``, the same
  event as a zero after the ReLU; Taylor's ``z * dL/dz`` is unchanged).

Gradients: the collectors differentiate ``loss_fn(model output)`` with respect to zero
perturbations created for the current batch shape (so batch size may change between calls:
Flax's own perturbations keep the shape they were initialized with). Everything is jittable;
call the collectors inside your jitted statistics step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

TAPS = "taps"  # Linen collection holding tapped activations.
PERTURBATIONS = "tap_perturbations"  # Linen collection holding the zero perturbations.
_OUTPUT = "__tap_output__"  # Variable name under a module tapped by interception.
_SUFFIX = ":tap"  # Linen variable names share a scope with submodules: tap 'conv1' of a module
# with a submodule 'conv1' is stored as 'conv1:tap'.


class TapIntermediate(nnx.Intermediate):
    """NNX variable type of the activations :func:`tap` records inside ``nnx.capture``."""


class TapPerturbation(nnx.Perturbation):
    """NNX variable type of the zero perturbations whose gradients are ``dL/da``."""


class Taps(NamedTuple):
    """What :func:`linen_taps` and :func:`nnx_taps` return.

    Attributes:
      output: The model's output.
      loss: ``loss_fn(output)``, or ``None`` without ``loss_fn``.
      activations: A dict from tap name (``'/'``-joined module path and tap name) to the
        activation.
      gradients: A dict with the same names holding ``dL/da``, or ``None`` without
        ``loss_fn``.
    """

    output: Any
    loss: jax.Array | None
    activations: dict[str, jax.Array]
    gradients: dict[str, jax.Array] | None


def tap(module: Any, name: str, x: jax.Array) -> jax.Array:
    """Marks an activation for statistics collection: the one line to add to a model.

    Returns ``x`` (plus a zero perturbation while :func:`linen_taps` / :func:`nnx_taps`
    collect gradients); outside those collectors it does nothing at all.

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
        if module.scope is None:
            raise TypeError(f"tap {name!r}: the Linen module is not bound (call it in apply).")
        if module.is_initializing():
            return x
        x = module.perturb(name + _SUFFIX, x, collection=PERTURBATIONS)
        module.sow(TAPS, name + _SUFFIX, x)
        return x
    if isinstance(module, nnx.Module):
        if not hasattr(module, "__captures__"):  # not inside nnx.capture: nothing to record
            return x
        x = module.perturb(name, x, variable_type=TapPerturbation)
        module.sow(TapIntermediate, name, x)
        return x
    raise TypeError(
        f"tap {name!r}: `module` must be a Flax Linen or NNX module (pass `self`), got "
        f"{type(module).__name__}."
    )


def _flatten_taps(tree: Any, what: str) -> dict[str, jax.Array]:
    """Flattens a nested tap collection into ``{'a/b/name': array}``; one value per tap."""
    out: dict[str, jax.Array] = {}

    def walk(node: Any, prefix: tuple[str, ...]) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, (*prefix, str(k)))
            return
        parts = prefix
        if parts and parts[-1] == _OUTPUT:
            parts = parts[:-1]
        elif parts and parts[-1].endswith(_SUFFIX):
            parts = (*parts[:-1], parts[-1][: -len(_SUFFIX)])
        key = "/".join(parts)
        if isinstance(node, tuple):
            if len(node) != 1:
                raise ValueError(
                    f"tap {key!r} recorded {len(node)} values in one forward pass; a tap (or a "
                    "tapped module) must run once per call: give each call its own name."
                )
            node = node[0]
        out[key] = node

    walk(tree, ())
    return out


def _check_loss(loss: Any) -> jax.Array:
    loss = jnp.asarray(loss)
    if loss.shape != () or not jnp.issubdtype(loss.dtype, jnp.floating):
        raise ValueError(
            f"`loss_fn` must return a float scalar, got shape {loss.shape} and dtype {loss.dtype}."
        )
    return loss


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
        out = module.perturb(_OUTPUT, out, collection=PERTURBATIONS)
        module.sow(TAPS, _OUTPUT, out)
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
      modules: ``None`` (explicit :func:`tap` calls only), or the submodules whose outputs to
        tap without changing the model: an iterable of module paths (``"conv1"``,
        ``"Block_0/Conv_0"``) or a predicate ``module -> bool`` (e.g.
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
        acts = _flatten_taps(state.get(TAPS, {}), "activations")
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
        return _check_loss(loss_fn(out)), (out, acts)

    (loss, (out, acts)), grads = jax.value_and_grad(objective, has_aux=True)(zeros)
    return Taps(out, loss, acts, _flatten_taps(grads, "gradients"))


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
      model: The NNX model, containing :func:`tap` calls.
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
        acts = _flatten_taps(nnx.to_pure_dict(inter), "activations")
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
        return _check_loss(loss_fn(out)), (out, acts)

    (loss, (out, acts)), grads = jax.value_and_grad(objective, has_aux=True)(zeros)
    return Taps(out, loss, acts, _flatten_taps(nnx.to_pure_dict(grads), "gradients"))
