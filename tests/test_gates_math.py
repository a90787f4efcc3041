"""Gate math: hard-concrete and Bernoulli samples, deterministic values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np

import jaxprune
import jaxprune.linen
import jaxprune.nnx

SHIFT = (2 / 3) * np.log(0.1 / 1.1)


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
