"""The NNX gate layers: hard-concrete Monte Carlo, expected L0, per-weight gates, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxprune
import jaxprune.linen
import jaxprune.nnx


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
