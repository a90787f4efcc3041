"""What jaxprune refuses, and why: misuse is never silent.

Each test is one wrong or unusual input, and the rule jaxprune applies to it: either a
correct result, or a ``ValueError``/``TypeError`` whose message names the argument or the
parameter path and says what to do. Read the test names as the list.
"""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune


def _mlp(seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return {
        "fc1": {"kernel": jax.random.normal(k1, (8, 6)), "bias": jnp.zeros(6)},
        "fc2": {"kernel": jax.random.normal(k2, (6, 6)), "bias": jnp.zeros(6)},
        "out": {"kernel": jax.random.normal(k3, (6, 10)), "bias": jnp.zeros(10)},
    }


def _grads(params, step):
    key = jax.random.fold_in(jax.random.key(7), step)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    )


def _train(tx, params, steps=3):
    @jax.jit
    def step(p, s, i):
        u, s = tx.update(_grads(p, i), s, p)
        return optax.apply_updates(p, u), s

    state = tx.init(params)
    for i in range(steps):
        params, state = step(params, state, i)
    return params, state


# ---------------------------------------------------------------------------------------
# 1. optax_sparsity (or keep_masks) not last in the chain.


@pytest.mark.standard_dtypes
def test_sparsity_before_the_optimizer_is_reported_by_masks():
    tx = optax.chain(jaxprune.optax_sparsity(0.9, update_every=1), optax.adam(1e-3))
    _, state = _train(tx, _mlp())
    assert int(state[0].leaked) > 0
    with pytest.raises(ValueError, match="must be the LAST transformation of the chain"):
        jaxprune.masks(state)
    masks = jaxprune.masks(state, check=False)  # explicit opt-out still reads them
    assert masks["fc1"]["kernel"].shape == (8, 6)


@pytest.mark.standard_dtypes
def test_sparsity_last_in_the_chain_passes_the_check_and_compiles_once():
    tx = optax.chain(optax.adam(1e-3), jaxprune.optax_sparsity(0.9, update_every=1))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(p, s, i):
        u, s = tx.update(_grads(p, i), s, p)
        return optax.apply_updates(p, u), s

    params, state = _mlp(), tx.init(_mlp())
    for i in range(4):
        params, state = step(params, state, i)
    assert int(state[1].leaked) == 0
    masks = jaxprune.masks(state)
    stats = jaxprune.summary(params, masks, print_fn=None)
    assert stats.pruned_nonzero == 0 and stats.weight_nonzero == stats.nonzero


def test_keep_masks_before_the_optimizer_is_reported_by_masks():
    params = _mlp()
    keep = jax.tree.map(lambda p: jnp.arange(p.size).reshape(p.shape) % 2 == 0, params)
    tx = optax.chain(jaxprune.keep_masks(keep), optax.sgd(0.1, momentum=0.9))
    _, state = _train(tx, params)  # the update -param is scaled by the learning rate
    with pytest.raises(ValueError, match="LAST transformation"):
        jaxprune.masks(state)


def test_masks_inside_jit_do_not_raise():
    tx = optax.chain(jaxprune.optax_sparsity(0.5, update_every=1), optax.sgd(0.1))
    _, state = _train(tx, _mlp())
    out = jax.jit(lambda s: jaxprune.masks(s)["fc1"]["kernel"].sum())(state)
    assert int(out) > 0


def test_summary_shows_weight_zeros_next_to_the_masks_and_flags_disagreement():
    params = {"w": jnp.ones((4, 5)), "b": jnp.zeros(5)}
    masks = {"w": jnp.arange(20).reshape(4, 5) < 2, "b": None}
    lines = []
    stats = jaxprune.summary(params, masks, print_fn=lines.append)
    row = stats.by_path()["w"]
    assert row.nonzero == 2 and row.weight_nonzero == 20 and row.pruned_nonzero == 18
    assert stats.pruned_nonzero == 18 and stats.weight_sparsity == pytest.approx(5 / 25)
    assert "18 pruned entries are non-zero" in lines[0] and "WARNING" in lines[0]
    # Applied masks agree: no flag.
    lines.clear()
    stats = jaxprune.summary(jaxprune.apply_masks(params, masks), masks, print_fn=lines.append)
    assert stats.pruned_nonzero == 0 and "WARNING" not in lines[0]


