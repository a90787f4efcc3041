"""Folding gates into weights (`fold_gates`), in Linen, NNX and on sharded params."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

import jaxprune
import jaxprune.linen
import jaxprune.nnx

G, M = jaxprune.Group, jaxprune.Member


# --- folding ---------------------------------------------------------------------------------


class LinenFoldNet(nn.Module):
    @nn.compact
    def __call__(self, x, deterministic=True):
        x = jaxprune.linen.HardConcreteGate(12, name="g_in")(x, deterministic=deterministic)
        x = nn.relu(nn.Dense(8, name="fc1")(x))
        x = jaxprune.linen.BernoulliGate(8, name="g_h")(x, deterministic=deterministic)
        x = nn.Dense(6, name="fc2")(x)
        x = jaxprune.linen.ChannelGate(6, name="g_out")(x)
        return nn.Dense(3, name="fc3")(nn.relu(x))


class NNXFoldNet(nnx.Module):
    def __init__(self, rngs):
        self.g_in = jaxprune.nnx.HardConcreteGate(12, rngs=rngs)
        self.fc1 = nnx.Linear(12, 8, rngs=rngs)
        self.g_h = jaxprune.nnx.BernoulliGate(8, rngs=rngs)
        self.fc2 = nnx.Linear(8, 6, rngs=rngs)
        self.g_out = jaxprune.nnx.ChannelGate(6)
        self.fc3 = nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.fc1(self.g_in(x)))
        x = self.fc2(self.g_h(x))
        return self.fc3(nnx.relu(self.g_out(x)))


FOLD_GROUPS = [
    G("in", (M("g_in/l0_log_alpha", 0), M("fc1/kernel", 0))),  # gate on the inputs of fc1
    G("h", (M("g_h/bernoulli_gate", 0), M("fc2/kernel", 0))),  # after the ReLU: fc2 rows
    G("out", (M("g_out/channel_gate", 0), M("fc2/kernel", 1), M("fc2/bias", 0))),
]


def _spread_gates(p):
    p["g_in"]["l0_log_alpha"] = jnp.linspace(-4.0, 4.0, 12)
    p["g_h"]["bernoulli_gate"] = jnp.linspace(0.0, 1.0, 8)
    p["g_out"]["channel_gate"] = jnp.array([1.5, 0.0, -0.5, 2.0, 0.25, 1.0])
    return p


def test_fold_gates_gives_the_same_outputs_linen():
    x = jax.random.normal(jax.random.key(1), (16, 12))
    model = LinenFoldNet()
    params = _spread_gates(model.init(jax.random.key(0), x)["params"])
    gated = model.apply({"params": params}, x)
    folded = jaxprune.fold_gates(params, FOLD_GROUPS)
    np.testing.assert_allclose(model.apply({"params": folded}, x), gated, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(
        jaxprune.hard_concrete_deterministic(folded["g_in"]["l0_log_alpha"]), 1.0
    )
    # Gates that are off zero whole rows/columns: they are the masks.
    sel = jaxprune.gate_masks(params, FOLD_GROUPS)
    dead_in = ~np.asarray(sel.group_masks["in"])
    assert dead_in.sum() > 0 and np.all(np.asarray(folded["fc1"]["kernel"])[dead_in] == 0)


def test_fold_gates_gives_the_same_outputs_nnx():
    x = jax.random.normal(jax.random.key(1), (16, 12))
    model = NNXFoldNet(nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    pure = _spread_gates(nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)
    model.eval()
    gated = model(x)
    folded = jaxprune.fold_gates(nnx.state(model, nnx.Param), FOLD_GROUPS)
    nnx.update(model, folded)
    np.testing.assert_allclose(model(x), gated, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="group 'x' has no gate member"):
        jaxprune.fold_gates(folded, [G("x", (M("fc1/kernel", 0),))])


# --- sharded gates (8 fake CPU devices, see conftest.py) ------------------------------------


@pytest.mark.parametrize("axis_type", ["explicit", "auto"])
def test_gate_penalty_selection_and_folding_on_sharded_params(axis_type):
    """The gate penalty, clipping, gate masks and folding on gates and kernels sharded over
    8 devices equal the single-device results; updated params keep their explicit sharding.
    (Channel gates are free scales, like BN scales: ``clip_gates`` leaves them alone.)"""
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    k = jax.random.split(jax.random.key(0), 4)
    params = {
        "g_in": {"l0_log_alpha": 3 * jax.random.normal(k[0], (32,))},
        "fc1": {"kernel": jax.random.normal(k[1], (32, 16)), "bias": jnp.zeros(16)},
        "cg": {"channel_gate": jax.random.uniform(k[2], (16,), minval=-0.2, maxval=1.0)},
        "fc2": {"kernel": jax.random.normal(k[3], (16, 8))},
    }
    specs = {
        "g_in": {"l0_log_alpha": P("x")},
        "fc1": {"kernel": P("x", None), "bias": P("x")},
        "cg": {"channel_gate": P()},
        "fc2": {"kernel": P(None, "x")},
    }
    groups = [
        G("in", (M("g_in/l0_log_alpha", 0), M("fc1/kernel", 0))),
        G("h", (M("cg/channel_gate", 0), M("fc2/kernel", 0))),
    ]
    tx = optax.chain(jaxprune.add_gate_penalty(0.05), optax.sgd(0.5), jaxprune.clip_gates())

    def step(p):
        u, _ = tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)
        return optax.apply_updates(p, u)

    def select_and_fold(p):
        return jaxprune.gate_masks(p, groups).group_masks, jaxprune.fold_gates(p, groups)

    ref_step, ref_sel = step(params), select_and_fold(params)
    mesh = jax.make_mesh(
        (8,), ("x",), axis_types=(AxisType.Explicit if axis_type == "explicit" else AxisType.Auto,)
    )
    shardings = jax.tree.map(
        lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda s: isinstance(s, P)
    )
    with jax.set_mesh(mesh):
        sharded = jax.device_put(params, shardings)
        got_step = jax.jit(step)(sharded)
        got_sel = jax.jit(select_and_fold)(sharded)
    np.testing.assert_array_equal(np.asarray(got_sel[0]["in"]), np.asarray(ref_sel[0]["in"]))
    np.testing.assert_array_equal(np.asarray(got_sel[0]["h"]), np.asarray(ref_sel[0]["h"]))
    for got, ref in ((got_step, ref_step), (got_sel[1], ref_sel[1])):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    # Something happened: some gates are off, and log_alpha was clipped to its bounds.
    assert 0 < int(np.sum(ref_sel[0]["in"])) < 32
    lo, hi = np.log(0.01), np.log(100.0)
    la = np.asarray(ref_step["g_in"]["l0_log_alpha"])
    assert la.min() >= lo - 1e-6 and la.max() <= hi + 1e-6
    assert np.any(np.isclose(la, lo)) or np.any(np.isclose(la, hi))
    if axis_type == "explicit":
        for a, s in zip(jax.tree.leaves(got_step), jax.tree.leaves(shardings), strict=True):
            assert a.sharding.is_equivalent_to(s, a.ndim), (a.sharding.spec, s.spec)
