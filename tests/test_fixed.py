"""Fixed-mask retraining (`keep_masks`): pruned weights stay exactly zero under any optimizer."""

import jax
import jax.numpy as jnp
import optax
import pytest
import zoo

import jaxprune


@pytest.mark.standard_dtypes
@pytest.mark.parametrize("name", ["momentum", "adamw", "lion"])
def test_keep_masks_fixed_mask_retraining(name):
    params = zoo.conv_fc_params()
    masks = jaxprune.select.layerwise_topk(
        jaxprune.scores.magnitude(params),
        {"conv": {"kernel": 0.5, "bias": None}, "fc": {"kernel": 0.9, "bias": None}, "out": None},
    )
    tx = optax.chain(zoo.OPTIMIZERS[name](), jaxprune.keep_masks(masks))
    state = tx.init(params)
    step = jax.jit(lambda p, s, i: tx.update(zoo.random_grads(p, i), s, p))
    for i in range(5):
        updates, state = step(params, state, i)
        params = optax.apply_updates(params, updates)
        zoo.assert_pruned_are_zero(params, masks)
    assert jaxprune.masks(state)["out"]["kernel"] is None
    assert int(jaxprune.masks(state)["fc"]["kernel"].sum()) == 512 - int(0.9 * 512)
    with pytest.raises(ValueError, match="'fc/kernel'"):
        jaxprune.keep_masks({**masks, "fc": {"kernel": jnp.ones((3,), bool), "bias": None}}).init(
            params
        )
