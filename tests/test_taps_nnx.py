"""Collecting activations and their gradients from NNX models (`nnx_taps`)."""

import warnings

import jax
import numpy as np
import pytest
import zoo
from flax import nnx

from jaxprune import importance

pytestmark = pytest.mark.standard_dtypes  # flax layers promote int/float shapes internally


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
    x, y = zoo.taps_batch()
    model = NNXNet(nnx.Rngs(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = model(x)  # no capture: the taps do nothing and warn nothing
    a = nnx.relu(model.conv(x))
    h = nnx.relu(model.block.fc(a.reshape(a.shape[0], -1)))
    ga = jax.grad(lambda a: zoo.taps_loss(model.block(a.reshape(a.shape[0], -1)), y))(a)
    gh = jax.grad(lambda h: zoo.taps_loss(model.block.out(h), y))(h)

    @nnx.jit
    def collect(model, x, y):
        return importance.nnx_taps(model, x, loss_fn=lambda o: zoo.taps_loss(o, y))

    taps = collect(model, x, y)
    assert sorted(taps.activations) == ["block/fc", "conv"]
    np.testing.assert_allclose(taps.activations["conv"], a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(taps.gradients["conv"], ga, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(taps.activations["block/fc"], h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(taps.gradients["block/fc"], gh, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(taps.output, plain, rtol=1e-6)
    assert not hasattr(model, "__captures__")  # the model itself was not touched
    x3, y3 = zoo.taps_batch(3, seed=2)
    assert collect(model, x3, y3).gradients["conv"].shape == (3, 4, 4, 4)
    # Activations only, under jax.jit with split state.
    graphdef, state = nnx.split(model)
    acts = jax.jit(lambda s, x: importance.nnx_taps(nnx.merge(graphdef, s), x).activations)(
        state, x
    )
    np.testing.assert_allclose(acts["conv"], a, rtol=1e-5, atol=1e-6)
