"""`tap`, the one line in a model: the Linen or the NNX tap, and the identity otherwise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

from jaxprune import importance

pytestmark = pytest.mark.standard_dtypes  # flax layers promote int/float shapes internally


class LinenMLP(nn.Module):
    tapped: bool = True

    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(nn.Dense(4, name="fc")(x))
        if self.tapped:
            h = importance.tap(self, "h", h)
        return nn.Dense(2, name="out")(h)


class NNXMLP(nnx.Module):
    def __init__(self, rngs):
        self.fc = nnx.Linear(5, 4, rngs=rngs)
        self.out = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        return self.out(importance.tap(self, "h", jnp.tanh(self.fc(x))))


def _pair():
    """A Linen and an NNX model with the same weights."""
    x = jax.random.normal(jax.random.key(1), (3, 5))
    linen = LinenMLP()
    variables = linen.init(jax.random.key(0), x)
    model = NNXMLP(nnx.Rngs(0))
    for name in ("fc", "out"):
        layer = getattr(model, name)
        layer.kernel[...] = variables["params"][name]["kernel"]
        layer.bias[...] = variables["params"][name]["bias"]
    return x, linen, variables, model


def loss(y):
    return jnp.sum(y[:, 0] ** 2 - y[:, 1])


def test_same_taps_from_linen_and_nnx():
    x, linen, variables, model = _pair()
    lt = importance.linen_taps(linen.apply, variables, x, loss_fn=loss)
    nt = importance.nnx_taps(model, x, loss_fn=loss)
    p = variables["params"]
    h = jnp.tanh(x @ p["fc"]["kernel"] + p["fc"]["bias"][None])
    gh = jax.grad(lambda h: loss(h @ p["out"]["kernel"] + p["out"]["bias"][None]))(h)
    for taps in (lt, nt):
        assert sorted(taps.activations) == ["h"]
        np.testing.assert_allclose(taps.activations["h"], h, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(taps.gradients["h"], gh, rtol=1e-5, atol=1e-7)


def test_identity_outside_the_collectors():
    x, linen, variables, model = _pair()
    plain = LinenMLP(tapped=False)
    f = jax.jit(lambda v, x: linen.apply(v, x))
    np.testing.assert_array_equal(f(variables, x), plain.apply(variables, x))
    g_tapped = jax.grad(lambda v: loss(linen.apply(v, x)))(variables)
    g_plain = jax.grad(lambda v: loss(plain.apply(v, x)))(variables)
    jax.tree.map(np.testing.assert_array_equal, g_tapped, g_plain)
    np.testing.assert_allclose(model(x), f(variables, x), rtol=1e-6)
    assert "tap_perturbations" not in linen.init(jax.random.key(0), x)


@pytest.mark.parametrize("name", ["", 3, None])
def test_name_must_be_a_nonempty_string(name):
    x = jnp.ones((3, 5))

    class Bad(nn.Module):
        @nn.compact
        def __call__(self, x):
            return importance.tap(self, name, x)

    with pytest.raises(TypeError, match="tap `name` must be a non-empty string"):
        Bad().init(jax.random.key(0), x)


def test_module_must_be_a_flax_module():
    with pytest.raises(TypeError, match="tap 'h': `module` must be a Flax Linen or NNX module"):
        importance.tap(object(), "h", jnp.ones((2, 3)))
