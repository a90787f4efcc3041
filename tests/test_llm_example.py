"""examples/llm: the LLaMA decoder, the GGUF Q/K row order, the data split, perplexity."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxprune
from examples.llm import data, evaluate, gguf_loader
from examples.llm import model as llm


def _halves_to_interleaved(w, heads):  # what llama.cpp's converter does to Q and K rows
    hd = w.shape[0] // heads
    return w.reshape(heads, 2, hd // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rope_interleaved(x, cos, sin):  # llama.cpp's "normal" RoPE: adjacent pairs
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = cos[:, None, :], sin[:, None, :]
    return jnp.stack([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).reshape(x.shape)


def test_qk_permutation_is_undone_and_makes_the_two_rope_conventions_agree():
    rng = np.random.default_rng(0)
    heads, hd, d, t = 3, 8, 12, 5
    w = rng.normal(size=(heads * hd, d)).astype(np.float32)  # (out, in), halves order
    gguf_w = _halves_to_interleaved(w, heads)
    np.testing.assert_array_equal(gguf_loader.interleaved_to_halves(gguf_w, heads), w)
    cfg = llm.Config(
        vocab_size=7,
        dim=d,
        num_layers=1,
        num_heads=heads,
        num_kv_heads=1,
        head_dim=hd,
        hidden_dim=8,
    )
    cos, sin = llm.rope_tables(cfg, t)
    x = rng.normal(size=(t, d)).astype(np.float32)
    q_halves = llm.apply_rope((x @ w.T).reshape(t, heads, hd), cos, sin)
    q_gguf = _rope_interleaved((x @ gguf_w.T).reshape(t, heads, hd), cos, sin)
    # Same attention logits (q.k is invariant to the pairing permutation applied to both).
    logits = jnp.einsum("qhd,khd->hqk", q_halves, q_halves)
    np.testing.assert_allclose(
        logits, jnp.einsum("qhd,khd->hqk", q_gguf, q_gguf), rtol=1e-4, atol=1e-4
    )
    # Without the fix, interleaved weights under rotate-half RoPE compute something else.
    wrong = llm.apply_rope((x @ gguf_w.T).reshape(t, heads, hd), cos, sin)
    assert not np.allclose(jnp.einsum("qhd,khd->hqk", wrong, wrong), logits, atol=1e-2)


def test_model_is_causal_and_uses_grouped_query_attention():
    m = llm.Llama(llm.TINY, rngs=nnx.Rngs(0))
    assert m.blocks[0].attn.k.kernel.shape == (64, 2 * 16)
    tokens = jax.random.randint(jax.random.key(0), (2, 10), 0, 97)
    out = m(tokens)
    changed = m(tokens.at[:, 6].set((tokens[:, 6] + 1) % 97))
    np.testing.assert_allclose(out[:, :6], changed[:, :6], atol=1e-5)
    assert not np.allclose(out[:, 6:], changed[:, 6:])


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    m = llm.Llama(llm.TINY, rngs=nnx.Rngs(0))
    m.embed.embedding.set_value(jnp.zeros_like(m.embed.embedding[...]))  # tied: zero logits
    seqs = np.random.default_rng(0).integers(0, 97, (3, 9))
    np.testing.assert_allclose(evaluate.perplexity(m, seqs, batch_size=2), 97.0, rtol=1e-5)


def test_calibration_and_evaluation_never_overlap():
    tokens = np.arange(10_000, dtype=np.int32)  # unique tokens stand for positions
    cal = data.calibration(tokens, 20, 64)
    ev = data.evaluation(tokens, 10, 64)
    assert cal.shape == (20, 64) and ev.shape == (10, 64)
    assert cal.max() < 6000 <= ev.min()
    assert len(set(cal.ravel())) == cal.size  # evenly spaced, non-overlapping here
    np.testing.assert_array_equal(ev.ravel(), np.arange(6000, 6640))


def test_text_is_the_stdlib_topics():
    assert len(data.text()) > 400_000


@pytest.mark.parametrize("fused", [False, True])
def test_kv_cache_decoding_matches_the_full_forward(fused):
    cfg = dataclasses.replace(llm.TINY, fused_qkv=fused)
    m = llm.Llama(cfg, rngs=nnx.Rngs(3))
    tokens = jax.random.randint(jax.random.key(4), (2, 9), 0, cfg.vocab_size)
    full = m(tokens)

    @nnx.jit
    def step(m, tok, cache, pos):
        return m.decode_step(tok, cache, pos)

    cache = m.init_cache(2, 12)  # longer than the sequence: unused slots stay invisible
    for t in range(tokens.shape[1]):
        logits, cache = step(m, tokens[:, t], cache, t)
        np.testing.assert_allclose(logits, full[:, t], rtol=1e-5, atol=1e-5)


@pytest.mark.standard_dtypes  # optax's Adam bias correction mixes int and float
def test_distillation_lowers_the_kl_to_the_teacher_and_keeps_shapes():
    from examples.llm import distill

    teacher = llm.Llama(llm.TINY, rngs=nnx.Rngs(0))
    teacher.embed.embedding[...] *= 30.0  # peaked next-token distributions: a large KL
    student = llm.Llama(dataclasses.replace(llm.TINY, hidden_dim=48), rngs=nnx.Rngs(1))
    shapes = jax.tree.map(jnp.shape, nnx.state(student, nnx.Param))
    tokens = np.random.default_rng(0).integers(0, llm.TINY.vocab_size, 4000).astype(np.int32)
    probe = jnp.asarray(data.calibration(tokens, 4, 16))
    before = float(distill.kl_loss(student(probe), teacher(probe)))
    losses = distill.distill(
        student, teacher, tokens, steps=40, batch_size=4, seq_len=16, lr=1e-2, log_every=0
    )
    after = float(distill.kl_loss(student(probe), teacher(probe)))
    assert len(losses) == 40 and after < 0.5 * before
    assert jax.tree.map(jnp.shape, nnx.state(student, nnx.Param)) == shapes
    # KL of a distribution with itself is zero; against a different one, positive.
    x = jax.random.normal(jax.random.key(0), (3, 5, 7))
    np.testing.assert_allclose(distill.kl_loss(x, x), 0.0, atol=1e-6)
    assert float(distill.kl_loss(x, 2 * x)) > 0


def test_prune_takes_owl_settings():
    from examples.llm import prune

    calib = np.random.default_rng(0).integers(0, llm.TINY.vocab_size, (4, 16))

    def run(owl):
        m = llm.Llama(llm.TINY, rngs=nnx.Rngs(0))
        report = prune.prune(m, calib, prune.make_method("wanda", 0.5), owl=owl, progress=False)
        return m, [[r.sparsity for r in report if r.block == b] for b in (0, 1)]

    uniform, s_uniform = run(False)
    flat, s_flat = run(jaxprune.oneshot.OWL(lam=0.0))  # a zero band is the uniform allocation
    jax.tree.map(np.testing.assert_array_equal, nnx.state(uniform), nnx.state(flat))
    assert s_uniform == s_flat and {s for b in s_uniform for s in b} == {0.5}
    _, s_owl = run(jaxprune.oneshot.OWL(lam=0.2))
    with pytest.raises(TypeError, match="owl must be a bool or a jaxprune.oneshot.OWL"):
        run("owl")
    # Two blocks span the whole band: 0.5 -/+ 0.2 (up to each row's whole-weight rounding).
    np.testing.assert_allclose(sorted(np.mean(b) for b in s_owl), [0.3, 0.7], atol=0.02)
