"""A LLaMA-family decoder in Flax NNX: RMSNorm, RoPE, grouped-query attention, SwiGLU, tied
embeddings.

Kernels follow Flax's ``(in_features, out_features)`` layout. Rotary embeddings rotate the two
halves of each head (``rotate_half``, the Hugging Face convention); the GGUF loader converts
llama.cpp's interleaved Q/K row order to it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx


@dataclasses.dataclass(frozen=True)
class Config:
    """Hyper-parameters of the decoder.

    Attributes:
      vocab_size: number of tokens.
      dim: width of the residual stream.
      num_layers: number of decoder blocks.
      num_heads: query heads per block.
      num_kv_heads: key/value heads per block (``num_heads`` must be a multiple).
      head_dim: width of one head.
      hidden_dim: SwiGLU width.
      rope_theta: RoPE base frequency.
      norm_eps: RMSNorm epsilon.
      tie_embeddings: whether the output projection is the transposed token embedding.
      fused_qkv: one ``qkv`` kernel of width ``(num_heads + 2 * num_kv_heads) * head_dim``
        (query, key, value segments in that order) instead of ``q``, ``k``, ``v``.
      fused_gate_up: one ``gate_up`` kernel of width ``2 * hidden_dim`` (gate then up)
        instead of ``gate`` and ``up``.
    """

    vocab_size: int = 49152
    dim: int = 576
    num_layers: int = 30
    num_heads: int = 9
    num_kv_heads: int = 3
    head_dim: int = 64
    hidden_dim: int = 1536
    rope_theta: float = 100000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    fused_qkv: bool = False
    fused_gate_up: bool = False

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")


SMOLLM2_135M = Config()
TINY = Config(
    vocab_size=97, dim=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, hidden_dim=96
)


class RMSNorm(nnx.Module):
    """Root-mean-square normalisation with a learned scale."""

    def __init__(self, dim: int, eps: float):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.eps = eps

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        scale = self.scale[...].reshape((1,) * (x.ndim - 1) + (-1,))
        return (y * scale).astype(x.dtype)


def rope_tables(cfg: Config, seq_len: int) -> tuple[jax.Array, jax.Array]:
    """Cosine and sine tables of shape ``(seq_len, head_dim // 2)``."""
    half = cfg.head_dim // 2
    inv = 1.0 / (cfg.rope_theta ** (jnp.arange(half, dtype=jnp.float32) / half))
    ang = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv[None, :]
    return jnp.cos(ang), jnp.sin(ang)


def apply_rope(x, cos, sin):
    """Rotates ``x`` of shape ``(..., seq, heads, head_dim)`` by position (rotate-half pairs)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    lead = (1,) * (x.ndim - 3)
    c = cos.reshape(*lead, cos.shape[0], 1, half)
    s = sin.reshape(*lead, sin.shape[0], 1, half)
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x.dtype)


def _linear(din: int, dout: int, rngs: nnx.Rngs) -> nnx.Linear:
    init = nnx.initializers.normal(0.02)
    return nnx.Linear(din, dout, use_bias=False, kernel_init=init, rngs=rngs)


class Attention(nnx.Module):
    """Causal grouped-query self-attention with rotary position embeddings."""

    def __init__(self, cfg: Config, rngs: nnx.Rngs):
        self.num_heads, self.num_kv_heads, self.head_dim = (
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
        )
        self.fused = cfg.fused_qkv
        if self.fused:
            width = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
            self.qkv = _linear(cfg.dim, width, rngs)
        else:
            self.q = _linear(cfg.dim, cfg.num_heads * cfg.head_dim, rngs)
            self.k = _linear(cfg.dim, cfg.num_kv_heads * cfg.head_dim, rngs)
            self.v = _linear(cfg.dim, cfg.num_kv_heads * cfg.head_dim, rngs)
        self.o = _linear(cfg.num_heads * cfg.head_dim, cfg.dim, rngs)

    def _project(self, x, cos, sin):
        """Rotated queries ``(..., t, kv, g, hd)`` and keys, and values ``(..., t, kv, hd)``."""
        *lead, t, _ = x.shape
        if self.fused:
            nq, nk = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
            qkv = self.qkv(x)
            q, k, v = qkv[..., :nq], qkv[..., nq : nq + nk], qkv[..., nq + nk :]
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        q = q.reshape(*lead, t, self.num_heads, self.head_dim)
        k = k.reshape(*lead, t, self.num_kv_heads, self.head_dim)
        v = v.reshape(*lead, t, self.num_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        groups = self.num_heads // self.num_kv_heads
        return q.reshape(*lead, t, self.num_kv_heads, groups, self.head_dim), k, v

    def _attend(self, q, k, v, visible):
        """Attention of ``q`` over ``k``/``v`` where ``visible`` (``(q_len, kv_len)``) is True."""
        logits = jnp.einsum("...qkgd,...skd->...kgqs", q, k).astype(jnp.float32)
        logits = logits / jnp.sqrt(jnp.float32(self.head_dim))
        visible = visible.reshape((1,) * (logits.ndim - 2) + visible.shape)
        logits = jnp.where(visible, logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("...kgqs,...skd->...qkgd", probs, v)
        return self.o(out.reshape(*out.shape[:-3], self.num_heads * self.head_dim))

    def __call__(self, x, cos, sin):
        t = x.shape[-2]
        q, k, v = self._project(x, cos, sin)
        return self._attend(q, k, v, jnp.tril(jnp.ones((t, t), bool)))

    def decode(self, x, cos, sin, cache, pos):
        """One token ``x`` ``(batch, 1, dim)`` at position ``pos``, with a KV ``cache``.

        ``cache`` is ``(keys, values)``, each ``(batch, max_len, num_kv_heads, head_dim)``;
        the new key and value are written at ``pos`` and the token attends to positions
        ``<= pos``. Returns ``(output, cache)``.
        """
        q, k, v = self._project(x, cos, sin)
        keys = jax.lax.dynamic_update_slice_in_dim(cache[0], k, pos, axis=1)
        values = jax.lax.dynamic_update_slice_in_dim(cache[1], v, pos, axis=1)
        visible = (jnp.arange(keys.shape[1]) <= pos)[None, :]
        return self._attend(q, keys, values, visible), (keys, values)


class MLP(nnx.Module):
    """SwiGLU feed-forward: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, cfg: Config, rngs: nnx.Rngs):
        self.fused = cfg.fused_gate_up
        self.hidden_dim = cfg.hidden_dim
        if self.fused:
            self.gate_up = _linear(cfg.dim, 2 * cfg.hidden_dim, rngs)
        else:
            self.gate = _linear(cfg.dim, cfg.hidden_dim, rngs)
            self.up = _linear(cfg.dim, cfg.hidden_dim, rngs)
        self.down = _linear(cfg.hidden_dim, cfg.dim, rngs)

    def __call__(self, x):
        if self.fused:
            gu = self.gate_up(x)
            g, u = gu[..., : self.hidden_dim], gu[..., self.hidden_dim :]
        else:
            g, u = self.gate(x), self.up(x)
        return self.down(jax.nn.silu(g) * u)


