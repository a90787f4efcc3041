"""MAC and parameter counting from the jaxpr (`count`)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
import zoo  # tests/zoo.py (tests/ is on pytest's pythonpath)

from jaxprune._src.flops import count


def test_count_lenet5_matches_hand_counts_and_xla():
    model = zoo.LeNet5()
    x = jnp.ones((1, 28, 28, 1))
    v = zoo.random_variables(model, x, seed=1)
    c = count(model.apply, v, x)
    assert c.total_params == 431_080
    # LeNet-5 as usually quoted, 2 FLOPs per MAC: conv1 576K, conv2 3.2M, fc1 800K, fc2 10K.
    flops = {k: 2 * n for k, n in c.macs.items()}
    assert flops == {
        "params/conv1": 576_000,
        "params/conv2": 3_200_000,
        "params/fc1": 800_000,
        "params/fc2": 10_000,
    }
    assert c.flops == 4_586_000
    xla = jax.jit(model.apply).lower(v, x).compile().cost_analysis()
    xla = xla[0] if isinstance(xla, list) else xla
    # XLA also counts 1 FLOP per bias add, ReLU and pooling comparison (3 per 2x2 window):
    extra = (24 * 24 * 20 + 8 * 8 * 50 + 500 + 10) + 500 + 3 * (12 * 12 * 20 + 4 * 4 * 50)
    assert xla["flops"] == pytest.approx(c.flops + extra, rel=1e-6)
    assert abs(xla["flops"] - c.flops) / xla["flops"] < 0.01


def test_count_after_shrinking_lenet5():
    x, _, _, _, _, small_vars, small, _ = zoo.prune_half(zoo.LeNet5(), (1, 28, 28, 1))
    c = count(small.apply, small_vars, x)
    conv1 = 24 * 24 * 10 * 25
    conv2 = 8 * 8 * 25 * 25 * 10
    fc1 = 400 * 250
    fc2 = 250 * 10
    assert c.macs == {
        "params/conv1": conv1,
        "params/conv2": conv2,
        "params/fc1": fc1,
        "params/fc2": fc2,
    }
    assert c.total_params == (25 * 10 + 10) + (250 * 25 + 25) + (400 * 250 + 250) + 2510


def test_count_depthwise_and_scan():

    dw = nn.Conv(6, (3, 3), feature_group_count=6, padding="VALID")
    x = jnp.ones((1, 5, 5, 6))
    v = jax.eval_shape(dw.init, jax.random.key(0), x)
    assert count(dw.apply, v, x).total_macs == 3 * 3 * 6 * 9

    def f(p, h):
        h, _ = jax.lax.scan(lambda c, _: (c @ p["w"], None), h, None, length=3)
        return h

    c = count(f, {"w": jnp.ones((4, 4))}, jnp.ones((2, 4)))
    assert c.macs == {"<other>": 3 * 2 * 4 * 4}
