"""Sparse training: static, SET, RigL (exact active counts, moment resets) and STE."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import linen, nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxprune

pytestmark = pytest.mark.standard_dtypes  # optax's adam bias correction mixes dtypes


def _params():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    return {
        "a": {"kernel": jax.random.normal(k1, (16, 64)), "bias": jnp.zeros(64)},
        "b": {"kernel": jax.random.normal(k2, (64, 32)), "bias": jnp.zeros(32)},
        "c": {"kernel": jax.random.normal(k3, (3, 3, 8, 16)), "bias": jnp.zeros(16)},
    }


def _grads(params, i):
    return jax.tree.map(lambda x: jnp.sin(x * 3.0 + i) + 0.1 * jnp.cos(i * x), params)


def _make_step(tx, rigl=True):
    @jax.jit
    def step(params, state, i):
        grads = _grads(params, i)
        kw = {"raw_grads": grads} if rigl else {}
        updates, state = tx.update(grads, state, params, **kw)
        return optax.apply_updates(params, updates), state

    return step


def _counts(masks):
    return {k: int(v["kernel"].sum()) for k, v in masks.items()}


@pytest.mark.parametrize(("method", "distribution"), [("set", "erk"), ("rigl", "uniform")])
def test_active_counts_exactly_constant_and_masks_change(method, distribution):
    params = _params()
    tx = jaxprune.sparse_training(
        optax.sgd(0.1),
        0.8,
        method=method,
        distribution=distribution,
        update_every=2,
        end_step=40,
        drop_fraction=0.5,
    )
    state = tx.init(params)
    params = jaxprune.apply_masks(params, jaxprune.masks(state))
    first = jaxprune.masks(state)
    ref = _counts(first)
    if distribution == "uniform":
        assert ref["a"] == 1024 - math.floor(0.8 * 1024)
    step = _make_step(tx, rigl=method == "rigl")
    for i in range(12):
        params, state = step(params, state, i)
        m = jaxprune.masks(state)
        assert _counts(m) == ref
        for k in ref:  # inactive weights are exactly zero
            assert not np.any(np.asarray(params[k]["kernel"])[~np.asarray(m[k]["kernel"])])
    assert not np.array_equal(np.asarray(m["a"]["kernel"]), np.asarray(first["a"]["kernel"]))
    assert m["a"]["bias"] is None


def test_static_mask_kept_exactly_and_compiles_once():
    params = _params()
    tx = jaxprune.sparse_training(optax.adam(1e-2), 0.9, method="static", distribution="erk")
    state = tx.init(params)
    first = jaxprune.masks(state)
    params = jaxprune.apply_masks(params, first)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state, i):
        updates, state = tx.update(_grads(params, i), state, params)
        return optax.apply_updates(params, updates), state

    for i in range(5):
        params, state = step(params, state, jnp.float32(i))
    for k in first:
        np.testing.assert_array_equal(jaxprune.masks(state)[k]["kernel"], first[k]["kernel"])
        assert not np.any(np.asarray(params[k]["kernel"])[~np.asarray(first[k]["kernel"])])


def test_rigl_compiles_once_over_update_and_plain_steps():
    params = _params()
    tx = jaxprune.sparse_training(optax.adam(1e-2), 0.9, update_every=2, end_step=10)
    state = tx.init(params)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state, i):
        g = _grads(params, i)
        updates, state = tx.update(g, state, params, raw_grads=g)
        return optax.apply_updates(params, updates), state

    for i in range(12):
        params, state = step(params, state, jnp.float32(i))
    assert int(state.count) == 12


@pytest.mark.parametrize(
    "inner",
    [optax.sgd(0.1, momentum=0.9), optax.adam(1e-2), optax.adamw(1e-2)],
    ids=["sgd_momentum", "adam", "adamw"],
)
@pytest.mark.parametrize("method", ["set", "rigl"])
def test_grown_weights_and_their_moments_start_at_zero(inner, method):
    params = _params()
    tx = jaxprune.sparse_training(
        inner,
        0.7,
        method=method,
        distribution="uniform",
        update_every=3,
        end_step=100,
        drop_fraction=0.3,
    )
    state = tx.init(params)
    params = jaxprune.apply_masks(params, jaxprune.masks(state))
    step = _make_step(tx, rigl=method == "rigl")
    for i in range(3):  # steps 0..2: moments fill up
        params, state = step(params, state, i)
    old = jaxprune.masks(state)
    params, state = step(params, state, 3)  # count 3: a mask update
    new = jaxprune.masks(state)
    moments = [
        leaf
        for leaf in jax.tree.leaves(state.inner_state)
        if isinstance(leaf, jax.Array) and leaf.ndim >= 2
    ]
    assert moments  # mu/nu/trace exist
    for k in old:
        o, n = np.asarray(old[k]["kernel"]), np.asarray(new[k]["kernel"])
        grown = n & ~o
        assert grown.sum() == (o & ~n).sum() > 0
        assert not np.any(np.asarray(params[k]["kernel"])[grown])
    flat_new = {k: np.asarray(new[k]["kernel"]) for k in new}
    flat_old = {k: np.asarray(old[k]["kernel"]) for k in old}
    for sub in jax.tree.leaves(
        state.inner_state, is_leaf=lambda x: isinstance(x, dict) and "a" in x
    ):
        if isinstance(sub, dict):
            for k in flat_new:
                grown = flat_new[k] & ~flat_old[k]
                assert not np.any(np.asarray(sub[k]["kernel"])[grown]), k


def test_drop_fraction_schedule_closed_form():
    f = jaxprune.drop_fraction_schedule(0.3, 1000)
    for t in (0, 1, 250, 500, 999, 1000, 5000):
        want = 0.15 * (1 + math.cos(math.pi * min(t, 1000) / 1000))
        np.testing.assert_allclose(float(f(t)), want, atol=1e-6)
    assert float(jaxprune.drop_fraction_schedule(0.2, 10, decay="constant")(7)) == pytest.approx(
        0.2
    )


def test_no_updates_after_end_step():
    params = _params()
    tx = jaxprune.sparse_training(optax.sgd(0.1), 0.8, method="set", update_every=1, end_step=4)
    state = tx.init(params)
    step = _make_step(tx, rigl=False)
    for i in range(4):
        params, state = step(params, state, i)
    frozen = jaxprune.masks(state)
    for i in range(4, 8):
        params, state = step(params, state, i)
    for k in frozen:
        np.testing.assert_array_equal(jaxprune.masks(state)[k]["kernel"], frozen[k]["kernel"])


def test_linen_and_nnx_params():
    model = linen.Sequential([linen.Dense(32), linen.relu, linen.Dense(10)])
    lparams = model.init(jax.random.key(0), jnp.ones((1, 16)))["params"]
    m = nnx.Sequential(nnx.Linear(16, 32, rngs=nnx.Rngs(0)), nnx.Linear(32, 10, rngs=nnx.Rngs(1)))
    nparams = nnx.state(m, nnx.Param)
    for params in (lparams, nparams):
        tx = jaxprune.sparse_training(optax.adam(1e-2), 0.5, update_every=1, end_step=10)
        state = tx.init(params)
        masks = jaxprune.masks(state)
        counts = [int(x.sum()) for x in jax.tree.leaves(masks)]

        step = _make_step(tx)
        for i in range(4):
            params, state = step(params, state, i)
        assert [int(x.sum()) for x in jax.tree.leaves(jaxprune.masks(state))] == counts


def test_under_multisteps():
    params = _params()
    tx = optax.MultiSteps(
        jaxprune.sparse_training(optax.adam(1e-2), 0.8, update_every=2, end_step=20), 2
    )
    state = tx.init(params)
    ref = _counts(jaxprune.masks(state))

    @jax.jit
    def step(params, state, i):
        g = _grads(params, i)
        updates, state = tx.update(g, state, params, raw_grads=g)
        return optax.apply_updates(params, updates), state

    for i in range(12):
        params, state = step(params, state, i)
    assert _counts(jaxprune.masks(state)) == ref
    assert int(state.inner_opt_state.count) == 6


def test_sharded_masks_equal_single_device():
    assert jax.device_count() == 8
    params = _params()
    tx = jaxprune.sparse_training(optax.adam(1e-2), 0.8, update_every=1, end_step=10)
    step = _make_step(tx)
    ref_p, ref_s = params, tx.init(params)
    for i in range(3):
        ref_p, ref_s = step(ref_p, ref_s, i)
    mesh = jax.make_mesh((8,), ("x",))
    specs = {
        "a": {"kernel": P(None, "x"), "bias": P("x")},
        "b": {"kernel": P("x", None), "bias": P()},
        "c": {"kernel": P(None, None, None, "x"), "bias": P("x")},
    }
    with jax.set_mesh(mesh):
        sharded = jax.tree.map(
            lambda x, s: jax.device_put(x, NamedSharding(mesh, s)),
            params,
            specs,
            is_leaf=lambda s: isinstance(s, P),
        )
        p, s = sharded, jax.jit(tx.init)(sharded)
        for i in range(3):
            p, s = step(p, s, i)
    for k in ref_p:
        np.testing.assert_array_equal(
            np.asarray(jaxprune.masks(s)[k]["kernel"]), jaxprune.masks(ref_s)[k]["kernel"]
        )


def test_orbax_resume_bit_exact(tmp_path):
    params = _params()
    tx = jaxprune.sparse_training(optax.adamw(1e-2), 0.8, method="set", update_every=2)
    step = _make_step(tx, rigl=False)
    state = {"params": params, "opt_state": tx.init(params)}
    for i in range(3):
        state["params"], state["opt_state"] = step(state["params"], state["opt_state"], i)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(tmp_path / "ckpt", state)
    ckptr.wait_until_finished()
    restored = ckptr.restore(
        tmp_path / "ckpt", jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    )
    ckptr.close()
    a, b = state, restored
    for i in range(3, 9):
        a = dict(zip(("params", "opt_state"), step(a["params"], a["opt_state"], i)))
        b = dict(zip(("params", "opt_state"), step(b["params"], b["opt_state"], i)))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_bad_inputs():
    params = _params()
    for f in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="drop_fraction"):
            jaxprune.sparse_training(optax.sgd(0.1), 0.5, drop_fraction=f)
    with pytest.raises(ValueError, match="method"):
        jaxprune.sparse_training(optax.sgd(0.1), 0.5, method="magic")
    tx = jaxprune.sparse_training(
        optax.sgd(0.1), 0.5, distribution=lambda p, s: jax.tree.map(lambda _: -0.5, p)
    )
    with pytest.raises(ValueError, match="more active|active weights"):
        tx.init(params)
    tx = jaxprune.sparse_training(optax.sgd(0.1), 0.5, method="rigl")
    state = tx.init(params)
    with pytest.raises(ValueError, match="raw_grads"):
        tx.update(params, state, params)


def test_ste_topk_and_n_of_m():
    w = {"k": jax.random.normal(jax.random.key(1), (8, 4)), "b": jnp.ones(4)}
    out = jaxprune.ste_topk(w, 0.75)
    assert int((out["k"] != 0).sum()) == 8
    np.testing.assert_array_equal(out["b"], w["b"])
    g = jax.grad(lambda p: (jaxprune.ste_topk(p, 0.75)["k"] * 2.0).sum())(w)
    np.testing.assert_array_equal(g["k"], jnp.full((8, 4), 2.0))
    g = jax.grad(lambda p: jaxprune.ste_topk(p, 0.75, decay=0.5)["k"].sum())(w)
    kept = np.asarray(out["k"] != 0)
    np.testing.assert_allclose(
        np.asarray(g["k"]), np.where(kept, 1.0, 1.0 + 0.5 * np.asarray(w["k"])), rtol=1e-6
    )
    nm = jaxprune.ste_n_of_m(w, 2, 4)["k"]
    assert np.all((np.asarray(nm) != 0).reshape(2, 4, 4).sum(axis=1) == 2)
    g = jax.jit(jax.grad(lambda p: jaxprune.ste_n_of_m(p, 2, 4)["k"].sum()))(w)
    np.testing.assert_array_equal(g["k"], jnp.ones((8, 4)))


def test_ste_topk_per_leaf_sparsity_tree():
    k = jax.random.split(jax.random.key(2), 2)
    w = {
        "a": {"kernel": jax.random.normal(k[0], (12, 10)), "bias": jnp.ones(10)},
        "b": {"kernel": jax.random.normal(k[1], (10, 3)), "bias": jnp.ones(3)},
    }
    erk = jaxprune.distributions.erk(w, 0.8)
    out = jax.jit(jaxprune.ste_topk)(w, erk)
    for name in ("a", "b"):
        n = w[name]["kernel"].size
        want = n - int(np.floor(erk[name]["kernel"] * n))
        assert int((out[name]["kernel"] != 0).sum()) == want
        # The kept entries are the largest by magnitude.
        a = np.abs(np.asarray(w[name]["kernel"])).ravel()
        kept = np.asarray(out[name]["kernel"] != 0).ravel()
        assert a[kept].min() > a[~kept].max()
        np.testing.assert_array_equal(out[name]["bias"], w[name]["bias"])  # rank 1: dense
    # A None sparsity leaves its leaf dense; a mismatched tree names the missing path.
    out = jaxprune.ste_topk(
        w, {"a": {"kernel": 0.5, "bias": None}, "b": {"kernel": None, "bias": None}}
    )
    np.testing.assert_array_equal(out["b"]["kernel"], w["b"]["kernel"])
    assert int((out["a"]["kernel"] != 0).sum()) == 60
    with pytest.raises(ValueError, match="sparsity"):
        jaxprune.ste_topk(w, {"a": {"kernel": 0.5}})
