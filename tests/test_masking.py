"""Applying masks (straight-through included), full masks, and mask errors that name paths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune


def test_apply_masks_broadcasts_keeps_dtype_and_none():
    p = {"k": jnp.arange(1.0, 7.0, dtype=jnp.bfloat16).reshape(2, 3), "b": jnp.ones(3), "n": None}
    m = {"k": jnp.array([[True, False, True]]), "b": None, "n": None}
    out = jax.jit(jaxprune.apply_masks)(p, m)
    assert out["k"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out["k"], np.float32), [[1, 0, 3], [4, 0, 6]])
    assert out["n"] is None
    np.testing.assert_array_equal(out["b"], p["b"])


def test_apply_masks_does_not_make_nan_from_inf():
    out = jaxprune.apply_masks({"w": jnp.array([jnp.inf, 1.0])}, {"w": jnp.array([False, True])})
    np.testing.assert_array_equal(out["w"], [0.0, 1.0])


def test_straight_through_forward_is_masked_gradient_is_identity():
    w = jnp.array([1.5, -2.0, 3.0])
    m = {"w": jnp.array([True, False, True])}

    def loss(p, st):
        q = jaxprune.apply_masks(p, m, straight_through=st)
        return jnp.sum(q["w"] * jnp.array([1.0, 2.0, 3.0]))

    assert float(loss({"w": w}, True)) == float(loss({"w": w}, False)) == 1.5 + 9.0
    g_st = jax.grad(loss)({"w": w}, True)["w"]
    g_plain = jax.grad(loss)({"w": w}, False)["w"]
    np.testing.assert_array_equal(g_st, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(g_plain, [1.0, 0.0, 3.0])
    out = jaxprune.apply_masks({"w": w}, m, straight_through=True)["w"]
    np.testing.assert_array_equal(out, [1.5, 0.0, 3.0])


def test_mask_errors_name_paths():
    p = {"a": {"k": jnp.ones((2, 3))}, "b": jnp.ones(3)}
    with pytest.raises(ValueError, match=r"missing paths \['a/k'\]"):
        jaxprune.apply_masks(p, {"a": {"q": jnp.ones((2, 3), bool)}, "b": None})
    with pytest.raises(ValueError, match="'a/k' has shape \\(3, 2\\)"):
        jaxprune.apply_masks(p, {"a": {"k": jnp.ones((3, 2), bool)}, "b": None})
    with pytest.raises(ValueError, match="'a/k' has shape \\(3,\\)"):
        jaxprune.apply_masks(p, {"a": {"k": jnp.ones((3,), bool)}, "b": None})
    with pytest.raises(TypeError, match="'a/k' must be a bool"):
        jaxprune.apply_masks(p, {"a": {"k": jnp.ones((2, 3))}, "b": None})


def test_full_masks():
    p = {"k": jnp.ones((2, 3)), "b": jnp.ones(3)}
    full = jaxprune.full_masks(p, {"k": jnp.array([[True, False, True]]), "b": None})
    assert full["k"].shape == (2, 3) and full["b"] is None
