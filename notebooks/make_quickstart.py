"""Regenerates notebooks/01_quickstart.ipynb (outputs stripped). Run from the repo root."""

import nbformat as nbf

nb = nbf.v4.new_notebook()
cells = []
md = lambda s: cells.append(nbf.v4.new_markdown_cell(s.strip()))
code = lambda s: cells.append(nbf.v4.new_code_cell(s.strip()))

md("""
# jaxprune quick start: prune LeNet-300-100 on MNIST

Train a small MLP, prune 90% of its weights *during* training with Zhu & Gupta's gradual
schedule, and look at what is left. Runs on a CPU in a couple of minutes, and on a Colab GPU
or TPU runtime unchanged (the install cell never reinstalls `jax`).
""")
code("""
# Install jaxprune if needed, without touching the runtime's jax (jaxprune only needs
# jax >= 0.7.2, optax, flax and orbax, which Colab already has). Point JAXPRUNE_PIP_SPEC at
# your copy: a git URL ("git+https://.../jaxprune.git") or a local clone ("/content/jaxprune").
import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("jaxprune") is None:
    spec = os.environ.get("JAXPRUNE_PIP_SPEC")
    if not spec:
        raise ImportError("jaxprune is not installed: set JAXPRUNE_PIP_SPEC to a git URL or a "
                          "local clone of the repository, or run `pip install -e .` in it.")
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", spec])
import jaxprune
""")
code("""
import os
import time

import jax
import jax.numpy as jnp
import optax

from jaxprune import demo

print("jax", jax.__version__, "on", jax.devices())
# A test runs this notebook with small settings through these variables.
EPOCHS = int(os.environ.get("JAXPRUNE_NB_EPOCHS", 12))
TARGET = float(os.environ.get("JAXPRUNE_NB_SPARSITY", 0.9))
""")
md("""
## Data

`jaxprune.load_mnist(path)` reads a full `mnist.npz` (Keras layout). Without one, the demo's
10,000-image subset that ships with the package is used, so nothing is downloaded.
""")
code("""
path = os.environ.get("JAXPRUNE_MNIST")
data = jaxprune.load_mnist(path) if path else demo.load_subset()
x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
print(x_train.shape, x_test.shape)
""")
md("""
## Model and optimizer

`optax_sparsity` goes **last** in the chain. It keeps the masks in the optimizer state,
recomputes them inside the jitted step every `update_every` steps while the cubic schedule
ramps the sparsity from 0 to `TARGET`, and rewrites the updates of pruned weights so that
`optax.apply_updates` leaves them exactly `0.0`.
""")
code("""
model = demo.lenet_300_100()
params = model.init(jax.random.key(0), x_train[:1])["params"]

batch = 128
steps_per_epoch = x_train.shape[0] // batch
begin, events = steps_per_epoch, 10                      # ramp from epoch 1 ...
every = max((EPOCHS * 2 // 3 - 1) * steps_per_epoch // events, 1)   # ... to 2/3 of training
schedule = jaxprune.schedules.polynomial(TARGET, begin, events, frequency=every)

tx = optax.chain(
    optax.sgd(optax.cosine_decay_schedule(0.05, EPOCHS * steps_per_epoch), momentum=0.9),
    jaxprune.optax_sparsity(schedule, update_every=every, begin_step=begin),
)
opt_state = tx.init(params)
""")
code("""
def loss_fn(p, xb, yb):
    logits = model.apply({"params": p}, xb)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()


@jax.jit
def train_epoch(p, s, key):
    perm = jax.random.permutation(key, x_train.shape[0])[: steps_per_epoch * batch]

    def step(carry, idx):
        p, s = carry
        loss, g = jax.value_and_grad(loss_fn)(p, x_train[idx], y_train[idx])
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), loss

    (p, s), losses = jax.lax.scan(step, (p, s), perm.reshape(steps_per_epoch, batch))
    return p, s, losses.mean()


@jax.jit
def accuracy(p):
    return jnp.mean(jnp.argmax(model.apply({"params": p}, x_test), -1) == y_test)
""")
md("## Train and prune")
code("""
history = []
t0 = time.perf_counter()
for epoch in range(EPOCHS):
    params, opt_state, loss = train_epoch(params, opt_state, jax.random.key(epoch))
    stats = jaxprune.summary(params, jaxprune.masks(opt_state), print_fn=None)
    history.append((stats.prunable_sparsity, float(accuracy(params))))
    print(f"epoch {epoch + 1:2d}  loss {float(loss):.4f}  kernel sparsity {history[-1][0]:6.2%}"
          f"  test accuracy {history[-1][1]:.4f}")
print(f"{time.perf_counter() - t0:.1f} s")
""")
md("## What is left")
code("""
stats = jaxprune.summary(params, jaxprune.masks(opt_state))
# Pruned weights are exact zeros in the trained parameters, not just in a mask.
kernel = params["Dense_0"]["kernel"]
mask = jaxprune.masks(opt_state)["Dense_0"]["kernel"]
assert bool(jnp.all(jnp.where(mask, True, kernel == 0.0)))
""")
code("""
try:
    import matplotlib.pyplot as plt
except ImportError:
    plt = None
if plt is not None:
    sp, acc = zip(*history, strict=True)
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(range(1, len(sp) + 1), [100 * s for s in sp], label="kernel sparsity (%)")
    ax.plot(range(1, len(acc) + 1), [100 * a for a in acc], label="test accuracy (%)")
    ax.set_xlabel("epoch")
    ax.legend()
    plt.show()
""")
nb["cells"] = cells
nb["metadata"] = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}
nbf.write(nb, "notebooks/01_quickstart.ipynb")