def test_summary_says_no_mask_rather_than_dense_for_unmasked_leaves():
    params = {"w": jnp.zeros((4, 5)).at[0].set(1.0), "b": jnp.zeros(5)}
    lines = []
    stats = jaxprune.summary(params, print_fn=lines.append)
    assert "(no mask)" in lines[0] and "(dense)" not in lines[0]
    assert stats.by_path()["w"].sparsity == pytest.approx(0.75)


# ---------------------------------------------------------------------------------------
# 2. Structured granularities and the model's output layer.


@pytest.mark.parametrize("granularity", [jaxprune.FILTER, jaxprune.LAYER, "filter"])
def test_structured_output_units_with_default_prunable_are_refused(granularity):
    tx = jaxprune.optax_sparsity(0.5, granularity=granularity)
    with pytest.raises(ValueError, match=r"output layer.*exclude=\['out/kernel'\]"):
        tx.init(_mlp())


def test_structured_pruning_with_the_output_layer_excluded_keeps_every_class():
    prunable = lambda p: jaxprune.default_prunable(p, exclude=["out"])
    tx = optax.chain(
        optax.sgd(0.1),
        jaxprune.optax_sparsity(
            0.5, granularity=jaxprune.FILTER, prunable=prunable, update_every=1
        ),
    )
    params, state = _train(tx, _mlp())
    masks = jaxprune.masks(state)
    assert masks["out"]["kernel"] is None and int(masks["fc1"]["kernel"].sum()) == 3
    assert np.all(np.any(np.asarray(params["out"]["kernel"]) != 0, axis=0))  # all 10 classes


def test_readme_penalty_example_keeps_the_classes():
    lr = 0.1
    tx = optax.chain(
        optax.sgd(lr, momentum=0.9),
        jaxprune.optax_sparsity(
            0.5,
            granularity=jaxprune.FILTER,
            prunable=lambda p: jaxprune.default_prunable(p, exclude=["out"]),
            group_lasso=1e-3,
            slimming=1e-2,
            learning_rate=lr,
            update_every=1,
        ),
    )
    params, _ = _train(tx, _mlp())
    assert np.all(np.any(np.asarray(params["out"]["kernel"]) != 0, axis=0))


def test_explicit_default_prunable_prunes_every_kernel_and_unstructured_is_unaffected():
    def kept(tx):
        _, state = _train(tx, _mlp(), steps=1)
        masks = jaxprune.masks(state)
        assert all(masks[k]["bias"] is None for k in masks)
        return {k: int(m["kernel"].sum()) for k, m in masks.items()}

    # Asked for explicitly, the output layer's units are pruned too: half of the 10 classes.
    tx = jaxprune.optax_sparsity(
        0.5, granularity="filter", prunable=jaxprune.default_prunable, update_every=1
    )
    assert kept(tx) == {"fc1": 3, "fc2": 3, "out": 5}
    # Granularities that never remove an output unit prune every kernel with the default.
    for g, want in (
        (jaxprune.UNSTRUCTURED, {"fc1": 24, "fc2": 18, "out": 30}),
        (jaxprune.INPUT_CHANNEL, {"fc1": 4, "fc2": 3, "out": 3}),
        (jaxprune.CONNECTION, {"fc1": 24, "fc2": 18, "out": 30}),
    ):
        assert kept(jaxprune.optax_sparsity(0.5, granularity=g, update_every=1)) == want, g.name


def test_default_prunable_exclude_names_unknown_paths():
    with pytest.raises(ValueError, match=r"\['head'\] that match no parameter path"):
        jaxprune.default_prunable(_mlp(), exclude=["head"])


# ---------------------------------------------------------------------------------------
# The pure functions prune every leaf they are given; only_prunable gives optax_sparsity's set.


