"""Width/depth pruning of a tiny random LLaMA decoder: masked equals shrunk, export reloads."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxprune
from examples.llm import model as model_lib
from examples.llm import structural

CFG = dataclasses.replace(model_lib.TINY, num_heads=6, num_kv_heads=3, num_layers=3)
TOKENS = jax.random.randint(jax.random.key(1), (2, 9), 0, CFG.vocab_size)


def _model(**kw):
    return model_lib.Llama(dataclasses.replace(CFG, **kw), rngs=nnx.Rngs(0))


def _masks(groups, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for g in groups:
        n = jaxprune.group_size(g, structural.params_dict(_MODEL_CACHE[0]))
        keep = np.zeros(n, bool)
        keep[rng.permutation(n)[: max(1, n // 2)]] = True
        out[g.name] = keep
    return out


_MODEL_CACHE = [None]


@pytest.fixture(autouse=True)
def _allow_rank_promotion():
    # The example model broadcasts norm scales implicitly; jaxprune's own code is checked
    # under 'raise' by the rest of the suite.
    with jax.numpy_rank_promotion("allow"):
        yield


@pytest.mark.parametrize(
    "heads, fused_qkv, fused_gate_up",
    [
        ("kv_group", False, False),
        ("query_head", False, False),
        ("kv_group", True, True),
        ("query_head", True, False),
    ],
)
def test_masked_equals_shrunk(heads, fused_qkv, fused_gate_up):
    m = _model(fused_qkv=fused_qkv, fused_gate_up=fused_gate_up)
    _MODEL_CACHE[0] = m
    groups = jaxprune.llama_groups(m.cfg, heads=heads)
    masks = _masks(groups)
    small = structural.shrunk(m, masks, groups)
    if heads == "kv_group":
        assert small.cfg.num_kv_heads == 1 and small.cfg.num_heads == 2
    else:
        assert small.cfg.num_kv_heads == 3 and small.cfg.num_heads == 3
    assert small.cfg.hidden_dim == CFG.hidden_dim // 2
    ref = structural.masked(m, masks, groups)(TOKENS)
    got = small(TOKENS)
    assert float(jnp.max(jnp.abs(ref - got))) < 1e-4
    n_small = sum(x.size for x in jax.tree.leaves(structural.params_dict(small)))
    n_big = sum(x.size for x in jax.tree.leaves(structural.params_dict(m)))
    assert n_small < n_big


def test_residual_group_shrinks_to_working_model():
    m = _model()
    _MODEL_CACHE[0] = m
    groups = jaxprune.llama_groups(m.cfg, heads=None, mlp=False, residual=True)
    (g,) = groups
    assert len(g.members) == 2 + CFG.num_layers * 9
    keep = np.arange(CFG.dim) % 4 != 0
    small = structural.shrunk(m, {"residual": keep}, groups)
    assert small.cfg.dim == int(keep.sum())
    assert small(TOKENS).shape == (2, 9, CFG.vocab_size)


def test_depth_prune_and_block_importance():
    m = _model()
    hs = structural.hidden_states(m, TOKENS)
    scores = jaxprune.block_importance(hs)
    assert scores.shape == (CFG.num_layers,)
    keep = np.ones(CFG.num_layers, bool)
    keep[int(np.argmin(scores))] = False
    short = structural.depth_pruned(m, keep)
    assert short.cfg.num_layers == CFG.num_layers - 1

    # Masked reference: skip the dropped block in the dense model.
    cos, sin = model_lib.rope_tables(m.cfg, TOKENS.shape[-1])
    h = m.hidden(TOKENS)
    for b, k in zip(m.blocks, keep):
        if k:
            h = b(h, cos, sin)
    ref = m.logits(h)
    assert float(jnp.max(jnp.abs(ref - short(TOKENS)))) < 1e-4


def test_activation_scores_select_and_shrink():
    m = _model()
    groups = jaxprune.llama_groups(m.cfg, heads="kv_group", residual=False)
    scores = structural.activation_scores(m, TOKENS)
    names = {g.name for g in groups}
    assert names <= set(scores)
    masks = structural.keep_top({n: scores[n] for n in names}, 2 / 3)
    small = structural.shrunk(m, masks, groups)
    assert small.cfg.num_kv_heads == 2
    ref = structural.masked(m, masks, groups)(TOKENS)
    assert float(jnp.max(jnp.abs(ref - small(TOKENS)))) < 1e-4
    assert scores["residual"].shape == (CFG.dim,)
    assert scores["blocks/0/attn/query_heads"].shape == (2,)


def test_export_reloads_same_logits(tmp_path):
    m = _model()
    groups = jaxprune.llama_groups(m.cfg)
    masks = {
        g.name: np.arange(jaxprune.group_size(g, structural.params_dict(m))) % 3 != 1
        for g in groups
    }
    small = structural.shrunk(m, masks, groups)
    structural.export(small, str(tmp_path / "out"))
    back = structural.load_exported(str(tmp_path / "out"))
    assert back.cfg == small.cfg
    np.testing.assert_array_equal(np.asarray(back(TOKENS)), np.asarray(small(TOKENS)))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="num_kv_heads"):
        jaxprune.llama_groups(
            dict(dim=8, num_layers=1, num_heads=3, num_kv_heads=2, head_dim=2, hidden_dim=4)
        )
    with pytest.raises(ValueError, match="config.hidden_dim"):
        jaxprune.llama_groups(dict(dim=8, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=2))
    with pytest.raises(ValueError, match="heads"):
        jaxprune.llama_groups(CFG, heads="head_dim")
    masks = {"blocks/0/mlp/hidden": np.arange(96) < 10, "blocks/1/mlp/hidden": np.arange(96) < 11}
    with pytest.raises(ValueError, match="blocks/1/mlp/hidden"):
        jaxprune.llama_widths(CFG, masks)
    with pytest.raises(ValueError, match="keeps no channel"):
        jaxprune.llama_widths(CFG, {"blocks/0/attn/query_heads": np.zeros(2, bool)})
    with pytest.raises(ValueError, match="keep has 2"):
        jaxprune.drop_blocks({"blocks": {0: 1, 1: 2, 2: 3}}, [True, False])
    with pytest.raises(ValueError, match="shape"):
        jaxprune.block_importance([jnp.ones((2, 3)), jnp.ones((2, 4))])
