"""Tests for the sparsity penalties (coupled, proximal) and optax_sparsity's penalty keywords."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import zoo
from flax import nnx

import jaxprune
import jaxprune.linen
import jaxprune.nnx

G, M = jaxprune.Group, jaxprune.Member


def _params(seed=0, zero_groups=True):
    """Conv -> BN -> flatten (2x2 spatial) -> Dense, with some exactly-zero channels."""
    k = jax.random.split(jax.random.key(seed), 6)
    p = {
        "conv": {
            "kernel": jax.random.normal(k[0], (3, 3, 2, 4)),
            "bias": jax.random.normal(k[1], (4,)),
        },
        "bn": {"scale": jax.random.normal(k[2], (4,)), "bias": jax.random.normal(k[3], (4,))},
        "fc": {"kernel": jax.random.normal(k[4], (2 * 2 * 4, 5)), "bias": None},
        "out": {"kernel": jax.random.normal(k[5], (5, 3))},
    }
    if zero_groups:  # channel 1 of the conv group and column 2 of fc are exactly zero.
        p["conv"]["kernel"] = p["conv"]["kernel"].at[..., 1].set(0.0)
        p["conv"]["bias"] = p["conv"]["bias"].at[1].set(0.0)
        p["bn"]["scale"] = p["bn"]["scale"].at[1].set(0.0)
        p["bn"]["bias"] = p["bn"]["bias"].at[1].set(0.0)
        rows = np.arange(4) * 4 + 1  # Flax flatten: (h * W + w) * C + c
        p["fc"]["kernel"] = p["fc"]["kernel"].at[rows].set(0.0)
        p["fc"]["kernel"] = p["fc"]["kernel"].at[:, 2].set(0.0)
        p["out"]["kernel"] = p["out"]["kernel"].at[2].set(0.0)
    return p


CONV_GROUP = G(
    "conv_out",
    (
        M("conv/kernel", -1),
        M("conv/bias", 0),
        M("bn/scale", 0),
        M("bn/bias", 0),
        M("fc/kernel", 0, outer=4),  # the next layer's input channel, after the flatten
    ),
)
FC_GROUP = G("fc_out", (M("fc/kernel", 1), M("out/kernel", 0)))


def _zeros(params):
    return jax.tree.map(jnp.zeros_like, params)


def _safe_norm(sq):
    """sqrt with gradient 0 at 0: the documented subgradient of the group lasso."""
    nz = sq > 0
    return jnp.where(nz, jnp.sqrt(jnp.where(nz, sq, 1.0)), 0.0)


def _assert_close(a, b, rtol=1e-5, atol=1e-6):
    chex.assert_trees_all_close(a, b, rtol=rtol, atol=atol)
    for x in jax.tree.leaves(a):
        assert not np.any(np.isnan(np.asarray(x)))


# --- coupled: equal to jax.grad of the documented penalty -----------------------------


def test_add_l1_equals_grad_and_zero_subgradient():
    params = _params()
    mask = {"conv": {"kernel": True, "bias": False}, "bn": True, "fc": True, "out": False}
    strength = 0.3

    def penalty(p):
        sel = [p["conv"]["kernel"], p["bn"]["scale"], p["bn"]["bias"], p["fc"]["kernel"]]
        return strength * sum(jnp.sum(jnp.abs(x)) for x in sel)

    expected = jax.grad(penalty)(params)
    tx = jaxprune.add_l1(strength, prunable=mask)
    got, state = jax.jit(tx.update)(_zeros(params), tx.init(params), params)
    # jax.grad(abs)(0) is 1; the documented subgradient at 0 is sign(0) = 0.
    expected = jax.tree.map(lambda e, p: jnp.where(p == 0, 0.0, e), expected, params)
    _assert_close(got, expected)
    assert got["fc"]["bias"] is None and int(state.count) == 1


@pytest.mark.parametrize("weighting", ["none", "sqrt_size", lambda n: 1.0 / n])
def test_add_group_lasso_explicit_groups_equals_grad(weighting):
    params = _params()
    strength = 0.2
    sizes = {"conv_out": 3 * 3 * 2 + 1 + 1 + 1 + 4 * 5, "fc_out": 16 + 3}

    def w(name):
        if weighting == "none":
            return 1.0
        if weighting == "sqrt_size":
            return float(np.sqrt(sizes[name]))
        return weighting(sizes[name])

    def penalty(p):
        sq = jaxprune.group_scores(p, [CONV_GROUP, FC_GROUP], reduction="sq")
        return strength * sum(w(k) * jnp.sum(_safe_norm(v)) for k, v in sq.items())

    expected = jax.grad(penalty)(params)
    tx = jaxprune.add_group_lasso(strength, [CONV_GROUP, FC_GROUP], weighting=weighting)
    got, _ = jax.jit(tx.update)(_zeros(params), tx.init(params), params)
    _assert_close(got, expected)
    # Zero groups get a zero subgradient, not NaN.
    np.testing.assert_array_equal(got["bn"]["scale"][1], 0.0)
    np.testing.assert_array_equal(got["out"]["kernel"][2], 0.0)


@pytest.mark.parametrize(
    "granularity, axes",
    [
        (jaxprune.FILTER, {"conv": (0, 1, 2), "dense": (0,)}),  # filters / Dense columns
        (jaxprune.INPUT_CHANNEL, {"conv": (0, 1, 3), "dense": (1,)}),  # channels / rows
        (jaxprune.FILTER_SHAPE, {"conv": (3,), "dense": (1,)}),  # shape-wise (Lebedev)
        (jaxprune.LAYER, {"conv": (0, 1, 2, 3), "dense": (0, 1)}),  # depth-wise
    ],
)
def test_add_group_lasso_ssl_granularities_equal_grad(granularity, axes):
    params = _params()
    strength = 0.1

    def penalty(p):
        out = 0.0
        for key, kind in (("conv", "conv"), ("fc", "dense"), ("out", "dense")):
            x = p[key]["kernel"]
            sq = jnp.sum(jnp.square(x), axis=axes[kind])
            size = np.prod([x.shape[a] for a in axes[kind]])
            out += strength * np.sqrt(size) * jnp.sum(_safe_norm(sq))
        return out

    expected = jax.grad(penalty)(params)
    tx = jaxprune.add_group_lasso(strength, granularity, weighting="sqrt_size")
    got, _ = tx.update(_zeros(params), tx.init(params), params)
    _assert_close(got, expected)


def test_add_gate_penalty_equals_grad():
    k1, k2 = jax.random.split(jax.random.key(3))
    params = {
        "g1": {"l0_log_alpha": jax.random.normal(k1, (6,)) * 3},
        "g2": {"bernoulli_gate": jax.random.uniform(k2, (2, 3))},
        "fc": {"kernel": jnp.ones((6, 2))},
    }
    s, b = 0.7, 0.4
    shift = (2 / 3) * np.log(0.1 / 1.1)

    def penalty(p):
        l0 = 784.0 * jnp.sum(jax.nn.sigmoid(p["g1"]["l0_log_alpha"] - shift))
        g = p["g2"]["bernoulli_gate"]
        return s * l0 + s * 2.0 * jnp.sum(g) + b * 2.0 * jnp.sum(g * (1 - g))

    expected = jax.grad(penalty)(params)
    tx = jaxprune.add_gate_penalty(s, bimodal=b, weight={"g1": 784.0, "g2": 2.0, "fc": 0.0})
    got, _ = jax.jit(tx.update)(_zeros(params), tx.init(params), params)
    _assert_close(got, expected)
    np.testing.assert_array_equal(got["fc"]["kernel"], 0.0)  # not a gate: untouched
    hc = jaxprune.hard_concrete_prob_nonzero(params["g1"]["l0_log_alpha"])
    np.testing.assert_allclose(
        jnp.sum(hc), jnp.sum(jax.nn.sigmoid(params["g1"]["l0_log_alpha"] - shift)), rtol=1e-6
    )


# --- decoupled: closed-form proximal operators, exact zeros ----------------------------


def test_prox_l1_closed_form_and_exact_zeros():
    params = {"w": jnp.array([0.3, -0.04, 0.06, -2.0, 0.0]), "b": jnp.ones(2)}
    grads = {"w": jnp.array([1.0, 0.0, 0.0, -1.0, 0.5]), "b": jnp.ones(2)}
    lr, lam = 0.1, 0.5
    tx = optax.chain(optax.sgd(lr), jaxprune.prox_l1(lam, lr, prunable={"w": True, "b": False}))
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    x = np.asarray(params["w"]) - lr * np.asarray(grads["w"])
    expected = np.sign(x) * np.maximum(np.abs(x) - lr * lam, 0.0)
    np.testing.assert_allclose(new["w"], expected, rtol=1e-6, atol=1e-7)
    assert np.all(np.asarray(new["w"])[expected == 0] == 0.0)  # exact zeros
    np.testing.assert_allclose(new["b"], 0.9, rtol=1e-6)


def _block_prox(x, t):
    n = np.sqrt(np.sum(x * x))
    return np.zeros_like(x) if n <= t else (1 - t / n) * x


def test_prox_group_lasso_granularity_closed_form():
    params = {"k": jnp.array([[3.0, 0.01, 1.0], [4.0, 0.02, -1.0]]), "b": jnp.ones(3)}
    tx = jaxprune.prox_group_lasso(0.5, 2.0, jaxprune.FILTER)  # t = 1 per column
    updates, _ = tx.update(_zeros(params), tx.init(params), params)
    new = np.asarray(optax.apply_updates(params, updates)["k"])
    x = np.asarray(params["k"])
    expected = np.stack([_block_prox(x[:, j], 1.0) for j in range(3)], axis=1)
    np.testing.assert_allclose(new, expected, rtol=1e-6)
    assert np.all(new[:, 1] == 0.0)  # ||x|| <= t: exactly zero
    np.testing.assert_array_equal(optax.apply_updates(params, updates)["b"], 1.0)


def test_prox_group_lasso_explicit_groups_closed_form():
    params = _params(zero_groups=False)
    small = lambda x, idx: x.at[idx].multiply(0.05)  # channel 2: small in every member
    params["conv"]["kernel"] = small(params["conv"]["kernel"], (..., 2))
    for key in ("conv/bias", "bn/scale", "bn/bias"):
        a, b = key.split("/")
        params[a][b] = small(params[a][b], 2)
    params["fc"]["kernel"] = small(params["fc"]["kernel"], np.arange(4) * 4 + 2)
    grads = jax.tree.map(lambda x: 0.1 * jnp.ones_like(x), params)
    lr, lam = 0.5, 3.0
    groups = [CONV_GROUP, G("out_in", (M("out/kernel", 1),))]
    tx = optax.chain(optax.sgd(lr), jaxprune.prox_group_lasso(lam, lr, groups))
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    x = jax.tree.map(lambda p, g: np.asarray(p - lr * g), params, grads)
    t = lr * lam
    # Reference: gather each channel of the conv group from all members, shrink, scatter back.
    ref = jax.tree.map(np.array, x)
    fc_rows = lambda c: np.arange(4) * 4 + c
    for c in range(4):
        parts = [
            x["conv"]["kernel"][..., c].ravel(),
            x["conv"]["bias"][c : c + 1],
            x["bn"]["scale"][c : c + 1],
            x["bn"]["bias"][c : c + 1],
            x["fc"]["kernel"][fc_rows(c)].ravel(),
        ]
        v = _block_prox(np.concatenate(parts), t)
        sizes = np.cumsum([p.size for p in parts])[:-1]
        a, b_, s, bb, f = np.split(v, sizes)
        ref["conv"]["kernel"][..., c] = a.reshape(3, 3, 2)
        ref["conv"]["bias"][c], ref["bn"]["scale"][c], ref["bn"]["bias"][c] = b_[0], s[0], bb[0]
        ref["fc"]["kernel"][fc_rows(c)] = f.reshape(4, 5)
    for j in range(3):
        ref["out"]["kernel"][:, j] = _block_prox(x["out"]["kernel"][:, j], t)
    _assert_close(new, ref, rtol=1e-5, atol=1e-6)
    dead = [c for c in range(4) if np.all(ref["conv"]["bias"][c] == 0)]
    assert dead, "the test should zero at least one channel"
    for c in dead:
        assert np.all(np.asarray(new["conv"]["kernel"])[..., c] == 0.0)
        assert np.all(np.asarray(new["fc"]["kernel"])[fc_rows(c)] == 0.0)


def test_prox_group_lasso_rejects_overlapping_groups():
    params = _params()
    rows = G("fc_rows", (M("fc/kernel", 0),))
    with pytest.raises(ValueError, match=r"fc/kernel.*overlap|overlap.*fc/kernel"):
        jaxprune.prox_group_lasso(1.0, 0.1, [rows, FC_GROUP]).init(params)
    with pytest.raises(ValueError, match="share entries of 'fc/kernel'"):
        jaxprune.prox_group_lasso(1.0, 0.1, [rows, CONV_GROUP]).init(params)


def test_zero_small_clip_and_prox_gates():
    params = {
        "w": jnp.array([5e-5, -2e-5, 0.5]),
        "g": {"l0_log_alpha": jnp.array([-4.5, 0.0, 4.5]), "bernoulli_gate": jnp.array([0.1, 0.7])},
    }
    updates = {
        "w": jnp.zeros(3),
        "g": {"l0_log_alpha": jnp.array([-1.0, 0.5, 1.0]), "bernoulli_gate": jnp.array([0.0, 0.5])},
    }
    tx = jaxprune.zero_small(1e-4, prunable={"w": True, "g": False})
    u, _ = tx.update(updates, tx.init(params), params)
    np.testing.assert_array_equal(optax.apply_updates(params, u)["w"], [0.0, 0.0, 0.5])

    tx = jaxprune.clip_gates()
    u, _ = tx.update(updates, tx.init(params), params)
    new = optax.apply_updates(params, u)["g"]
    lo, hi = np.log(0.01), np.log(100.0)
    np.testing.assert_allclose(new["l0_log_alpha"], [lo, 0.5, hi], rtol=1e-6)
    np.testing.assert_allclose(new["bernoulli_gate"], [0.1, 1.0], rtol=1e-6)

    eta, s, b = 0.5, 0.3, 0.2
    tx = jaxprune.prox_gates(s, eta, bimodal=b)
    u, _ = tx.update(updates, tx.init(params), params)
    new = optax.apply_updates(params, u)["g"]
    la = np.asarray(params["g"]["l0_log_alpha"])
    prob = 1 / (1 + np.exp(-(la - (2 / 3) * np.log(0.1 / 1.1))))
    x = la + np.asarray(updates["g"]["l0_log_alpha"]) - eta * s * prob * (1 - prob)
    np.testing.assert_allclose(new["l0_log_alpha"], np.clip(x, lo, hi), rtol=1e-5)
    g = np.asarray(params["g"]["bernoulli_gate"])
    x = g + np.asarray(updates["g"]["bernoulli_gate"]) - eta * b * (1 - 2 * g) - eta * s
    np.testing.assert_allclose(new["bernoulli_gate"], np.clip(x, 0, 1), rtol=1e-5, atol=1e-7)
    assert float(new["bernoulli_gate"][0]) == 0.0  # exact zero


# --- schedules, jit, no retracing, abstract init ----------------------------------------


_only_bn = {"conv": False, "bn": True, "fc": False, "out": False}

ALL = {
    "add_l1": lambda s: jaxprune.add_l1(s),
    "add_group_lasso": lambda s: jaxprune.add_group_lasso(s, [CONV_GROUP, FC_GROUP]),
    "add_gate_penalty": lambda s: jaxprune.add_gate_penalty(s, prunable=_only_bn, kind="bernoulli"),
    "prox_l1": lambda s: jaxprune.prox_l1(s, 0.1),
    "prox_group_lasso": lambda s: jaxprune.prox_group_lasso(s, 0.1, jaxprune.FILTER),
    "prox_gates": lambda s: jaxprune.prox_gates(s, 0.1, prunable=_only_bn, kind="bernoulli"),
    "zero_small": lambda s: jaxprune.zero_small(s),
}


@pytest.mark.parametrize("name", sorted(ALL))
def test_schedule_read_from_count_without_retracing(name):
    params = _params()
    schedule = optax.linear_schedule(0.0, 0.5, 4)
    tx = ALL[name](schedule)
    fixed = [ALL[name](float(schedule(i))) for i in range(5)]

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(p, s):
        u, s = tx.update(jax.tree.map(lambda x: 0.01 * jnp.ones_like(x), p), s, p)
        return optax.apply_updates(p, u), s

    state = tx.init(params)
    p_sched = params
    for i in range(5):
        want, _ = fixed[i].update(
            jax.tree.map(lambda x: 0.01 * jnp.ones_like(x), p_sched), fixed[i].init(params), p_sched
        )
        want = optax.apply_updates(p_sched, want)
        p_sched, state = step(p_sched, state)
        _assert_close(p_sched, want)
    assert int(state.count) == 5
    chex.assert_trees_all_equal_shapes_and_dtypes(tx.init(params), state)
    abstract = jax.eval_shape(tx.init, jax.eval_shape(lambda: params))
    chex.assert_trees_all_equal_shapes_and_dtypes(abstract, state)


def test_inject_hyperparams_changes_strength_without_recompiling():
    params = _params()
    tx = optax.inject_hyperparams(jaxprune.add_group_lasso, static_args=("groups", "weighting"))(
        strength=0.1, groups=[CONV_GROUP]
    )

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(p, s):
        return tx.update(_zeros(p), s, p)

    state = tx.init(params)
    u1, state = step(params, state)
    state.hyperparams["strength"] = jnp.asarray(0.2, jnp.float32)
    u2, state = step(params, state)
    chex.assert_trees_all_close(jax.tree.map(lambda a: 2 * a, u1), u2, rtol=1e-6)


# --- bad input -----------------------------------------------------------------------------


def test_errors_name_the_argument_or_path():
    params = _params()
    with pytest.raises(ValueError, match="`strength` must be finite and >= 0"):
        jaxprune.add_l1(-1.0)
    with pytest.raises(ValueError, match="`learning_rate`"):
        jaxprune.prox_l1(0.1, -0.1)
    with pytest.raises(ValueError, match=r"\['nope'\] that match no parameter path"):
        jaxprune.add_l1(0.1, prunable={"nope": True}).init(params)
    with pytest.raises(TypeError, match="one Python bool per leaf.*'bn/bias'"):
        jaxprune.add_l1(
            0.1, prunable={"conv": True, "bn": jnp.ones(4, bool), "fc": 0, "out": 0}
        ).init(params)
    with pytest.raises(ValueError, match="no parameter at path 'missing/kernel'"):
        jaxprune.add_group_lasso(0.1, [G("g", (M("missing/kernel", 0),))]).init(params)
    with pytest.raises(TypeError, match="`groups` is required"):
        jaxprune.add_group_lasso(0.1, None)
    with pytest.raises(ValueError, match="N:M"):
        jaxprune.add_group_lasso(0.1, jaxprune.n_of_m(2, 4)).init(params)
    with pytest.raises(ValueError, match="`weighting`"):
        jaxprune.add_group_lasso(0.1, jaxprune.FILTER, weighting="size")
    with pytest.raises(ValueError, match="cannot tell the gate kind of 'bn/scale'"):
        jaxprune.add_gate_penalty(
            0.1, prunable={**_only_bn, "bn": {"scale": True, "bias": False}}
        ).init(params)
    with pytest.raises(ValueError, match="`kind`"):
        jaxprune.prox_gates(0.1, 0.1, kind="l0")
    with pytest.raises(ValueError, match="pass `params`"):
        tx = jaxprune.prox_l1(0.1, 0.1)
        tx.update(params, tx.init(params))


# --- optax_sparsity's penalty keywords ----------------------------------------------------


def _net_params(seed=0):
    p = _params(seed, zero_groups=False)
    p["gate"] = {
        "l0_log_alpha": jnp.linspace(-3.0, 3.0, 16),
        "bernoulli_gate": jnp.full(5, 0.6, jnp.float32),
    }
    return p


def _grads(params, i):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.fold_in(jax.random.key(7), i), len(leaves))
    return jax.tree.unflatten(
        treedef, [0.5 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    )


def test_optax_sparsity_keywords_equal_the_explicit_chain():
    params = _net_params()
    lr = optax.exponential_decay(0.2, 3, 0.5)
    sched = jaxprune.schedules.polynomial(0.5, 2, 3, frequency=2)
    common = dict(granularity=jaxprune.FILTER, prunable=jaxprune.default_prunable, update_every=2)
    one_line = optax.chain(
        optax.sgd(lr, momentum=0.9),
        jaxprune.optax_sparsity(
            sched,
            **common,
            l1=0.01,
            group_lasso=optax.linear_schedule(0.0, 0.5, 5),
            slimming=2.0,
            gates=0.05,
            learning_rate=lr,
        ),
    )
    explicit = optax.chain(
        optax.sgd(lr, momentum=0.9),
        jaxprune.prox_l1(0.01, lr, prunable=jaxprune.default_prunable),
        jaxprune.prox_group_lasso(
            optax.linear_schedule(0.0, 0.5, 5),
            lr,
            jaxprune.FILTER,
            prunable=jaxprune.default_prunable,
        ),
        jaxprune.prox_l1(2.0, lr, prunable=jaxprune.scale_labels),
        jaxprune.prox_gates(0.05, lr),
        jaxprune.optax_sparsity(sched, **common),
    )
    runs = []
    for tx in (one_line, explicit):
        chex.clear_trace_counter()  # two closures of the same code share a counter

        @jax.jit
        @chex.assert_max_traces(n=1)
        def step(p, s, i, tx=tx):
            u, s = tx.update(_grads(p, i), s, p)
            return optax.apply_updates(p, u), s

        p, s = params, tx.init(params)
        for i in range(5):
            p, s = step(p, s, jnp.int32(i))
        runs.append((p, jaxprune.masks(s)))
    (p1, m1), (p2, m2) = runs
    chex.assert_trees_all_equal(p1, p2)  # bit for bit
    chex.assert_trees_all_equal(m1, m2)
    assert np.any(np.asarray(p1["bn"]["scale"]) == 0.0)  # the proximal steps made exact zeros
    for path, x in jaxprune._src.base.leaves_with_paths(p1):
        if x is not None:
            assert np.all(np.isfinite(np.asarray(x))), path


def test_optax_sparsity_keyword_errors():
    with pytest.raises(ValueError, match="need its step size: pass `learning_rate=`"):
        jaxprune.optax_sparsity(0.5, l1=1e-4)
    with pytest.raises(ValueError, match="`learning_rate` is only used by the penalty keywords"):
        jaxprune.optax_sparsity(0.5, learning_rate=0.1)
    with pytest.raises(ValueError, match="`slimming_prunable` needs `slimming=`"):
        jaxprune.optax_sparsity(0.5, l1=1e-4, learning_rate=0.1, slimming_prunable={})


def test_optax_sparsity_keywords_inject_hyperparams():
    params = _net_params()
    static = (
        "score_fn granularity reduction distribution prunable update_when min_keep "
        "straight_through select_fn method group_lasso_groups slimming_prunable"
    ).split()
    tx = optax.chain(
        optax.sgd(0.1),
        optax.inject_hyperparams(jaxprune.optax_sparsity, static_args=static)(
            sparsity=0.5, slimming=0.0, learning_rate=0.1
        ),
    )

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(p, s):
        u, s = tx.update(_zeros(p), s, p)
        return optax.apply_updates(p, u), s

    state = tx.init(params)
    p1, state = step(params, state)
    np.testing.assert_array_equal(p1["bn"]["scale"], params["bn"]["scale"])
    state[1].hyperparams["slimming"] = jnp.asarray(1.0, jnp.float32)
    p2, state = step(p1, state)
    x = np.asarray(p1["bn"]["scale"])
    np.testing.assert_allclose(
        p2["bn"]["scale"], np.sign(x) * np.maximum(np.abs(x) - 0.1, 0), rtol=1e-6
    )


def test_subgradient_and_proximal_find_the_same_zero_groups():
    """SSL's toy check: both forms of group lasso zero the same groups of a quadratic."""
    target = jnp.array([[2.0, 0.05, 1.0, -0.08], [1.0, 0.05, -1.5, 0.02]])
    loss = lambda p: 0.5 * jnp.sum(jnp.square(p["w"] - target))
    lam = 0.2
    results = []
    for tx in (
        optax.chain(
            jaxprune.add_group_lasso(lam, jaxprune.FILTER),
            optax.sgd(optax.exponential_decay(0.1, 100, 0.5)),
            jaxprune.zero_small(1e-3),
        ),
        optax.chain(optax.sgd(0.1), jaxprune.prox_group_lasso(lam, 0.1, jaxprune.FILTER)),
    ):
        p = {"w": jnp.ones_like(target)}
        s = tx.init(p)
        step = jax.jit(lambda p, s, tx=tx: tx.update(jax.grad(loss)(p), s, p))
        for _ in range(600):
            u, s = step(p, s)
            p = optax.apply_updates(p, u)
        results.append(np.asarray(jnp.linalg.norm(p["w"], axis=0)) == 0)
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[1], [False, True, False, True])