def test_pure_functions_on_only_prunable_agree_with_optax_sparsity_and_errors_say_so():
    params = _mlp()
    with pytest.raises(ValueError, match=r"'fc1/bias' has shape \(6,\).*only_prunable"):
        jaxprune.scores.random(jax.random.key(0), params, jaxprune.CONNECTION)
    with pytest.raises(ValueError, match=r"'fc1/bias'.*only_prunable"):
        jaxprune.select.top_n_of_m(params, 2, 2)
    kernels = jaxprune.only_prunable(params)
    assert kernels["fc1"]["bias"] is None and kernels["fc1"]["kernel"] is params["fc1"]["kernel"]
    jaxprune.scores.random(jax.random.key(0), kernels, jaxprune.CONNECTION)
    assert jaxprune.select.top_n_of_m(kernels, 2, 2)["out"]["bias"] is None
    pure = jaxprune.select.layerwise_topk(jaxprune.scores.magnitude(kernels), 0.5)
    tx = jaxprune.optax_sparsity(0.5, update_every=1)
    _, state = tx.update(params, tx.init(params), params)
    chex.assert_trees_all_equal(pure, state.masks)
    std = jaxprune.select.std_threshold(kernels, 1.0)
    assert std["fc1"]["bias"] is None  # zero-initialised biases are not all pruned
    head = jaxprune.only_prunable(params, lambda p: jaxprune.default_prunable(p, exclude="out"))
    assert head["out"]["kernel"] is None and head["fc2"]["kernel"] is not None


# ---------------------------------------------------------------------------------------
# 3. shrink / widths with paths that match nothing.


def _group():
    return jaxprune.Group(
        "h",
        (
            jaxprune.Member("fc1/kernel", 1),
            jaxprune.Member("fc1/bias", 0),
            jaxprune.Member("fc2/kernel", 0),
        ),
    )


def test_shrink_with_a_misspelled_member_path_raises_naming_it():
    g = jaxprune.Group("h", (jaxprune.Member("fc1/kernl", 1), jaxprune.Member("fc2/kernel", 0)))
    keep = {"h": jnp.arange(6) < 3}
    with pytest.raises(ValueError, match=r"'fc1/kernl' of group 'h'.*did you mean \['fc1/kernel"):
        jaxprune.shrink(_mlp(), keep, [g])


def test_shrink_of_params_with_variables_groups_points_to_groups_under():
    g = jaxprune.Group("h", (jaxprune.Member("params/fc1/kernel", 1),))
    with pytest.raises(ValueError, match="groups_under"):
        jaxprune.shrink(_mlp(), {"h": jnp.arange(6) < 3}, [g])


def test_shrink_allow_missing_accepts_a_tree_without_the_parameter():
    state = optax.sgd(0.1).init(_mlp())  # no parameter copies
    assert jaxprune.shrink(state, {"h": jnp.arange(6) < 3}, [_group()], allow_missing=True) == (
        state
    )


def test_shrink_with_an_all_false_keep_raises():
    with pytest.raises(ValueError, match="group 'h' keeps none of its 6 channels"):
        jaxprune.shrink(_mlp(), {"h": jnp.zeros(6, bool)}, [_group()])


def test_widths_with_a_misspelled_strip_raises():
    variables = {"params": _mlp()}
    g = jaxprune.Group("h", (jaxprune.Member("params/fc1/kernel", 1),))
    keep = {"h": jnp.arange(6) < 3}
    assert jaxprune.widths([g], keep, variables) == {"fc1": 3}
    assert jaxprune.widths([g], keep, variables, strip="") == {"params/fc1": 3}
    with pytest.raises(ValueError, match=r"`strip`='parms' is not a top-level collection"):
        jaxprune.widths([g], keep, variables, strip="parms")


def test_widths_with_groups_that_name_another_tree_raises():
    g = jaxprune.Group("h", (jaxprune.Member("params/fc1/kernel", 1),))
    with pytest.raises(ValueError, match="matches no leaf"):
        jaxprune.widths([g], {"h": jnp.arange(6) < 3}, _mlp())


def test_fold_forward_with_a_keep_vector_of_the_wrong_length_names_the_group():
    import zoo

    x = jnp.ones((2, 5))
    variables = zoo.random_variables(zoo.MLP(), x)
    groups = jaxprune.trace_groups(zoo.MLP().apply, variables, x).groups
    name = groups[0].name
    with pytest.raises(
        ValueError, match=re.escape(f"keep vector of group '{name}' has shape (3,)")
    ):
        jaxprune.fold_forward(zoo.MLP().apply, variables, {name: jnp.ones(3, bool)}, groups, x)


