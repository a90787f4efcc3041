"""Gate layers (Linen and NNX, same behaviour), gate math, labels, folding and penalties."""

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
SHIFT = (2 / 3) * np.log(0.1 / 1.1)


# --- gate math ------------------------------------------------------------------------------


def test_hard_concrete_monte_carlo_matches_prob_nonzero():
    log_alpha = jnp.array([-3.0, -1.0, 0.0, 0.5, 2.0, 4.0])
    n = 200_000
    z = jax.jit(lambda k: jaxprune.hard_concrete_sample(k, log_alpha, (n, 6)))(jax.random.key(0))
    z = np.asarray(z)
    assert z.min() >= 0.0 and z.max() <= 1.0
    assert np.all((z == 0).mean(0)[:3] > 0) and np.all((z == 1).mean(0)[2:] > 0)
    np.testing.assert_allclose(
        (z != 0).mean(0), jaxprune.hard_concrete_prob_nonzero(log_alpha), atol=1e-2
    )
    np.testing.assert_allclose(
        jaxprune.hard_concrete_prob_nonzero(log_alpha),
        1 / (1 + np.exp(-(np.asarray(log_alpha) - SHIFT))),
        rtol=1e-6,
    )


def test_hard_concrete_deterministic_formula_and_gradients():
    la = jnp.linspace(-4.0, 4.0, 17)
    want = np.clip(1 / (1 + np.exp(-np.asarray(la))) * 1.2 - 0.1, 0, 1)
    np.testing.assert_allclose(jaxprune.hard_concrete_deterministic(la), want, rtol=1e-6)
    assert float(jaxprune.hard_concrete_deterministic(jnp.array(-2.4))) == 0.0
    assert float(jaxprune.hard_concrete_deterministic(jnp.array(2.4))) == 1.0
    g = jax.grad(lambda a: jnp.sum(jaxprune.hard_concrete_sample(jax.random.key(1), a)))(
        jnp.zeros(64)
    )
    assert np.all(np.isfinite(g)) and np.sum(g > 0) > 16 and np.all(g >= 0)


def test_bernoulli_gate_sample_mean_and_straight_through():
    g = jnp.array([0.0, 0.2, 0.7, 1.0])
    z = np.asarray(jaxprune.bernoulli_gate_sample(jax.random.key(0), g, (100_000, 4)))
    assert set(np.unique(z)) <= {0.0, 1.0}
    np.testing.assert_allclose(z.mean(0), g, atol=1e-2)
    w = jnp.array([1.0, -2.0, 3.0, 4.0])
    grad = jax.grad(lambda g: jnp.sum(w * jaxprune.bernoulli_gate_sample(jax.random.key(2), g)))(g)
    np.testing.assert_array_equal(grad, w)  # dL/dg = dL/dz
    np.testing.assert_array_equal(jaxprune.bernoulli_gate_deterministic(g), [0, 0, 1, 1])


# --- the same layers in Linen and NNX -------------------------------------------------------

KINDS = {
    "hard_concrete": (jaxprune.linen.HardConcreteGate, jaxprune.nnx.HardConcreteGate, {}),
    "bernoulli": (jaxprune.linen.BernoulliGate, jaxprune.nnx.BernoulliGate, {"init_value": 0.6}),
    "channel": (jaxprune.linen.ChannelGate, jaxprune.nnx.ChannelGate, {"init_value": 0.5}),
}
NAMES = {"hard_concrete": "l0_log_alpha", "bernoulli": "bernoulli_gate", "channel": "channel_gate"}
STOCHASTIC = ("hard_concrete", "bernoulli")


