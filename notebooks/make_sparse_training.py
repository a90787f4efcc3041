"""Regenerates notebooks/04_sparse_training.ipynb (outputs stripped). Run from the repo root."""

import nbformat as nbf

nb = nbf.v4.new_notebook()
cells = []
md = lambda s: cells.append(nbf.v4.new_markdown_cell(s.strip()))
code = lambda s: cells.append(nbf.v4.new_code_cell(s.strip()))

md("""
# Sparse training from scratch: static sparse, SET, RigL and straight-through top-k

Instead of training dense and pruning, train LeNet-300-100 on MNIST with **90% of its kernel
weights absent from the first step**, spread over the layers with the Erdős-Rényi-Kernel (ERK)
distribution. `jaxprune.sparse_training` wraps the optimizer and keeps the number of active
weights of every layer exactly constant; only *which* weights are active changes (SET, RigL).
A dense baseline and a straight-through top-k run complete the comparison. Runs on a CPU in
a minute or two, and on a Colab GPU or TPU runtime unchanged (the install cell never reinstalls
`jax`).

Open in Colab (once the repository is public):
`https://colab.research.google.com/github/<owner>/jaxprune/blob/main/notebooks/04_sparse_training.ipynb`
""")
code("""
# Install jaxprune if needed, without touching the runtime's jax. Point JAXPRUNE_PIP_SPEC at
# your copy: a git URL ("git+https://.../jaxprune.git") or a local clone ("/content/jaxprune").
import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("jaxprune") is None:
    spec = os.environ.get("JAXPRUNE_PIP_SPEC")
    if not spec:
        raise ImportError(
            "jaxprune is not installed: set JAXPRUNE_PIP_SPEC to a git URL or a "
            "local clone of the repository, or run `pip install -e .` in it."
        )
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", spec])
import jaxprune
""")
code("""
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune import demo

print("jax", jax.__version__, "on", jax.devices())
# A test runs this notebook with small settings through these variables.
EPOCHS = int(os.environ.get("JAXPRUNE_NB_EPOCHS", 10))
SPARSITY = float(os.environ.get("JAXPRUNE_NB_SPARSITY", 0.9))
TINY = os.environ.get("JAXPRUNE_NB_TINY") == "1"  # 2,000 training images: the code path only
""")
md("""
## Data

`jaxprune.load_mnist(path)` reads a full `mnist.npz` (Keras layout). Without one, the
10,000-image subset that ships with the package is used, so nothing is downloaded.
""")
code("""
path = os.environ.get("JAXPRUNE_MNIST")
data = jaxprune.load_mnist(path) if path else demo.load_subset()
n_train = 2000 if TINY else data.x_train.shape[0]
x_train, y_train = np.asarray(data.x_train[:n_train]), np.asarray(data.y_train[:n_train])
x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
print(x_train.shape, x_test.shape)
""")
md("""
## Model, loss and a jitted train step

The same LeNet-300-100 as the quick start (784-300-100-10). Every run starts from the same
initial weights and uses the same optimizer (SGD with momentum and a cosine learning rate);
only the sparsity method changes. `make_step` builds one jitted step per method: the
gradient, `tx.update`, `optax.apply_updates`, and the number of active kernel weights of each
layer after the step, so that the notebook can check that it never changes.
""")
code("""
model = demo.lenet_300_100()
init_params = model.init(jax.random.key(0), x_train[:1])["params"]
LAYERS = sorted(init_params)  # Dense_0, Dense_1, Dense_2

batch = 128
steps_per_epoch = n_train // batch
total_steps = EPOCHS * steps_per_epoch


def inner_optimizer():
    return optax.sgd(optax.cosine_decay_schedule(0.05, total_steps), momentum=0.9)


def loss_fn(p, xb, yb):
    logits = model.apply({"params": p}, xb)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()


@jax.jit
def accuracy(p):
    return jnp.mean(jnp.argmax(model.apply({"params": p}, x_test), -1) == y_test)


def active_masks(p, s, forward):
    # The active kernel weights of each layer: sparse_training's masks, else the non-zeros
    # of what the loss sees.
    if isinstance(s, jaxprune.SparseTrainingState):
        m = jaxprune.masks(s)
        return [m[n]["kernel"] for n in LAYERS]
    return [forward(p)[n]["kernel"] != 0 for n in LAYERS]


def counts(masks):
    return jnp.stack([jnp.sum(m, dtype=jnp.int32) for m in masks])


def make_step(tx, forward=lambda p: p, rigl=False):
    # forward: what the loss sees (the STE run passes its top-k here); rigl: pass raw_grads.
    @jax.jit
    def step(p, s, xb, yb):
        loss, g = jax.value_and_grad(lambda q: loss_fn(forward(q), xb, yb))(p)
        # RigL grows the inactive weights with the largest dense gradient. The masked weights
        # are stored as exact zeros, so the ordinary gradient `g` is that dense gradient.
        u, s = tx.update(g, s, p, raw_grads=g) if rigl else tx.update(g, s, p)
        p = optax.apply_updates(p, u)
        return p, s, loss, counts(active_masks(p, s, forward))

    return step
""")
code("""
results = {}


def fmt(row):
    return ", ".join(f"{n} {int(c):,}" for n, c in zip(LAYERS, row, strict=True))


def run(name, tx, forward=lambda p: p, rigl=False):
    # Compiled rather than op by op: the initial masks and the top-k are exact selections.
    params, state = init_params, jax.jit(tx.init)(init_params)
    if isinstance(state, jaxprune.SparseTrainingState):
        # Start from exact zeros outside the initial (random) mask.
        params = jaxprune.apply_masks(params, jaxprune.masks(state))
    masks_of = jax.jit(lambda p, s: active_masks(p, s, forward))
    first_mask = masks_of(params, state)
    step = make_step(tx, forward, rigl)
    t0, history = time.perf_counter(), [counts(first_mask)]
    for epoch in range(EPOCHS):
        perm = np.random.default_rng(epoch).permutation(n_train)
        for i in range(steps_per_epoch):
            idx = perm[i * batch : (i + 1) * batch]
            params, state, _, row = step(params, state, x_train[idx], y_train[idx])
            history.append(row)
    history = np.asarray(jnp.stack(history))  # row 0: at init, row t: after step t
    seconds = time.perf_counter() - t0
    acc = float(jax.jit(lambda p: accuracy(forward(p)))(params))
    print(f"{name}: test accuracy {acc:.4f} after {total_steps} steps ({seconds:.1f} s)")
    print(f"  active weights per layer at the start: {fmt(history[0])}")
    print(f"  active weights per layer at the end:   {fmt(history[-1])}")
    constant = bool((history == history[0]).all())
    print(f"  the same at every step: {constant}")
    assert constant
    last_mask = masks_of(params, state)
    kept = sum(int(jnp.sum(a & b)) for a, b in zip(first_mask, last_mask, strict=True))
    active = int(history[-1].sum())
    total = sum(init_params[n]["kernel"].size for n in LAYERS)
    results[name] = dict(
        active=active, sparsity=1 - active / total, replaced=1 - kept / active, acc=acc
    )
    return params, state
""")
md("""
## Dense baseline
""")
code("""
dense_params, _ = run("dense", inner_optimizer())
""")
md("""
## (a) Static random sparse

`method="static"`: `init` draws a random mask with exactly `n - floor(s * n)` active weights per
layer, with the per-layer sparsities `s` from the ERK distribution (Evci et al. 2020: a layer's
density is proportional to `sum(shape) / prod(shape)`, so the small last layer stays denser
than the 784x300 first one). The mask never changes; masked weights stay exactly `0.0`.
""")
code("""
def sparse(method, **kw):
    # Mask updates every half epoch until 3/4 of training; 30% of the active weights
    # of each layer replaced at first, decaying with a cosine (RigL's schedule).
    return jaxprune.sparse_training(
        inner_optimizer(),
        SPARSITY,
        method=method,
        distribution="erk",
        update_every=max(steps_per_epoch // 2, 1),
        end_step=max(3 * total_steps // 4, 1),
        drop_fraction=0.3,
        **kw,
    )


static_params, static_state = run("static", sparse("static"))
""")
md("""
## (b) SET: Sparse Evolutionary Training

`method="set"` (Mocanu et al., *Nature Communications* 2018): every `update_every` steps each
layer drops the `d` active weights of smallest magnitude and grows `d` inactive ones **at
random**; grown weights and their optimizer moments start at zero. The active count per layer
is unchanged by construction.
""")
code("""
set_params, set_state = run("SET", sparse("set"))
""")
md("""
## (c) RigL: Rigging the Lottery

`method="rigl"` (Evci et al., ICML 2020) drops like SET but grows the inactive weights with the
largest **dense gradient** magnitude. That gradient is passed as
`tx.update(grads, state, params, raw_grads=grads)` (see `make_step` above): because masked
weights are stored as zeros, the ordinary gradient already is the dense one, at no extra cost.
""")
code("""
rigl_params, rigl_state = run("RigL", sparse("rigl"), rigl=True)
# Outside its mask every kernel weight is exactly zero.
masks = jaxprune.masks(rigl_state)
assert all(bool(jnp.all(masks[n]["kernel"] | (rigl_params[n]["kernel"] == 0))) for n in LAYERS)
""")
md("""
## (d) Straight-through top-k

`jaxprune.ste_topk(params, s)` goes inside the loss: the forward pass uses only the top
`n - floor(s * n)` weights of each kernel by magnitude (recomputed at every step), while the
gradient flows *straight through* the selection to all the dense weights (the straight-through
estimator of Bengio et al. 2013, "Estimating or propagating gradients through stochastic
neurons"). The weights stay dense in memory; the model that is evaluated is the sparse one.
To compare like with like, each layer gets the same ERK sparsity as the runs above.
""")
code("""
kernels = {n: {"kernel": init_params[n]["kernel"], "bias": None} for n in LAYERS}
erk = jaxprune.distributions.erk(kernels, SPARSITY)  # {layer: {"kernel": s, "bias": None}}


def ste_forward(p):
    return {n: jaxprune.ste_topk(p[n], erk[n]["kernel"]) for n in LAYERS}  # biases stay dense


ste_params, _ = run("STE top-k", inner_optimizer(), forward=ste_forward)
""")
md("""
## Comparison

"replaced" is the fraction of the initially active weights that are no longer active at the
end: zero for static sparse, and the measure of how far SET and RigL moved the topology.
""")
code("""
print(
    f"{'method':<10} {'active kernel weights':>22} {'sparsity':>9} {'replaced':>9} "
    f"{'test accuracy':>14}"
)
for name, r in results.items():
    print(
        f"{name:<10} {r['active']:>22,} {r['sparsity']:>9.2%} {r['replaced']:>9.2%} "
        f"{r['acc']:>14.4f}"
    )
""")

nb["cells"] = cells
nb["metadata"] = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}
nbf.write(nb, "notebooks/04_sparse_training.ipynb")