def test_tap_named_scores_meet_discovered_groups_through_rename_groups():
    from flax import linen as nn

    from jaxprune import importance

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Dense(6, name="fc1")(x))
            h = nn.relu(nn.Dense(6, name="fc2")(h))
            return nn.Dense(3, name="out")(h)

    net, x = Net(), jax.random.normal(jax.random.key(1), (16, 5))
    variables = net.init(jax.random.key(0), x)
    params = variables["params"]
    groups = jaxprune.chain_groups(params, ["fc1", "fc2", "out"])
    assert [g.name for g in groups] == ["fc1/kernel[1]", "fc2/kernel[1]"]
    taps = importance.linen_taps(net.apply, variables, x, modules=["fc1", "fc2"])
    state = importance.channel_stats_update(
        importance.channel_stats_init(taps.activations), taps.activations
    )
    scores = importance.mean_activation_scores(importance.channel_stats_finalize(state))
    assert set(scores) == {"fc1", "fc2"}
    with pytest.raises(ValueError, match=r"module names \('fc1'\).*jaxprune\.rename_groups"):
        importance.group_masks(scores, groups, params, 0.5)
    keep = {k: jnp.arange(6) < 3 for k in scores}
    for fn in (
        lambda g: jaxprune.expand_group_masks(keep, g, params),
        lambda g: jaxprune.shrink(params, keep, g),
    ):
        with pytest.raises(ValueError, match="rename_groups"):
            fn(groups)
    named = jaxprune.rename_groups(groups)
    assert [g.name for g in named] == ["fc1", "fc2"] and named[0].members == groups[0].members
    masks = importance.group_masks(scores, named, params, 0.5)
    assert int(masks["fc1"]["kernel"].sum()) == 3
    assert jaxprune.shrink(params, keep, named)["fc2"]["kernel"].shape == (3, 3)
    linen_groups = jaxprune.trace_groups(net.apply, variables, x).groups
    assert [g.name for g in jaxprune.rename_groups(linen_groups)] == ["fc1", "fc2"]
    by_map = jaxprune.rename_groups(groups, {"fc1/kernel[1]": "a"})
    assert [g.name for g in by_map] == ["a", "fc2/kernel[1]"]
    with pytest.raises(ValueError, match="would be named alike"):
        jaxprune.rename_groups(groups, lambda n: "same")
    with pytest.raises(ValueError, match=r"renames \['nope'\]"):
        jaxprune.rename_groups(groups, {"nope": "x"})


# ---------------------------------------------------------------------------------------
# 4. Linen variables instead of params.


@pytest.mark.parametrize(
    "make",
    [
        lambda: jaxprune.optax_sparsity(0.5),
        lambda: jaxprune.dynamic_network_surgery(1.0),
        lambda: jaxprune.keep_masks({"fc1": None, "fc2": None, "out": None}),
    ],
)
def test_linen_variables_with_batch_stats_are_refused_naming_the_collection(make):
    variables = {"params": _mlp(), "batch_stats": {"bn": {"mean": jnp.zeros(6)}}}
    with pytest.raises(ValueError, match=r"Linen `variables`.*\['batch_stats'\].*\['params'\]"):
        make().init(variables)


def test_linen_variables_passed_to_update_are_refused():
    params = _mlp()
    tx = jaxprune.optax_sparsity(0.5)
    state = tx.init(params)
    variables = {"params": params, "batch_stats": {"bn": {"mean": jnp.zeros(6)}}}
    with pytest.raises(ValueError, match="batch_stats"):
        tx.update(variables, state, variables)


# ---------------------------------------------------------------------------------------
# 5. Argument values that used to be misread.