def _pair(kind, features=5):
    lin_cls, nnx_cls, kw = KINDS[kind]
    lin = lin_cls(features, **kw)
    x = jax.random.normal(jax.random.key(3), (4, features))
    variables = lin.init(
        jax.random.key(0), x, **({"deterministic": True} if kind in STOCHASTIC else {})
    )
    mod = nnx_cls(features, **kw, rngs=nnx.Rngs(params=0, gates=1))
    name = NAMES[kind]
    value = variables["params"][name]
    if kind == "hard_concrete":  # spread the gates over on / stochastic / off
        value = jnp.linspace(-4.0, 4.0, features)
        variables = {"params": {name: value}}
    getattr(mod, name)[...] = value
    return lin, variables, mod, x


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_linen_and_nnx_gates_agree(kind):
    lin, variables, mod, x = _pair(kind)
    name = NAMES[kind]
    assert isinstance(getattr(mod, name), jaxprune.nnx.GateParam)
    det = {"deterministic": True} if kind in STOCHASTIC else {}
    y_lin = lin.apply(variables, x, **det)
    mod.eval()
    y_nnx = mod(x)
    np.testing.assert_array_equal(y_lin, y_nnx)
    want = {
        "hard_concrete": jaxprune.hard_concrete_deterministic,
        "bernoulli": jaxprune.bernoulli_gate_deterministic,
        "channel": lambda v: v,
    }[kind](variables["params"][name])
    np.testing.assert_array_equal(y_lin, x * want.reshape(1, -1))
    np.testing.assert_array_equal(mod.gate_values(), want)
    np.testing.assert_array_equal(mod.mask(), want != 0)
    np.testing.assert_array_equal(lin.apply(variables, method="mask"), want != 0)
    if kind in STOCHASTIC:  # training mode: same explicit key -> identical samples
        key = jax.random.key(9)
        mod.train()
        y1 = lin.apply(variables, x, deterministic=False, key=key)
        np.testing.assert_array_equal(y1, mod(x, key=key))
        y2 = lin.apply(variables, x, deterministic=False, rngs={"gates": jax.random.key(4)})
        assert y2.shape == x.shape
        view = nnx.view(mod, deterministic=True)
        np.testing.assert_array_equal(view(x), y_lin)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_gradients_flow_to_gates_and_inputs(kind):
    lin, variables, mod, x = _pair(kind)
    name = NAMES[kind]
    if kind == "hard_concrete":  # mostly unclipped samples, so that gradients reach log_alpha
        variables = {"params": {name: jnp.zeros(5)}}
        mod.l0_log_alpha[...] = jnp.zeros(5)
    kw = (
        {"deterministic": False, "rngs": {"gates": jax.random.key(5)}} if kind in STOCHASTIC else {}
    )

    def loss_lin(params, x):
        return jnp.sum(jnp.square(lin.apply({"params": params}, x, **kw) - 1.0))

    gp, gx = jax.grad(loss_lin, argnums=(0, 1))(variables["params"], x)
    assert np.any(np.asarray(gp[name]) != 0) and np.any(np.asarray(gx) != 0)
    assert np.all(np.isfinite(np.asarray(gp[name])))

    @nnx.jit
    def grads_nnx(mod, x):
        return nnx.grad(lambda m: jnp.sum(jnp.square(m(x) - 1.0)))(mod)

    g = grads_nnx(mod, x)
    assert np.any(np.asarray(g[name][...]) != 0)


def test_hard_concrete_layer_monte_carlo_and_expected_l0():
    features = 4
    mod = jaxprune.nnx.HardConcreteGate(features, per_example=True, rngs=nnx.Rngs(0))
    mod.l0_log_alpha[...] = jnp.array([-2.0, 0.0, 1.0, 3.0])
    z = np.asarray(mod(jnp.ones((50_000, features))))
    np.testing.assert_allclose(
        (z != 0).mean(0), jaxprune.hard_concrete_prob_nonzero(mod.l0_log_alpha[...]), atol=1e-2
    )
    assert abs(float(mod.expected_l0()) - (z != 0).mean(0).sum()) < 4e-2
    lin = jaxprune.linen.HardConcreteGate(features, per_example=True)
    variables = {"params": {"l0_log_alpha": mod.l0_log_alpha[...]}}
    np.testing.assert_allclose(lin.apply(variables, method="expected_l0"), mod.expected_l0())
    zl = lin.apply(
        variables,
        jnp.ones((50_000, features)),
        deterministic=False,
        rngs={"gates": jax.random.key(1)},
    )
    np.testing.assert_allclose((np.asarray(zl) != 0).mean(0), (z != 0).mean(0), atol=2e-2)


