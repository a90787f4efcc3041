"""Tests for structured groups: sizes, scores, norms and mask expansion."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune


def _lenet5_tail():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    return {
        "conv2": {"kernel": jax.random.normal(k1, (5, 5, 20, 50)), "bias": jnp.ones(50)},
        "fc1": {"kernel": jax.random.normal(k2, (800, 500)), "bias": jnp.ones(500)},
        "fc2": {"kernel": jax.random.normal(k3, (500, 10)), "bias": None},
    }


CONV2_OUT = jaxprune.Group(
    "conv2_out",
    (
        jaxprune.Member("conv2/kernel", -1),
        jaxprune.Member("conv2/bias", 0),
        jaxprune.Member("fc1/kernel", 0, outer=16),  # NHWC flatten of a 4x4x50 map
    ),
)


def test_flatten_rows_removed_with_a_filter():
    # Golden test: removing filter f of conv2 removes fc1 rows (h*4 + w)*50 + f.
    params = _lenet5_tail()
    f = 7
    keep = jnp.ones(50, bool).at[f].set(False)
    masks = jaxprune.expand_group_masks({"conv2_out": keep}, [CONV2_OUT], params)
    assert masks["conv2"]["kernel"].shape == (1, 1, 1, 50)
    assert masks["fc1"]["kernel"].shape == (800, 1) and masks["fc1"]["bias"] is None
    removed = np.flatnonzero(~np.asarray(masks["fc1"]["kernel"]).ravel())
    expected = sorted((h * 4 + w) * 50 + f for h in range(4) for w in range(4))
    np.testing.assert_array_equal(removed, expected)
    # The same rows as zeroing channel f of the (4, 4, 50) map before a Flax flatten.
    fmap = jax.random.normal(jax.random.key(1), (2, 4, 4, 50))
    dense = jaxprune.apply_masks(params, masks)["fc1"]["kernel"]
    out_masked_rows = fmap.reshape(2, -1) @ dense
    out_masked_map = (fmap * keep.reshape(1, 1, 1, 50).astype(jnp.float32)).reshape(2, -1) @ params[
        "fc1"
    ]["kernel"]
    np.testing.assert_allclose(out_masked_rows, out_masked_map, rtol=1e-4, atol=1e-4)
    idx = jaxprune.channel_indices(CONV2_OUT.members[2], 50, 800, np.asarray(keep))
    assert len(idx) == 800 - 16 and not set(expected) & set(idx.tolist())


def test_group_norms_match_numpy_and_autodiff_shape():
    params = _lenet5_tail()
    norms = jax.jit(lambda p: jaxprune.group_norms(p, [CONV2_OUT]))(params)["conv2_out"]
    k = np.asarray(params["conv2"]["kernel"]).reshape(-1, 50)
    fc = np.asarray(params["fc1"]["kernel"]).reshape(16, 50, 500).transpose(1, 0, 2).reshape(50, -1)
    ref = np.sqrt((k**2).sum(0) + 1.0 + (fc**2).sum(1))
    np.testing.assert_allclose(norms, ref, rtol=1e-5)
    l1 = jaxprune.group_norms(params, [CONV2_OUT], ord=1)["conv2_out"]
    np.testing.assert_allclose(l1, np.abs(k).sum(0) + 1.0 + np.abs(fc).sum(1), rtol=1e-5)


def test_group_scores_combine_and_normalize():
    p = {"a": jnp.array([[1.0, 2.0], [3.0, 4.0]]), "b": jnp.array([[10.0], [20.0]])}
    g = jaxprune.Group("h", (jaxprune.Member("a", 1), jaxprune.Member("b", 0)))
    s = jaxprune.group_scores(p, [g], reduction="sum", combine="max")["h"]
    np.testing.assert_allclose(s, [10.0, 20.0])
    s = jaxprune.group_scores(p, [g], reduction="mean", combine="mean", normalize="l1")["h"]
    np.testing.assert_allclose(s, np.array([6.0, 11.5]) / 17.5, rtol=1e-6)


def test_concatenation_segments_and_shared_leaves():
    # Two producers concatenated into one consumer: each owns a segment of its input axis.
    p = {
        "left": jnp.ones((3, 4)),
        "right": jnp.ones((3, 2)),
        "head": jnp.ones((6, 5)),
    }
    g1 = jaxprune.Group(
        "left", (jaxprune.Member("left", 1), jaxprune.Member("head", 0, partial=True))
    )
    g2 = jaxprune.Group(
        "right", (jaxprune.Member("right", 1), jaxprune.Member("head", 0, offset=4))
    )
    m = jaxprune.expand_group_masks(
        {"left": jnp.array([True, False, True, True]), "right": jnp.array([False, True])},
        [g1, g2],
        p,
    )
    np.testing.assert_array_equal(
        np.asarray(m["head"]).ravel(), [True, False, True, True, False, True]
    )
    assert jaxprune.check_groups([g1, g2], p) == {"left": 4, "right": 2}


def test_group_errors():
    p = _lenet5_tail()
    with pytest.raises(ValueError, match="disagree"):
        jaxprune.check_groups(
            [
                jaxprune.Group(
                    "x", (jaxprune.Member("conv2/kernel", -1), jaxprune.Member("fc1/kernel", 0))
                )
            ],
            p,
        )
    with pytest.raises(ValueError, match="no parameter at path 'nope'"):
        jaxprune.check_groups([jaxprune.Group("x", (jaxprune.Member("nope", 0),))], p)
    with pytest.raises(ValueError, match="out of range"):
        jaxprune.check_groups([jaxprune.Group("x", (jaxprune.Member("conv2/bias", 1),))], p)
    with pytest.raises(ValueError, match="unique"):
        jaxprune.check_groups([CONV2_OUT, CONV2_OUT], p)
    with pytest.raises(ValueError, match="expected \\(50,\\)"):
        jaxprune.expand_group_masks({"conv2_out": jnp.ones(3, bool)}, [CONV2_OUT], p)
    with pytest.raises(ValueError, match="no members"):
        jaxprune.Group("empty", ())


def test_group_selection_end_to_end_under_jit():
    params = _lenet5_tail()

    @jax.jit
    def prune(p, s):
        scores = jaxprune.group_scores(p, [CONV2_OUT], reduction="l1")
        keep = jaxprune.select.layerwise_topk(scores, s)
        return jaxprune.apply_masks(p, jaxprune.expand_group_masks(keep, [CONV2_OUT], p))

    out = prune(params, 0.5)
    alive = np.abs(np.asarray(out["conv2"]["kernel"])).sum((0, 1, 2)) > 0
    assert alive.sum() == 25
    assert np.count_nonzero(np.asarray(out["fc1"]["kernel"]).any(1)) == 16 * 25


def test_group_scores_gather_only_member_vectors_under_explicit_sharding():
    """A strided member (rows after a flatten) of a kernel sharded by rows: the compiled
    program gathers the per-row vector, never the kernel, and the scores are exact."""
    import re

    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    k1, k2 = jax.random.split(jax.random.key(0))
    params = {
        "conv": {"kernel": jax.random.normal(k1, (3, 3, 4, 8))},
        "fc": {"kernel": jax.random.normal(k2, (6 * 8, 16))},  # (spatial 6) x (channels 8)
    }
    g = jaxprune.Group(
        "c", (jaxprune.Member("conv/kernel", -1), jaxprune.Member("fc/kernel", 0, outer=6))
    )
    mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Explicit,))
    specs = {"conv": {"kernel": P(None, None, None, "x")}, "fc": {"kernel": P("x", None)}}
    with jax.set_mesh(mesh):
        sharded = jax.device_put(
            params,
            jax.tree.map(
                lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda s: isinstance(s, P)
            ),
        )
        fn = jax.jit(lambda p: jaxprune.group_scores(p, [g], reduction="l2")["c"])
        got = fn(sharded)
        hlo = fn.lower(sharded).compile().as_text()
    conv = np.asarray(params["conv"]["kernel"]).reshape(-1, 8)
    fc = np.asarray(params["fc"]["kernel"]).reshape(6, 8, 16).transpose(1, 0, 2).reshape(8, -1)
    want = np.linalg.norm(conv, axis=0) + np.linalg.norm(fc, axis=1)  # member L2s, summed
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
    gathered = re.findall(r"= f32\[([0-9,]*)\][^ ]* all-gather\(", hlo)
    assert gathered, "expected the member vector to be gathered"
    assert all("," not in dims for dims in gathered), gathered  # vectors only
