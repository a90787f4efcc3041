"""The decoder pruned block by block with :func:`jaxprune.oneshot.prune_nnx`."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import jaxprune
from examples.llm import model as model_lib

METHODS = {
    "magnitude": jaxprune.oneshot.Magnitude,
    "wanda": jaxprune.oneshot.Wanda,
    "sparsegpt": jaxprune.oneshot.SparseGPT,
}


def make_method(name: str, sparsity: float = 0.5, n_of_m: tuple[int, int] | None = None):
    """``jaxprune.oneshot.<Method>(sparsity, n_of_m)`` from its lower-case name."""
    if name not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {name!r}")
    return METHODS[name](sparsity=sparsity, n_of_m=n_of_m)


def prune(
    m: model_lib.Llama,
    calibration: np.ndarray,
    method,
    *,
    owl: bool | jaxprune.oneshot.OWL = False,
    batch_size: int = 8,
    errors: bool = False,
    progress: bool = True,
) -> list[jaxprune.oneshot.LayerReport]:
    """Prunes every q, k, v, o, gate, up and down kernel of ``m`` in place.

    Embeddings, norms (and the tied output head) stay dense, as in the Wanda and SparseGPT
    papers.

    Args:
      m: the model.
      calibration: ``(num, seq_len)`` int tokens.
      method: a :mod:`jaxprune.oneshot` method (see :func:`make_method`).
      owl: allocate block sparsities with OWL instead of uniformly (``True``: the paper's
        ``M = 5``, ``lambda = 0.08``; or a :class:`jaxprune.oneshot.OWL` with other values).
      batch_size: sequences per forward pass.
      errors: report reconstruction errors for Gram-free methods too.
      progress: show a progress bar.

    Returns:
      The per-layer report.
    """
    tokens = jnp.asarray(calibration, jnp.int32)
    cos, sin = model_lib.rope_tables(m.cfg, tokens.shape[1])
    hidden = m.hidden(tokens)
    if isinstance(owl, bool):
        allocation = jaxprune.oneshot.OWL() if owl else None
    elif isinstance(owl, jaxprune.oneshot.OWL):
        allocation = owl
    else:
        raise TypeError(f"owl must be a bool or a jaxprune.oneshot.OWL, got {owl!r}")
    return jaxprune.oneshot.prune_nnx(
        m.blocks,
        hidden,
        method,
        block_args=(cos, sin),
        allocation=allocation,
        batch_size=batch_size,
        errors=errors,
        progress=progress,
    )
