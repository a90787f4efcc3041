"""Perplexity and greedy generation for :class:`examples.llm.model.Llama`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from examples.llm import model as model_lib


@nnx.jit
def _nll(m: model_lib.Llama, tokens: jax.Array) -> jax.Array:
    logits = m(tokens[:, :-1]).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    return -jnp.sum(picked)


def perplexity(m: model_lib.Llama, sequences: np.ndarray, batch_size: int = 8) -> float:
    """``exp`` of the mean next-token negative log-likelihood over every sequence.

    Each row of ``sequences`` is scored on its own (positions 1..L-1 predicted from the
    prefix), as the Wanda and SparseGPT evaluations do.
    """
    sequences = np.asarray(sequences)
    total, count = 0.0, 0
    for i in range(0, len(sequences), batch_size):
        chunk = jnp.asarray(sequences[i : i + batch_size])
        total += float(_nll(m, chunk))
        count += chunk.shape[0] * (chunk.shape[1] - 1)
    return float(np.exp(total / count))


@nnx.jit(static_argnums=2)
def _greedy(m: model_lib.Llama, buf: jax.Array, length: int) -> jax.Array:
    def step(i, buf):
        logits = m(buf)
        nxt = jnp.argmax(logits[:, i - 1], axis=-1).astype(buf.dtype)
        return buf.at[:, i].set(nxt)

    return jax.lax.fori_loop(length, buf.shape[1], step, buf)


def generate(m: model_lib.Llama, tokenizer, prompt: str, max_new_tokens: int = 40) -> str:
    """Greedy continuation of ``prompt`` (no KV cache: the whole prefix is re-run each step)."""
    ids = tokenizer.encode(prompt).ids
    buf = (
        jnp.zeros((1, len(ids) + max_new_tokens), jnp.int32)
        .at[0, : len(ids)]
        .set(jnp.asarray(ids, jnp.int32))
    )
    out = np.asarray(_greedy(m, buf, len(ids)))[0]
    return tokenizer.decode(out[len(ids) :].tolist())
