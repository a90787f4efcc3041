"""The Linen gate layers: the same outputs, masks and gradients as the NNX layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxprune
import jaxprune.linen
import jaxprune.nnx

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
