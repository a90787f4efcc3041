"""Tests for physical channel removal (`shrink`, `widths`) and MAC counting (`count`)."""

import dataclasses
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune
from jaxprune._src.flops import count
from jaxprune._src.shrink import shrink, widths
from jaxprune._src.trace import groups_under, trace_groups

_spec = importlib.util.spec_from_file_location(
    "jaxprune_zoo_shrink", pathlib.Path(__file__).with_name("zoo.py")
)
zoo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(zoo)


def _randomize(variables, seed=1):
    # Non-zero, positive BN statistics and biases, so that a leaking channel would show.
    leaves, tree = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    out = []
    for k, x in zip(keys, leaves):
        r = jnp.abs(jax.random.normal(k, x.shape, x.dtype)) * 0.5 + 0.5
        out.append(r if x.ndim == 1 else x)  # kernels keep their init scale
    return jax.tree.unflatten(tree, out)


def _half_masks(groups, variables):
    norms = jaxprune.group_norms(variables, groups)
    masks = {}
    for name, v in norms.items():
        v = np.asarray(v)
        keep = np.zeros(v.shape[0], bool)
        keep[np.argsort(-v, kind="stable")[: v.shape[0] // 2]] = True
        masks[name] = keep
    return masks


def _prune(model, shape):
    x = jax.random.normal(jax.random.key(2), shape)
    variables = _randomize(model.init(jax.random.key(0), x))
    found = trace_groups(model.apply, variables, x)
    gm = _half_masks(found.groups, variables)
    masks = jaxprune.expand_group_masks(gm, found.groups, variables)
    masked = jaxprune.apply_masks(variables, masks)
    small_vars = shrink(variables, gm, found.groups)
    spec = widths(found.groups, gm, variables)
    fields = {f.name for f in dataclasses.fields(model)}
    small = dataclasses.replace(model, **{k: v for k, v in spec.items() if k in fields})
    return x, variables, found, gm, masked, small_vars, small, spec


CASES = [
    (zoo.MLP(), (4, 5), {"fc1": 6, "fc2": 5}),
    (zoo.LeNet5(), (2, 28, 28, 1), {"conv1": 10, "conv2": 25, "fc1": 250}),
    (zoo.ConvBN(), (2, 8, 8, 3), {"conv1": 8}),
    (zoo.Residual(), (2, 6, 6, 3), {"stem": 4, "a": 3, "b": 4}),
    (zoo.Dense2(), (2, 6, 6, 3), {"c1": 3, "c2": 2, "mix": 2}),
]


@pytest.mark.parametrize(("model", "shape", "expected"), CASES, ids=lambda c: type(c).__name__)
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


def test_shrink_keeps_the_right_rows_of_a_flatten():
    x, variables, found, gm, _, small_vars, *_ = _prune(zoo.LeNet5(), (1, 28, 28, 1))
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
    np.testing.assert_array_equal(mu["conv1"]["bias"], np.asarray(opt_state[0].mu["conv1"]["bias"])[keep])
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


# ---------------------------------------------------------------------------------------
# count


def test_count_lenet5_matches_hand_counts_and_xla():
    model = zoo.LeNet5()
    x = jnp.ones((1, 28, 28, 1))
    v = model.init(jax.random.key(0), x)
    c = count(model.apply, v, x)
    assert c.total_params == 431_080
    # METHODS.md 0.3, 2 FLOPs per MAC: conv1 576K, conv2 3.2M, fc1 800K, fc2 10K.
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
    v = dw.init(jax.random.key(0), x)
    assert count(dw.apply, v, x).total_macs == 3 * 3 * 6 * 9

    def f(p, h):
        h, _ = jax.lax.scan(lambda c, _: (c @ p["w"], None), h, None, length=3)
        return h

    c = count(f, {"w": jnp.ones((4, 4))}, jnp.ones((2, 4)))
    assert c.macs == {"<other>": 3 * 2 * 4 * 4}
