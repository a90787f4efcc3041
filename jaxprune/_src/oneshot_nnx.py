"""The one-shot block driver on Flax NNX modules, in place."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
from flax import nnx

from jaxprune._src import oneshot_driver as drv


def prune_nnx(
    blocks: Sequence[nnx.Module],
    hidden: jax.Array,
    method: drv.Magnitude | drv.Wanda | drv.SparseGPT,
    *,
    block_args: Sequence[Any] = (),
    allocation: drv.OWL | None = None,
    prunable: Callable[[str, jax.Array], bool] | None = None,
    batch_size: int = 8,
    errors: bool = False,
    progress: bool = True,
) -> list[drv.LayerReport]:
    """Prunes a stack of Flax NNX blocks in place, block by block, from calibration data.

    The NNX front end of :func:`prune_blocks`: each block is called as
    ``block(x, *block_args)``; its linear layers are found from its jaxpr, so the model is
    used as written. Paths in the report are relative to the block (``'attn/q/kernel'``).
    Kernels keep their sharding.

    Args:
      blocks: the blocks in order (e.g. ``model.blocks``).
      hidden: calibration activations entering the first block (e.g. the embedded tokens).
      method: :class:`Magnitude`, :class:`Wanda` or :class:`SparseGPT`.
      block_args: further arguments of every block call (e.g. RoPE tables).
      allocation: ``None`` (uniform) or :class:`OWL`.
      prunable: ``prunable(path, kernel) -> bool`` restricts which kernels are pruned.
      batch_size: calibration sequences per forward pass.
      errors: report every layer's reconstruction error for Gram-free methods too.
      progress: show a progress bar (if ``tqdm`` is installed).

    Returns:
      A :class:`LayerReport` per pruned layer.

    Raises:
      ValueError: as :func:`prune_blocks`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxprune
      >>> class Block(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.up = nnx.Linear(8, 16, use_bias=False, rngs=rngs)
      ...         self.down = nnx.Linear(16, 8, use_bias=False, rngs=rngs)
      ...     def __call__(self, x):
      ...         return x + self.down(jax.nn.relu(self.up(x)))
      >>> blocks = [Block(nnx.Rngs(i)) for i in range(2)]
      >>> x = jax.random.normal(jax.random.key(0), (4, 32, 8))
      >>> report = jaxprune.oneshot.prune_nnx(blocks, x, jaxprune.oneshot.SparseGPT(0.5),
      ...                                     progress=False)
      >>> float((blocks[1].down.kernel[...] == 0).mean())
      0.5
    """
    blocks = list(blocks)
    if not all(isinstance(b, nnx.Module) for b in blocks):
        raise TypeError("blocks must be nnx.Module instances")
    if not blocks:
        raise ValueError("blocks is empty")
    splits = [nnx.split(b) for b in blocks]
    graphdef = splits[0][0]
    if any(g != graphdef for g, _ in splits):
        raise ValueError("prune_nnx needs blocks of one structure (equal nnx.graphdef)")

    def block_fn(state, x, *args):
        return nnx.merge(graphdef, state)(x, *args)

    new, report = drv.prune_blocks(
        block_fn,
        [s for _, s in splits],
        hidden,
        method,
        block_args=block_args,
        allocation=allocation,
        prunable=prunable,
        batch_size=batch_size,
        errors=errors,
        progress=progress,
    )
    for b, state in zip(blocks, new, strict=True):
        nnx.update(b, state)
    return report
