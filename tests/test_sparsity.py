"""Tests for optax_sparsity, dynamic_network_surgery and the masks accessor."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import zoo

import jaxprune


def test_docstring_example_exact_values():
    params = {"w": jnp.array([[0.1, -2.0], [0.5, 3.0]]), "b": jnp.ones(2)}
    tx = optax.chain(optax.sgd(0.1), jaxprune.optax_sparsity(0.5, update_every=1))
    state = tx.init(params)
    grads = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    updates, state = tx.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["w"], [[0.0, -2.1], [0.0, 2.9]], rtol=1e-6)
    np.testing.assert_allclose(new["b"], [0.9, 0.9], rtol=1e-6)
    assert jaxprune.masks(state)["b"] is None


@pytest.mark.standard_dtypes
@pytest.mark.parametrize("name", sorted(zoo.OPTIMIZERS))
def test_pruned_weights_exactly_zero_after_every_step(name):
    params = zoo.conv_fc_params()
    schedule = jaxprune.schedules.polynomial(0.8, 2, 4, frequency=2)
    tx = optax.chain(zoo.OPTIMIZERS[name](), jaxprune.optax_sparsity(schedule, update_every=2))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state, i):
        updates, state = tx.update(zoo.random_grads(params, i), state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    seen = set()
    for i in range(14):
        params, state = step(params, state, jnp.int32(i))
        masks = jaxprune.masks(state)
        zoo.assert_pruned_are_zero(params, masks)
        seen.add(int(jnp.sum(masks["fc"]["kernel"])))
    # The schedule really moved the masks (several distinct kept counts) and ended at 80%.
    assert len(seen) >= 3
    assert int(jnp.sum(masks["fc"]["kernel"])) == 512 - int(0.8 * 512)
    assert masks["fc"]["bias"] is None and masks["out"]["bias"] is None


@pytest.mark.parametrize("target", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_reaches_exact_layerwise_count(target):
    params = zoo.conv_fc_params()
    tx = jaxprune.optax_sparsity(target, update_every=1, min_keep=0)
    _, state = tx.update(params, tx.init(params), params)
    for path in ("conv", "fc", "out"):
        m = state.masks[path]["kernel"]
        assert int(m.size - m.sum()) == int(np.floor(target * m.size)), path


def test_min_keep_floor_default_keeps_one_unit():
    params = zoo.conv_fc_params()
    tx = jaxprune.optax_sparsity(
        1.0, granularity=jaxprune.FILTER, prunable=jaxprune.default_prunable, update_every=1
    )
    _, state = tx.update(params, tx.init(params), params)
    assert int(state.masks["conv"]["kernel"].sum()) == 1
    assert int(state.masks["fc"]["kernel"].sum()) == 1


def test_magnitude_selection_matches_numpy():
    params = zoo.conv_fc_params()
    tx = jaxprune.optax_sparsity(0.6, update_every=1)
    _, state = tx.update(params, tx.init(params), params)
    w = np.abs(np.asarray(params["fc"]["kernel"])).ravel()
    order = np.argsort(-w, kind="stable")
    ref = np.zeros(w.size, bool)
    ref[order[: w.size - int(0.6 * w.size)]] = True
    np.testing.assert_array_equal(np.asarray(state.masks["fc"]["kernel"]).ravel(), ref)


def test_filter_granularity_with_l2_reduction():
    params = zoo.conv_fc_params()
    tx = jaxprune.optax_sparsity(
        0.5,
        granularity=jaxprune.FILTER,
        reduction="l2",
        prunable=jaxprune.default_prunable,
        update_every=1,
    )
    _, state = tx.update(params, tx.init(params), params)
    m = state.masks["conv"]["kernel"]
    assert m.shape == (1, 1, 1, 8) and int(m.sum()) == 4
    norms = np.linalg.norm(np.asarray(params["conv"]["kernel"]).reshape(-1, 8), axis=0)
    np.testing.assert_array_equal(np.asarray(m).ravel(), norms >= np.sort(norms)[4])


def test_n_of_m_granularity():
    params = zoo.conv_fc_params()
    tx = jaxprune.optax_sparsity(granularity=jaxprune.n_of_m(2, 4), update_every=1)
    _, state = tx.update(params, tx.init(params), params)
    m = np.asarray(state.masks["fc"]["kernel"])  # (32, 16): groups of 4 along the input axis
    assert m.shape == (32, 16)
    np.testing.assert_array_equal(m.reshape(8, 4, 16).sum(1), 2)
    with pytest.raises(ValueError, match="do not pass `sparsity`"):
        jaxprune.optax_sparsity(0.5, granularity=jaxprune.n_of_m(2, 4))


def test_n_of_m_bad_axis_names_path():
    params = {"fc": {"kernel": jnp.ones((6, 4))}}
    tx = jaxprune.optax_sparsity(granularity=jaxprune.n_of_m(2, 4))
    with pytest.raises(ValueError, match="'fc/kernel'"):
        tx.init(params)


def test_global_distribution_with_floor():
    params = zoo.conv_fc_params()
    params["out"]["kernel"] = params["out"]["kernel"] * 1e-3  # tiny layer: global top-k empties it
    tx = jaxprune.optax_sparsity(0.7, distribution="global", update_every=1)
    _, state = tx.update(params, tx.init(params), params)
    kept = {k: int(state.masks[k]["kernel"].sum()) for k in ("conv", "fc", "out")}
    total = 288 + 512 + 64
    assert sum(kept.values()) == total - int(0.7 * total)
    assert kept["out"] == 1  # the per-layer floor


def test_erk_and_per_path_distributions():
    params = zoo.conv_fc_params()
    tx = jaxprune.optax_sparsity(0.9, distribution="erk", update_every=1)
    _, state = tx.update(params, tx.init(params), params)
    prunable = {
        "conv": {"kernel": params["conv"]["kernel"], "bias": None},
        "fc": {"kernel": params["fc"]["kernel"], "bias": None},
        "out": {"kernel": params["out"]["kernel"], "bias": None},
    }
    expected = jaxprune.distributions.erk(prunable, 0.9)
    for k in ("conv", "fc", "out"):
        m = state.masks[k]["kernel"]
        assert int(m.size - m.sum()) == int(np.floor(float(expected[k]["kernel"]) * m.size)), k

    sched = jaxprune.schedules.constant(0.25)
    tx = jaxprune.optax_sparsity(
        distribution={"conv/kernel": 0.5, "fc/kernel": sched, "out/kernel": None}, update_every=1
    )
    _, state = tx.update(params, tx.init(params), params)
    assert int(state.masks["conv"]["kernel"].sum()) == 144
    assert int(state.masks["fc"]["kernel"].sum()) == 384
    assert state.masks["out"]["kernel"] is None
    with pytest.raises(ValueError, match="nope/kernel"):
        jaxprune.optax_sparsity(distribution={"nope/kernel": 0.5}).init(params)


def test_prefix_tree_sparsity():
    params = zoo.conv_fc_params()
    tx = jaxprune.optax_sparsity({"conv": 0.5, "fc": None, "out": 0.75}, update_every=1)
    _, state = tx.update(params, tx.init(params), params)
    assert int(state.masks["conv"]["kernel"].sum()) == 144
    assert state.masks["fc"]["kernel"] is None  # a None target keeps the subtree dense
    assert int(state.masks["out"]["kernel"].sum()) == 16


def test_schedule_compiles_once_and_update_steps():
    params = zoo.conv_fc_params()
    tx = jaxprune.optax_sparsity(
        jaxprune.schedules.polynomial(0.9, 0, 5, frequency=2), update_every=2, end_step=10
    )

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state):
        updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    kept = []
    for _ in range(16):
        params, state = step(params, state)
        kept.append(int(state.masks["fc"]["kernel"].sum()))
    # Masks change only on even steps up to step 10, then stay frozen.
    changes = [i for i in range(1, 16) if kept[i] != kept[i - 1]]
    assert changes and all(i % 2 == 0 and i <= 10 for i in changes)
    assert int(state.count) == 16


def test_gradient_based_scores_via_raw_grads():
    params = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]])}
    grads = {"w": jnp.array([[10.0, 0.1], [0.1, 0.1]])}
    tx = jaxprune.optax_sparsity(0.5, score_fn=jaxprune.scores.taylor, update_every=1)
    _, state = jax.jit(tx.update)(grads, tx.init(params), params, raw_grads=grads)
    # |w*g| = [[10, .2], [.3, .4]] keeps 10 and .4
    np.testing.assert_array_equal(state.masks["w"], [[True, False], [False, True]])
    with pytest.raises(ValueError, match="raw_grads"):
        tx.update(grads, tx.init(params), params)


def test_straight_through_lets_pruned_weights_learn():
    params = {"w": jnp.array([[0.1, -2.0], [0.5, 3.0]])}
    tx = optax.chain(
        optax.sgd(1.0), jaxprune.optax_sparsity(0.5, update_every=1, straight_through=True)
    )
    state = tx.init(params)
    grads = {"w": jnp.array([[-5.0, 0.0], [0.0, 0.0]])}
    updates, state = tx.update(grads, state, params)
    np.testing.assert_array_equal(updates["w"], [[5.0, 0.0], [0.0, 0.0]])
    params = optax.apply_updates(params, updates)
    assert not bool(jaxprune.masks(state)["w"][0, 0])  # pruned at step 0, kept learning
    _, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    assert bool(jaxprune.masks(state)["w"][0, 0])  # 5.1 now: spliced back


def test_abstract_init_and_stable_state_types():
    abstract = jax.eval_shape(zoo.conv_fc_params)
    tx = optax.chain(
        optax.sgd(0.1),
        jaxprune.optax_sparsity(
            0.5, granularity=jaxprune.FILTER, prunable=jaxprune.default_prunable
        ),
    )
    state = jax.eval_shape(tx.init, abstract)
    m = jaxprune.masks(state)
    assert m["conv"]["kernel"].shape == (1, 1, 1, 8) and m["conv"]["kernel"].dtype == jnp.bool_
    params = zoo.conv_fc_params()
    s0 = tx.init(params)
    _, s1 = jax.jit(tx.update)(params, s0, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(s0, s1)


@pytest.mark.standard_dtypes
def test_bf16_params_stay_bf16():
    params = zoo.conv_fc_params(dtype=jnp.bfloat16)
    tx = optax.chain(optax.adam(1e-2), jaxprune.optax_sparsity(0.5, update_every=1))
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(zoo.random_grads(params, 0), state, params)
    new = optax.apply_updates(params, updates)
    for x in jax.tree.leaves(new):
        assert x.dtype == jnp.bfloat16
    zoo.assert_pruned_are_zero(new, jaxprune.masks(state))


@pytest.mark.standard_dtypes
def test_inject_hyperparams_changes_sparsity_without_recompiling():
    params = zoo.conv_fc_params()
    static = ("score_fn", "granularity", "distribution", "prunable", "min_keep", "method")
    tx = optax.inject_hyperparams(jaxprune.optax_sparsity, static_args=static)(
        sparsity=0.5, update_every=1
    )

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state):
        return tx.update(params, state, params)

    state = tx.init(params)
    _, state = step(params, state)
    assert int(jaxprune.masks(state)["fc"]["kernel"].sum()) == 256
    state.hyperparams["sparsity"] = jnp.asarray(0.75, jnp.float32)
    _, state = step(params, state)  # the updates were not applied: pruned weights not zero
    assert int(jaxprune.masks(state, check=False)["fc"]["kernel"].sum()) == 128


@pytest.mark.standard_dtypes
def test_multisteps_counts_real_steps_and_keeps_zeros():
    params = zoo.conv_fc_params()
    inner = optax.chain(optax.adam(1e-2), jaxprune.optax_sparsity(0.5, update_every=1))
    tx = optax.MultiSteps(inner, every_k_schedule=3)
    state = tx.init(params)
    step = jax.jit(tx.update)
    for i in range(6):
        updates, state = step(zoo.random_grads(params, i), state, params)
        params = optax.apply_updates(params, updates)
        zoo.assert_pruned_are_zero(params, jaxprune.masks(state))
    assert int(state.inner_opt_state[1].count) == 2
    assert int(jaxprune.masks(state)["fc"]["kernel"].sum()) == 256


def test_masks_accessor_errors():
    with pytest.raises(ValueError, match="no jaxprune sparsity state"):
        jaxprune.masks(optax.sgd(0.1).init({"w": jnp.ones(2)}))
    tx = optax.chain(jaxprune.optax_sparsity(0.5), jaxprune.optax_sparsity(0.5))
    with pytest.raises(ValueError, match="holds 2"):
        jaxprune.masks(tx.init({"w": jnp.ones((2, 2))}))


def test_bad_input_errors():
    params = zoo.conv_fc_params()
    with pytest.raises(ValueError, match="sparsity"):
        jaxprune.optax_sparsity(1.5)
    with pytest.raises(ValueError, match="sparsity"):
        jaxprune.optax_sparsity(-0.1)
    with pytest.raises(ValueError, match="required"):
        jaxprune.optax_sparsity()
    bad = {"w": jnp.ones((2, 2)), "steps": jnp.ones((2, 2), jnp.int32)}
    with pytest.raises(TypeError, match="'steps'"):
        jaxprune.optax_sparsity(0.5, prunable=True).init(bad)
    with pytest.raises(ValueError, match="'conv/bias'"):
        jaxprune.optax_sparsity(0.5, granularity=jaxprune.CONNECTION, prunable=True).init(params)
    tx = jaxprune.optax_sparsity(0.5)
    state = tx.init(params)
    with pytest.raises(ValueError, match="pass `params`"):
        tx.update(params, state)
    with pytest.raises(ValueError, match="updates"):
        tx.update({"w": jnp.ones(2)}, state, params)
    with pytest.raises(ValueError, match="prunable"):
        jaxprune.optax_sparsity(0.5, prunable={"conv": True}).init(params)


# --- dynamic network surgery -----------------------------------------------------------


def test_dns_thresholds_and_hysteresis_match_numpy():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(20, 10)).astype(np.float32)
    params = {"w": jnp.asarray(w), "b": jnp.zeros(10)}
    c = 0.5
    tx = jaxprune.dynamic_network_surgery(c_rate=c, gamma=0.0)
    state = tx.init(params)
    _, state = tx.update(params, state, params)
    a = np.abs(w)
    mu, sigma = a.mean(), a.std()
    low, high = 0.9 * max(mu + c * sigma, 0), 1.1 * max(mu + c * sigma, 0)
    np.testing.assert_allclose(state.low["w"], low, rtol=1e-5)
    np.testing.assert_allclose(state.high["w"], high, rtol=1e-5)
    np.testing.assert_array_equal(state.masks["w"], a >= low)  # from all-ones: prune below a
    assert state.masks["b"] is None

    # Move weights into and out of the band: below a -> pruned, above b -> spliced, else kept.
    old = np.asarray(state.masks["w"])
    w2 = w.copy()
    w2[0, 0] = np.sign(w2[0, 0] or 1.0) * (low + high) / 2  # inside the band: keeps old mask
    w2[0, 1] = 2 * high  # spliced (or kept)
    w2[0, 2] = 0.5 * low  # pruned
    _, state = tx.update(params, state, {"w": jnp.asarray(w2), "b": jnp.zeros(10)})
    new = np.asarray(state.masks["w"])
    assert new[0, 0] == old[0, 0] and new[0, 1] and not new[0, 2]
    # Thresholds stay fixed after the first step.
    np.testing.assert_allclose(state.low["w"], low, rtol=1e-5)


def test_dns_update_probability_and_stop():
    w = jnp.asarray(np.random.default_rng(1).normal(size=(30, 30)), jnp.float32)
    tx = jaxprune.dynamic_network_surgery(c_rate=0.0, gamma=1.0, power=1.0, key=3, stop_step=50)
    state = tx.init({"w": w})
    step = jax.jit(tx.update)
    changes = []
    for i in range(80):
        # Alternate the magnitudes so that every recomputation flips the mask.
        scale = jnp.asarray(4.0 if i % 2 else 0.25, jnp.float32)
        before = state.masks["w"]
        _, state = step({"w": w}, state, {"w": w * scale})
        if not bool(jnp.array_equal(before, state.masks["w"])):
            changes.append(i)
    # Step 0 always updates (probability 1); P(update at t) = 1 / (1 + t) afterwards, so the
    # expected number of updates before step 50 is about 4.5; none from stop_step on.
    assert changes[0] == 0
    assert 2 <= len(changes) <= 15 and max(changes) < 50


def test_dns_straight_through_training_splices_back():
    # A weight pruned early whose gradient keeps pushing it up comes back.
    params = {"w": jnp.array([[0.05, 1.0, -1.0, 1.0]]).reshape(2, 2)}
    tx = optax.chain(optax.sgd(0.1), jaxprune.dynamic_network_surgery(c_rate=0.0, gamma=0.0))
    state = tx.init(params)

    def loss(p, m):
        q = jaxprune.apply_masks(p, m, straight_through=True)
        return -jnp.sum(q["w"] * jnp.array([[1.0, 0.0], [0.0, 0.0]]))

    history = []
    for _ in range(20):
        m = jaxprune.masks(state)
        g = jax.grad(loss)(params, m)
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
        history.append(bool(jaxprune.masks(state)["w"][0, 0]))
    assert history[0] is False and history[-1] is True


def test_auto_method_in_the_step_bisects_small_trees_with_the_same_masks():
    from jaxprune._src.sparsity import _BISECT_MAX, _step_method

    small = {"a": jax.ShapeDtypeStruct((1000, 1000), jnp.float32), "b": None}
    big = {"a": jax.ShapeDtypeStruct((_BISECT_MAX + 1,), jnp.float32)}
    assert _step_method("auto", small) == "bisect" and _step_method("auto", big) == "auto"
    assert _step_method("radix", small) == "radix"
    # Both searches are exact: the masks of "auto" (bisection here) equal the radix ones,
    # ties included (integer-valued weights).
    rng = np.random.default_rng(0)
    params = {
        "fc1": {"kernel": jnp.asarray(rng.integers(-3, 4, (40, 30)), jnp.float32)},
        "fc2": {"kernel": jnp.asarray(rng.normal(size=(30, 10)), jnp.float32)},
    }
    for distribution in ("uniform", "global"):
        out = []
        for method in ("auto", "radix"):
            tx = jaxprune.optax_sparsity(0.7, distribution=distribution, method=method)
            state = tx.init(params)
            _, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
            out.append(jaxprune.masks(state))
        chex.assert_trees_all_equal(*out)


def test_global_sentinel_is_the_global_distribution():
    params = {"a": jnp.arange(1.0, 7.0).reshape(2, 3), "b": jnp.arange(10.0, 16.0).reshape(3, 2)}
    runs = []
    for d in ("global", jaxprune.distributions.GLOBAL):
        tx = jaxprune.optax_sparsity(0.5, distribution=d, update_every=1, min_keep=0)
        _, state = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
        runs.append(jaxprune.masks(state))
    chex.assert_trees_all_equal(*runs)
    assert not bool(runs[0]["a"].any()) and bool(runs[0]["b"].all())  # one global threshold


def test_dynamic_network_surgery_key_must_be_a_key_or_seed():
    with pytest.raises(TypeError, match="`key` must be a jax.random key or an int seed"):
        jaxprune.dynamic_network_surgery(key="0")
    params = {"w": jnp.array([[0.01, -2.0], [0.5, 3.0]])}
    for key in (np.int64(3), 3, jax.random.key(3)):
        tx = jaxprune.dynamic_network_surgery(key=key, gamma=0.0)
        _, state = tx.update(params, tx.init(params), params)
        assert jaxprune.masks(state)["w"].shape == (2, 2)
