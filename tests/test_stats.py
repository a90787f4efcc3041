"""Tests for the streaming statistics accumulators (jaxprune._src.stats)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxprune import importance


def _relu_batch(key, shape, zero_channel=None):
    a = jnp.maximum(jax.random.normal(key, shape), 0.0)
    if zero_channel is not None:
        a = a.at[..., zero_channel].set(0.0)
    return a


def test_apoz_equals_hand_count():
    # (N=2, H=1, W=3, C=2): channel 0 has 4 zeros of 6, channel 1 has 1 zero of 6.
    a = jnp.array([[[[0.0, 1.0], [2.0, 0.0], [0.0, 5.0]]], [[[0.0, 1.0], [3.0, 2.0], [0.0, 1.0]]]])
    state = importance.channel_stats_init({"conv": a})
    stats = importance.channel_stats_finalize(importance.channel_stats_update(state, {"conv": a}))
    np.testing.assert_allclose(stats.apoz["conv"], [4 / 6, 1 / 6], rtol=1e-7)
    np.testing.assert_allclose(stats.mean["conv"], [5 / 6, 10 / 6], rtol=1e-6)
    np.testing.assert_allclose(importance.apoz_scores(stats)["conv"], [2 / 6, 5 / 6], rtol=1e-6)
    assert state.zeros["conv"].dtype == jnp.int32 and state.total["conv"].dtype == jnp.float32


def test_batches_equal_one_big_batch_and_compile_once():
    keys = jax.random.split(jax.random.key(0), 8)
    acts = [
        {"conv": _relu_batch(keys[i], (5, 4, 4, 3), 1), "fc": _relu_batch(keys[i + 4], (5, 7))}
        for i in range(4)
    ]
    grads = [jax.tree.map(lambda x: jnp.sin(3.0 * x) - 0.2, a) for a in acts]

    @jax.jit
    @chex.assert_max_traces(n=1)
    def update(state, a, g):
        return importance.channel_stats_update(state, a, g)

    state = importance.channel_stats_init(jax.eval_shape(lambda: acts[0]))
    for a, g in zip(acts, grads):
        state = update(state, a, g)
    many = importance.channel_stats_finalize(state)
    big_a = jax.tree.map(lambda *x: jnp.concatenate(x), *acts)
    big_g = jax.tree.map(lambda *x: jnp.concatenate(x), *grads)
    one = importance.channel_stats_finalize(
        importance.channel_stats_update(importance.channel_stats_init(big_a), big_a, big_g)
    )
    chex.assert_trees_all_close(many, one, rtol=1e-5, atol=1e-7)
    # Against NumPy: Taylor is the mean over examples of |mean over positions of a * g|.
    a, g = np.asarray(big_a["conv"]), np.asarray(big_g["conv"])
    t = (a * g).mean(axis=(1, 2))
    np.testing.assert_allclose(many.taylor["conv"], np.abs(t).mean(0), rtol=1e-5)
    np.testing.assert_allclose(many.taylor_mean["conv"], t.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(many.apoz["conv"][1], 1.0)
    assert int(many.examples["fc"]) == 20


def test_updates_without_gradients_leave_taylor_empty():
    a = {"h": jnp.array([[1.0, 0.0]])}
    state = importance.channel_stats_update(importance.channel_stats_init({"h": 2}), a)
    stats = importance.channel_stats_finalize(state)
    np.testing.assert_array_equal(stats.taylor["h"], [0.0, 0.0])
    assert int(state.grad_examples["h"]) == 0 and int(state.examples["h"]) == 1


def test_data_parallel_reduction_gives_every_device_the_same_mask():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    key = jax.random.key(3)
    a = _relu_batch(key, (32, 3, 3, 6))
    a = a * jnp.arange(1.0, 7.0).reshape(1, 1, 1, 6)  # distinct channel statistics
    g = jnp.cos(a)

    def local(a, g):  # one device's shard of the batch
        s = importance.channel_stats_init({"c": 6})
        s = importance.channel_stats_update(s, {"c": a}, {"c": g})
        stats = importance.channel_stats_finalize(s, axis_name="data")
        keep = importance.select_groups(importance.activation_taylor_scores(stats), 0.5)["c"]
        return stats.taylor["c"][None], keep[None]

    f = jax.jit(
        jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(jax.P("data"), jax.P("data")),
            out_specs=(jax.P("data"), jax.P("data")),
        )
    )
    sharding = jax.NamedSharding(mesh, jax.P("data"))
    per_device_taylor, per_device_keep = f(jax.device_put(a, sharding), jax.device_put(g, sharding))
    per_device_keep = np.asarray(per_device_keep)
    assert per_device_keep.shape == (8, 6)
    np.testing.assert_array_equal(per_device_keep, np.broadcast_to(per_device_keep[0], (8, 6)))
    single = importance.channel_stats_finalize(
        importance.channel_stats_update(importance.channel_stats_init({"c": 6}), {"c": a}, {"c": g})
    )
    for row in np.asarray(per_device_taylor):
        np.testing.assert_allclose(row, single.taylor["c"], rtol=1e-5)
    expected = importance.select_groups(importance.activation_taylor_scores(single), 0.5)["c"]
    np.testing.assert_array_equal(per_device_keep[0], expected)


def test_responses_buffer_keeps_the_first_rows_and_gathers_devices():
    state = importance.responses_init(3, capacity=5)
    update = jax.jit(importance.responses_update)
    for i in range(3):
        state = update(state, jnp.full((2, 3), float(i)))
    rows, valid = importance.responses_finalize(state)
    np.testing.assert_array_equal(rows[:, 0], [0, 0, 1, 1, 2])
    assert bool(valid.all()) and int(state.count) == 6
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))

    def local(x):
        s = importance.responses_update(importance.responses_init(3, capacity=2), x)
        return importance.responses_finalize(s, axis_name="data")

    x = jnp.arange(8.0).repeat(3).reshape(8, 3)  # one row per device
    x = jax.device_put(x, jax.NamedSharding(mesh, jax.P("data")))
    rows, valid = jax.jit(
        jax.shard_map(
            local, mesh=mesh, in_specs=jax.P("data"), out_specs=(jax.P(), jax.P()), check_vma=False
        )
    )(x)
    assert rows.shape == (16, 3)
    np.testing.assert_array_equal(rows[valid][:, 0], np.arange(8.0))


def _per_channel_conv(x, k, strides, padding):
    """P[n, y, x, d, c]: channel c's share of the conv output at (y, x, d)."""
    outs = [
        lax.conv_general_dilated(
            x[..., c : c + 1],
            k[:, :, c : c + 1, :],
            strides,
            padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=lax.Precision.HIGHEST,
        )
        for c in range(x.shape[-1])
    ]
    return jnp.stack(outs, axis=-1)


