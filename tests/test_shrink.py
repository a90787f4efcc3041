"""Tests for physical channel removal (`shrink`, `widths`) and MAC counting (`count`)."""

import dataclasses

import flax.linen as nn
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


def _init(model, x, seed=1):
    return zoo.random_variables(model, x, seed)


def _half_masks(sizes):
    rng = np.random.default_rng(0)
    masks = {}
    for name, n in sizes.items():
        keep = np.zeros(n, bool)
        keep[rng.permutation(n)[: n // 2]] = True
        masks[name] = keep
    return masks


def _prune(model, shape):
    x = jax.random.normal(jax.random.key(2), shape)
    variables = _init(model, x)
    found = trace_groups(model.apply, variables, x)
    sizes = jaxprune.check_groups(found.groups, variables)
    gm = _half_masks(sizes)
    masks = jaxprune.expand_group_masks(gm, found.groups, variables)
    masked = jaxprune.apply_masks(variables, masks)
    small_vars = shrink(variables, gm, found.groups)
    spec = widths(found.groups, gm, variables)
    small = jaxprune.linen.rebuild(model, spec, small_vars, x)  # checks every shape
    return x, variables, found, gm, masked, small_vars, small, spec


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
    x, variables, _, _, masked, small_vars, small, spec = _prune(model, shape)
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
    variables = _init(model, x)
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


def test_linen_rebuild_reports_widths_it_cannot_set():
    class Fixed(nn.Module):  # its hidden width is not a field: it cannot be rebuilt
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2, name="out")(nn.relu(nn.Dense(6, name="hidden")(x)))

    x, variables, found, gm, _, small_vars, *_ = _prune(zoo.MLP(), (4, 5))
    spec = widths(found.groups, gm, variables)
    assert jaxprune.linen.rebuild(zoo.MLP(), spec, small_vars, x).fc1 == 6
    xf = jnp.ones((4, 5))
    vf = _init(Fixed(), xf)
    gf = trace_groups(Fixed().apply, vf, xf).groups
    keep = {gf[0].name: np.arange(6) < 3}
    with pytest.raises(
        ValueError, match=r"params/hidden/kernel: rebuilt \(5, 6\), shrunk \(5, 3\)"
    ):
        jaxprune.linen.rebuild(Fixed(), widths(gf, keep, vf), shrink(vf, keep, gf), xf)
    with pytest.raises(ValueError, match=r"without a width field on the model: \['hidden'\]"):
        jaxprune.linen.rebuild(Fixed(), widths(gf, keep, vf), shrink(vf, keep, gf), xf)


def test_shrink_keeps_the_right_rows_of_a_flatten():
    _, variables, found, gm, _, small_vars, *_ = _prune(zoo.LeNet5(), (1, 28, 28, 1))
    [group] = [g for g in found.groups if g.name == "params/conv2/kernel[3]"]
    keep = np.flatnonzero(gm[group.name])
    rows = [(h * 4 + w) * 50 + c for h in range(4) for w in range(4) for c in keep]
    fc1 = np.asarray(variables["params"]["fc1"]["kernel"])
    fc1_keep = np.flatnonzero(gm["params/fc1/kernel[1]"])
    np.testing.assert_array_equal(small_vars["params"]["fc1"]["kernel"], fc1[rows][:, fc1_keep])


@pytest.mark.standard_dtypes
def test_jitted_adam_step_after_shrinking_params_and_moments():
    model = zoo.ConvBN()
    x, variables, found, gm, _, small_vars, small, _ = _prune(model, (2, 8, 8, 3))
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


# ---------------------------------------------------------------------------------------
# count


def test_count_lenet5_matches_hand_counts_and_xla():
    model = zoo.LeNet5()
    x = jnp.ones((1, 28, 28, 1))
    v = _init(model, x)
    c = count(model.apply, v, x)
    assert c.total_params == 431_080
    # LeNet-5 as usually quoted, 2 FLOPs per MAC: conv1 576K, conv2 3.2M, fc1 800K, fc2 10K.
    flops = {k: 2 * n for k, n in c.macs.items()}
    assert flops == {
        "params/conv1": 576_000,
        "params/conv2": 3_200_000,
        "params/fc1": 800_000,
        "params/fc2": 10_000,
    }
    assert c.flops == 4_586_000
    xla = jax.jit(model.apply).lower(v, x).compile().cost_analysis()
    xla = xla[0] if isinstance(xla, list) else xla
    # XLA also counts 1 FLOP per bias add, ReLU and pooling comparison (3 per 2x2 window):
    extra = (24 * 24 * 20 + 8 * 8 * 50 + 500 + 10) + 500 + 3 * (12 * 12 * 20 + 4 * 4 * 50)
    assert xla["flops"] == pytest.approx(c.flops + extra, rel=1e-6)
    assert abs(xla["flops"] - c.flops) / xla["flops"] < 0.01


def test_count_after_shrinking_lenet5():
    x, _, _, _, _, small_vars, small, _ = _prune(zoo.LeNet5(), (1, 28, 28, 1))
    c = count(small.apply, small_vars, x)
    conv1 = 24 * 24 * 10 * 25
    conv2 = 8 * 8 * 25 * 25 * 10
    fc1 = 400 * 250
    fc2 = 250 * 10
    assert c.macs == {
        "params/conv1": conv1,
        "params/conv2": conv2,
        "params/fc1": fc1,
        "params/fc2": fc2,
    }
    assert c.total_params == (25 * 10 + 10) + (250 * 25 + 25) + (400 * 250 + 250) + 2510


def test_count_depthwise_and_scan():
    import flax.linen as nn

    dw = nn.Conv(6, (3, 3), feature_group_count=6, padding="VALID")
    x = jnp.ones((1, 5, 5, 6))
    v = jax.eval_shape(dw.init, jax.random.key(0), x)
    assert count(dw.apply, v, x).total_macs == 3 * 3 * 6 * 9

    def f(p, h):
        h, _ = jax.lax.scan(lambda c, _: (c @ p["w"], None), h, None, length=3)
        return h

    c = count(f, {"w": jnp.ones((4, 4))}, jnp.ones((2, 4)))
    assert c.macs == {"<other>": 3 * 2 * 4 * 4}


# ---------------------------------------------------------------------------------------
# NNX


def _nnx_net():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv1 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
            self.bn1 = nnx.BatchNorm(8, use_running_average=True, rngs=rngs)
            self.dw = nnx.Conv(8, 16, (3, 3), feature_group_count=8, rngs=rngs)  # multiplier 2
            self.pw = nnx.Conv(16, 6, (1, 1), rngs=rngs)
            self.fc = nnx.Linear(6, 2, rngs=rngs)

        def __call__(self, x):
            h = nnx.relu(self.bn1(self.conv1(x)))
            h = nnx.relu(self.pw(nnx.relu(self.dw(h))))
            return self.fc(h.mean(axis=(1, 2)))

    net = Net(nnx.Rngs(0))
    rng = np.random.default_rng(4)
    # Positive BN statistics and non-zero biases so that a leak would show.
    for mod, names in ((net.bn1, ("scale", "bias", "mean", "var")), (net.conv1, ("bias",))):
        for n in names:
            v = getattr(mod, n)
            v.set_value(jnp.asarray(rng.uniform(0.5, 1.0, v.get_value().shape), jnp.float32))
    for mod in (net.dw, net.pw):
        mod.bias.set_value(
            jnp.asarray(rng.uniform(0.5, 1.0, mod.bias.get_value().shape), jnp.float32)
        )
    return net


@pytest.mark.standard_dtypes
def test_nnx_masked_equals_shrunk_in_place_then_train():
    from flax import nnx

    from jaxprune._src.shrink_nnx import shrink_module

    net = _nnx_net()
    x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 6, 6, 3)), jnp.float32)
    gd, state = nnx.split(net)
    found = trace_groups(lambda s, v: nnx.merge(gd, s)(v), state, x)
    members = {g.name: {(m.path, m.axis, m.inner) for m in g.members} for g in found.groups}
    assert members == {
        "conv1/kernel[3]": {
            ("conv1/kernel", 3, 1),
            ("conv1/bias", 0, 1),
            ("bn1/scale", 0, 1),
            ("bn1/bias", 0, 1),
            ("bn1/mean", 0, 1),
            ("bn1/var", 0, 1),
            ("dw/kernel", 3, 2),
            ("dw/bias", 0, 2),
            ("pw/kernel", 2, 2),
        },
        "pw/kernel[3]": {("pw/kernel", 3, 1), ("pw/bias", 0, 1), ("fc/kernel", 0, 1)},
    }
    gm = {
        "conv1/kernel[3]": np.array([1, 0, 1, 1, 0, 0, 1, 0], bool),
        "pw/kernel[3]": np.array([0, 1, 1, 0, 1, 0], bool),
    }
    masked = jaxprune.apply_masks(state, jaxprune.expand_group_masks(gm, found.groups, state))
    ref = nnx.merge(gd, masked)(x)
    assert float(jnp.max(jnp.abs(ref - net(x)))) > 1e-3
    shrink_module(net, gm, found.groups)
    np.testing.assert_allclose(net(x), ref, atol=1e-5, rtol=1e-5)
    assert (net.conv1.out_features, net.bn1.num_features) == (4, 4)
    assert (net.dw.in_features, net.dw.feature_group_count, net.dw.out_features) == (4, 4, 8)
    assert net.dw.kernel_shape == (3, 3, 1, 8)
    assert (net.pw.in_features, net.pw.out_features, net.fc.in_features) == (8, 3, 3)
    gd2, state2 = nnx.split(net)
    c = count(lambda s, v: nnx.merge(gd2, s)(v), state2, x)
    n = 2 * 6 * 6  # batch x SAME-padded output pixels
    assert c.macs == {"conv1": n * 4 * 27, "dw": n * 8 * 9, "pw": n * 3 * 8, "fc": 2 * 3 * 2}
    opt = nnx.Optimizer(net, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(model)
        opt.update(model, grads)
        return loss

    loss0 = step(net, opt)
    assert float(step(net, opt)) < float(loss0)


@pytest.mark.standard_dtypes
def test_nnx_grouped_conv_masked_equals_shrunk_in_place():
    from flax import nnx

    from jaxprune._src.shrink_nnx import shrink_module

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.pw = nnx.Conv(3, 8, (1, 1), rngs=rngs)
            self.g = nnx.Conv(8, 12, (3, 3), feature_group_count=4, rngs=rngs)
            self.out = nnx.Conv(12, 2, (1, 1), rngs=rngs)

        def __call__(self, x):
            return self.out(nnx.relu(self.g(nnx.relu(self.pw(x)))))

    net = Net(nnx.Rngs(0))
    for mod in (net.pw, net.g):
        mod.bias.set_value(jnp.linspace(0.5, 1.0, mod.bias.get_value().shape[0]))
    x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 5, 5, 3)), jnp.float32)
    gd, state = nnx.split(net)
    found = trace_groups(lambda s, v: nnx.merge(gd, s)(v), state, x)
    assert jaxprune.check_groups(found.groups, state) == {"pw/kernel[3]": 2, "g/kernel[3]": 3}
    gm = {"pw/kernel[3]": np.array([0, 1]), "g/kernel[3]": np.array([1, 0, 1])}
    gm = {k: v.astype(bool) for k, v in gm.items()}
    masked = jaxprune.apply_masks(state, jaxprune.expand_group_masks(gm, found.groups, state))
    ref = nnx.merge(gd, masked)(x)
    assert float(jnp.max(jnp.abs(ref - net(x)))) > 1e-3
    shrink_module(net, gm, found.groups)
    assert net.g.kernel_shape == (3, 3, 1, 8) and net.g.feature_group_count == 4
    assert (net.pw.out_features, net.g.in_features, net.out.in_features) == (4, 4, 8)
    np.testing.assert_allclose(net(x), ref, atol=1e-5, rtol=1e-5)


def test_readme_flow_lenet5_scores_select_shrink_count():
    model = zoo.LeNet5()
    x = jnp.ones((1, 28, 28, 1))
    variables = _init(model, x)
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