@pytest.mark.parametrize("value", [2.5, 2.0, np.float64(3.0), True, "10"])
def test_update_every_must_be_an_integer(value):
    with pytest.raises(TypeError, match="`update_every` must be an integer"):
        jaxprune.optax_sparsity(0.5, update_every=value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(update_every=0), "`update_every` must be >= 1"),
        (dict(begin_step=-1), "`begin_step` must be >= 0"),
        (dict(end_step=1.5), "`end_step` must be an integer"),
    ],
)
def test_step_arguments_name_themselves(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        jaxprune.optax_sparsity(0.5, **kwargs)


def test_update_when_together_with_update_every_is_refused():
    with pytest.raises(ValueError, match=r"`update_when` replaces \['update_every'\]"):
        jaxprune.optax_sparsity(
            0.5, update_when=jaxprune.schedules.at_steps((0, 10)), update_every=5
        )


def test_n_of_m_with_zero_kept_is_refused():
    with pytest.raises(ValueError, match="0 < n <= m, got n=0, m=4"):
        jaxprune.n_of_m(0, 4)


@pytest.mark.parametrize("c_rate", [-1.0, float("nan"), float("inf"), {"fc1": 1.0, "fc2": -2}])
def test_dns_c_rate_must_be_finite_and_non_negative(c_rate):
    with pytest.raises(ValueError, match="c_rate.*finite number >= 0"):
        jaxprune.dynamic_network_surgery(c_rate)


# ---------------------------------------------------------------------------------------
# 6. NaN and inf.


def test_non_finite_scores_rank_least_important():
    s = jnp.array([jnp.nan, 0.1, jnp.inf, 0.3, -jnp.inf, 0.2])
    np.testing.assert_array_equal(
        jaxprune.select.topk_mask(s, 0.5), [False, True, False, True, False, True]
    )
    m = jaxprune.select.global_topk({"a": s, "b": jnp.array([jnp.inf, 5.0])}, 0.5)
    np.testing.assert_array_equal(m["b"], [False, True])
    assert not bool(jaxprune.select.threshold({"a": s}, 0.0)["a"][2])
    np.testing.assert_array_equal(
        jaxprune.select.n_of_m_mask(s[:4], 2, 4, axis=0), [False, True, False, True]
    )


def test_inf_weight_is_pruned_first_by_optax_sparsity():
    params = {"w": jnp.array([[jnp.inf, 1.0], [2.0, 3.0]])}
    tx = jaxprune.optax_sparsity(0.25, update_every=1, prunable=True)
    _, state = tx.update(params, tx.init(params), params)
    np.testing.assert_array_equal(state.masks["w"], [[False, True], [True, True]])


def test_std_threshold_ignores_non_finite_weights_in_the_std():
    w = jnp.array([-2.0, -0.1, 0.0, 0.1, 2.0, jnp.inf])
    got = jaxprune.select.std_threshold({"k": w}, 1.0)["k"]
    np.testing.assert_array_equal(got, [True, False, False, False, True, False])


def test_apply_masks_writes_exact_zeros_whatever_the_value():
    w = jnp.array([jnp.inf, -jnp.inf, jnp.nan, 2.0])
    m = jnp.array([False, False, False, True])
    for st in (False, True):
        out = jaxprune.apply_masks({"w": w}, {"w": m}, straight_through=st)["w"]
        np.testing.assert_array_equal(out, [0.0, 0.0, 0.0, 2.0])
    grad = jax.grad(lambda v: jaxprune.apply_masks(v, {"w": m}, straight_through=True)["w"][3])
    np.testing.assert_array_equal(grad({"w": jnp.ones(4)})["w"], [0.0, 0.0, 0.0, 1.0])
    grad = jax.grad(
        lambda v: jnp.sum(jaxprune.apply_masks(v, {"w": m}, straight_through=True)["w"])
    )
    np.testing.assert_array_equal(grad({"w": jnp.ones(4)})["w"], [1.0, 1.0, 1.0, 1.0])


def test_non_finite_weight_at_a_pruned_entry_is_reported():
    # An update cannot zero inf (inf + -inf is NaN): the next update records it.
    params = {"w": jnp.array([[0.5, 1.0], [2.0, 3.0]])}
    tx = optax.chain(optax.sgd(0.1), jaxprune.optax_sparsity(0.25, update_every=1, prunable=True))
    state = tx.init(params)
    u, state = tx.update(params, state, params)
    params = optax.apply_updates(params, u)
    assert float(params["w"][0, 0]) == 0.0
    params = {"w": params["w"].at[0, 0].set(jnp.inf)}
    _, state = tx.update(params, state, params)
    with pytest.raises(ValueError, match="non-finite weight at a pruned entry"):
        jaxprune.masks(state)


def test_select_groups_with_nan_scores_and_all_zero_groups_is_deterministic():
    scores = {"a": jnp.array([jnp.nan, 0.2, 0.9, 0.1]), "b": jnp.zeros(4)}
    keep = jaxprune.importance.select_groups(scores, 0.5)
    np.testing.assert_array_equal(keep["a"], [False, True, True, False])
    np.testing.assert_array_equal(keep["b"], [True, True, False, False])  # ties: lowest index
    keep = jaxprune.importance.select_groups(scores, 0.5, scope="global", min_keep=0)
    np.testing.assert_array_equal(keep["a"], [False, True, True, True])
    np.testing.assert_array_equal(keep["b"], [True, False, False, False])
    keep = jaxprune.importance.select_groups(scores, 0.5, scope="global", round_to=2)
    np.testing.assert_array_equal(keep["b"], [True, True, False, False])  # 1 rounded up to 2


def test_inject_hyperparams_without_static_args_says_which_arguments_must_be_static():
    tx = optax.inject_hyperparams(jaxprune.optax_sparsity)(sparsity=0.5, update_every=1)
    with pytest.raises(TypeError, match="static_args.*'score_fn'"):
        tx.init(_mlp())


# ---------------------------------------------------------------------------------------
# 7. Traced targets out of range.


@pytest.mark.parametrize(
    "schedule",
    [
        optax.linear_schedule(0, 90, 10),  # written in percent
        lambda count: jnp.float32(2.0),
        lambda count: jnp.float32(jnp.nan),
    ],
    ids=["percent", "two", "nan"],
)
def test_schedule_outside_zero_one_is_reported_by_masks(schedule):
    tx = optax.chain(optax.sgd(0.1), jaxprune.optax_sparsity(schedule, update_every=2))
    _, state = _train(tx, _mlp(), steps=4)
    assert int(state[1].bad_sparsity) >= 1
    with pytest.raises(ValueError, match="NaN or outside \\[0, 1\\]"):
        jaxprune.masks(state)


def test_traced_sparsity_in_range_is_not_reported():
    tx = optax.chain(
        optax.sgd(0.1), jaxprune.optax_sparsity(optax.linear_schedule(0.0, 0.9, 10), update_every=2)
    )
    _, state = _train(tx, _mlp(), steps=4)
    assert int(state[1].bad_sparsity) == 0 and jaxprune.masks(state) is not None


# ---------------------------------------------------------------------------------------
# 9 and "also found": exact counts, bit-exact kept entries.


def test_concrete_sparsity_drops_the_decimal_floor_on_large_leaves():
    params = {"k": jax.random.normal(jax.random.key(0), (784, 300))}
    expected_kept = 235_200 - 211_680  # floor(0.9 * 235,200) dropped
    tx = jaxprune.optax_sparsity(0.9, update_every=1)
    _, state = jax.jit(tx.update)(params, tx.init(params), params)
    assert int(state.masks["k"].sum()) == expected_kept
    assert int(jaxprune.select.topk_mask(params["k"], 0.9).sum()) == expected_kept
    jitted = jax.jit(lambda s: jaxprune.select.layerwise_topk(s, 0.9))
    assert int(jitted(params)["k"].sum()) == expected_kept


@pytest.mark.standard_dtypes
@pytest.mark.parametrize(
    "make", [lambda: optax.adam(1e-3), lambda: optax.sgd(0.1, momentum=0.9)], ids=["adam", "sgd"]
)
def test_kept_entries_get_the_plain_optimizers_updates_bit_for_bit(make):
    params = _mlp()
    plain, pruned = make(), optax.chain(make(), jaxprune.optax_sparsity(0.5, begin_step=5))
    ps, ss = plain.init(params), pruned.init(params)
    pp = ppr = params
    for i in range(3):
        u1, ps = jax.jit(plain.update)(_grads(pp, i), ps, pp)
        u2, ss = jax.jit(pruned.update)(_grads(ppr, i), ss, ppr)
        for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        pp, ppr = optax.apply_updates(pp, u1), optax.apply_updates(ppr, u2)


# ---------------------------------------------------------------------------------------
# 8. NNX: the masks of an nnx.Optimizer fit nnx.state(model, nnx.Param).


def test_nnx_masks_from_the_optimizer_apply_to_the_param_state():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.fc = nnx.Linear(4, 6, rngs=rngs)
            self.bn = nnx.BatchNorm(6, rngs=rngs)
            self.out = nnx.Linear(6, 2, rngs=rngs)

    model = Net(nnx.Rngs(0))
    tx = optax.chain(optax.sgd(0.1), jaxprune.optax_sparsity(0.5, update_every=1))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    optimizer.update(model, jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param)))
    masks = jaxprune.masks(optimizer.opt_state)
    state = nnx.state(model, nnx.Param)
    assert jaxprune.summary(state, masks, print_fn=None).prunable_sparsity == 0.5
    masked = jaxprune.apply_masks(state, masks, straight_through=True)
    assert isinstance(masked["fc"]["kernel"], nnx.Param)
    nnx.update(model, masked)
    assert int(jnp.sum(model.fc.kernel.get_value() == 0)) == 12


