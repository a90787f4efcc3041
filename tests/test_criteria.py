"""The data-driven channel criteria: Inf-FS, ThiNet, input-channel scaling, Taylor, APoZ."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import jaxprune
from jaxprune import importance

# ---------------------------------------------------------------------------------------
# Inf-FS


def _inf_fs_reference(x, alpha=0.5, factor=0.9, undefined=1.0):
    """NumPy/SciPy float64 reference: average-rank Spearman, std term, (I - rA)^-1 - I."""
    x = np.asarray(x, np.float64)
    n = x.shape[1]
    ranks = scipy.stats.rankdata(x, axis=0, method="average")
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.corrcoef(ranks, rowvar=False)
    rho = np.where(np.isnan(rho), undefined, rho)
    sd = x.std(axis=0)
    sig = np.maximum(sd[:, None], sd[None, :])
    sig = (sig - sig.min()) / (sig.max() - sig.min())
    a = alpha * sig + (1 - alpha) * (1 - np.abs(rho))
    r = factor / np.max(np.abs(np.linalg.eigvalsh(a)))
    return np.linalg.inv(np.eye(n) - r * a).sum(axis=1) - 1.0


def _relu_features(t=300, n=40, n_const=6, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(n, n)) * 0.3 + np.eye(n)
    x = np.maximum(rng.normal(size=(t, n)) @ mix, 0.0)  # correlated, many tied zeros
    x = x * rng.uniform(0.5, 2.0, size=n)
    x[:, :n_const] = 0.0  # constant features
    x[:, n_const] = np.round(x[:, n_const])  # extra ties
    return x.astype(np.float32)


@pytest.mark.parametrize("alpha, undefined", [(0.5, 1.0), (0.3, 0.0)])
def test_inf_fs_matches_numpy_scipy_reference(alpha, undefined):
    x = _relu_features()
    f = jax.jit(lambda x: importance.inf_fs(x, alpha=alpha, undefined_correlation=undefined))
    np.testing.assert_allclose(f(x), _inf_fs_reference(x, alpha, 0.9, undefined), rtol=1e-5)


def test_inf_fs_constant_features_rank_last_and_valid_rows_are_ignored():
    x = _relu_features(n_const=6)
    inf_fs = jax.jit(importance.inf_fs)
    s = np.asarray(inf_fs(x))
    assert s[:6].max() < s[6:].min()
    np.testing.assert_allclose(s[:6], s[0])  # constant features tie
    garbage = np.random.default_rng(1).normal(size=(50, x.shape[1])).astype(np.float32) * 9
    padded = np.concatenate([x[:100], garbage, x[100:]])
    valid = np.concatenate([np.ones(100, bool), np.zeros(50, bool), np.ones(len(x) - 100, bool)])
    np.testing.assert_allclose(inf_fs(padded, valid=jnp.asarray(valid)), s, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# ThiNet


def _brute_force_removal(x, k):
    best, best_set = np.inf, None
    for subset in itertools.combinations(range(x.shape[1]), k):
        v = np.sum(np.square(x[:, list(subset)].sum(axis=1)))
        if v < best - 1e-9:
            best, best_set = v, set(subset)
    return best_set


def test_thinet_greedy_equals_brute_force_where_greedy_is_exact():
    rng = np.random.default_rng(0)
    # Orthogonal contributions: ||sum_T x_c||^2 = sum_T ||x_c||^2, so greedy is optimal.
    q, _ = np.linalg.qr(rng.normal(size=(30, 7)))
    x = (q * rng.uniform(0.5, 3.0, size=7)).astype(np.float32)
    greedy = jax.jit(importance.thinet_greedy)
    for k in range(1, 7):
        keep = np.asarray(greedy(x, k))
        assert set(np.flatnonzero(~keep)) == _brute_force_removal(x, k), k
    # A cancelling pair: greedy takes the smallest column, then its exact negative.
    y = rng.normal(size=(20, 6)).astype(np.float32) * 3.0
    y[:, 2] = rng.normal(size=20) * 0.1
    y[:, 4] = -y[:, 2]
    keep = np.asarray(importance.thinet_greedy(y, 2))
    assert set(np.flatnonzero(~keep)) == _brute_force_removal(y, 2) == {2, 4}
    # Removal-order scores reproduce the greedy set for every k.
    scores = np.asarray(importance.thinet_scores(x))
    np.testing.assert_array_equal(np.sort(scores), np.arange(7))


def test_thinet_least_squares_recovers_a_planted_scaling_and_lowers_the_error():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    keep = np.array([1, 0, 1, 1, 0, 1, 1, 0], bool)
    w_true = np.where(keep, rng.uniform(0.5, 2.0, size=8), 0.0).astype(np.float32)
    w = importance.thinet_lstsq(x, jnp.asarray(keep), x @ w_true)
    np.testing.assert_allclose(w, w_true, rtol=1e-4, atol=1e-5)
    # On real samples (targets = sum of all contributions) the least-squares scale lowers
    # the sampled reconstruction error of plain removal.
    kx, kk = jax.random.split(jax.random.key(0))
    inputs = jax.random.uniform(kx, (40, 6, 6, 8))
    kernel = jax.random.normal(kk, (3, 3, 8, 5))

    @jax.jit
    def errors(inputs, kernel):
        st = importance.thinet_init(8, images_per_class=40, num_classes=1)
        samples = importance.thinet_finalize(
            importance.thinet_update(st, jax.random.key(1), inputs, kernel)
        )
        keep = importance.thinet_greedy(samples, 4)
        plain = importance.thinet_error(samples, keep.astype(jnp.float32))
        return plain, importance.thinet_error(samples, importance.thinet_lstsq(samples, keep))

    plain, scaled = errors(inputs, kernel)
    assert float(scaled) < float(plain)


def test_scale_input_channels_through_a_flatten():
    fmap = jax.random.normal(jax.random.key(0), (2, 4, 4, 5))
    params = {"fc1": {"kernel": jax.random.normal(jax.random.key(1), (80, 3))}}
    scale = jnp.array([0.5, 2.0, 1.0, 0.0, 3.0])
    member = jaxprune.Member("fc1/kernel", 0, outer=16)
    scaled = importance.scale_input_channels(params, member, scale)
    lhs = fmap.reshape(2, -1) @ scaled["fc1"]["kernel"]
    rhs = (fmap * scale.reshape(1, 1, 1, 5)).reshape(2, -1) @ params["fc1"]["kernel"]
    np.testing.assert_allclose(lhs, rhs, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="does not fit 'fc1/kernel'"):
        importance.scale_input_channels(params, member, jnp.ones(6))


# ---------------------------------------------------------------------------------------
# Taylor and APoZ on a tiny model


def _tiny_model(key):
    k = jax.random.split(key, 3)
    return {
        "w1": jax.random.normal(k[0], (6, 4)) * 0.7,
        "w2": jax.random.normal(k[1], (4, 3)) * 0.7,
        "x": jax.random.normal(k[2], (8, 6)),
        "y": jnp.arange(8) % 3,
    }


def _per_example_loss(m, a):
    logits = a @ m["w2"]
    return -jax.nn.log_softmax(logits)[jnp.arange(a.shape[0]), m["y"]]


def test_taylor_matches_finite_differences_of_zeroing_a_channel():
    m = _tiny_model(jax.random.key(0))
    a = jax.nn.relu(m["x"] @ m["w1"])
    g = jax.grad(lambda a: _per_example_loss(m, a).sum())(a)  # sum of per-example losses
    state = importance.channel_stats_update(
        importance.channel_stats_init({"h": 4}), {"h": a}, {"h": g}
    )
    stats = importance.channel_stats_finalize(state)
    eps = 1e-2
    for c in range(4):

        def scaled_loss(t, c=c):  # channel c multiplied by t: t = 0 zeroes it
            return _per_example_loss(m, a.at[:, c].multiply(t))

        # d/dt at t = 1, by central differences, per example: -(first-order loss change).
        fd = (scaled_loss(1 + eps) - scaled_loss(1 - eps)) / (2 * eps)
        np.testing.assert_allclose(stats.taylor["h"][c], np.mean(np.abs(fd)), rtol=2e-3)
        np.testing.assert_allclose(stats.taylor_mean["h"][c], np.mean(fd), rtol=2e-3, atol=1e-6)
    # Zeroing a whole channel: the first-order prediction -sum(a * g) matches the true loss
    # change when the activations are small (second-order terms shrink quadratically).
    small = 0.01 * a
    g_small = jax.grad(lambda a: _per_example_loss(m, a).sum())(small)
    for c in range(4):
        true_change = float(
            jnp.sum(_per_example_loss(m, small.at[:, c].set(0.0)) - _per_example_loss(m, small))
        )
        predicted = -float(jnp.sum(small[:, c] * g_small[:, c]))
        assert abs(true_change - predicted) <= 0.05 * abs(true_change) + 1e-7, c
    norm = importance.activation_taylor_scores(stats)["h"]
    np.testing.assert_allclose(norm, stats.taylor["h"] / np.linalg.norm(stats.taylor["h"]))
    np.testing.assert_allclose(
        importance.activation_taylor_scores(stats, abs_per_example=False, normalize=False)["h"],
        np.abs(stats.taylor_mean["h"]),
    )


def test_apoz_and_mean_activation_criteria():
    a = jnp.array([[0.0, 1.0, 2.0, 0.0], [0.0, 3.0, 0.0, 0.0], [4.0, 1.0, 2.0, 0.0]])
    stats = importance.channel_stats_finalize(
        importance.channel_stats_update(importance.channel_stats_init({"h": 4}), {"h": a})
    )
    np.testing.assert_allclose(stats.apoz["h"], [2 / 3, 0.0, 1 / 3, 1.0], rtol=1e-6)
    np.testing.assert_allclose(
        importance.mean_activation_scores(stats)["h"], [4 / 3, 5 / 3, 4 / 3, 0]
    )
    keep = importance.select_groups(importance.apoz_scores(stats), 0.5)["h"]
    np.testing.assert_array_equal(keep, [False, True, True, False])
    np.testing.assert_array_equal(
        importance.apoz_std_rule(stats, 0.5)["h"], [True, True, True, False]
    )
