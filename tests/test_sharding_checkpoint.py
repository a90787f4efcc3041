"""Sharded parameters on 8 fake CPU devices, and orbax checkpoints of the optimizer state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxprune


def _params():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    return {
        "a": {"kernel": jax.random.normal(k1, (16, 64)), "bias": jnp.zeros(64)},
        "b": {"kernel": jax.random.normal(k2, (64, 32)), "bias": jnp.zeros(32)},
        "c": {"kernel": jax.random.normal(k3, (3, 3, 8, 16)), "bias": None},
    }


SPECS = {
    "a": {"kernel": P(None, "x"), "bias": P("x")},
    "b": {"kernel": P("x", None), "bias": P()},
    "c": {"kernel": P(None, None, None, "x"), "bias": None},
}


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
@pytest.mark.parametrize("distribution", ["uniform", "global"])
@pytest.mark.parametrize("granularity", ["unstructured", "filter"])
def test_masks_follow_param_sharding_and_equal_single_device(axis_type, distribution, granularity):
    assert jax.device_count() == 8
    params = _params()
    tx = jaxprune.optax_sparsity(
        0.7,
        distribution=distribution,
        granularity=granularity,
        prunable=jaxprune.default_prunable,
        update_every=1,
    )
    _, ref_state = jax.jit(tx.update)(params, tx.init(params), params)

    mesh = jax.make_mesh((8,), ("x",), axis_types=(axis_type,))
    shardings = jax.tree.map(
        lambda s: NamedSharding(mesh, s), SPECS, is_leaf=lambda s: isinstance(s, P)
    )
    with jax.set_mesh(mesh):
        sharded = jax.tree.map(
            lambda x, s: jax.device_put(x, s), params, shardings, is_leaf=lambda x: x is None
        )
        state = jax.jit(tx.init)(sharded)
        updates, state = jax.jit(tx.update)(sharded, state, sharded)
    masks = jaxprune.masks(state)
    ref = jaxprune.masks(ref_state)
    for path in ("a", "b", "c"):
        np.testing.assert_array_equal(np.asarray(masks[path]["kernel"]), ref[path]["kernel"])
    # Element masks carry the kernels' sharding.
    if granularity == "unstructured":
        for path in ("a", "b", "c"):
            m, p = masks[path]["kernel"], sharded[path]["kernel"]
            assert m.sharding.is_equivalent_to(p.sharding, p.ndim), path
    else:
        assert masks["a"]["kernel"].shape == (1, 64)
    # The updates (pruned entries -> -param) keep the params' sharding.
    assert updates["a"]["kernel"].sharding.is_equivalent_to(sharded["a"]["kernel"].sharding, 2)


@pytest.mark.standard_dtypes
def test_orbax_round_trip_and_bit_exact_resume(tmp_path):
    params = _params()
    schedule = jaxprune.schedules.polynomial(0.9, 0, 4, frequency=3)
    tx = optax.chain(optax.adamw(1e-2), jaxprune.optax_sparsity(schedule, update_every=3))

    @jax.jit
    def step(params, opt_state, i):
        grads = jax.tree.map(
            lambda x: jnp.sin(x * (i + 1.0)) if x is not None else None,
            params,
            is_leaf=lambda x: x is None,
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    state = {"params": params, "opt_state": tx.init(params)}
    for i in range(5):
        state["params"], state["opt_state"] = step(state["params"], state["opt_state"], i)

    ckptr = ocp.StandardCheckpointer()
    path = tmp_path / "ckpt"
    ckptr.save(path, state)
    ckptr.wait_until_finished()
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = ckptr.restore(path, target)
    ckptr.close()

    assert jax.tree.structure(restored, is_leaf=lambda x: x is None) == jax.tree.structure(
        state, is_leaf=lambda x: x is None
    )
    rmasks = jaxprune.masks(restored["opt_state"])
    assert rmasks["a"]["bias"] is None and rmasks["a"]["kernel"].dtype == jnp.bool_
    assert isinstance(restored["opt_state"][1], jaxprune.SparsityState)

    a, b = state, restored
    for i in range(5, 14):  # the last mask update (step 12) reaches 0.9
        a = dict(zip(("params", "opt_state"), step(a["params"], a["opt_state"], i)))
        b = dict(zip(("params", "opt_state"), step(b["params"], b["opt_state"], i)))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert int(jaxprune.masks(a["opt_state"])["b"]["kernel"].sum()) == 2048 - int(0.9 * 2048)