def _nnx_bn_net():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.fc = nnx.Linear(4, 6, rngs=rngs)
            self.bn = nnx.BatchNorm(6, rngs=rngs)
            self.out = nnx.Linear(6, 2, rngs=rngs)

        def __call__(self, x):
            return self.out(nnx.relu(self.bn(self.fc(x))))

    model = Net(nnx.Rngs(0))
    model.eval()
    return model


def test_nnx_groups_of_the_full_state_are_restricted_to_the_param_state_by_groups_in():
    from flax import nnx

    model = _nnx_bn_net()
    x = jnp.ones((3, 4))
    gd, full = nnx.split(model)
    groups = jaxprune.trace_groups(lambda s, v: nnx.merge(gd, s)(v), full, x).groups
    state = nnx.state(model, nnx.Param)
    with pytest.raises(ValueError, match=r"'bn/mean'.*jaxprune\.groups_in\(groups, params\)"):
        jaxprune.group_scores(state, groups)
    pgroups = jaxprune.groups_in(groups, state)
    assert {m.path for m in pgroups[0].members} == {
        "fc/kernel",
        "fc/bias",
        "bn/scale",
        "bn/bias",
        "out/kernel",
    }
    scores = jaxprune.group_scores(state, pgroups)
    keep = jaxprune.importance.select_groups(scores, 0.5)
    masked = jaxprune.apply_masks(state, jaxprune.expand_group_masks(keep, pgroups, state))
    nnx.update(model, masked)
    ref = model(x)
    jaxprune.shrink_module(model, keep, groups)  # the full groups shrink the statistics too
    assert model.bn.mean.get_value().shape == (3,)
    np.testing.assert_allclose(model(x), ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="groups_under"):
        jaxprune.groups_in(groups, {"params": {"fc": {"kernel": jnp.ones((4, 6))}}})