# --- sharded parameters (8 fake CPU devices, see conftest.py) --------------------------


@pytest.mark.parametrize("axis_type", ["explicit", "auto"])
def test_penalty_chain_on_sharded_params_equals_single_device(axis_type):
    """Group lasso over a conv -> BN -> flatten -> Dense group, L1, prox and zeroing on params
    sharded over 8 devices (the flatten's strided rows cut across shards) give the
    single-device result, the new params keep their (explicit) sharding, and selection from
    the sharded result equals selection on one device."""
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    k = jax.random.split(jax.random.key(3), 6)
    params = {
        "conv": {"kernel": jax.random.normal(k[0], (3, 3, 2, 8)), "bias": jnp.zeros(8)},
        "bn": {"scale": jax.random.normal(k[2], (8,)), "bias": jax.random.normal(k[3], (8,))},
        "fc": {"kernel": jax.random.normal(k[4], (2 * 2 * 8, 16))},
        "out": {"kernel": jax.random.normal(k[5], (16, 8))},
    }
    params["conv"]["kernel"] = params["conv"]["kernel"].at[..., 3].set(0.0)  # a zero channel
    specs = {
        "conv": {"kernel": P(None, None, None, "x"), "bias": P("x")},
        "bn": {"scale": P("x"), "bias": P()},
        "fc": {"kernel": P("x", None)},
        "out": {"kernel": P(None, "x")},
    }
    conv, fc = CONV_GROUP, FC_GROUP  # the same layout as above, with 8 channels instead of 4
    bn_only = {
        "conv": {"kernel": False, "bias": False},
        "bn": {"scale": True, "bias": False},
        "fc": {"kernel": False},
        "out": {"kernel": False},
    }
    tx = optax.chain(
        jaxprune.add_group_lasso(0.05, [conv, fc], weighting="sqrt_size"),
        jaxprune.add_l1(optax.linear_schedule(0.0, 0.02, 3), prunable=bn_only),
        optax.sgd(0.1, momentum=0.9),
        jaxprune.prox_group_lasso(0.5, 0.1, [conv]),  # prox groups must not overlap
        jaxprune.zero_small(1e-3),
    )

    def run(p):
        state = jax.jit(tx.init)(p)
        step = jax.jit(
            lambda p, s: (lambda u, s: (optax.apply_updates(p, u), s))(
                *tx.update(jax.tree.map(lambda x: 0.1 * x, p), s, p)
            )
        )
        for _ in range(3):
            p, state = step(p, state)
        return p

    ref = run(params)
    mesh = jax.make_mesh(
        (8,), ("x",), axis_types=(AxisType.Explicit if axis_type == "explicit" else AxisType.Auto,)
    )
    shardings = jax.tree.map(
        lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda s: isinstance(s, P)
    )
    with jax.set_mesh(mesh):
        got = run(jax.device_put(params, shardings))
    chex.assert_trees_all_close(got, ref, rtol=1e-5, atol=1e-6)
    if axis_type == "explicit":  # (with Auto axes the compiler picks the output shardings)
        bad = [
            (jax.tree_util.keystr(path), g.sharding.spec, s.spec)
            for (path, g), s in zip(
                jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(shardings), strict=True
            )
            if not g.sharding.is_equivalent_to(s, g.ndim)
        ]
        assert not bad, bad

    # Selection (learned sparsity, structured criteria) reads the sharded params like the
    # single-device ones.
    def select(p):
        return (
            jaxprune.group_norm_masks(p, [conv, fc], 2.0, min_keep=1).group_masks,
            jaxprune.slimming_masks(p, [conv], 0.5).group_masks,
            jaxprune.importance.group_masks(
                jaxprune.group_scores(p, [conv, fc], reduction="l2"),
                [conv, fc],
                p,
                0.5,
                scope="global",
                max_sparsity=0.6,
            ),
        )

    with jax.set_mesh(mesh):
        got_sel = jax.jit(select)(jax.device_put(ref, shardings))
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, got_sel), select(ref))
    # The penalties did something: the zero channel stays exactly zero, others shrank.
    np.testing.assert_array_equal(np.asarray(got["conv"]["kernel"])[..., 3], 0.0)
    assert float(jnp.sum(jnp.abs(got["bn"]["scale"]))) < float(
        jnp.sum(jnp.abs(params["bn"]["scale"]))
    )


