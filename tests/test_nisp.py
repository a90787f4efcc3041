"""NISP: importance propagated back through dense, conv, flatten and batch-norm layers."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxprune import importance


def test_nisp_equals_the_explicit_product_on_an_mlp():
    k = jax.random.split(jax.random.key(0), 4)
    p = {
        "fc1": {"kernel": jax.random.normal(k[0], (12, 9))},
        "fc2": {"kernel": jax.random.normal(k[1], (9, 7))},
        "fc3": {"kernel": jax.random.normal(k[2], (7, 5))},
    }
    s = jax.random.uniform(k[3], (5,))
    layers = [
        importance.DenseLayer("fc1/kernel", name="fc1"),
        importance.DenseLayer("fc2/kernel", name="fc2"),
        importance.DenseLayer("fc3/kernel", name="fc3"),
    ]
    got = jax.jit(lambda p, s: importance.nisp_scores(p, s, layers, (12,)))(p, s)
    w1, w2, w3 = (np.abs(np.asarray(p[n]["kernel"], np.float64)) for n in ("fc1", "fc2", "fc3"))
    s64 = np.asarray(s, np.float64)
    np.testing.assert_allclose(got["fc3"], s64, rtol=1e-6)
    np.testing.assert_allclose(got["fc2"], w3 @ s64, rtol=1e-5)
    np.testing.assert_allclose(got["fc1"], w2 @ w3 @ s64, rtol=1e-5)
    inputs = importance.nisp_scores(p, s, [importance.FlattenLayer(name="x"), *layers], (12,))
    np.testing.assert_allclose(inputs["x"], w1 @ w2 @ w3 @ s64, rtol=1e-5)
    exact = importance.nisp_scores(p, s, layers, (12,), exact=True)
    chex.assert_trees_all_close(exact, got, rtol=1e-5)


def _lenet5_params(key):
    k = jax.random.split(key, 4)
    return {
        "conv1": {"kernel": jax.random.normal(k[0], (5, 5, 1, 6))},
        "bn": {"scale": jax.random.normal(k[3], (6,)), "var": jnp.linspace(0.5, 2.0, 6)},
        "conv2": {"kernel": jax.random.normal(k[1], (5, 5, 6, 10))},
        "fc1": {"kernel": jax.random.normal(k[2], (4 * 4 * 10, 20))},
    }


LENET_LAYERS = [
    importance.ConvLayer("conv1/kernel", name="conv1"),
    importance.BatchNormLayer("bn/scale", "bn/var", name="bn1"),
    importance.PoolLayer((2, 2)),
    importance.ConvLayer("conv2/kernel", name="conv2"),
    importance.PoolLayer((2, 2), kind="avg", name="pool2"),
    importance.FlattenLayer(),
    importance.DenseLayer("fc1/kernel", name="fc1"),
]


def test_nisp_flatten_aggregation_is_the_sum_over_spatial_positions():
    p = _lenet5_params(jax.random.key(0))
    s = jax.random.uniform(jax.random.key(1), (20,))
    got = jax.jit(lambda p, s: importance.nisp_scores(p, s, LENET_LAYERS, (28, 28, 1)))(p, s)
    fc1_inputs = np.abs(np.asarray(p["fc1"]["kernel"])) @ np.asarray(s)  # 160 = 4 * 4 * 10
    np.testing.assert_allclose(got["pool2"], fc1_inputs.reshape(4, 4, 10).sum((0, 1)), rtol=1e-5)
    # Average pooling passes 1/4 of each window to each of its 4 inputs: channel sums kept.
    np.testing.assert_allclose(got["conv2"], got["pool2"], rtol=1e-5)
    k2 = np.abs(np.asarray(p["conv2"]["kernel"])).sum((0, 1))  # (6, 10)
    bn = np.abs(np.asarray(p["bn"]["scale"])) / np.sqrt(np.asarray(p["bn"]["var"]) + 1e-5)
    np.testing.assert_allclose(got["bn1"], 4.0 * (k2 @ got["conv2"]), rtol=1e-5)  # max pool
    np.testing.assert_allclose(got["conv1"], bn * got["bn1"], rtol=1e-5)
    # For VALID convolutions the exact (transposed-convolution) form gives the same channels.
    exact = jax.jit(
        lambda p, s: importance.nisp_scores(p, s, LENET_LAYERS, (28, 28, 1), exact=True)
    )
    chex.assert_trees_all_close(exact(p, s), got, rtol=1e-4)


def test_nisp_exact_conv_is_the_transposed_unrolled_map():
    k = jax.random.normal(jax.random.key(0), (3, 3, 2, 4))
    p = {"conv": k}
    layer = importance.ConvLayer("conv", strides=2, padding="SAME", name="conv")
    s_out = jax.random.uniform(jax.random.key(1), (4, 4, 4))  # output map of a (7, 7, 2) input

    def conv(x):
        return lax.conv_general_dilated(
            x[None], k, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )[0]

    m = jax.jacobian(conv)(jnp.zeros((7, 7, 2))).reshape(64, 98)  # unrolled linear map
    s_in = (np.abs(np.asarray(m)).T @ np.asarray(s_out).reshape(-1)).reshape(7, 7, 2)
    # An identity batch norm in front reports the conv's input scores.
    layers = [importance.BatchNormLayer(name="input"), layer]
    got = importance.nisp_scores(p, s_out, layers, (7, 7, 2), exact=True)
    np.testing.assert_allclose(got["conv"], np.asarray(s_out).sum((0, 1)), rtol=1e-6)
    np.testing.assert_allclose(got["input"], s_in.sum((0, 1)), rtol=1e-5)
    # The channel-level shortcut ignores the borders, so with SAME padding it is larger.
    approx = importance.nisp_scores(p, s_out, layers, (7, 7, 2))
    assert np.all(np.asarray(approx["input"]) > s_in.sum((0, 1)))


def test_nisp_errors_name_paths_and_shapes():
    p = {"fc": jnp.ones((3, 2))}
    with pytest.raises(ValueError, match="no parameter at path 'nope'"):
        importance.nisp_scores(p, jnp.ones(2), [importance.DenseLayer("nope")], (3,))
    with pytest.raises(ValueError, match=r"`frl_scores` must have shape \(2,\)"):
        importance.nisp_scores(p, jnp.ones(3), [importance.DenseLayer("fc")], (3,))
    with pytest.raises(ValueError, match="duplicates"):
        layers = [importance.DenseLayer("fc", name="a"), importance.BatchNormLayer(name="a")]
        importance.nisp_scores(p, jnp.ones(2), layers, (3,))
