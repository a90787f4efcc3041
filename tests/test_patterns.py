"""Hand-written groups (`channel_group`, `chain_groups`) equal the discovered ones."""

import jax
import jax.numpy as jnp
import pytest
import zoo  # tests/zoo.py (tests/ is on pytest's pythonpath)
from flax import nnx

import jaxprune


def _discover(model, shape):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    return variables, jaxprune.trace_groups(model.apply, variables, x).groups


def test_chain_groups_equal_discovery_mlp_lenet5_vgg():
    v, found = _discover(zoo.MLP(), (2, 5))
    assert jaxprune.chain_groups(v, ["fc1", "fc2", "head"]) == found
    v, found = _discover(zoo.LeNet5(), (1, 28, 28, 1))
    hand = jaxprune.chain_groups(v, ["conv1", "conv2", "fc1", "fc2"])
    assert hand == found
    assert hand[1].members[-1] == jaxprune.Member("params/fc1/kernel", 0, outer=16)
    v, found = _discover(zoo.VGG(), (1, 8, 8, 3))
    norms = {"c1": "c1_bn", "c2": "c2_bn", "c3": "c3_bn"}
    hand = jaxprune.chain_groups(v, ["c1", "c2", "c3", "fc", "head"], norms=norms)
    assert hand == found
    assert {m.path for m in hand[0].members} >= {"batch_stats/c1_bn/mean", "params/c1_bn/scale"}
    # The params subtree alone gives the params members of the same groups.
    params_only = jaxprune.chain_groups(v["params"], ["c1", "c2", "c3", "fc", "head"], norms=norms)
    assert [g.members for g in params_only] == [
        g.members for g in jaxprune.groups_under(found, "params")
    ]


def test_channel_group_residual_bottleneck_and_depthwise_equal_discovery():
    v, found = _discover(zoo.Residual(), (2, 6, 6, 3))
    hand = [
        jaxprune.channel_group(v, "a", "b"),
        jaxprune.channel_group(v, ["stem", "b"], ["a", "head"]),
    ]
    assert sorted(hand, key=lambda g: g.name) == sorted(found, key=lambda g: g.name)

    v, found = _discover(zoo.Bottleneck(), (2, 8, 8, 3))
    hand = [
        jaxprune.channel_group(v, "stem", ["c1", "proj"], norms="stem_bn"),
        jaxprune.channel_group(v, "c1", "c2", norms="c1_bn"),
        jaxprune.channel_group(v, "c2", "c3", norms="c2_bn"),
        jaxprune.channel_group(v, ["c3", "proj"], "head", norms=["c3_bn", "proj_bn"]),
    ]
    assert set(hand) == set(found)

    v, found = _discover(zoo.InvertedResidual(), (2, 8, 8, 3))
    hand = [
        jaxprune.channel_group(v, ["stem", "project"], ["expand", "head"]),
        jaxprune.channel_group(v, ["expand", "dw"], "project"),
    ]
    assert set(hand) == set(found)


def test_nnx_state_paths_and_shrink_with_hand_groups():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(3, 8, (3, 3), rngs=rngs)
            self.bn = nnx.BatchNorm(8, rngs=rngs)
            self.fc = nnx.Linear(6 * 6 * 8, 4, rngs=rngs)

        def __call__(self, x):
            x = nnx.relu(self.bn(self.conv(x)))
            return self.fc(x.reshape(x.shape[0], -1))

    net = Net(nnx.Rngs(0))
    net.eval()
    graphdef, state = nnx.split(net)
    x = jax.ShapeDtypeStruct((2, 6, 6, 3), jnp.float32)
    found = jaxprune.trace_groups(lambda s, x: nnx.merge(graphdef, s)(x), state, x).groups
    [hand] = jaxprune.chain_groups(state, ["conv", "fc"], norms={"conv": "bn"})
    assert [hand] == found
    keep = jnp.arange(8) % 2 == 0
    jaxprune.shrink_module(net, {hand.name: keep}, [hand])
    assert net.fc.in_features == 6 * 6 * 4 and net.bn.num_features == 4
    assert net(jnp.ones((2, 6, 6, 3))).shape == (2, 4)


def test_errors_name_the_module_or_path():
    p = {
        "conv": {"kernel": jnp.ones((3, 3, 1, 8)), "bias": jnp.ones(8)},
        "bn": {"scale": jnp.ones(6)},
        "fc": {"kernel": jnp.ones((20, 3))},
        "dw": {"kernel": jnp.ones((3, 3, 1, 8))},
    }
    with pytest.raises(ValueError, match="no leaves under module 'nope'"):
        jaxprune.channel_group(p, "nope", "fc")
    with pytest.raises(ValueError, match="20 input rows, not a multiple of the 8"):
        jaxprune.channel_group(p, "conv", "fc")
    with pytest.raises(ValueError, match=r"norm leaf 'bn/scale' has shape \(6,\)"):
        jaxprune.channel_group(p, "conv", norms="bn")
    with pytest.raises(ValueError, match="depthwise convolution"):
        jaxprune.channel_group(p, "conv", "dw")
    with pytest.raises(ValueError, match="producers disagree"):
        jaxprune.channel_group(p, ["conv", "fc"])
    with pytest.raises(ValueError, match="at least two"):
        jaxprune.chain_groups(p, ["conv"])
    with pytest.raises(ValueError, match=r"not in `layers`: \['bn'\]"):
        jaxprune.chain_groups(p, ["conv", "fc"], norms={"bn": "bn"})
    with pytest.raises(TypeError, match="non-empty strings"):
        jaxprune.channel_group(p, [3])
