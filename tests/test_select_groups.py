"""Group selection with scopes, a per-group maximum ratio and rounding (`select_groups`)."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune
from jaxprune import importance


def _reference(scores, sparsity, scope, min_keep=1, max_sparsity=None, round_to=1):
    """Plain-Python reference: per scope, floors first, then a global sort, then rounding."""
    names = sorted(scores)
    if scope == "layerwise":
        labels = {n: n for n in names}
    elif scope == "global":
        labels = dict.fromkeys(names, "all")
    else:
        labels = scope
    out = {}
    for label in dict.fromkeys(labels[n] for n in names):
        members = [n for n in names if labels[n] == label]
        vecs = {n: np.asarray(scores[n], np.float64) for n in members}
        if len(members) > 1:
            vecs = {n: v / (np.linalg.norm(v) or 1.0) for n, v in vecs.items()}
        s = sparsity[label] if isinstance(sparsity, dict) else sparsity
        entries, floors = [], {}
        for n in members:
            c = len(vecs[n])
            cap = max_sparsity.get(n) if isinstance(max_sparsity, dict) else max_sparsity
            floors[n] = (
                max(min(min_keep, c), c - math.floor(cap * c))
                if cap is not None
                else (min(min_keep, c))
            )
            # rank inside the group: best first, ties to the lowest index
            order = sorted(range(c), key=lambda i, v=vecs[n]: (-v[i], i))
            rank = {i: r for r, i in enumerate(order)}
            entries += [(n, i, vecs[n][i], rank[i] < floors[n]) for i in range(c)]
        total = len(entries)
        k = max(total - math.floor(s * total), sum(floors.values()))
        pos = {e[:2]: j for j, e in enumerate(entries)}
        best = sorted(entries, key=lambda e: (not e[3], -e[2], pos[e[:2]]))[:k]
        kept = {n: np.zeros(len(vecs[n]), bool) for n in members}
        for n, i, _, _ in best:
            kept[n][i] = True
        for n in members:
            c, cnt = len(kept[n]), int(kept[n].sum())
            cnt = min(c, -(-cnt // round_to) * round_to)
            order = sorted(range(c), key=lambda i, v=vecs[n]: (-v[i], i))
            kept[n] = np.isin(np.arange(c), order[:cnt])
            out[n] = kept[n]
    return out


def _random_scores(rng, sizes, ties=False):
    if ties:  # few distinct values: many ties inside and across groups
        return {n: jnp.asarray(rng.integers(0, 3, c), jnp.float32) for n, c in sizes.items()}
    return {
        n: jnp.asarray(rng.gamma(1.0, size=c) * (k + 1), jnp.float32)
        for k, (n, c) in enumerate(sizes.items())
    }


SIZES = {"conv1": 16, "conv2": 32, "fc1": 7, "stage2/a": 24, "z": 3}


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("scope", ["layerwise", "global"])
def test_general_path_equals_the_radix_path_without_caps(scope, ties):
    # max_sparsity=1.0 caps nothing but takes the sort-based path; it must agree exactly
    # with the radix top-k path (ties by lowest index, groups in name order).
    rng = np.random.default_rng(0)
    for min_keep in (0, 5):
        fast = jax.jit(
            lambda s, sp, mk=min_keep: importance.select_groups(s, sp, scope=scope, min_keep=mk)
        )
        slow = jax.jit(
            lambda s, sp, mk=min_keep: importance.select_groups(
                s, sp, scope=scope, min_keep=mk, max_sparsity=1.0
            )
        )
        for trial in range(3):
            scores = _random_scores(rng, SIZES, ties)
            for sparsity in (0.0, 0.3, 0.5, 0.9, 1.0):
                a, b = fast(scores, sparsity), slow(scores, sparsity)
                for n in SIZES:
                    np.testing.assert_array_equal(a[n], b[n], err_msg=f"{trial} {sparsity} {n}")


@pytest.mark.parametrize("ties", [False, True])
def test_matches_reference_with_caps_rounding_and_scopes(ties):
    rng = np.random.default_rng(1)
    scopes = [
        "layerwise",
        "global",
        {"conv1": "convs", "conv2": "convs", "fc1": "rest", "stage2/a": "rest", "z": "rest"},
    ]
    options = [(None, 4), (0.5, 1), ({"conv2": 0.25, "z": 0.0}, 8)]
    for scope in scopes:
        for cap, round_to in options:
            f = jax.jit(
                lambda s, sp, c=cap, r=round_to, sc=scope: importance.select_groups(
                    s, sp, scope=sc, max_sparsity=c, round_to=r
                )
            )
            for _trial in range(2):
                scores = _random_scores(rng, SIZES, ties)
                for sparsity in (0.25, 0.6, 0.95):
                    got = f(scores, sparsity)
                    want = _reference(scores, sparsity, scope, max_sparsity=cap, round_to=round_to)
                    for n in SIZES:
                        np.testing.assert_array_equal(
                            got[n], want[n], err_msg=f"{scope} {sparsity} {cap} {round_to} {n}"
                        )


def test_max_sparsity_caps_every_group_and_keeps_the_total_exact():
    # Global ranking would empty the weak group down to min_keep; a cap of 0.5 stops it at
    # half, and the strong group gives up the difference so the total stays exact.
    scores = {"weak": jnp.arange(1.0, 11.0) * 1e-3, "strong": jnp.arange(1.0, 11.0)}
    plain = importance.select_groups(scores, 0.5, scope="global", normalize=None)
    assert int(plain["weak"].sum()) == 1 and int(plain["strong"].sum()) == 9
    capped = importance.select_groups(scores, 0.5, scope="global", normalize=None, max_sparsity=0.5)
    np.testing.assert_array_equal(capped["weak"], np.arange(10) >= 5)
    np.testing.assert_array_equal(capped["strong"], np.arange(10) >= 5)
    # A cap also bounds layer-wise selection: 90% asked, at most 30% given.
    lw = importance.select_groups(scores, 0.9, max_sparsity={"strong": 0.3})
    assert int(lw["strong"].sum()) == 7 and int(lw["weak"].sum()) == 1


def test_round_to_keeps_multiples_and_only_adds_best_channels():
    rng = np.random.default_rng(2)
    scores = _random_scores(rng, {"a": 64, "b": 40, "c": 12})
    base_keep = importance.select_groups(scores, 0.55, scope="global")
    keep = importance.select_groups(scores, 0.55, scope="global", round_to=8)
    for n, c in (("a", 64), ("b", 40), ("c", 12)):
        k, k0 = int(keep[n].sum()), int(base_keep[n].sum())
        assert k == min(c, -(-k0 // 8) * 8), n
        assert np.all(np.asarray(keep[n])[np.asarray(base_keep[n])])  # a superset
        v = np.asarray(scores[n])
        assert v[np.asarray(keep[n])].min() >= v[~np.asarray(keep[n])].max(initial=-np.inf)


def test_scopes_are_independent_global_rankings_with_their_own_sparsity():
    rng = np.random.default_rng(3)
    scores = _random_scores(rng, SIZES)
    scope = {"conv1": 0, "conv2": 0, "fc1": 1, "stage2/a": 1, "z": 2}
    keep = importance.select_groups(scores, {0: 0.5, 1: 0.25, 2: None}, scope=scope)
    first = importance.select_groups(
        {n: scores[n] for n in ("conv1", "conv2")}, 0.5, scope="global"
    )
    second = importance.select_groups(
        {n: scores[n] for n in ("fc1", "stage2/a")}, 0.25, scope="global"
    )
    for n in ("conv1", "conv2"):
        np.testing.assert_array_equal(keep[n], first[n])
    for n in ("fc1", "stage2/a"):
        np.testing.assert_array_equal(keep[n], second[n])
    assert bool(keep["z"].all())  # None keeps the scope whole
    assert list(keep) == list(scores)


def test_traced_sparsity_under_jit_without_retracing():
    rng = np.random.default_rng(4)
    scores = _random_scores(rng, SIZES)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(s, sparsity):
        return importance.select_groups(s, sparsity, scope="global", max_sparsity=0.7, round_to=4)

    for sparsity in (0.1, 0.5, 0.8):
        got = f(scores, jnp.float32(sparsity))
        want = importance.select_groups(
            scores, sparsity, scope="global", max_sparsity=0.7, round_to=4
        )
        for n in SIZES:
            np.testing.assert_array_equal(got[n], want[n])


def test_group_masks_round_to_gives_shrunk_widths_in_multiples():
    params = {
        "fc1": {"kernel": jnp.ones((5, 40)), "bias": jnp.ones(40)},
        "fc2": {"kernel": jnp.ones((40, 24)), "bias": jnp.ones(24)},
        "fc3": {"kernel": jnp.ones((24, 3))},
    }
    M = jaxprune.Member
    groups = [
        jaxprune.Group("h1", (M("fc1/kernel", 1), M("fc1/bias", 0), M("fc2/kernel", 0))),
        jaxprune.Group("h2", (M("fc2/kernel", 1), M("fc2/bias", 0), M("fc3/kernel", 0))),
    ]
    rng = np.random.default_rng(5)
    scores = {"h1": jnp.asarray(rng.random(40), jnp.float32), "h2": jnp.asarray(rng.random(24))}
    scores = {k: v.astype(jnp.float32) for k, v in scores.items()}
    masks = importance.group_masks(scores, groups, params, 0.7, round_to=8)
    keep = importance.select_groups(scores, 0.7, round_to=8)
    assert int(keep["h1"].sum()) == 16 and int(keep["h2"].sum()) == 8  # 12 -> 16, 8 -> 8
    j = int(np.argmax(keep["h2"]))  # a kept column of fc2: its rows follow h1
    np.testing.assert_array_equal(masks["fc2"]["kernel"][:, j], keep["h1"])
    small = jaxprune.shrink(params, keep, groups)
    assert small["fc2"]["kernel"].shape == (16, 8)


def test_errors_name_the_argument():
    scores = {"a": jnp.ones(4), "b": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"groups without one \['b'\]"):
        importance.select_groups(scores, 0.5, scope={"a": 0})
    with pytest.raises(ValueError, match=r"unknown groups \['c'\]"):
        importance.select_groups(scores, 0.5, scope={"a": 0, "b": 0, "c": 1})
    with pytest.raises(ValueError, match=r"does not cover the scopes \['b'\]"):
        importance.select_groups(scores, {"a": 0.5}, round_to=2)
    with pytest.raises(ValueError, match="unknown scopes"):
        importance.select_groups(scores, {"x": 0.5}, scope={"a": 0, "b": 0})
    with pytest.raises(ValueError, match="max_sparsity"):
        importance.select_groups(scores, 0.5, max_sparsity=1.5)
    with pytest.raises(ValueError, match=r"`max_sparsity` names unknown groups \['q'\]"):
        importance.select_groups(scores, 0.5, max_sparsity={"q": 0.5})
    with pytest.raises(ValueError, match="round_to"):
        importance.select_groups(scores, 0.5, round_to=0)
    with pytest.raises(TypeError, match="one number for scope='global'"):
        importance.select_groups(scores, {"a": 0.5}, scope="global", round_to=2)
    with pytest.raises(ValueError, match="sparsity"):
        importance.select_groups(scores, 1.5, scope={"a": 0, "b": 0})
