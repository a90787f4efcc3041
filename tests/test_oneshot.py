"""jaxprune.oneshot on one layer: calibration statistics, Wanda, magnitude, SparseGPT, OWL."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from sparsegpt_reference import sparsegpt_numpy

import jaxprune

os_ = jaxprune.oneshot


def _data(seed=0, tokens=400, features=24, out=10, correlated=True):
    rng = np.random.default_rng(seed)
    if correlated:
        z = rng.normal(size=(tokens, features // 3)) @ rng.normal(size=(features // 3, features))
        x = z + 0.3 * rng.normal(size=(tokens, features))
    else:
        x = rng.normal(size=(tokens, features))
    x *= rng.uniform(0.2, 3.0, features)
    w = rng.normal(size=(features, out))
    return x.astype(np.float32), w.astype(np.float32)


def _stats(x, gram=True):
    return os_.input_stats_update(os_.input_stats_init(x.shape[-1], gram=gram), jnp.asarray(x))


# --- statistics ---------------------------------------------------------------------------


def test_input_stats_stream_equal_numpy_in_float32_whatever_the_input_dtype():
    x, _ = _data()
    xb = jnp.asarray(x, jnp.bfloat16).reshape(4, 100, 24)
    s = os_.input_stats_init(24)
    step = jax.jit(os_.input_stats_update)
    for chunk in xb:
        s = step(s, chunk)
    x64 = np.asarray(xb, np.float64).reshape(-1, 24)
    assert s.gram.dtype == jnp.float32 and s.sq_norms.dtype == jnp.float32
    np.testing.assert_allclose(s.gram, x64.T @ x64, rtol=1e-5)
    np.testing.assert_allclose(s.sq_norms, (x64**2).sum(0), rtol=1e-5)
    assert int(s.count) == 400


def test_input_stats_psum_over_8_devices_equals_single_device():
    x, _ = _data(tokens=800)
    mesh = jax.make_mesh((8,), ("data",))

    @jax.jit
    @jax.shard_map(mesh=mesh, in_specs=PartitionSpec("data"), out_specs=PartitionSpec())
    def sharded(xs):
        return os_.input_stats_update(os_.input_stats_init(24), xs, axis_name="data")

    xs = jax.device_put(jnp.asarray(x), NamedSharding(mesh, PartitionSpec("data")))
    got, want = sharded(xs), _stats(x)
    np.testing.assert_allclose(got.gram, want.gram, rtol=1e-5)
    np.testing.assert_allclose(got.sq_norms, want.sq_norms, rtol=1e-5)
    assert int(got.count) == 800


# --- Wanda and magnitude ------------------------------------------------------------------


@pytest.mark.parametrize("n_of_m", [None, (2, 4), (4, 8)])
def test_wanda_and_magnitude_equal_brute_force(n_of_m):
    x, w = _data(features=24, out=6)
    s = _stats(x, gram=False)
    score = np.abs(w) * np.sqrt((x.astype(np.float64) ** 2).sum(0))[:, None]
    for got, sc in [
        (os_.wanda(jnp.asarray(w), s, 0.5, n_of_m=n_of_m), score),
        (os_.magnitude(jnp.asarray(w), 0.5, n_of_m=n_of_m), np.abs(w)),
    ]:
        keep = np.ones_like(w, bool)
        for j in range(w.shape[1]):  # each output (column of the (in, out) kernel)
            groups = (
                [range(24)]
                if n_of_m is None
                else [range(g, g + n_of_m[1]) for g in range(0, 24, n_of_m[1])]
            )
            for g in groups:
                g = list(g)
                n_drop = len(g) // 2 if n_of_m is None else n_of_m[1] - n_of_m[0]
                for i in np.argsort(sc[g, j], kind="stable")[:n_drop]:
                    keep[g[i], j] = False
        np.testing.assert_array_equal(got.mask, keep)
        np.testing.assert_array_equal(got.kernel, np.where(keep, w, 0))


def test_wanda_is_jittable_with_a_traced_sparsity_and_in_axis_1():
    x, w = _data()
    s = _stats(x, gram=False)
    eager = os_.wanda(jnp.asarray(w), s, 0.75)
    traced = jax.jit(os_.wanda)(jnp.asarray(w), s, jnp.float32(0.75))
    np.testing.assert_array_equal(eager.mask, traced.mask)
    rows = os_.wanda(jnp.asarray(w.T), s, 0.75, in_axis=1)
    np.testing.assert_array_equal(rows.mask, eager.mask.T)
    assert int((~eager.mask).sum()) == 18 * 10


# --- SparseGPT ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(sparsity=0.5, blocksize=8),
        dict(sparsity=0.7, blocksize=16),  # a partial last block (24 = 16 + 8)
        dict(n_of_m=(2, 4), blocksize=8),
    ],
)
def test_sparsegpt_matches_the_numpy_implementation(kwargs):
    x, w = _data()
    x[:, 5] = 0.0  # a dead input: zero Gram diagonal
    s = _stats(x)
    got = os_.sparsegpt(
        jnp.asarray(w),
        s,
        kwargs.get("sparsity", 0.5),
        n_of_m=kwargs.get("n_of_m"),
        blocksize=kwargs["blocksize"],
    )
    ref, keep = sparsegpt_numpy(
        w.T,
        np.asarray(s.gram, np.float64),
        kwargs.get("sparsity", 0.5),
        kwargs.get("n_of_m"),
        kwargs["blocksize"],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(np.asarray(got.mask).T, keep)
    # float32 rounding is amplified along the column sweep (by the inverse Hessian's
    # condition number) and differs between CPU instruction sets: ~1e-4 relative.
    np.testing.assert_allclose(np.asarray(got.kernel).T, ref, rtol=1e-3, atol=1e-4)
    assert np.all(np.asarray(got.kernel)[5] == 0)
    if "n_of_m" in kwargs:
        assert np.all(np.asarray(got.mask).reshape(6, 4, 10).sum(1) == 2)


def test_sparsegpt_at_zero_sparsity_returns_the_weights():
    x, w = _data()
    got = os_.sparsegpt(jnp.asarray(w), _stats(x), 0.0, blocksize=8)
    np.testing.assert_array_equal(got.kernel, w)
    assert bool(got.mask.all())


@pytest.mark.parametrize("seed", [0, 1])
def test_sparsegpt_reconstructs_better_than_wanda_and_magnitude(seed):
    x, w = _data(seed, tokens=1000, features=48, out=32)
    s, k = _stats(x), jnp.asarray(w)
    for kw in [dict(sparsity=0.5), dict(n_of_m=(2, 4))]:
        sp = kw.get("sparsity", 0.5)
        nm = kw.get("n_of_m")
        err = {
            "sparsegpt": os_.sparsegpt(k, s, sp, n_of_m=nm, blocksize=16).kernel,
            "wanda": os_.wanda(k, s, sp, n_of_m=nm).kernel,
            "magnitude": os_.magnitude(k, sp, n_of_m=nm).kernel,
        }
        err = {name: float(os_.reconstruction_error(k, p, s)) for name, p in err.items()}
        assert err["sparsegpt"] < err["wanda"] < err["magnitude"], err
    # The relative error is the closed form ||XW - XW'||^2 / ||XW||^2.
    p = os_.wanda(k, s, 0.5).kernel
    want = np.sum((x @ w - x @ np.asarray(p)) ** 2) / np.sum((x @ w) ** 2)
    np.testing.assert_allclose(os_.reconstruction_error(k, p, s), want, rtol=1e-4)


# --- OWL ----------------------------------------------------------------------------------


def test_owl_closed_form_and_outlier_ratio():
    s = os_.owl_sparsities([0.02, 0.0, 0.01, 0.03], 0.6, lam=0.1)
    dens = np.array([2, 0, 1, 3]) / 3 * 0.2
    np.testing.assert_allclose(s, 1 - (dens - dens.mean() + 0.4))
    assert abs(s.mean() - 0.6) < 1e-12 and s.max() - s.min() <= 0.2 + 1e-12
    scores = jnp.array([1.0] * 9 + [100.0])  # mean 10.9: one score above 5x the mean
    assert float(os_.outlier_ratio(scores, 5.0)) == pytest.approx(0.1)
    assert float(os_.outlier_ratio([scores, jnp.ones(10)], 5.0)) == pytest.approx(0.05)


# --- bad input ----------------------------------------------------------------------------


def test_bad_arguments_raise_clear_errors():
    x, w = _data()
    s = _stats(x)
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        os_.wanda(jnp.asarray(w), s, 1.0)
    with pytest.raises(ValueError, match="sparsity"):
        os_.Wanda(sparsity=-0.1)
    with pytest.raises(ValueError, match="m=5 does not divide the 24 inputs"):
        os_.sparsegpt(jnp.asarray(w), s, n_of_m=(2, 5))
    with pytest.raises(ValueError, match="need 0 < n < m"):
        os_.magnitude(jnp.asarray(w), n_of_m=(0, 4))
    with pytest.raises(ValueError, match="Gram"):
        os_.sparsegpt(jnp.asarray(w), _stats(x, gram=False))
    with pytest.raises(ValueError, match="stats are for 24 inputs; the kernel has 10"):
        os_.wanda(jnp.asarray(w), s, in_axis=1)
    with pytest.raises(ValueError, match="outside"):
        os_.owl_sparsities([0.0, 1.0], 0.95, lam=0.1)