# --- optax_sparsity is a chain of the proximal transforms and the masking transform ---


def test_optax_sparsity_penalty_keywords_give_the_chain_state():
    params = _net_params()
    tx = jaxprune.optax_sparsity(
        0.5,
        prunable=jaxprune.default_prunable,
        l1=0.01,
        slimming=2.0,
        learning_rate=0.1,
    )
    state = tx.init(params)
    assert isinstance(state, tuple) and len(state) == 3
    assert [type(s) for s in state] == [
        jaxprune.ProxL1State,
        jaxprune.ProxL1State,
        jaxprune.SparsityState,
    ]
    chex.assert_trees_all_equal(jaxprune.masks(state), state[-1].masks)
    plain = jaxprune.optax_sparsity(0.5, prunable=jaxprune.default_prunable)
    assert isinstance(plain.init(params), jaxprune.SparsityState)


def test_group_lasso_refuses_prunable_with_explicit_groups():
    params = {"a": jnp.ones((3, 4))}
    groups = [jaxprune.Group("h", (jaxprune.Member("a", 1),))]
    with pytest.raises(ValueError, match="`prunable` applies to a granularity"):
        jaxprune.add_group_lasso(0.1, groups, prunable={"a": True})
    with pytest.raises(ValueError, match="`prunable` applies to a granularity"):
        jaxprune.prox_group_lasso(0.1, 0.1, groups, prunable={"a": True})
    with pytest.raises(ValueError, match="`weighting` must be 'none', 'sqrt_size'"):
        jaxprune.add_group_lasso(0.1, groups, weighting="sqrt")
    tx = jaxprune.add_group_lasso(1.0, groups, weighting=lambda n: -1.0)
    with pytest.raises(ValueError, match=r"`weighting\(3\)` returned -1.0"):
        tx.update({"a": jnp.ones((3, 4))}, tx.init(params), params)


@pytest.mark.standard_dtypes  # adamw
def test_nnx_optimizer_with_gate_penalties_and_weight_decay_mask():
    model = zoo.GatedNNX(nnx.Rngs(params=0, gates=1))
    x = jax.random.normal(jax.random.key(2), (32, 6))
    y = jnp.arange(32) % 3
    no_gates = jaxprune.nnx.mask_fn(model, jaxprune.nnx.GateParam, invert=True)
    tx = optax.chain(
        jaxprune.add_gate_penalty(0.5),
        jaxprune.add_l1(0.05, prunable=jaxprune.nnx.slimming_labels(model)),
        optax.adamw(1e-2, weight_decay=1e-1, mask=no_gates),
        jaxprune.clip_gates(),
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    la0 = np.asarray(model.gate_in.l0_log_alpha[...]).copy()

    @nnx.jit
    def step(model, optimizer):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    for _ in range(20):
        step(model, optimizer)
    la = np.asarray(model.gate_in.l0_log_alpha[...])
    assert np.mean(la) < np.mean(la0)  # the L0 penalty pushes gates off
    assert np.all(la >= np.log(0.01) - 1e-6)
    assert float(jnp.sum(model.cg.channel_gate[...])) < 8.0
