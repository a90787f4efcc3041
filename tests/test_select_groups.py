"""Group selection (`select_groups.py`): scopes, a per-group maximum ratio and rounding; selection
from learned sparsity (slimming percentile, group norms, gate thresholds); `group_masks` onto
coupled axes.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxprune
import jaxprune.nnx
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


# ---------------------------------------------------------------------------------------
# Selection from learned sparsity: slimming percentile, group norms, gate thresholds


G, M = jaxprune.Group, jaxprune.Member


def _mlp(seed=0, widths=(6, 10, 8, 3)):
    keys = jax.random.split(jax.random.key(seed), 8)
    p = {}
    for i in range(len(widths) - 1):
        p[f"fc{i}"] = {
            "kernel": jax.random.normal(keys[2 * i], (widths[i], widths[i + 1])),
            "bias": jnp.zeros(widths[i + 1]),
        }
    for i in range(1, len(widths) - 1):
        p[f"bn{i}"] = {
            "scale": jax.random.uniform(keys[7 - i], (widths[i],), minval=-1.0, maxval=1.0),
            "bias": jnp.zeros(widths[i]),
        }
    return p


def _neuron_groups(widths=(6, 10, 8, 3)):
    return [
        G(
            f"h{i}",
            (
                M(f"fc{i - 1}/kernel", 1),
                M(f"fc{i - 1}/bias", 0),
                M(f"bn{i}/scale", 0),
                M(f"bn{i}/bias", 0),
                M(f"fc{i}/kernel", 0),
            ),
        )
        for i in range(1, len(widths) - 1)
    ]


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.75, 1.0])
def test_slimming_global_percentile_matches_reference(ratio):
    params, groups = _mlp(), _neuron_groups()
    sel = jaxprune.slimming_masks(params, groups, ratio, min_keep=0)
    gam = np.abs(np.concatenate([params["bn1"]["scale"], params["bn2"]["scale"]]))
    thr = np.sort(gam)[min(int(len(gam) * ratio), len(gam) - 1)]
    np.testing.assert_allclose(sel.threshold, thr)
    for i, name in ((1, "h1"), (2, "h2")):
        want = np.abs(np.asarray(params[f"bn{i}"]["scale"])) > thr  # strictly greater
        np.testing.assert_array_equal(sel.group_masks[name], want)
    # Expanded onto every coupled axis.
    assert sel.masks["fc0"]["kernel"].shape == (1, 10)
    assert sel.masks["fc1"]["kernel"].shape == (10, 8)  # rows of h1 AND columns of h2
    assert sel.masks["bn1"]["scale"].shape == (10,) and sel.masks["fc2"]["bias"] is None
    np.testing.assert_array_equal(
        sel.masks["fc1"]["kernel"], np.outer(sel.group_masks["h1"], sel.group_masks["h2"])
    )


def test_slimming_per_layer_floor_and_per_group():
    params, groups = _mlp(), _neuron_groups()
    params["bn2"]["scale"] = params["bn2"]["scale"] * 1e-3  # a global threshold empties h2
    sel = jaxprune.slimming_masks(params, groups, 0.5, min_keep=0)
    assert int(sel.group_masks["h2"].sum()) == 0
    sel = jaxprune.slimming_masks(params, groups, 0.5, min_keep=2)
    kept = np.asarray(sel.group_masks["h2"])
    assert kept.sum() == 2
    np.testing.assert_array_equal(
        np.flatnonzero(kept), np.sort(np.argsort(-np.abs(np.asarray(params["bn2"]["scale"])))[:2])
    )
    sel = jaxprune.slimming_masks(params, groups, 0.8, per_group=True)  # the paper's MNIST rule
    for i, name in ((1, "h1"), (2, "h2")):
        g = np.abs(np.asarray(params[f"bn{i}"]["scale"]))
        np.testing.assert_array_equal(sel.group_masks[name], g > np.sort(g)[int(len(g) * 0.8)])


def test_slimming_traced_ratio_under_jit_and_select_labels():
    params, groups = _mlp(), _neuron_groups()
    labels = jaxprune.scale_labels(params)
    fn = jax.jit(lambda p, r: jaxprune.slimming_masks(p, groups, r, prunable=labels).group_masks)
    for r in (0.25, 0.5):
        want = jaxprune.slimming_masks(params, groups, r).group_masks
        got = fn(params, jnp.float32(r))
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    bad = [G("x", (M("fc0/kernel", 1), M("fc0/bias", 0)))]
    with pytest.raises(ValueError, match="group 'x' must have exactly one member selected"):
        jaxprune.slimming_masks(params, bad, 0.5)
    with pytest.raises(ValueError, match="`ratio`"):
        jaxprune.slimming_masks(params, groups, 1.5)


def test_group_norm_masks_threshold_and_floor():
    params, groups = _mlp(), _neuron_groups()
    for m in groups[0].members:  # zero hidden unit 3 of h1 everywhere
        a, b = m.path.split("/")
        idx = (slice(None), 3) if m.axis == 1 else 3
        params[a][b] = params[a][b].at[idx].set(0.0)
    sel = jaxprune.group_norm_masks(params, groups)
    want = np.ones(10, bool)
    want[3] = False
    np.testing.assert_array_equal(sel.group_masks["h1"], want)
    norms = jaxprune.group_norms(params, groups)["h2"]
    t = float(np.sort(np.asarray(norms))[-2])
    sel = jaxprune.group_norm_masks(params, groups, t)
    assert int(sel.group_masks["h2"].sum()) == 1
    sel = jaxprune.group_norm_masks(params, groups, 1e9, min_keep=3)
    assert int(sel.group_masks["h2"].sum()) == 3
    with pytest.raises(ValueError, match="`threshold` must be >= 0"):
        jaxprune.group_norm_masks(params, groups, -1.0)


def test_gate_masks_thresholds():
    la = jnp.array([-3.0, -2.398, -2.39, 0.0, 5.0])
    params = {
        "g": {"l0_log_alpha": la, "bernoulli_gate": jnp.array([0.5, 0.51])},
        "fc": {"kernel": jnp.ones((5, 2))},
    }
    groups = [
        G("in", (M("g/l0_log_alpha", 0), M("fc/kernel", 0))),
        G("out", (M("g/bernoulli_gate", 0), M("fc/kernel", 1))),
    ]
    sel = jaxprune.gate_masks(params, groups)
    # z_hat > 0 iff sigmoid(la) > 1/12, i.e. la > -log(11) = -2.3979
    np.testing.assert_array_equal(sel.group_masks["in"], [False, False, True, True, True])
    np.testing.assert_array_equal(sel.group_masks["out"], [False, True])
    np.testing.assert_array_equal(
        sel.masks["fc"]["kernel"], np.outer([0, 0, 1, 1, 1], [0, 1]).astype(bool)
    )
    with pytest.raises(ValueError, match="no gate member"):
        jaxprune.gate_masks(params, [G("fc", (M("fc/kernel", 0),))])


@pytest.mark.standard_dtypes
def test_nnx_one_line_slimming_then_selection():
    """optax_sparsity(slimming=...) in nnx.Optimizer, then the slimming selection."""

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.fc0 = nnx.Linear(6, 10, rngs=rngs)
            self.bn1 = nnx.BatchNorm(10, rngs=rngs)
            self.fc1 = nnx.Linear(10, 3, rngs=rngs)

        def __call__(self, x):
            return self.fc1(nnx.relu(self.bn1(self.fc0(x))))

    model = Net(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (64, 6))
    y = (x[:, 0] > 0).astype(jnp.int32)
    tx = optax.chain(
        optax.sgd(0.1, momentum=0.9),
        jaxprune.optax_sparsity(
            0.0,
            slimming=1.0,
            slimming_prunable=jaxprune.nnx.slimming_labels(model),
            learning_rate=0.1,
        ),
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(
            lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
        )(model)
        optimizer.update(model, grads)
        return loss

    for _ in range(30):
        step(model, optimizer)
    params = nnx.state(model, nnx.Param)
    scale = np.asarray(params["bn1"]["scale"][...])
    assert np.sum(scale == 0.0) >= 3  # exact zeros from the proximal step
    group = G(
        "h",
        (
            M("fc0/kernel", 1),
            M("fc0/bias", 0),
            M("bn1/scale", 0),
            M("bn1/bias", 0),
            M("fc1/kernel", 0),
        ),
    )
    sel = jaxprune.slimming_masks(
        params, [group], 0.0, prunable=jaxprune.nnx.slimming_labels(model)
    )
    np.testing.assert_array_equal(sel.group_masks["h"], np.abs(scale) > np.min(np.abs(scale)))
    pruned = jaxprune.apply_masks(params, sel.masks)
    assert np.all(np.asarray(pruned["fc1"]["kernel"][...])[scale == 0.0] == 0.0)


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
