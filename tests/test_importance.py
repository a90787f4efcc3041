"""Tests for the data-driven criteria: Inf-FS, ThiNet, NISP, Taylor, APoZ and selection."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from jax import lax

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
# NISP


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


# ---------------------------------------------------------------------------------------
# Selection onto coupled axes


def test_group_masks_layerwise_and_global_on_coupled_axes():
    params = {
        "conv1": {"kernel": jnp.ones((3, 3, 1, 4)), "bias": jnp.ones(4)},
        "conv2": {"kernel": jnp.ones((3, 3, 4, 6)), "bias": jnp.ones(6)},
        "fc1": {"kernel": jnp.ones((2 * 2 * 6, 5)), "bias": jnp.ones(5)},
        "fc2": {"kernel": jnp.ones((5, 3)), "bias": jnp.ones(3)},
    }
    M = jaxprune.Member
    groups = [
        jaxprune.Group("conv1", (M("conv1/kernel", -1), M("conv1/bias", 0), M("conv2/kernel", -2))),
        jaxprune.Group(
            "conv2", (M("conv2/kernel", -1), M("conv2/bias", 0), M("fc1/kernel", 0, outer=4))
        ),
        jaxprune.Group("fc1", (M("fc1/kernel", 1), M("fc1/bias", 0), M("fc2/kernel", 0))),
    ]
    scores = {
        "conv1": jnp.array([4.0, 1.0, 3.0, 2.0]),
        "conv2": jnp.array([60.0, 10.0, 50.0, 20.0, 40.0, 30.0]),
        "fc1": jnp.array([0.1, 0.5, 0.2, 0.4, 0.3]),
    }
    f = jax.jit(lambda s, sp: importance.group_masks(s, groups, params, sp))
    masks = f(scores, 0.5)
    np.testing.assert_array_equal(masks["conv1"]["kernel"].ravel(), [1, 0, 1, 0])
    np.testing.assert_array_equal(masks["conv2"]["kernel"][0, 0, :, 0], [1, 0, 1, 0])
    np.testing.assert_array_equal(masks["conv2"]["kernel"][0, 0, 0, :], [1, 0, 1, 0, 1, 0])
    assert masks["fc1"]["kernel"].shape == (24, 5)  # rows from conv2, columns from fc1
    rows = masks["fc1"]["kernel"][:, 1].reshape(4, 6)  # Flax flatten: (h * W + w) * C + c
    np.testing.assert_array_equal(rows, np.tile([1, 0, 1, 0, 1, 0], (4, 1)))
    np.testing.assert_array_equal(masks["fc2"]["kernel"][:, 0], [0, 1, 0, 1, 1])  # floor(2.5)=2
    assert masks["fc2"]["bias"] is None
    # Global: one ranking after per-group L2 normalization; each group keeps >= 1.
    keep = importance.select_groups(scores, 0.5, scope="global")
    norm = importance.normalize_scores(scores)
    flat = np.concatenate([np.asarray(norm[k]) for k in ("conv1", "conv2", "fc1")])
    kept = np.concatenate([np.asarray(keep[k]) for k in ("conv1", "conv2", "fc1")])
    assert kept.sum() == 15 - 7 and flat[kept].min() >= flat[~kept].max()
    with pytest.raises(ValueError, match=r"groups without scores \['fc1'\]"):
        importance.group_masks({k: scores[k] for k in ("conv1", "conv2")}, groups, params, 0.5)
    with pytest.raises(ValueError, match="scores\\['fc1'\\] has 4 entries"):
        importance.group_masks({**scores, "fc1": jnp.ones(4)}, groups, params, 0.5)
    with pytest.raises(ValueError, match="`scope` must be"):
        importance.select_groups(scores, 0.5, scope="network")
