"""In-place NNX surgery (`shrink_module`): shrunk modules equal masked ones, then train."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune
from jaxprune._src.flops import count
from jaxprune._src.trace import trace_groups


def _nnx_net():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv1 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
            self.bn1 = nnx.BatchNorm(8, use_running_average=True, rngs=rngs)
            self.dw = nnx.Conv(8, 16, (3, 3), feature_group_count=8, rngs=rngs)  # multiplier 2
            self.pw = nnx.Conv(16, 6, (1, 1), rngs=rngs)
            self.fc = nnx.Linear(6, 2, rngs=rngs)

        def __call__(self, x):
            h = nnx.relu(self.bn1(self.conv1(x)))
            h = nnx.relu(self.pw(nnx.relu(self.dw(h))))
            return self.fc(h.mean(axis=(1, 2)))

    net = Net(nnx.Rngs(0))
    rng = np.random.default_rng(4)
    # Positive BN statistics and non-zero biases so that a leak would show.
    for mod, names in ((net.bn1, ("scale", "bias", "mean", "var")), (net.conv1, ("bias",))):
        for n in names:
            v = getattr(mod, n)
            v.set_value(jnp.asarray(rng.uniform(0.5, 1.0, v.get_value().shape), jnp.float32))
    for mod in (net.dw, net.pw):
        mod.bias.set_value(
            jnp.asarray(rng.uniform(0.5, 1.0, mod.bias.get_value().shape), jnp.float32)
        )
    return net


@pytest.mark.standard_dtypes
def test_nnx_masked_equals_shrunk_in_place_then_train():
    from flax import nnx

    from jaxprune._src.shrink_nnx import shrink_module

    net = _nnx_net()
    x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 6, 6, 3)), jnp.float32)
    gd, state = nnx.split(net)
    found = trace_groups(lambda s, v: nnx.merge(gd, s)(v), state, x)
    members = {g.name: {(m.path, m.axis, m.inner) for m in g.members} for g in found.groups}
    assert members == {
        "conv1/kernel[3]": {
            ("conv1/kernel", 3, 1),
            ("conv1/bias", 0, 1),
            ("bn1/scale", 0, 1),
            ("bn1/bias", 0, 1),
            ("bn1/mean", 0, 1),
            ("bn1/var", 0, 1),
            ("dw/kernel", 3, 2),
            ("dw/bias", 0, 2),
            ("pw/kernel", 2, 2),
        },
        "pw/kernel[3]": {("pw/kernel", 3, 1), ("pw/bias", 0, 1), ("fc/kernel", 0, 1)},
    }
    gm = {
        "conv1/kernel[3]": np.array([1, 0, 1, 1, 0, 0, 1, 0], bool),
        "pw/kernel[3]": np.array([0, 1, 1, 0, 1, 0], bool),
    }
    masked = jaxprune.apply_masks(state, jaxprune.expand_group_masks(gm, found.groups, state))
    ref = nnx.merge(gd, masked)(x)
    assert float(jnp.max(jnp.abs(ref - net(x)))) > 1e-3
    shrink_module(net, gm, found.groups)
    np.testing.assert_allclose(net(x), ref, atol=1e-5, rtol=1e-5)
    assert (net.conv1.out_features, net.bn1.num_features) == (4, 4)
    assert (net.dw.in_features, net.dw.feature_group_count, net.dw.out_features) == (4, 4, 8)
    assert net.dw.kernel_shape == (3, 3, 1, 8)
    assert (net.pw.in_features, net.pw.out_features, net.fc.in_features) == (8, 3, 3)
    gd2, state2 = nnx.split(net)
    c = count(lambda s, v: nnx.merge(gd2, s)(v), state2, x)
    n = 2 * 6 * 6  # batch x SAME-padded output pixels
    assert c.macs == {"conv1": n * 4 * 27, "dw": n * 8 * 9, "pw": n * 3 * 8, "fc": 2 * 3 * 2}
    opt = nnx.Optimizer(net, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(model)
        opt.update(model, grads)
        return loss

    loss0 = step(net, opt)
    assert float(step(net, opt)) < float(loss0)


@pytest.mark.standard_dtypes
def test_nnx_grouped_conv_masked_equals_shrunk_in_place():
    from flax import nnx

    from jaxprune._src.shrink_nnx import shrink_module

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.pw = nnx.Conv(3, 8, (1, 1), rngs=rngs)
            self.g = nnx.Conv(8, 12, (3, 3), feature_group_count=4, rngs=rngs)
            self.out = nnx.Conv(12, 2, (1, 1), rngs=rngs)

        def __call__(self, x):
            return self.out(nnx.relu(self.g(nnx.relu(self.pw(x)))))

    net = Net(nnx.Rngs(0))
    for mod in (net.pw, net.g):
        mod.bias.set_value(jnp.linspace(0.5, 1.0, mod.bias.get_value().shape[0]))
    x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 5, 5, 3)), jnp.float32)
    gd, state = nnx.split(net)
    found = trace_groups(lambda s, v: nnx.merge(gd, s)(v), state, x)
    assert jaxprune.check_groups(found.groups, state) == {"pw/kernel[3]": 2, "g/kernel[3]": 3}
    gm = {"pw/kernel[3]": np.array([0, 1]), "g/kernel[3]": np.array([1, 0, 1])}
    gm = {k: v.astype(bool) for k, v in gm.items()}
    masked = jaxprune.apply_masks(state, jaxprune.expand_group_masks(gm, found.groups, state))
    ref = nnx.merge(gd, masked)(x)
    assert float(jnp.max(jnp.abs(ref - net(x)))) > 1e-3
    shrink_module(net, gm, found.groups)
    assert net.g.kernel_shape == (3, 3, 1, 8) and net.g.feature_group_count == 4
    assert (net.pw.out_features, net.g.in_features, net.out.in_features) == (4, 4, 8)
    np.testing.assert_allclose(net(x), ref, atol=1e-5, rtol=1e-5)


def test_shrink_module_updates_gate_features():
    """A shrunk ``HardConcreteGate`` reads its new width in the forward pass."""
    import jax
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.gate = jaxprune.nnx.HardConcreteGate(6, deterministic=True, rngs=rngs)
            self.fc = nnx.Linear(6, 4, rngs=rngs)

        def __call__(self, x):
            return self.fc(self.gate(x))

    m = Net(nnx.Rngs(0))
    keep = np.array([True, False, True, True, False, True])
    x = np.asarray(jax.random.normal(jax.random.key(1), (3, 6)))
    gated = np.asarray(m.gate(jnp.asarray(x)))  # x * z, deterministic gates
    kernel, bias = np.asarray(m.fc.kernel[...]), np.asarray(m.fc.bias[...])
    expected = gated[:, keep] @ kernel[keep] + bias
    group = jaxprune.Group(
        "in", (jaxprune.Member("gate/l0_log_alpha", 0), jaxprune.Member("fc/kernel", 0))
    )
    jaxprune.shrink_module(m, {"in": keep}, [group])
    assert m.gate.features == 4 and m.fc.in_features == 4
    np.testing.assert_allclose(m(jnp.asarray(x[:, keep])), expected, rtol=1e-5, atol=1e-6)
