"""Collecting activations and their gradients from Linen models (`linen_taps`): explicit taps
and interception of an unchanged model."""

import chex
import jax
import numpy as np
import pytest
import zoo
from flax import linen as nn

from jaxprune import importance

pytestmark = pytest.mark.standard_dtypes  # flax layers promote int/float shapes internally


@jax.jit
def _linen_hand_split(params, x, y):
    """The same network split by hand at each activation; gradients from jax.grad."""
    conv = nn.Conv(4, (3, 3), padding="VALID")
    fc, out = nn.Dense(5), nn.Dense(3)
    z = conv.apply({"params": params["conv"]}, x)
    a = nn.relu(z)

    def tail_from_a(a):
        h = nn.relu(fc.apply({"params": params["fc"]}, a.reshape(a.shape[0], -1)))
        return zoo.taps_loss(out.apply({"params": params["out"]}, h), y)

    h = nn.relu(fc.apply({"params": params["fc"]}, a.reshape(a.shape[0], -1)))

    def tail_from_h(h):
        return zoo.taps_loss(out.apply({"params": params["out"]}, h), y)

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
    x, y = zoo.taps_batch()
    model = zoo.TappedLinen()
    variables = model.init(jax.random.key(1), x)
    assert list(variables) == ["params"]  # the tap creates no variables at init
    ref = _linen_hand_split(variables["params"], x, y)

    @jax.jit
    def collect(variables, x, y):
        return importance.linen_taps(
            model.apply, variables, x, loss_fn=lambda o: zoo.taps_loss(o, y)
        )

    taps = collect(variables, x, y)
    assert sorted(taps.activations) == ["conv", "fc"]
    np.testing.assert_allclose(taps.activations["conv"], ref["a"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(taps.gradients["conv"], ref["ga"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(taps.activations["fc"], ref["h"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(taps.gradients["fc"], ref["gh"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(taps.loss, zoo.taps_loss(model.apply(variables, x), y), rtol=1e-6)
    # An ordinary apply is unchanged by the taps and a different batch size works.
    np.testing.assert_allclose(
        model.apply(variables, x), zoo.TappedLinen(tapped=False).apply(variables, x), rtol=1e-6
    )
    x3, y3 = zoo.taps_batch(3, seed=2)
    assert collect(variables, x3, y3).gradients["conv"].shape == (3, 4, 4, 4)


def test_linen_interception_taps_an_unchanged_model():
    x, y = zoo.taps_batch()
    model = zoo.TappedLinen(tapped=False)
    variables = model.init(jax.random.key(1), x)
    ref = _linen_hand_split(variables["params"], x, y)
    for modules in (
        ["conv", "fc"],
        lambda m: isinstance(m, (nn.Conv, nn.Dense)) and m.name != "out",
    ):
        taps = jax.jit(
            lambda v, x, y, modules=modules: importance.linen_taps(
                model.apply, v, x, loss_fn=lambda o: zoo.taps_loss(o, y), modules=modules
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


def test_taps_feed_a_jitted_statistics_step_without_retracing():
    model = zoo.TappedLinen()
    x, _ = zoo.taps_batch()
    variables = model.init(jax.random.key(1), x)
    state = importance.channel_stats_init({"conv": 4, "fc": 5})

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(state, x, y):
        t = importance.linen_taps(model.apply, variables, x, loss_fn=lambda o: zoo.taps_loss(o, y))
        return importance.channel_stats_update(state, t.activations, t.gradients)

    for seed in range(3):
        state = step(state, *zoo.taps_batch(seed=seed))
    assert int(state.examples["fc"]) == 18 and int(state.grad_examples["conv"]) == 18