def test_per_weight_gates_and_shape_errors():
    mod = jaxprune.nnx.BernoulliGate((3, 2), init_value=1.0, rngs=nnx.Rngs(0))
    kernel = jnp.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(mod(kernel), kernel)
    with pytest.raises(ValueError, match=r"gate has shape \(3, 2\).*input shape \(2, 3\)"):
        mod(kernel.T)
    with pytest.raises(ValueError, match="`features`"):
        jaxprune.nnx.ChannelGate(0)
    with pytest.raises(ValueError, match="no random stream"):
        jaxprune.nnx.BernoulliGate(2)(jnp.ones((1, 2)))
    with pytest.raises(ValueError, match="droprate_init"):
        jaxprune.nnx.HardConcreteGate(2, droprate_init=1.0, rngs=nnx.Rngs(0))


# --- labels ------------------------------------------------------------------------------


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, train=True):
        x = jaxprune.linen.HardConcreteGate(6, name="gate_in")(x, deterministic=not train)
        x = nn.Dense(8, name="fc1")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn1")(x)
        x = jaxprune.linen.ChannelGate(8, name="cg")(nn.relu(x))
        x = nn.LayerNorm(name="ln")(x)
        return nn.Dense(3, name="fc2")(x)


class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.gate_in = jaxprune.nnx.HardConcreteGate(6, rngs=rngs)
        self.fc1 = nnx.Linear(6, 8, rngs=rngs)
        self.bn1 = nnx.BatchNorm(8, rngs=rngs)
        self.cg = jaxprune.nnx.ChannelGate(8)
        self.ln = nnx.LayerNorm(8, rngs=rngs)
        self.fc2 = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        x = self.bn1(self.fc1(self.gate_in(x)))
        return self.fc2(self.ln(self.cg(nnx.relu(x))))


def test_labels_find_batchnorm_scales_and_gates_in_both_frameworks():
    x = jnp.ones((2, 6))
    v = LinenNet().init({"params": jax.random.key(0), "gates": jax.random.key(1)}, x)
    lin = jaxprune.linen.slimming_labels(v)
    model = NNXNet(nnx.Rngs(0))
    nx = jaxprune.nnx.slimming_labels(model)
    for labels in (lin, nx):
        assert labels["bn1"]["scale"] is True and labels["ln"]["scale"] is False
        assert labels["cg"]["channel_gate"] is True and labels["fc1"]["kernel"] is False
        assert labels["bn1"]["bias"] is False and labels["gate_in"]["l0_log_alpha"] is False
    assert jaxprune.nnx.gate_labels(model) == jaxprune.gate_labels(
        nnx.to_pure_dict(nnx.state(model, nnx.Param))
    )
    assert jaxprune.gate_labels(v["params"], "hard_concrete")["gate_in"]["l0_log_alpha"] is True
    assert jaxprune.gate_labels(v["params"], "hard_concrete")["cg"]["channel_gate"] is False
    with pytest.raises(ValueError, match="'params' collection"):
        jaxprune.linen.slimming_labels(v["params"])
    with pytest.raises(TypeError, match="nnx.Variable subclasses"):
        jaxprune.nnx.labels(model, int)


@pytest.mark.standard_dtypes  # adamw
def test_nnx_optimizer_with_gate_penalties_and_weight_decay_mask():
    model = NNXNet(nnx.Rngs(params=0, gates=1))
    x = jax.random.normal(jax.random.key(2), (32, 6))
    y = jnp.arange(32) % 3
    no_gates = jaxprune.nnx.mask_fn(model, jaxprune.nnx.GateParam, invert=True)
    tx = optax.chain(
        jaxprune.add_gate_penalty(0.5),
        jaxprune.add_l1(0.05, prunable=jaxprune.nnx.slimming_labels(model)),
        optax.adamw(1e-2, weight_decay=1e-1, mask=no_gates),
        jaxprune.clip_gates(),
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    la0 = np.asarray(model.gate_in.l0_log_alpha[...]).copy()

    @nnx.jit
    def step(model, optimizer):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    for _ in range(20):
        step(model, optimizer)
    la = np.asarray(model.gate_in.l0_log_alpha[...])
    assert np.mean(la) < np.mean(la0)  # the L0 penalty pushes gates off
    assert np.all(la >= np.log(0.01) - 1e-6)
    assert float(jnp.sum(model.cg.channel_gate[...])) < 8.0


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