# ---------------------------------------------------------------------------------------
# 10. Schedule-free optimizers: the evaluation parameters are pruned too.


@pytest.mark.standard_dtypes
def test_schedule_free_eval_params_are_exactly_zero_at_pruned_entries():
    tx = optax.chain(
        optax.contrib.schedule_free_adamw(1e-2), jaxprune.optax_sparsity(0.5, update_every=1)
    )
    params, state = _train(tx, _mlp(), steps=5)
    masks = jaxprune.masks(state)
    plain = optax.contrib.schedule_free_eval_params(state[0], params)
    pruned = ~np.asarray(masks["fc1"]["kernel"])
    assert np.all(np.asarray(plain["fc1"]["kernel"])[pruned] != 0)  # optax's: dense
    jitted = jax.jit(jaxprune.schedule_free_eval_params)(state, params)
    stats = jaxprune.summary(jitted, masks, print_fn=None)
    assert stats.pruned_nonzero == 0 and stats.prunable_sparsity == 0.5
    evaluated = jaxprune.schedule_free_eval_params(state, params)  # kept: optax's values
    for name in ("fc1", "fc2", "out"):
        keep = np.asarray(masks[name]["kernel"])
        a, b = np.asarray(plain[name]["kernel"]), np.asarray(evaluated[name]["kernel"])
        np.testing.assert_array_equal(a[keep], b[keep])
        np.testing.assert_array_equal(plain[name]["bias"], evaluated[name]["bias"])
    other = optax.chain(optax.sgd(0.1), jaxprune.optax_sparsity(0.5)).init(params)
    with pytest.raises(ValueError, match="0 optax.contrib.schedule_free states"):
        jaxprune.schedule_free_eval_params(other, params)


@pytest.mark.standard_dtypes
def test_schedule_free_with_sparsity_inside_the_wrapper_is_reported_by_masks():
    base = optax.chain(optax.scale_by_adam(b1=0.0), optax.scale(-1e-2))
    inner = optax.chain(base, jaxprune.optax_sparsity(0.5, update_every=1, begin_step=2))
    tx = optax.contrib.schedule_free(inner, 1e-2)
    _, state = _train(tx, _mlp(), steps=4)  # masks from step 2 on: y is not zeroed
    with pytest.raises(ValueError, match="LAST transformation"):
        jaxprune.schedule_free_eval_params(state, _mlp())


