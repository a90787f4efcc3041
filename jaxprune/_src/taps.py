"""Collecting activations and activation gradients from Flax Linen and NNX models: the core.

The data-driven criteria need, per tapped activation ``a``, its value and ``dL/da``. Both come
from one forward and one backward pass, with at most a one-line change to the model:

* **Explicit tap** (Linen and NNX): ``x = jaxprune.importance.tap(self, "conv1", x)`` where
  the activation is computed. In Linen it is ``perturb`` (a zero added from the collection
  ``"tap_perturbations"``) plus ``sow`` into ``"taps"``; in NNX it is ``perturb`` with the
  variable type :class:`jaxprune.importance.TapPerturbation` plus ``sow`` of
  :class:`jaxprune.importance.TapIntermediate`, which only act inside ``nnx.capture``.
  Outside :func:`jaxprune.importance.linen_taps` / :func:`jaxprune.importance.nnx_taps`
  (ordinary training, ``init``) the tap returns ``x`` unchanged, creates no variables and
  warns nothing.
* **No model change** (Linen): :func:`jaxprune.importance.linen_taps` with ``modules=`` taps
  the outputs of the chosen submodules through ``nn.intercept_methods``. A Conv or Dense
  output is the value *before* its ReLU: pass ``pre_relu=True`` to
  :func:`jaxprune.importance.channel_stats_update` (APoZ then counts ``z <= 0``, the same
  event as a zero after the ReLU; Taylor's ``z * dL/dz`` is unchanged).

Gradients: the collectors differentiate ``loss_fn(model output)`` with respect to zero
perturbations created for the current batch shape (so batch size may change between calls:
Flax's own perturbations keep the shape they were initialized with). Everything is jittable;
call the collectors inside your jitted statistics step.

This module holds what both collectors share and imports no flax: the :class:`Taps` result,
the collection names and the flattening of recorded taps. The Flax glue lives in
``taps_linen`` (:func:`jaxprune.importance.linen_taps`), ``taps_nnx``
(:func:`jaxprune.importance.nnx_taps` and the NNX variable types) and ``taps_flax``
(:func:`jaxprune.importance.tap`, which serves both APIs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

TAPS = "taps"  # Linen collection holding tapped activations.
PERTURBATIONS = "tap_perturbations"  # Linen collection holding the zero perturbations.
TAP_OUTPUT = "__tap_output__"  # Variable name under a module tapped by interception.
TAP_SUFFIX = ":tap"  # Linen variable names share a scope with submodules: tap 'conv1' of a
# module with a submodule 'conv1' is stored as 'conv1:tap'.


class Taps(NamedTuple):
    """What :func:`jaxprune.importance.linen_taps` and :func:`jaxprune.importance.nnx_taps` return.

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


def flatten_taps(tree: Any, what: str) -> dict[str, jax.Array]:
    """Flattens a nested tap collection into ``{'a/b/name': array}``; one value per tap."""
    out: dict[str, jax.Array] = {}

    def walk(node: Any, prefix: tuple[str, ...]) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, (*prefix, str(k)))
            return
        parts = prefix
        if parts and parts[-1] == TAP_OUTPUT:
            parts = parts[:-1]
        elif parts and parts[-1].endswith(TAP_SUFFIX):
            parts = (*parts[:-1], parts[-1][: -len(TAP_SUFFIX)])
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


def check_loss(loss: Any) -> jax.Array:
    """Returns ``loss`` as an array; raises ``ValueError`` unless it is a float scalar."""
    loss = jnp.asarray(loss)
    if loss.shape != () or not jnp.issubdtype(loss.dtype, jnp.floating):
        raise ValueError(
            f"`loss_fn` must return a float scalar, got shape {loss.shape} and dtype {loss.dtype}."
        )
    return loss
