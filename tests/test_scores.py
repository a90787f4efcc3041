"""Element scores: magnitude, norms, reductions, random scores, Taylor."""

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