@pytest.mark.parametrize("strides, padding", [((2, 2), "SAME"), ((1, 2), ((1, 0), (2, 1)))])
def test_thinet_conv_samples_are_per_channel_contributions(strides, padding):
    kx, kk, ks = jax.random.split(jax.random.key(0), 3)
    x = jax.random.uniform(kx, (4, 7, 6, 3))
    k = jax.random.normal(kk, (3, 2, 3, 5))
    state = importance.thinet_init(3, images_per_class=4, num_classes=1, locations=6)
    state = jax.jit(functools.partial(importance.thinet_update, strides=strides, padding=padding))(
        state, ks, x, k
    )
    samples = importance.thinet_finalize(state)
    assert samples.contributions.shape == (24, 3) and bool(samples.valid.all())
    np.testing.assert_allclose(samples.targets, samples.contributions.sum(-1), rtol=1e-5)
    per = np.asarray(_per_channel_conv(x, k, strides, padding))  # (N, Ho, Wo, D, C)
    contrib = np.asarray(samples.contributions).reshape(4, 6, 3)
    for n in range(4):
        cand = per[n].reshape(-1, 3)
        for row in contrib[n]:
            assert np.min(np.abs(cand - row).max(axis=1)) < 1e-5  # some (y, x, d) matches


def test_thinet_dense_after_flatten_and_class_quotas():
    # Image n is the constant map n + 1, so a sample identifies its image.
    n = 12
    x = jnp.broadcast_to(jnp.arange(1.0, n + 1).reshape(n, 1, 1, 1), (n, 2, 2, 3))
    k = jnp.ones((2 * 2 * 3, 4))
    labels = jnp.array([0, 1, 0, 0, 2, 1, 0, 1, 1, 2, 2, 2])
    state = importance.thinet_init(3, images_per_class=2, num_classes=3, locations=2)
    update = jax.jit(importance.thinet_update)
    state = update(state, jax.random.key(0), x[:5], k, labels[:5])
    state = update(state, jax.random.key(1), x[5:], k, labels[5:])
    np.testing.assert_array_equal(state.per_class, [2, 2, 2])
    samples = importance.thinet_finalize(state)
    images = np.asarray(samples.contributions[samples.valid][:, 0]) / 4.0 - 1  # H*W = 4
    taken = sorted(set(images.round().astype(int).tolist()))
    assert taken == [0, 1, 2, 4, 5, 9]  # the first two images of each class, in stream order
    # Dense -> dense: x_hat[c] = K[c, d] * x[c] for a sampled d.
    xd = jax.random.uniform(jax.random.key(2), (3, 4))
    kd = jax.random.normal(jax.random.key(3), (4, 5))
    s = importance.thinet_update(
        importance.thinet_init(4, num_classes=1), jax.random.key(4), xd, kd
    )
    c = np.asarray(importance.thinet_finalize(s).contributions).reshape(10, 10, 4)[:3]
    for i in range(3):
        ratios = c[i] / np.asarray(xd[i])[None, :]  # rows of K^T
        dist = np.abs(ratios[:, None, :] - np.asarray(kd).T[None]).max(-1).min(-1)
        assert dist.max() < 1e-5