@pytest.mark.standard_dtypes
def test_shrink_of_an_opt_state_with_filter_masks_shrinks_the_masks_and_training_continues():
    prunable = lambda p: jaxprune.default_prunable(p, exclude=["out"])
    tx = optax.chain(
        optax.adam(1e-2),
        jaxprune.optax_sparsity(
            0.5, granularity=jaxprune.FILTER, prunable=prunable, update_every=1
        ),
    )
    params, state = _train(tx, _mlp())
    masks = jaxprune.masks(state)
    assert masks["fc1"]["kernel"].shape == (1, 6)  # a broadcast (structured) mask
    keep = {"h": np.asarray(masks["fc1"]["kernel"])[0]}
    small, small_state = (jaxprune.shrink(t, keep, [_group()]) for t in (params, state))
    small_masks = jaxprune.masks(small_state)
    assert small_masks["fc1"]["kernel"].shape == (1, 3) and bool(small_masks["fc1"]["kernel"].all())
    np.testing.assert_array_equal(small_masks["fc2"]["kernel"], masks["fc2"]["kernel"])
    assert small_state[0][0].mu["fc2"]["kernel"].shape == (3, 6)
    x = jnp.ones((2, 8))

    def forward(p):
        h = jax.nn.relu(x @ p["fc1"]["kernel"] + p["fc1"]["bias"][None])
        h = jax.nn.relu(h @ p["fc2"]["kernel"] + p["fc2"]["bias"][None])
        return h @ p["out"]["kernel"] + p["out"]["bias"][None]

    full = jaxprune.apply_masks(params, jaxprune.expand_group_masks(keep, [_group()], params))
    np.testing.assert_allclose(forward(small), forward(full), atol=1e-5, rtol=1e-5)
    u, small_state = jax.jit(tx.update)(_grads(small, 9), small_state, small)
    small = optax.apply_updates(small, u)
    jaxprune.masks(small_state)  # the chain-order check still passes
    assert jaxprune.summary(small, small_masks, print_fn=None).pruned_nonzero == 0


# ---------------------------------------------------------------------------------------
# The demo: a bad --data file is one line, with where to get MNIST.


@pytest.mark.parametrize("content", [None, b"not an npz", b"PK\x03\x04broken"])
def test_demo_with_a_bad_data_file_prints_one_line_saying_where_to_get_mnist(
    tmp_path, capsys, content
):
    from jaxprune import demo

    path = tmp_path / "mnist.npz"
    if content is not None:
        path.write_bytes(content)
    assert demo.cli(["--data", str(path), "--plot", ""]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m jaxprune.demo: error: ")
    assert str(path) in lines[0] and "tf-keras-datasets/mnist.npz" in lines[0]


@pytest.mark.parametrize(
    ("decay", "error", "match"),
    [
        (-1e-3, ValueError, "decay must be a finite number >= 0"),
        (float("nan"), ValueError, "decay must be a finite number >= 0"),
        (float("inf"), ValueError, "decay must be a finite number >= 0"),
        ("2e-4", TypeError, "decay .* must be a number"),
        (True, TypeError, "decay .* must be a number"),
    ],
)
def test_ste_decay_must_be_a_finite_nonnegative_number(decay, error, match):
    w = {"k": jnp.ones((4, 2))}
    with pytest.raises(error, match=match):
        jaxprune.ste_topk(w, 0.5, decay=decay)
    with pytest.raises(error, match=match):
        jaxprune.ste_n_of_m(w, 2, 4, decay=decay)
    with pytest.raises(error, match=match):
        jaxprune.ste_topk(w, {"k": 0.5}, decay=decay)
    # A NumPy scalar is a number: accepted, and the same as the Python float.
    g = jax.grad(lambda p: jaxprune.ste_topk(p, 0.5, decay=np.float32(0.5))["k"].sum())(w)
    g_ref = jax.grad(lambda p: jaxprune.ste_topk(p, 0.5, decay=0.5)["k"].sum())(w)
    np.testing.assert_array_equal(g["k"], g_ref["k"])
