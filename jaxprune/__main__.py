"""``python -m jaxprune``: a short gradual-magnitude-pruning example on synthetic data.

Trains a small MLP (Linen) on a synthetic classification task while ``optax_sparsity``
prunes its kernels to 90% with Zhu & Gupta's cubic schedule, then prints the per-layer
summary and the accuracy before and after pruning. Runs in well under a minute on a CPU.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

import jaxprune


class MLP(nn.Module):
    widths: tuple[int, ...] = (256, 128)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        for w in self.widths:
            x = nn.relu(nn.Dense(w)(x))
        return nn.Dense(self.num_classes)(x)


def _data(key, n, dim=64, classes=10):
    kx, kw = jax.random.split(key)
    teacher = jax.random.normal(kw, (dim, classes))
    x = jax.random.normal(kx, (n, dim))
    return x, jnp.argmax(x @ teacher, axis=-1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--sparsity", type=float, default=0.9)
    args = parser.parse_args(argv)

    x, y = _data(jax.random.key(0), 8192)
    xt, yt = _data(jax.random.key(0), 2048 + 8192)
    xt, yt = xt[8192:], yt[8192:]
    model = MLP()
    params = model.init(jax.random.key(1), x[:1])["params"]

    begin, end = args.steps // 5, (3 * args.steps) // 5
    freq = max((end - begin) // 10, 1)
    schedule = jaxprune.schedules.polynomial(args.sparsity, begin, 10, frequency=freq)
    tx = optax.chain(
        optax.adam(1e-3), jaxprune.optax_sparsity(schedule, update_every=freq, begin_step=begin)
    )
    opt_state = tx.init(params)

    def loss_fn(p, xb, yb):
        logits = model.apply({"params": p}, xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    @jax.jit
    def train_step(p, s, key):
        idx = jax.random.randint(key, (128,), 0, x.shape[0])
        grads = jax.grad(loss_fn)(p, x[idx], y[idx])
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s

    @jax.jit
    def accuracy(p):
        return jnp.mean(jnp.argmax(model.apply({"params": p}, xt), -1) == yt)

    t0 = time.perf_counter()
    key = jax.random.key(2)
    dense_acc = None
    for i in range(args.steps):
        if i == begin:
            dense_acc = float(accuracy(params))
        params, opt_state = train_step(params, opt_state, jax.random.fold_in(key, i))
    stats = jaxprune.summary(params, jaxprune.masks(opt_state))
    print(
        f"\ntest accuracy: dense {dense_acc:.4f} -> pruned {float(accuracy(params)):.4f}; "
        f"kernel sparsity {stats.prunable_sparsity:.1%}, compression {stats.compression:.1f}x "
        f"({time.perf_counter() - t0:.1f} s)"
    )


if __name__ == "__main__":
    main()
