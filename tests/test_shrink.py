"""Physical channel removal (`shrink`, `widths`): shrunk models equal masked ones."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import zoo  # tests/zoo.py (tests/ is on pytest's pythonpath)

import jaxprune
from jaxprune._src.flops import count
from jaxprune._src.shrink import shrink, widths
from jaxprune._src.trace import groups_under, trace_groups

CASES = [
    (zoo.MLP(), (4, 5), {"fc1": 6, "fc2": 5}),
    (zoo.LeNet5(), (2, 28, 28, 1), {"conv1": 10, "conv2": 25, "fc1": 250}),
    (zoo.ConvBN(), (2, 8, 8, 3), {"conv1": 8}),
    (zoo.Residual(), (2, 6, 6, 3), {"stem": 4, "a": 3, "b": 4}),
    (zoo.Dense2(), (2, 6, 6, 3), {"c1": 3, "c2": 2, "mix": 2}),
    (zoo.Bottleneck(), (2, 6, 6, 3), {"stem": 3, "c1": 2, "c2": 2, "c3": 4, "proj": 4}),
    (zoo.InvertedResidual(), (2, 6, 6, 3), {"stem": 2, "expand": 6, "dw": 6, "project": 2}),
    (zoo.UNet(), (2, 8, 8, 3), {"down": 2, "bottom": 3, "up": 2}),
    (zoo.VGG(), (2, 8, 8, 3), {"c1": 2, "c2": 3, "c3": 4, "fc": 5}),
    (zoo.Grouped(), (2, 6, 6, 3), {"pw": 4, "g1": 4, "g2": 4}),
]


@pytest.mark.parametrize(
    ("model", "shape", "expected"), CASES, ids=[type(c[0]).__name__ for c in CASES]
)
def test_masked_model_equals_shrunk_model(model, shape, expected):
    x, variables, _, _, masked, small_vars, small, spec = zoo.prune_half(model, shape)
    assert spec == expected
    ref = jax.eval_shape(small.init, jax.random.key(0), x)
    assert jax.tree.map(lambda a: a.shape, small_vars) == jax.tree.map(lambda a: a.shape, ref)
    out_masked = model.apply(masked, x)
    out_small = small.apply(small_vars, x)
    np.testing.assert_allclose(out_small, out_masked, atol=1e-5, rtol=1e-5)
    # The pruning changed the function, so the test is not vacuous.
    assert float(jnp.max(jnp.abs(model.apply(variables, x) - out_masked))) > 1e-3
    # One jitted SGD step on the shrunk params trains (the loss goes down).
    rest = {k: v for k, v in small_vars.items() if k != "params"}

    @jax.jit
    def step(p):
        loss, g = jax.value_and_grad(
            lambda q: jnp.mean(small.apply({"params": q, **rest}, x) ** 2)
        )(p)
        return jax.tree.map(lambda a, b: a - 0.005 * b, p, g), loss

    p1, loss0 = step(small_vars["params"])
    assert float(step(p1)[1]) < float(loss0)


def test_attention_heads_prune_as_one_group_and_head_dims_stay():
    model = zoo.Transformer()
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 5, 8)), jnp.float32)
    variables = zoo.random_variables(model, x, seed=1)
    found = trace_groups(model.apply, variables, x)
    by_name = {g.name: g for g in found.groups}
    heads = [
        g
        for g in found.groups
        if any(m.path == "params/attn/out/kernel" and m.axis == 0 for m in g.members)
    ]
    assert len(heads) == 1
    assert {(m.path, m.axis) for m in heads[0].members} == {
        (f"params/attn/{p}/{leaf}", a)
        for p in ("query", "key", "value")
        for leaf, a in (("kernel", 1), ("bias", 0))
    } | {("params/attn/out/kernel", 0)}
    # q/k head dims are contracted in the batched q.k product (scaled by 1/sqrt(head_dim)).
    qk = [ms for ms, r in found.unprunable if any("batched dot_general" in s for s in r)]
    assert any(m.path == "params/attn/query/kernel" and m.axis == 2 for ms in qk for m in ms)
    # Prune 2 of 4 heads (nothing else): the masked and the shrunk model agree.
    keep = {heads[0].name: np.array([True, False, False, True])}
    groups = [heads[0]]
    masked = jaxprune.apply_masks(variables, jaxprune.expand_group_masks(keep, groups, variables))
    small = shrink(variables, keep, groups)
    out_small = dataclasses.replace(model, heads=2).apply(small, x)
    np.testing.assert_allclose(out_small, model.apply(masked, x), atol=1e-5, rtol=1e-5)
    assert float(jnp.max(jnp.abs(model.apply(variables, x) - out_small))) > 1e-3
    assert "params/mlp1/kernel[1]" in by_name  # the MLP hidden units are a group too


def test_shrink_keeps_the_right_rows_of_a_flatten():
    _, variables, found, gm, _, small_vars, *_ = zoo.prune_half(zoo.LeNet5(), (1, 28, 28, 1))
    [group] = [g for g in found.groups if g.name == "params/conv2/kernel[3]"]
    keep = np.flatnonzero(gm[group.name])
    rows = [(h * 4 + w) * 50 + c for h in range(4) for w in range(4) for c in keep]
    fc1 = np.asarray(variables["params"]["fc1"]["kernel"])
    fc1_keep = np.flatnonzero(gm["params/fc1/kernel[1]"])
    np.testing.assert_array_equal(small_vars["params"]["fc1"]["kernel"], fc1[rows][:, fc1_keep])


@pytest.mark.standard_dtypes
def test_jitted_adam_step_after_shrinking_params_and_moments():
    model = zoo.ConvBN()
    x, variables, found, gm, _, small_vars, small, _ = zoo.prune_half(model, (2, 8, 8, 3))
    y = jax.random.normal(jax.random.key(3), (2, 8, 8, 8))
    tx = optax.adam(1e-2)

    def make_step(m, stats):
        @jax.jit
        def step(params, opt_state):
            def loss(p):
                return jnp.mean((m.apply({"params": p, "batch_stats": stats}, x) - y) ** 2)

            value, grads = jax.value_and_grad(loss)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, value

        return step

    params = variables["params"]
    opt_state = tx.init(params)
    params, opt_state, _ = make_step(model, variables["batch_stats"])(params, opt_state)
    pgroups = groups_under(found.groups, "params")
    small_params = shrink(params, gm, pgroups)
    small_opt = shrink(opt_state, gm, pgroups)
    mu = small_opt[0].mu
    assert jax.tree.map(jnp.shape, mu) == jax.tree.map(jnp.shape, small_params)
    keep = np.flatnonzero(gm["params/conv1/kernel[3]"])
    np.testing.assert_array_equal(
        mu["conv1"]["bias"], np.asarray(opt_state[0].mu["conv1"]["bias"])[keep]
    )
    assert int(small_opt[0].count) == 1
    step = make_step(small, small_vars["batch_stats"])
    p2, o2, loss0 = step(small_params, small_opt)
    _, _, loss1 = step(p2, o2)
    assert np.isfinite(loss0) and float(loss1) < float(loss0)


def test_shrink_errors_name_group_and_path():
    p = {"a": jnp.ones((3, 4)), "b": jnp.ones((4, 2))}
    g = jaxprune.Group("h", (jaxprune.Member("a", 1), jaxprune.Member("b", 0)))
    with pytest.raises(ValueError, match="no mask for group 'h'"):
        shrink(p, {}, [g])
    with pytest.raises(ValueError, match="group 'h': 'a' axis 1 has 4 entries but the mask has 3"):
        shrink(p, {"h": np.ones(3, bool)}, [g])


def test_shrink_matches_longest_suffix_and_leaves_others():
    tree = {"mu": {"x": {"k": jnp.ones((2, 4))}, "k": jnp.ones((4,))}, "count": jnp.zeros(())}
    g = jaxprune.Group("h", (jaxprune.Member("x/k", 1),))
    out = shrink(tree, {"h": np.array([1, 0, 1, 1], bool)}, [g])
    assert out["mu"]["x"]["k"].shape == (2, 3)
    assert out["mu"]["k"].shape == (4,) and out["count"].shape == ()


def test_shrink_refuses_same_path_leaves_of_different_shapes():
    # Adafactor-like factored moments end with the parameter's path but are not copies of it.
    tree = {
        "params": {"fc": {"kernel": jnp.ones((3, 4))}},
        "v_row": {"params": {"fc": {"kernel": jnp.ones((3,))}}},
    }
    g = jaxprune.Group("h", (jaxprune.Member("params/fc/kernel", 1),))
    with pytest.raises(ValueError, match=r"'v_row/params/fc/kernel' \(shape \(3,\)\) and"):
        shrink(tree, {"h": np.array([1, 0, 1, 1], bool)}, [g])


def test_shrink_keeps_shardings_where_sizes_still_divide():
    devices = jax.devices()
    assert len(devices) == 8
    mesh = jax.make_mesh((4, 2), ("data", "model"), devices=devices)
    sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", "model"))
    params = {
        "a": jax.device_put(jnp.arange(8 * 16.0).reshape(8, 16), sharded),
        "b": jax.device_put(jnp.ones((16, 6)), sharded.update(spec=("model", None))),
        "c": jax.device_put(jnp.ones((16,)), devices[3]),
    }
    M = jaxprune.Member
    g = jaxprune.Group("h", (M("a", 1), M("b", 0), M("c", 0)))
    keep = np.arange(16) % 2 == 0  # 8 kept: divides the 2-way model axis
    out = shrink(params, {"h": keep}, [g])
    assert out["a"].sharding.spec == sharded.spec and out["a"].shape == (8, 8)
    np.testing.assert_array_equal(out["a"], np.asarray(params["a"])[:, keep])
    assert out["b"].sharding.spec[0] == "model"
    assert out["c"].sharding == params["c"].sharding  # still on device 3
    odd = np.arange(16) < 7  # 7 kept: no longer divides, replicated along that dim only
    out = shrink(params, {"h": odd}, [g])
    assert tuple(out["a"].sharding.spec) == ("data", None) and out["a"].shape == (8, 7)
    np.testing.assert_array_equal(out["a"], np.asarray(params["a"])[:, :7])


def test_readme_flow_lenet5_scores_select_shrink_count():
    model = zoo.LeNet5()
    x = jnp.ones((1, 28, 28, 1))
    variables = zoo.random_variables(model, x, seed=1)
    found = trace_groups(model.apply, variables, x)
    pgroups = groups_under(found.groups, "params")
    scores = jaxprune.group_scores(variables["params"], pgroups, reduction="l2")
    keep = jaxprune.select.layerwise_topk(scores, 0.5)
    assert {k: int(v.sum()) for k, v in keep.items()} == {
        "params/conv1/kernel[3]": 10,
        "params/conv2/kernel[3]": 25,
        "params/fc1/kernel[1]": 250,
    }
    small_vars = shrink(variables, keep, found.groups)
    small = dataclasses.replace(model, **widths(found.groups, keep, variables))
    masked = jaxprune.apply_masks(
        variables, jaxprune.expand_group_masks(keep, found.groups, variables)
    )
    np.testing.assert_allclose(small.apply(small_vars, x), model.apply(masked, x), atol=1e-5)
    assert count(small.apply, small_vars, x).flops == 2 * (144_000 + 400_000 + 100_000 + 2_500)
    # The README's selection line: global ranking, capped per group, widths rounded up to 8.
    keep = jaxprune.importance.select_groups(
        scores, 0.5, scope="global", max_sparsity=0.8, round_to=8
    )
    for name, c in jaxprune.check_groups(pgroups, variables["params"]).items():
        k = int(keep[name].sum())
        assert (k % 8 == 0 or k == c) and k >= c - int(0.8 * c), (name, k)
    small_vars = shrink(variables, keep, found.groups)
    spec = widths(found.groups, keep, variables)
    small = jaxprune.linen.rebuild(model, spec, small_vars, x)
    masked = jaxprune.apply_masks(
        variables, jaxprune.expand_group_masks(keep, found.groups, variables)
    )
    np.testing.assert_allclose(small.apply(small_vars, x), model.apply(masked, x), atol=1e-5)
