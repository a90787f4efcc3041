"""Gate and scale leaf labels (`slimming_labels`, `gate_labels`) in Linen and NNX."""

import jax
import jax.numpy as jnp
import pytest
import zoo
from flax import nnx

import jaxprune
import jaxprune.linen
import jaxprune.nnx


def test_labels_find_batchnorm_scales_and_gates_in_both_frameworks():
    x = jnp.ones((2, 6))
    v = zoo.GatedLinen().init({"params": jax.random.key(0), "gates": jax.random.key(1)}, x)
    lin = jaxprune.linen.slimming_labels(v)
    model = zoo.GatedNNX(nnx.Rngs(0))
    nx = jaxprune.nnx.slimming_labels(model)
    for labels in (lin, nx):
        assert labels["bn1"]["scale"] is True and labels["ln"]["scale"] is False
        assert labels["cg"]["channel_gate"] is True and labels["fc1"]["kernel"] is False
        assert labels["bn1"]["bias"] is False and labels["gate_in"]["l0_log_alpha"] is False
    assert jaxprune.nnx.gate_labels(model) == jaxprune.gate_labels(
        nnx.to_pure_dict(nnx.state(model, nnx.Param))
    )
    assert jaxprune.gate_labels(v["params"], "hard_concrete")["gate_in"]["l0_log_alpha"] is True
    assert jaxprune.gate_labels(v["params"], "hard_concrete")["cg"]["channel_gate"] is False
    with pytest.raises(ValueError, match="'params' collection"):
        jaxprune.linen.slimming_labels(v["params"])
    with pytest.raises(TypeError, match="nnx.Variable subclasses"):
        jaxprune.nnx.labels(model, int)
