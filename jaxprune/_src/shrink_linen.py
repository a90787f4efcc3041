"""Rebuilding a smaller Flax Linen model from a widths spec (:func:`jaxprune.linen.rebuild`).

Linen modules are immutable dataclasses: the shrunk variables come from :func:`jaxprune.shrink`
and the spec from :func:`jaxprune.widths` (both in ``shrink.py``, no flax); this module makes
the model that matches them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxprune._src import base


def rebuild(model: Any, spec: Mapping[str, int], variables: Any, *example_inputs: Any) -> Any:
    """Rebuilds a Linen model from a widths spec and checks it against shrunk variables.

    Linen modules are immutable dataclasses, so a smaller model is a copy with smaller
    width fields. This sets every field of ``model`` named like a top-level module of the
    spec (``{"conv1": 10}`` sets ``model.conv1 = 10``), then initializes the new model
    abstractly (``jax.eval_shape``, nothing is computed) and checks that every variable has
    the shape of the shrunk ``variables``. Widths that follow from others need no field
    (a depthwise conv's width is its input's).

    Args:
      model: A ``flax.linen.Module`` whose width fields are named after its submodules.
      spec: ``{module path: features}``, e.g. from :func:`jaxprune.widths`.
      variables: The shrunk variables (e.g. from :func:`jaxprune.shrink`) the rebuilt model
        must match.
      *example_inputs: Inputs for the abstract ``model.init`` (``jax.ShapeDtypeStruct`` is
        enough).

    Returns:
      The rebuilt model.

    Raises:
      ValueError: If the rebuilt model's variables differ from ``variables`` in structure or
        shape (the message lists the first differences and the spec entries without a field).

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> import jaxprune
      >>> class MLP(nn.Module):
      ...     fc1: int = 8
      ...     @nn.compact
      ...     def __call__(self, x):
      ...         return nn.Dense(2, name="out")(nn.relu(nn.Dense(self.fc1, name="fc1")(x)))
      >>> x = jax.ShapeDtypeStruct((1, 3), jnp.float32)
      >>> v = jax.eval_shape(MLP().init, jax.random.key(0), x)
      >>> g = jaxprune.trace_groups(MLP().apply, v, x).groups
      >>> keep = {g[0].name: jnp.arange(8) < 5}
      >>> small_v = jaxprune.shrink(jax.tree.map(jnp.zeros_like, v), keep, g)
      >>> jaxprune.linen.rebuild(MLP(), jaxprune.widths(g, keep, v), small_v, x).fc1
      5
    """
    fields = {f.name for f in dataclasses.fields(model)}
    updates = {k: int(v) for k, v in spec.items() if "/" not in k and k in fields}
    unset = sorted(k for k in spec if k not in updates)
    new = dataclasses.replace(model, **updates)
    got = jax.eval_shape(new.init, jax.random.key(0), *example_inputs)
    w = {p: tuple(np.shape(x)) for p, x in base.leaves_with_paths(variables) if x is not None}
    g = {p: tuple(x.shape) for p, x in base.leaves_with_paths(got)}
    diffs = [
        f"{p}: rebuilt {g.get(p, 'missing')}, shrunk {w.get(p, 'missing')}"
        for p in sorted(set(w) | set(g))
        if w.get(p) != g.get(p)
    ]
    if diffs:
        raise ValueError(
            "the rebuilt model does not match the shrunk variables: "
            + "; ".join(diffs[:5])
            + (f" (and {len(diffs) - 5} more)" if len(diffs) > 5 else "")
            + f". Spec entries without a width field on the model: {unset}."
        )
    return new
