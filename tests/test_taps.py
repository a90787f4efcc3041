"""The errors of the activation taps, from the shared core and both collectors."""

import jax
import jax.numpy as jnp
import pytest
import zoo
from flax import linen as nn

from jaxprune import importance

pytestmark = pytest.mark.standard_dtypes  # flax layers promote int/float shapes internally


class TwiceNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = importance.tap(self, "h", x)
        return importance.tap(self, "h", x)


def test_errors_name_the_problem():
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="'h' recorded 2 values"):
        importance.linen_taps(TwiceNet().apply, {}, x)
    plain = zoo.TappedLinen(tapped=False)
    xb, _ = zoo.taps_batch()
    v = plain.init(jax.random.key(0), xb)
    with pytest.raises(ValueError, match="no activation was tapped"):
        importance.linen_taps(plain.apply, v, xb)
    with pytest.raises(ValueError, match=r"\['nope'\] matched no submodule"):
        importance.linen_taps(plain.apply, v, xb, modules=["conv", "nope"])
    with pytest.raises(ValueError, match="float scalar"):
        importance.linen_taps(zoo.TappedLinen().apply, v, xb, loss_fn=lambda o: o)
    with pytest.raises(TypeError, match="'tap_perturbations'"):
        importance.linen_taps(plain.apply, {**v, "tap_perturbations": {}}, xb)
    with pytest.raises(TypeError, match="Flax Linen or NNX module"):
        importance.tap(object(), "h", x)
    with pytest.raises(TypeError, match="`model` must be an NNX module"):
        importance.nnx_taps(plain, xb)
