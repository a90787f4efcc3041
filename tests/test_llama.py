"""Width/depth pruning of a tiny random LLaMA decoder: masked equals shrunk, export reloads."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import zoo  # tests/zoo.py (tests/ is on pytest's pythonpath)
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
    with pytest.raises(ValueError, match="block_path"):
        jaxprune.llama_groups(CFG, block_path="blocks")
    with pytest.raises(ValueError, match="blocks_0"):
        jaxprune.drop_blocks({"blocks": {0: 1}}, [True], key="blocks_{i}")
    with pytest.raises(ValueError, match="keep has 1"):
        jaxprune.drop_blocks({"blocks_0": 1, "blocks_1": 2}, [True], key="blocks_{i}")


# --- Linen: the same decoder in flax.linen (tests/zoo.py), blocks named blocks_0, blocks_1, ...


def _linen(cfg):
    mod = zoo.LlamaLinen(cfg)
    return mod, zoo.random_variables(mod, TOKENS)["params"]


def _as_nnx(cfg, linen_params):
    """The NNX model of examples/llm with the Linen model's weights."""
    p = dict(linen_params)
    blocks = {i: p.pop(f"blocks_{i}") for i in range(cfg.num_layers)}
    return structural.build(cfg, {**p, "blocks": blocks})


@pytest.mark.parametrize(
    "heads, fused_qkv, fused_gate_up",
    [("kv_group", False, False), ("query_head", True, True)],
)
def test_linen_masked_equals_shrunk_and_matches_nnx(heads, fused_qkv, fused_gate_up):
    cfg = dataclasses.replace(CFG, fused_qkv=fused_qkv, fused_gate_up=fused_gate_up)
    mod, params = _linen(cfg)
    dense = mod.apply({"params": params}, TOKENS)
    assert float(jnp.max(jnp.abs(dense))) > 0.1  # logits large enough for the 1e-4 checks
    np.testing.assert_allclose(_as_nnx(cfg, params)(TOKENS), dense, atol=1e-4)

    groups = jaxprune.llama_groups(cfg, heads=heads, block_path="blocks_{i}")
    assert {g.name.split("/")[0] for g in groups} == {f"blocks_{i}" for i in range(3)}
    rng = np.random.default_rng(1)
    masks = {}
    for g in groups:
        n = jaxprune.group_size(g, params)
        masks[g.name] = np.isin(np.arange(n), rng.permutation(n)[: max(1, n // 2)])
    small_cfg = dataclasses.replace(cfg, **jaxprune.llama_widths(cfg, masks))
    small = jaxprune.shrink(params, masks, groups)
    got = zoo.LlamaLinen(small_cfg).apply({"params": small}, TOKENS)
    mask_tree = jaxprune.expand_group_masks(masks, groups, params)
    masked = jax.tree.map(
        lambda x, k: x if k is None else x * k.astype(x.dtype),
        params,
        mask_tree,
        is_leaf=lambda x: x is None,
    )
    ref = mod.apply({"params": masked}, TOKENS)
    assert float(jnp.max(jnp.abs(ref - got))) < 1e-4
    assert sum(x.size for x in jax.tree.leaves(small)) < sum(
        x.size for x in jax.tree.leaves(params)
    )


def test_linen_depth_pruning_matches_nnx():
    mod, params = _linen(CFG)
    keep = [True, False, True]
    short = jaxprune.drop_blocks(params, keep, key="blocks_{i}")
    assert sorted(k for k in short if k.startswith("blocks")) == ["blocks_0", "blocks_1"]
    short_cfg = dataclasses.replace(CFG, num_layers=2)
    got = zoo.LlamaLinen(short_cfg).apply({"params": short}, TOKENS)
    ref = structural.depth_pruned(_as_nnx(CFG, params), np.asarray(keep))(TOKENS)
    assert float(jnp.max(jnp.abs(ref - got))) < 1e-4
    assert float(jnp.max(jnp.abs(got - mod.apply({"params": params}, TOKENS)))) > 1e-3


def _member_set(group, params):
    leaves = {"/".join(map(str, k)): v for k, v in _flat(params)}
    return frozenset(
        # ``partial`` only matters for a segment at offset 0.
        (
            m.path,
            m.axis % leaves[m.path].ndim,
            m.offset,
            m.outer,
            m.inner,
            m.partial and not m.offset,
        )
        for m in group.members
    )


def _flat(params):
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        yield tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path), leaf


@pytest.mark.parametrize("fused", [False, True])
def test_trace_groups_discovers_gqa_swiglu_and_fused_segments(fused):
    """The jaxpr walk finds the hand-declared KV-group, query-head and SwiGLU groups."""
    m = _model(fused_qkv=fused, fused_gate_up=fused)
    graphdef, state = nnx.split(m)
    found = jaxprune.trace_groups(lambda s, x: nnx.merge(graphdef, s)(x), state, TOKENS)
    params = structural.params_dict(m)
    by_members = {_member_set(g, params): g for g in found.groups}
    hand = jaxprune.llama_groups(m.cfg, heads="kv_group") + jaxprune.llama_groups(
        m.cfg, heads="query_head", mlp=False
    )
    for g in hand:
        assert _member_set(g, params) in by_members, g.name
    # Per block one more group: the value head_dim with the output projection's rows (RoPE
    # and the 1/sqrt(head_dim) scale keep the query/key head_dim out of every group).
    assert len(found.groups) == 4 * CFG.num_layers
    v = "qkv" if fused else "v"
    hand_sets = {_member_set(h, params) for h in hand}
    extra = [g for g in found.groups if _member_set(g, params) not in hand_sets]
    assert len(extra) == CFG.num_layers
    assert all(
        {mm.path for mm in g.members}
        == {f"blocks/{i}/attn/{v}/kernel", f"blocks/{i}/attn/o/kernel"}
        for i, g in enumerate(sorted(extra, key=lambda g: g.name))
    )
    assert all(jaxprune.group_size(g, params) == CFG.head_dim for g in extra)
    # Shrinking with a discovered group is shrinking with the hand-declared one.
    kv = jaxprune.llama_groups(m.cfg, heads="kv_group", mlp=False)[0]
    disc = by_members[_member_set(kv, params)]
    keep = np.array([True, False, True])
    a = jaxprune.shrink(params, {kv.name: keep}, [kv])
    b = jaxprune.shrink(params, {disc.name: keep}, [disc])
    jax.tree.map(np.testing.assert_array_equal, a, b)