def test_bad_inputs_name_the_argument():
    state = importance.channel_stats_init({"a": 3})
    with pytest.raises(ValueError, match=r"missing \['a'\], unexpected \['b'\]"):
        importance.channel_stats_update(state, {"b": jnp.ones((2, 3))})
    with pytest.raises(ValueError, match=r"activations\['a'\] must have shape \(N, \.\.\., 3\)"):
        importance.channel_stats_update(state, {"a": jnp.ones((2, 4))})
    with pytest.raises(TypeError, match=r"activations\['a'\] must be a floating-point"):
        importance.channel_stats_update(state, {"a": jnp.ones((2, 3), jnp.int32)})
    with pytest.raises(ValueError, match=r"gradients\['a'\] has shape"):
        importance.channel_stats_update(state, {"a": jnp.ones((2, 3))}, {"a": jnp.ones((1, 3))})
    with pytest.raises(ValueError, match=r"activations\['x'\] must have a batch axis"):
        importance.channel_stats_init({"x": jnp.ones(3)})
    with pytest.raises(ValueError, match="`num_channels` must be >= 1"):
        importance.thinet_init(0)
    t = importance.thinet_init(3)
    with pytest.raises(ValueError, match="dense `kernel` must have 12 rows"):
        importance.thinet_update(t, jax.random.key(0), jnp.ones((1, 2, 2, 3)), jnp.ones((3, 2)))
    with pytest.raises(ValueError, match="`padding` must be"):
        importance.thinet_update(
            t, jax.random.key(0), jnp.ones((1, 4, 4, 3)), jnp.ones((2, 2, 3, 2)), padding="FULL"
        )
    with pytest.raises(ValueError, match=r"`responses` must have shape \(N, 3\)"):
        importance.responses_update(importance.responses_init(3, 4), jnp.ones((2, 2)))
