"""Folding pruned channels' constant output into the consumers (`jaxprune.fold_forward`)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import zoo  # tests/zoo.py (tests/ is on pytest's pythonpath)

import jaxprune


def _fold_and_shrink(model, shape):
    x = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)
    v = zoo.random_variables(model, x)
    groups = jaxprune.trace_groups(model.apply, v, x).groups
    rng = np.random.default_rng(2)
    keep = {}
    for name, c in jaxprune.check_groups(groups, v).items():
        k = np.zeros(c, bool)
        k[rng.permutation(c)[: c // 2]] = True
        keep[name] = k
    folded, ref = jaxprune.fold_forward(model.apply, v, keep, groups, x)
    spec = jaxprune.widths(groups, keep, v)
    small_vars = jaxprune.shrink(folded, keep, groups)
    small = jaxprune.linen.rebuild(model, spec, small_vars, x)
    plain = jaxprune.shrink(v, keep, groups)  # no fold: the constants are dropped
    return model.apply(ref, x), small.apply(small_vars, x), small.apply(plain, x)


@pytest.mark.parametrize(
    ("model", "shape"),
    [(zoo.MLP(), (4, 5)), (zoo.LeNet5(), (3, 28, 28, 1))],
    ids=["MLP", "LeNet5"],
)
def test_folded_shrunk_model_equals_the_model_without_producer_weights(model, shape):
    ref, folded, plain = _fold_and_shrink(model, shape)
    np.testing.assert_allclose(folded, ref, atol=1e-4, rtol=1e-4)
    assert float(jnp.max(jnp.abs(plain - ref))) > 1e-2  # folding is what makes them equal


def test_same_padded_conv_consumer_is_exact_in_the_interior():
    ref, folded, _ = _fold_and_shrink(zoo.ConvBN(), (2, 8, 8, 3))
    np.testing.assert_allclose(folded[:, 1:-1, 1:-1], ref[:, 1:-1, 1:-1], atol=1e-4, rtol=1e-4)
    assert float(jnp.max(jnp.abs(folded - ref))) > 1e-3  # the border sees zero padding


class ConvNoBiasBN(nn.Module):
    """conv1 -> BN -> ReLU -> conv2 (no bias) -> BN -> ReLU -> Dense; VALID convs."""

    c1: int = 6
    c2: int = 5

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.c1, (3, 3), padding="VALID", use_bias=False, name="c1")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=True, name="c1_bn")(x))
        x = nn.Conv(self.c2, (3, 3), padding="VALID", use_bias=False, name="c2")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=True, name="c2_bn")(x))
        return nn.Dense(2, name="head")(x.reshape(x.shape[0], -1))


def test_bias_free_consumer_folds_into_the_following_batch_norm_mean():
    ref, folded, plain = _fold_and_shrink(ConvNoBiasBN(), (2, 7, 7, 3))
    np.testing.assert_allclose(folded, ref, atol=1e-4, rtol=1e-4)
    assert float(jnp.max(jnp.abs(plain - ref))) > 1e-2


def test_a_consumer_with_nothing_to_fold_into_raises():
    class NoBias(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Dense(4, name="hidden")(x))
            return nn.Dense(2, use_bias=False, name="out")(h)

    x = jnp.ones((2, 3))
    v = zoo.random_variables(NoBias(), x)
    groups = jaxprune.trace_groups(NoBias().apply, v, x).groups
    keep = {groups[0].name: np.array([True, False, True, True])}
    with pytest.raises(ValueError, match="consumer 'params/out/kernel' has no bias"):
        jaxprune.fold_forward(NoBias().apply, v, keep, groups, x)
    with pytest.raises(ValueError, match="no mask for group"):
        jaxprune.fold_forward(NoBias().apply, v, {}, groups, x)


@pytest.mark.standard_dtypes
def test_nnx_fold_then_shrink_in_place_equals_the_reference():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(3, 6, (3, 3), padding="VALID", rngs=rngs)
            self.bn = nnx.BatchNorm(6, use_running_average=True, rngs=rngs)
            self.fc1 = nnx.Linear(4 * 4 * 6, 8, rngs=rngs)
            self.fc2 = nnx.Linear(8, 2, rngs=rngs)

        def __call__(self, x):
            h = nnx.relu(self.bn(self.conv(x)))
            h = nnx.relu(self.fc1(h.reshape(h.shape[0], -1)))
            return self.fc2(jax.checkpoint(lambda a: a)(h))  # a remat body on the way

    net = Net(nnx.Rngs(0))
    rng = np.random.default_rng(3)
    for mod, names in (
        (net.bn, ("bias", "mean", "var")),
        (net.conv, ("bias",)),
        (net.fc1, ("bias",)),
    ):
        for n in names:
            var = getattr(mod, n)
            var.set_value(jnp.asarray(rng.uniform(0.5, 1.0, var.get_value().shape), jnp.float32))
    x = jnp.asarray(rng.normal(size=(3, 6, 6, 3)), jnp.float32)
    gd, state = nnx.split(net)

    def apply(s, v):
        return nnx.merge(gd, s)(v)

    groups = jaxprune.trace_groups(apply, state, x).groups
    keep = {g.name: np.arange(jaxprune.check_groups([g], state)[g.name]) % 2 == 0 for g in groups}
    folded, ref = jaxprune.fold_forward(apply, state, keep, groups, x)
    want = apply(ref, x)
    nnx.update(net, folded)
    jaxprune.shrink_module(net, keep, groups)
    np.testing.assert_allclose(net(x), want, atol=1e-4, rtol=1e-4)
    assert (net.conv.out_features, net.fc1.out_features) == (3, 4)
