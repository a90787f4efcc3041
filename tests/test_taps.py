"""Tests for collecting activations and activation gradients from Linen and NNX models."""

import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

from jaxprune import importance

pytestmark = pytest.mark.standard_dtypes  # flax layers promote int/float shapes internally


def _batch(n=6, seed=0):
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, (n, 6, 6, 1)), jax.random.randint(ky, (n,), 0, 3)


def _loss(logits, y):
    # Sum over the batch: per-example gradients (the convention of Taylor's criterion).
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()


class LinenNet(nn.Module):
    tapped: bool = True

    @nn.compact
    def __call__(self, x):
        z = nn.Conv(4, (3, 3), padding="VALID", name="conv")(x)
        a = nn.relu(z)
        if self.tapped:
            a = importance.tap(self, "conv", a)
        h = nn.relu(nn.Dense(5, name="fc")(a.reshape(a.shape[0], -1)))
        if self.tapped:
            h = importance.tap(self, "fc", h)
        return nn.Dense(3, name="out")(h)


@jax.jit
def _linen_hand_split(params, x, y):
    """The same network split by hand at each activation; gradients from jax.grad."""
    conv = nn.Conv(4, (3, 3), padding="VALID")
    fc, out = nn.Dense(5), nn.Dense(3)
    z = conv.apply({"params": params["conv"]}, x)
    a = nn.relu(z)

    def tail_from_a(a):
        h = nn.relu(fc.apply({"params": params["fc"]}, a.reshape(a.shape[0], -1)))
        return _loss(out.apply({"params": params["out"]}, h), y)

    h = nn.relu(fc.apply({"params": params["fc"]}, a.reshape(a.shape[0], -1)))

    def tail_from_h(h):
        return _loss(out.apply({"params": params["out"]}, h), y)

    zf = fc.apply({"params": params["fc"]}, a.reshape(a.shape[0], -1))

    def tail_from_zf(zf):
        return tail_from_h(nn.relu(zf))

    def tail_from_z(z):
        return tail_from_a(nn.relu(z))

    return {
        "a": a,
        "ga": jax.grad(tail_from_a)(a),
        "h": h,
        "gh": jax.grad(tail_from_h)(h),
        "z": z,
        "gz": jax.grad(tail_from_z)(z),
        "zf": zf,
        "gzf": jax.grad(tail_from_zf)(zf),
    }


