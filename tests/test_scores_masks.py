"""Tests for granularity specs, score functions, mask application and sparsity accounting."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune


def _conv_params(key=0):
    k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
    return {
        "conv": {"kernel": jax.random.normal(k1, (3, 3, 4, 8)), "bias": jnp.zeros(8)},
        "dense": {"kernel": jax.random.normal(k2, (8, 5)), "bias": jax.random.normal(k3, (5,))},
        "absent": None,
    }


# --- granularity -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "gran, conv_shape, dense_shape",
    [
        (jaxprune.UNSTRUCTURED, (3, 3, 4, 8), (8, 5)),
        (jaxprune.FILTER, (1, 1, 1, 8), (1, 5)),
        (jaxprune.INPUT_CHANNEL, (1, 1, 4, 1), (8, 1)),
        (jaxprune.FILTER_SHAPE, (3, 3, 4, 1), (8, 1)),
        (jaxprune.CONNECTION, (1, 1, 4, 8), (8, 5)),
        (jaxprune.LAYER, (1, 1, 1, 1), (1, 1)),
        (jaxprune.n_of_m(2, 4), (3, 3, 4, 8), (8, 5)),
    ],
)
def test_mask_shapes(gran, conv_shape, dense_shape):
    assert gran.mask_shape((3, 3, 4, 8)) == conv_shape
    assert gran.mask_shape((8, 5)) == dense_shape
    # Granularities are hashable data (equal specs hash alike) and jax.tree leaves.
    twin = dataclasses.replace(gran)
    assert twin == gran and hash(twin) == hash(gran) and len({gran, twin}) == 1
    assert jax.tree.leaves({"g": gran}) == [gran]


@pytest.mark.parametrize(
    "gran", [jaxprune.INPUT_CHANNEL, jaxprune.FILTER_SHAPE, jaxprune.CONNECTION]
)
def test_granularity_that_does_not_fit_names_the_path(gran):
    with pytest.raises(ValueError, match="conv/bias"):
        gran.mask_shape((8,), "conv/bias")


def test_n_of_m_divisibility_error_names_path():
    with pytest.raises(ValueError, match=r"'fc/kernel'.*not divisible by M=4"):
        jaxprune.n_of_m(2, 4).mask_shape((6, 3), "fc/kernel")
    with pytest.raises(ValueError, match="n <= m"):
        jaxprune.n_of_m(5, 4)


def test_unknown_granularity_name():
    with pytest.raises(TypeError, match="granularity must be"):
        jaxprune.scores.norm({"k": jnp.ones((2, 2))}, "rows")


# --- scores ----------------------------------------------------------------------------


def test_magnitude_and_none_leaves():
    p = _conv_params()
    s = jaxprune.scores.magnitude(p)
    assert s["absent"] is None
    np.testing.assert_array_equal(s["conv"]["kernel"], np.abs(np.asarray(p["conv"]["kernel"])))


def test_magnitude_bf16_scores_are_float32():
    s = jaxprune.scores.magnitude({"w": jnp.array([-1.5, 2.0], jnp.bfloat16)})
    assert s["w"].dtype == jnp.float32


def test_scores_reject_integer_leaves_with_path():
    with pytest.raises(TypeError, match="'layer/step'"):
        jaxprune.scores.magnitude({"layer": {"step": jnp.arange(3)}})


@pytest.mark.parametrize("ord_", [1, 2])
def test_norm_matches_numpy(ord_):
    p = _conv_params()
    k = np.asarray(p["conv"]["kernel"])
    got = jaxprune.scores.norm(p, jaxprune.FILTER, ord=ord_)
    ref = (
        np.linalg.norm(k.reshape(-1, 8), ord=ord_, axis=0)
        if ord_ == 2
        else np.abs(k).sum((0, 1, 2))
    )
    np.testing.assert_allclose(np.asarray(got["conv"]["kernel"]).ravel(), ref, rtol=1e-5)
    # Filter-shape groups of the conv: reduce the output axis only.
    gran = {"conv": {"kernel": jaxprune.FILTER_SHAPE, "bias": None}, "dense": None, "absent": None}
    got = jaxprune.scores.norm(p, gran, ord=ord_)
    assert got["dense"]["kernel"] is None and got["conv"]["bias"] is None
    ref = np.linalg.norm(k, ord=ord_, axis=3) if ord_ == 2 else np.abs(k).sum(3)
    np.testing.assert_allclose(got["conv"]["kernel"][..., 0], ref, rtol=1e-5)


def test_norm_bad_ord():
    with pytest.raises(ValueError, match="`ord`"):
        jaxprune.scores.norm({"k": jnp.ones((2, 2))}, ord=3)


def test_reduce_matches_numpy():
    x = jnp.arange(24.0).reshape(2, 3, 4)
    out = jaxprune.scores.reduce({"x": x}, jaxprune.CONNECTION, "mean")["x"]
    np.testing.assert_allclose(out, np.asarray(x).mean(0, keepdims=True))
    out = jaxprune.scores.reduce({"x": x}, jaxprune.LAYER, "max")["x"]
    assert out.shape == (1, 1, 1) and float(out[0, 0, 0]) == 23.0


def test_random_scores_shapes_and_determinism():
    p = _conv_params()
    key = jax.random.key(3)
    gran = {
        "conv": {"kernel": jaxprune.CONNECTION, "bias": jaxprune.FILTER},
        "dense": jaxprune.FILTER,
        "absent": None,
    }
    s1 = jaxprune.scores.random(key, p, gran)
    s2 = jaxprune.scores.random(key, p, gran)
    with pytest.raises(ValueError, match="'conv/bias'"):
        jaxprune.scores.random(key, p, jaxprune.CONNECTION)
    assert s1["conv"]["kernel"].shape == (1, 1, 4, 8)
    chex.assert_trees_all_equal(s1, s2)
    # Leaves draw independent numbers.
    assert not np.allclose(s1["conv"]["bias"][:5], s1["dense"]["bias"])
    # Works on abstract params.
    abstract = jax.eval_shape(lambda: p)
    s3 = jaxprune.scores.random(key, abstract, jaxprune.FILTER)
    assert s3["dense"]["kernel"].shape == (1, 5)


def test_changpinyo_random_connections_keep_exact_count():
    p = {"conv": jnp.ones((5, 5, 20, 50))}
    s = jaxprune.scores.random(jax.random.key(0), p, jaxprune.CONNECTION)
    m = jaxprune.select.layerwise_topk(s, 0.75)
    assert m["conv"].shape == (1, 1, 20, 50)
    assert int(m["conv"].sum()) == 1000 - 750
    kept = jaxprune.count_kept(p, m)["conv"]
    assert int(kept) == 250 * 25


def test_taylor_closed_form_and_errors():
    p = {"w": jnp.array([2.0, -1.0, 0.5]), "b": None}
    g = {"w": jnp.array([0.5, 3.0, -4.0]), "b": None}
    np.testing.assert_allclose(jaxprune.scores.taylor(p, g)["w"], [1.0, 3.0, 2.0])
    with pytest.raises(ValueError, match="needs gradients"):
        jaxprune.scores.taylor(p)
    with pytest.raises(ValueError, match="grads"):
        jaxprune.scores.taylor(p, {"w": jnp.ones(3)})


@pytest.mark.parametrize("abs_per_batch", [False, True])
def test_taylor_accumulator_matches_numpy_under_jit(abs_per_batch):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    gs = rng.normal(size=(5, 4, 3)).astype(np.float32)
    params = {"w": jnp.asarray(w), "skip": None}
    update = jax.jit(
        chex.assert_max_traces(
            lambda st, p, g: jaxprune.scores.taylor_update(st, p, g, abs_per_batch=abs_per_batch),
            n=1,
        )
    )
    st = jaxprune.scores.taylor_init(params)
    for g in gs:
        st = update(st, params, {"w": jnp.asarray(g), "skip": None})
    got = jaxprune.scores.taylor_finalize(st)
    ref = np.abs(w * gs).mean(0) if abs_per_batch else np.abs((w * gs).mean(0))
    np.testing.assert_allclose(got["w"], ref, rtol=1e-5)
    assert got["skip"] is None and int(st.count) == 5
    # Abstract init.
    abstract = jax.eval_shape(jaxprune.scores.taylor_init, params)
    assert abstract.total["w"].shape == (4, 3)


# --- masks -----------------------------------------------------------------------------


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


def test_count_kept_and_summary_numbers():
    p = {
        "conv": {"kernel": jnp.ones((3, 3, 2, 4)), "bias": jnp.ones(4)},
        "fc": {"kernel": jnp.ones((4, 2)).at[0, 0].set(0.0), "bias": jnp.ones(2)},
    }
    m = {
        "conv": {"kernel": jnp.array([True, False, True, False]).reshape(1, 1, 1, 4), "bias": None},
        "fc": {
            "kernel": jnp.array([[True, True], [False, True], [True, True], [True, True]]),
            "bias": None,
        },
    }
    kept = jax.jit(jaxprune.count_kept)(p, m)
    assert int(kept["conv"]["kernel"]) == 2 * 18 and int(kept["fc"]["bias"]) == 2
    lines = []
    stats = jaxprune.summary(p, m, print_fn=lines.append)
    rows = stats.by_path()
    assert rows["conv/kernel"].nonzero == 36 and rows["conv/kernel"].size == 72
    assert rows["fc/kernel"].nonzero == 6 and rows["fc/kernel"].kept == 7  # one zero weight
    assert stats.size == 72 + 4 + 8 + 2 and stats.nonzero == 36 + 4 + 6 + 2
    assert stats.prunable_size == 80 and stats.prunable_nonzero == 42
    assert abs(stats.compression - 86 / 48) < 1e-12
    table = lines[0]
    assert "conv/kernel" in table and "3x3x2x4" in table and "50.00%" in table
    assert "(no mask)" in table and "compression" in table
    # Without masks: counts the params' own zeros.
    assert jaxprune.summary(p, print_fn=None).nonzero == 72 + 4 + 7 + 2


def test_full_masks():
    p = {"k": jnp.ones((2, 3)), "b": jnp.ones(3)}
    full = jaxprune.full_masks(p, {"k": jnp.array([[True, False, True]]), "b": None})
    assert full["k"].shape == (2, 3) and full["b"] is None