class Block(nnx.Module):
    """Pre-norm decoder block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, cfg: Config, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))

    def decode(self, x, cos, sin, cache, pos):
        """The block on one token with a KV cache (see :meth:`Attention.decode`)."""
        a, cache = self.attn.decode(self.attn_norm(x), cos, sin, cache, pos)
        x = x + a
        return x + self.mlp(self.mlp_norm(x)), cache


class Llama(nnx.Module):
    """The decoder: token embedding, ``num_layers`` blocks, final norm, (tied) output head.

    Example:
      >>> from flax import nnx
      >>> from examples.llm import model
      >>> m = model.Llama(model.TINY, rngs=nnx.Rngs(0))
      >>> m(jnp.zeros((2, 5), jnp.int32)).shape
      (2, 5, 97)
    """

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = nnx.Embed(
            cfg.vocab_size, cfg.dim, embedding_init=nnx.initializers.normal(0.02), rngs=rngs
        )
        self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        if not cfg.tie_embeddings:
            self.head = _linear(cfg.dim, cfg.vocab_size, rngs)

    def hidden(self, tokens):
        """The residual stream entering the first block."""
        return self.embed(tokens)

    def logits(self, h):
        """Final norm and output head applied to the last residual stream."""
        h = self.norm(h)
        return self.embed.attend(h) if self.cfg.tie_embeddings else self.head(h)

    def __call__(self, tokens):
        cos, sin = rope_tables(self.cfg, tokens.shape[-1])
        h = self.hidden(tokens)
        for block in self.blocks:
            h = block(h, cos, sin)
        return self.logits(h)

    def init_cache(self, batch: int, max_len: int) -> list[tuple[jax.Array, jax.Array]]:
        """An empty KV cache for :meth:`decode_step`: per block, zero keys and values."""
        c = self.cfg
        shape = (batch, max_len, c.num_kv_heads, c.head_dim)
        return [(jnp.zeros(shape), jnp.zeros(shape)) for _ in range(c.num_layers)]

    def decode_step(self, tokens, cache, pos):
        """Logits ``(batch, vocab)`` of the next token after ``tokens`` ``(batch,)`` at ``pos``.

        Incremental decoding with the KV ``cache`` of :meth:`init_cache` (``max_len`` from its
        shape): feeding a sequence token by token gives the logits of :meth:`__call__`.
        Returns ``(logits, cache)``.
        """
        cos, sin = rope_tables(self.cfg, cache[0][0].shape[1])
        cos = jax.lax.dynamic_slice_in_dim(cos, pos, 1)
        sin = jax.lax.dynamic_slice_in_dim(sin, pos, 1)
        h = self.hidden(tokens[:, None])
        new = []
        for block, c in zip(self.blocks, cache, strict=True):
            h, c = block.decode(h, cos, sin, c, pos)
            new.append(c)
        return self.logits(h)[:, 0], new