def test_linen_tap_matches_hand_split_network():
    x, y = _batch()
    model = LinenNet()
    variables = model.init(jax.random.key(1), x)
    assert list(variables) == ["params"]  # the tap creates no variables at init
    ref = _linen_hand_split(variables["params"], x, y)

    @jax.jit
    def collect(variables, x, y):
        return importance.linen_taps(model.apply, variables, x, loss_fn=lambda o: _loss(o, y))

    taps = collect(variables, x, y)
    assert sorted(taps.activations) == ["conv", "fc"]
    np.testing.assert_allclose(taps.activations["conv"], ref["a"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(taps.gradients["conv"], ref["ga"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(taps.activations["fc"], ref["h"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(taps.gradients["fc"], ref["gh"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(taps.loss, _loss(model.apply(variables, x), y), rtol=1e-6)
    # An ordinary apply is unchanged by the taps and a different batch size works.
    np.testing.assert_allclose(
        model.apply(variables, x), LinenNet(tapped=False).apply(variables, x), rtol=1e-6
    )
    x3, y3 = _batch(3, seed=2)
    assert collect(variables, x3, y3).gradients["conv"].shape == (3, 4, 4, 4)


def test_linen_interception_taps_an_unchanged_model():
    x, y = _batch()
    model = LinenNet(tapped=False)
    variables = model.init(jax.random.key(1), x)
    ref = _linen_hand_split(variables["params"], x, y)
    for modules in (
        ["conv", "fc"],
        lambda m: isinstance(m, (nn.Conv, nn.Dense)) and m.name != "out",
    ):
        taps = jax.jit(
            lambda v, x, y, modules=modules: importance.linen_taps(
                model.apply, v, x, loss_fn=lambda o: _loss(o, y), modules=modules
            )
        )(variables, x, y)
        assert sorted(taps.activations) == ["conv", "fc"]
        # Module outputs are pre-ReLU: z and dL/dz.
        np.testing.assert_allclose(taps.activations["conv"], ref["z"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(taps.gradients["conv"], ref["gz"], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(taps.activations["fc"], ref["zf"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(taps.gradients["fc"], ref["gzf"], rtol=1e-4, atol=1e-6)
    # z * dL/dz equals relu(z) * dL/drelu(z): the Taylor products agree, and with
    # pre_relu=True the APoZ and mean statistics equal those of the post-ReLU tap.
    np.testing.assert_allclose(ref["z"] * ref["gz"], ref["a"] * ref["ga"], rtol=1e-4, atol=1e-7)
    pre = importance.channel_stats_init({"conv": 4})
    pre = importance.channel_stats_update(
        pre, {"conv": ref["z"]}, {"conv": ref["gz"]}, pre_relu=True
    )
    post = importance.channel_stats_init({"conv": 4})
    post = importance.channel_stats_update(post, {"conv": ref["a"]}, {"conv": ref["ga"]})
    chex.assert_trees_all_close(
        importance.channel_stats_finalize(pre),
        importance.channel_stats_finalize(post),
        rtol=1e-5,
        atol=1e-7,
    )


class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), padding="VALID", rngs=rngs)
        self.block = NNXBlock(rngs)

    def __call__(self, x):
        a = importance.tap(self, "conv", nnx.relu(self.conv(x)))
        return self.block(a.reshape(a.shape[0], -1))


class NNXBlock(nnx.Module):
    def __init__(self, rngs):
        self.fc = nnx.Linear(64, 5, rngs=rngs)
        self.out = nnx.Linear(5, 3, rngs=rngs)

    def __call__(self, h):
        h = importance.tap(self, "fc", nnx.relu(self.fc(h)))
        return self.out(h)


def test_nnx_tap_matches_hand_split_network():
    x, y = _batch()
    model = NNXNet(nnx.Rngs(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = model(x)  # no capture: the taps do nothing and warn nothing
    a = nnx.relu(model.conv(x))
    h = nnx.relu(model.block.fc(a.reshape(a.shape[0], -1)))
    ga = jax.grad(lambda a: _loss(model.block(a.reshape(a.shape[0], -1)), y))(a)
    gh = jax.grad(lambda h: _loss(model.block.out(h), y))(h)

    @nnx.jit
    def collect(model, x, y):
        return importance.nnx_taps(model, x, loss_fn=lambda o: _loss(o, y))

    taps = collect(model, x, y)
    assert sorted(taps.activations) == ["block/fc", "conv"]
    np.testing.assert_allclose(taps.activations["conv"], a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(taps.gradients["conv"], ga, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(taps.activations["block/fc"], h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(taps.gradients["block/fc"], gh, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(taps.output, plain, rtol=1e-6)
    assert not hasattr(model, "__captures__")  # the model itself was not touched
    x3, y3 = _batch(3, seed=2)
    assert collect(model, x3, y3).gradients["conv"].shape == (3, 4, 4, 4)
    # Activations only, under jax.jit with split state.
    graphdef, state = nnx.split(model)
    acts = jax.jit(lambda s, x: importance.nnx_taps(nnx.merge(graphdef, s), x).activations)(
        state, x
    )
    np.testing.assert_allclose(acts["conv"], a, rtol=1e-5, atol=1e-6)


def test_taps_feed_a_jitted_statistics_step_without_retracing():
    model = LinenNet()
    x, _ = _batch()
    variables = model.init(jax.random.key(1), x)
    state = importance.channel_stats_init({"conv": 4, "fc": 5})

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(state, x, y):
        t = importance.linen_taps(model.apply, variables, x, loss_fn=lambda o: _loss(o, y))
        return importance.channel_stats_update(state, t.activations, t.gradients)

    for seed in range(3):
        state = step(state, *_batch(seed=seed))
    assert int(state.examples["fc"]) == 18 and int(state.grad_examples["conv"]) == 18


class TwiceNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = importance.tap(self, "h", x)
        return importance.tap(self, "h", x)


def test_errors_name_the_problem():
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="'h' recorded 2 values"):
        importance.linen_taps(TwiceNet().apply, {}, x)
    plain = LinenNet(tapped=False)
    xb, _ = _batch()
    v = plain.init(jax.random.key(0), xb)
    with pytest.raises(ValueError, match="no activation was tapped"):
        importance.linen_taps(plain.apply, v, xb)
    with pytest.raises(ValueError, match=r"\['nope'\] matched no submodule"):
        importance.linen_taps(plain.apply, v, xb, modules=["conv", "nope"])
    with pytest.raises(ValueError, match="float scalar"):
        importance.linen_taps(LinenNet().apply, v, xb, loss_fn=lambda o: o)
    with pytest.raises(TypeError, match="'tap_perturbations'"):
        importance.linen_taps(plain.apply, {**v, "tap_perturbations": {}}, xb)
    with pytest.raises(TypeError, match="Flax Linen or NNX module"):
        importance.tap(object(), "h", x)
    with pytest.raises(TypeError, match="`model` must be an NNX module"):
        importance.nnx_taps(plain, xb)
