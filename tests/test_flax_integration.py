"""optax_sparsity in Flax Linen and NNX training loops, on synthetic data."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

import jaxprune

pytestmark = pytest.mark.standard_dtypes  # optax's Adam needs standard dtype promotion.


def _data(n=512, dim=16, classes=4, seed=0):
    kx, kw = jax.random.split(jax.random.key(seed))
    teacher = jax.random.normal(kw, (dim, classes))
    x = jax.random.normal(kx, (n, dim))
    return x, jnp.argmax(x @ teacher, axis=-1)


def _check_exact_zeros(params, masks):
    for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(masks, is_leaf=lambda x: x is None)):
        if m is None:
            continue
        full = np.broadcast_to(np.asarray(m), p.shape)
        assert np.all(np.asarray(p)[~full] == 0.0)


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(32)(x))
        x = nn.relu(nn.Dense(32)(x))
        return nn.Dense(4)(x)


def test_linen_training_with_gradual_pruning():
    x, y = _data()
    model = LinenMLP()
    params = model.init(jax.random.key(0), x[:1])["params"]
    steps = 300
    schedule = jaxprune.schedules.polynomial(0.8, 50, 5, frequency=30)
    tx = optax.chain(optax.adam(1e-2), jaxprune.optax_sparsity(schedule, update_every=30))
    opt_state = tx.init(params)

    def loss_fn(p, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(
            model.apply({"params": p}, xb), yb
        ).mean()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(p, s, i):
        idx = jax.random.randint(jax.random.fold_in(jax.random.key(1), i), (64,), 0, x.shape[0])
        loss, g = jax.value_and_grad(loss_fn)(p, x[idx], y[idx])
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    first = None
    for i in range(steps):
        params, opt_state, loss = step(params, opt_state, jnp.int32(i))
        first = float(loss) if first is None else first
    masks = jaxprune.masks(opt_state)
    _check_exact_zeros(params, masks)
    stats = jaxprune.summary(params, masks, print_fn=None)
    rows = stats.by_path()
    for name in ("Dense_0/kernel", "Dense_1/kernel", "Dense_2/kernel"):
        r = rows[name]
        assert r.size - r.kept == int(0.8 * r.size), name
    assert rows["Dense_0/bias"].masked is False
    assert float(loss_fn(params, x, y)) < 0.5 * first
    acc = float(jnp.mean(jnp.argmax(model.apply({"params": params}, x), -1) == y))
    assert acc > 0.8


class NNXConvNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 8, (3, 3), rngs=rngs)
        self.fc1 = nnx.Linear(8 * 4 * 4, 32, rngs=rngs)
        self.fc2 = nnx.Linear(32, 4, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.conv(x))
        x = nnx.avg_pool(x, (2, 2), (2, 2))
        x = x.reshape((x.shape[0], -1))
        return self.fc2(nnx.relu(self.fc1(x)))


def _image_data(n=256):
    x, y = _data(n, dim=64)
    return x.reshape(n, 8, 8, 1), y


def test_nnx_optimizer_training_with_filter_pruning():
    x, y = _image_data()
    model = NNXConvNet(nnx.Rngs(0))
    tx = optax.chain(
        optax.adam(1e-2),
        jaxprune.optax_sparsity(
            jaxprune.schedules.one_shot(0.5, 100),
            granularity={
                "conv": jaxprune.FILTER,
                "fc1": jaxprune.UNSTRUCTURED,
                "fc2": jaxprune.UNSTRUCTURED,
            },
            update_when=jaxprune.schedules.one_shot_updates(100),
        ),
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, xb, yb):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(xb), yb).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer, x, y)) for _ in range(250)]
    masks = jaxprune.masks(optimizer.opt_state)
    params = nnx.state(model, nnx.Param)
    conv_mask = masks["conv"]["kernel"]
    assert conv_mask.shape == (1, 1, 1, 8) and int(conv_mask.sum()) == 4
    assert int(masks["fc1"]["kernel"].sum()) == 128 * 32 // 2
    kernel = np.asarray(params["conv"]["kernel"][...])
    dead = ~np.asarray(conv_mask).ravel()
    assert np.all(kernel[..., dead] == 0.0) and np.all(
        np.abs(kernel[..., ~dead]).sum((0, 1, 2)) > 0
    )
    fc1 = np.asarray(params["fc1"]["kernel"][...])
    assert np.count_nonzero(fc1) == 128 * 32 // 2
    assert losses[-1] < 0.5 * losses[0]


def test_nnx_plain_state_one_shot_functions():
    model = NNXConvNet(nnx.Rngs(1))
    params = nnx.state(model, nnx.Param)
    scores = jaxprune.scores.magnitude(params)
    masks = jaxprune.select.layerwise_topk(
        scores, jax.tree.map(lambda s: 0.5 if s.ndim > 1 else None, scores)
    )
    nnx.update(model, jaxprune.apply_masks(params, masks))
    stats = jaxprune.summary(nnx.state(model, nnx.Param), print_fn=None).by_path()
    assert stats["fc1/kernel"].nonzero == 128 * 32 // 2
    assert stats["fc1/bias"].sparsity == 1.0  # NNX biases start at zero and were not masked
