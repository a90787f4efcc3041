"""Probe: LeNet-5 Adam step, dense vs optax_sparsity (never updating) vs keep_masks, interleaved."""

import statistics
import time

import jax
import jax.numpy as jnp
import optax

import jaxprune
from jaxprune import demo

model = demo.LeNet5()
key = jax.random.key(0)
x = jax.random.uniform(key, (64, 28, 28, 1))
y = jax.random.randint(key, (64,), 0, 10)
p0 = model.init(key, x[:1])["params"]


def loss_fn(p):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()


never = lambda c: jnp.zeros((), bool)
txs = {
    "dense": optax.adam(1e-3),
    "sparse_cond": optax.chain(optax.adam(1e-3), jaxprune.optax_sparsity(0.9, update_when=never)),
    "keep_masks": optax.chain(
        optax.adam(1e-3),
        jaxprune.keep_masks(
            jax.tree.map(lambda q: jnp.ones(q.shape, bool) if q.ndim > 1 else None, p0)
        ),
    ),
}
fns = {}
for k, tx in txs.items():

    def step(p, s, tx=tx):
        g = jax.grad(loss_fn)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    f = jax.jit(step)
    s = tx.init(p0)
    p, s = f(p0, s)
    jax.block_until_ready(p)
    fns[k] = [f, p, s, []]
for _ in range(30):
    for v in fns.values():
        f, p, s, t = v
        t0 = time.perf_counter()
        for _ in range(10):
            p, s = f(p, s)
        jax.block_until_ready(p)
        t.append((time.perf_counter() - t0) / 10)
        v[1], v[2] = p, s
base = statistics.median(fns["dense"][3])
for k, v in fns.items():
    print(k, round(1e3 * statistics.median(v[3]), 3), round(statistics.median(v[3]) / base, 3))
