"""Selection from learned sparsity: slimming percentile, group norms, gate thresholds."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxprune
import jaxprune.nnx

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
