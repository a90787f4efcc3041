"""Regenerates notebooks/05_magnitude_gradual_dns.ipynb (outputs stripped). Run from the repo
root."""

import nbformat as nbf

nb = nbf.v4.new_notebook()
cells = []
md = lambda s: cells.append(nbf.v4.new_markdown_cell(s.strip()))
code = lambda s: cells.append(nbf.v4.new_code_cell(s.strip()))

md("""
# Magnitude pruning three ways: iterative (Han), gradual (AGP) and dynamic network surgery

Three ways to remove the small weights of a trained LeNet-300-100, run side by side from the
same dense weights, with the same number of extra training epochs and the same target
sparsity of the kernels:

- **Iterative pruning with retraining** (Han et al. 2015): prune in a few large rounds,
  retrain after each.
- **Gradual magnitude pruning** (AGP, Zhu & Gupta 2017): raise the sparsity a little at many
  small steps, along a cubic ramp.
- **Dynamic network surgery** (Guo et al. 2016): prune with a threshold, keep updating the
  pruned weights and splice back those that grow large again.

For each: the test accuracy, the per-layer table of `jaxprune.summary`, and the sparsity
measured after every epoch next to the schedule it followed. Runs on a CPU in a few minutes,
and on a Colab GPU or TPU runtime unchanged (the install cell never reinstalls `jax`).

Open in Colab (once the repository is public):
`https://colab.research.google.com/github/<owner>/jaxprune/blob/main/notebooks/05_magnitude_gradual_dns.ipynb`
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
data = data._replace(x_train=data.x_train[:n_train], y_train=data.y_train[:n_train])
print(data.x_train.shape, data.x_test.shape)
""")
md("""
## A dense LeNet-300-100 to start from

`demo.fit` trains with one jitted `lax.scan` per epoch; `accuracy` evaluates on the test
set, with masks applied when given some. The optimizer is SGD with momentum, weight decay and
a cosine learning rate. Each pruning method then gets `2 * EPOCHS` more epochs from these weights.
""")
code("""
model = demo.lenet_300_100()
init_params = model.init(jax.random.key(0), data.x_train[:1])["params"]
LAYERS = ("Dense_0", "Dense_1", "Dense_2")
BATCH = 128
steps_per_epoch = n_train // BATCH
PRUNE_EPOCHS = 2 * EPOCHS
prune_steps = PRUNE_EPOCHS * steps_per_epoch


def sgd(lr, num_steps, end=0.05):
    # A float or a schedule; a float decays with a cosine over num_steps.
    if isinstance(lr, float):
        lr = optax.cosine_decay_schedule(lr, num_steps, alpha=end)
    return optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(lr, momentum=0.9))


@jax.jit
def accuracy(params, masks=None):
    # Test accuracy of the model with the masks applied (if any).
    if masks is not None:
        params = jaxprune.apply_masks(params, masks)
    logits = model.apply({"params": params}, data.x_test)
    return jnp.mean(jnp.argmax(logits, -1) == data.y_test)


dense_params, _ = demo.fit(model, init_params, data, sgd(0.05, EPOCHS * steps_per_epoch), EPOCHS)
dense_acc = float(accuracy(dense_params))
print(f"dense: test accuracy {dense_acc:.4f} after {EPOCHS} epochs")
""")
md("""
Every run records, after each epoch, the sparsity of the kernels under the current masks and
the test accuracy of the masked model. Biases are never pruned (the default `prunable`
selects the kernels only).
""")
code("""
results, curves = {}, {}


def tracker(name):
    curves[name] = []

    def on_epoch(epoch, params, opt_state, loss):
        masks = jaxprune.masks(opt_state)
        stats = jaxprune.summary(params, masks, print_fn=None)
        acc = float(accuracy(params, masks))
        curves[name].append((stats.prunable_sparsity, acc))

    return on_epoch


def finish(name, params, masks):
    acc = float(accuracy(params, masks))
    print(f"{name}: test accuracy {acc:.4f}")
    stats = jaxprune.summary(params, masks)
    results[name] = dict(acc=acc, stats=stats)
""")
md("""
## (a) Iterative pruning with retraining (Han et al. 2015)

Han, Pool, Tran and Dally, *Learning both Weights and Connections for Efficient Neural
Networks* (NeurIPS 2015), remove every weight below a magnitude threshold, retrain the rest,
and repeat, so the network recovers between cuts. Here: three rounds, round `r` keeping a
fraction `(1 - SPARSITY) ** (r / 3)` of every kernel, the masks recomputed only at the first
step of a round (`schedules.iterative` gives the sparsity, `schedules.iterative_updates` the
steps at which masks change), and the learning rate restarted at each round. Pruned weights
are stored as exact zeros, so a later round can only remove more.
""")
code("""
ROUNDS = 3
round_steps = prune_steps // ROUNDS
han_targets = [1 - (1 - SPARSITY) ** ((r + 1) / ROUNDS) for r in range(ROUNDS)]
han_schedule = jaxprune.schedules.iterative(han_targets, round_steps)
han_lr = optax.join_schedules(
    [optax.cosine_decay_schedule(0.01, round_steps, alpha=0.1)] * ROUNDS,
    [round_steps * (r + 1) for r in range(ROUNDS - 1)],
)
han_tx = optax.chain(
    sgd(han_lr, prune_steps),
    jaxprune.optax_sparsity(
        han_schedule, update_when=jaxprune.schedules.iterative_updates(ROUNDS, round_steps)
    ),
)
print("round targets:", ", ".join(f"{s:.2%}" for s in han_targets))
han_params, han_state = demo.fit(
    model, dense_params, data, han_tx, PRUNE_EPOCHS, seed=1, on_epoch=tracker("Han")
)
finish("Han", han_params, jaxprune.masks(han_state))
""")
md("""
## (b) Gradual magnitude pruning (Zhu & Gupta 2017)

Zhu and Gupta, *To prune, or not to prune: exploring the efficacy of pruning for model
compression* (2017), replace the few big cuts by many small ones: at pruning events every
`dt` steps the sparsity follows `s_t = s_f (1 - (1 - k / n) ** 3)` for event `k` of `n`. The
cubic ramp removes a lot while the network still has many redundant weights and slows down
near the target, leaving training time to recover. `schedules.polynomial` is that schedule;
`optax_sparsity` recomputes the masks every `dt` steps until the last event. Here the ramp
spans the first three quarters of the epochs, and the rest fine-tunes at the final sparsity.
""")
code("""
dt = max(steps_per_epoch // 4, 1)
events = max((3 * prune_steps // 4) // dt, 1)
agp_schedule = jaxprune.schedules.polynomial(SPARSITY, 0, events, frequency=dt)
agp_tx = optax.chain(
    sgd(0.01, prune_steps),
    jaxprune.optax_sparsity(agp_schedule, update_every=dt, begin_step=0, end_step=events * dt),
)
print(f"{events} pruning events, every {dt} steps")
agp_params, agp_state = demo.fit(
    model, dense_params, data, agp_tx, PRUNE_EPOCHS, seed=1, on_epoch=tracker("AGP")
)
finish("AGP", agp_params, jaxprune.masks(agp_state))
""")
md("""
## (c) Dynamic network surgery (Guo et al. 2016)

Guo, Yao and Chen, *Dynamic Network Surgery for Efficient DNNs* (NeurIPS 2016), keep a mask
*and* the full weights. The forward pass uses the masked weights, but the gradient reaches
every weight (straight-through), so a pruned weight keeps moving. With `mu` and `sigma` the
mean and standard deviation of a layer's `|w|` and `t = mu + c * sigma`, a weight is cut when
`|w| < 0.9 t` and spliced back when `|w| > 1.1 t`; in between it keeps its state. Masks are
re-evaluated with a probability that decays over training (`schedules.dns_probability`).

The method targets no sparsity; the multiplier `c` of each layer decides it. To compare at
about the same sparsity, `c` is set here from the dense weights, so that the cutting threshold
`0.9 t` sits at the `SPARSITY` quantile of each layer's `|w|`. Surgery lasts `EPOCHS` epochs (the
masks frozen for the last quarter); the final masks are then held fixed with
`jaxprune.keep_masks` for `EPOCHS` epochs of fine-tuning.
""")
code("""
c_rate = {}
for name in LAYERS:
    w = np.abs(np.asarray(dense_params[name]["kernel"]))
    c = (np.quantile(w, SPARSITY) / 0.9 - w.mean()) / w.std()
    c_rate[name] = {"kernel": float(max(c, 0.0)), "bias": None}
print("c per layer:", {n: round(c_rate[n]["kernel"], 3) for n in LAYERS})

surgery_steps = EPOCHS * steps_per_epoch
dns_tx = optax.chain(
    sgd(0.01, surgery_steps),
    jaxprune.dynamic_network_surgery(
        c_rate, key=0, gamma=1e-4, power=1.0, stop_step=3 * surgery_steps // 4
    ),
)
on_epoch = tracker("DNS")
prev, spliced = [None], [0]


def track_splices(epoch, params, opt_state, loss):
    # A weight pruned at one epoch's end and active at the next one was spliced back.
    on_epoch(epoch, params, opt_state, loss)
    m = [np.asarray(jaxprune.masks(opt_state)[n]["kernel"]) for n in LAYERS]
    if prev[0] is not None:
        spliced[0] += sum(int(np.sum(~a & b)) for a, b in zip(prev[0], m, strict=True))
    prev[0] = m


dns_params, dns_state = demo.fit(
    model, dense_params, data, dns_tx, EPOCHS, seed=1, straight_through=True, on_epoch=track_splices
)
dns_masks = jaxprune.masks(dns_state)
print(
    f"surgery: test accuracy {float(accuracy(dns_params, dns_masks)):.4f}, "
    f"{spliced[0]:,} weights spliced back between epochs"
)

# Fine-tune with the masks fixed; the pruned weights become exact zeros first.
ft_tx = optax.chain(sgd(0.005, surgery_steps), jaxprune.keep_masks(dns_masks))
dns_params = jaxprune.apply_masks(dns_params, dns_masks)
dns_params, _ = demo.fit(model, dns_params, data, ft_tx, EPOCHS, seed=2)
for _ in range(EPOCHS):  # the masks did not change while fine-tuning
    curves["DNS"].append((curves["DNS"][-1][0], None))
curves["DNS"][-1] = (curves["DNS"][-1][0], float(accuracy(dns_params)))
finish("DNS", dns_params, dns_masks)
""")
md("""
## The sparsity schedules

The Han and AGP rows give the schedule's value at the last step of each epoch next to the
sparsity the masks actually have; DNS has no schedule, only what its thresholds produced.
""")
code("""
def at_epoch_end(schedule):
    return [float(schedule((e + 1) * steps_per_epoch - 1)) for e in range(PRUNE_EPOCHS)]


targets = {"Han": at_epoch_end(han_schedule), "AGP": at_epoch_end(agp_schedule)}
print(f"{'epoch':>5} {'Han target':>11} {'Han':>7} {'AGP target':>11} {'AGP':>7} {'DNS':>7}")
for e in range(PRUNE_EPOCHS):
    print(
        f"{e + 1:>5} {targets['Han'][e]:>11.2%} {curves['Han'][e][0]:>7.2%} "
        f"{targets['AGP'][e]:>11.2%} {curves['AGP'][e][0]:>7.2%} {curves['DNS'][e][0]:>7.2%}"
    )
""")
code("""
try:
    import matplotlib.pyplot as plt
except ImportError:
    plt = None
if plt is not None:
    t = np.arange(prune_steps + 1)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(t / steps_per_epoch, [float(han_schedule(s)) for s in t], label="Han: schedule")
    ax.plot(t / steps_per_epoch, [float(agp_schedule(s)) for s in t], label="AGP: schedule")
    epochs = np.arange(1, PRUNE_EPOCHS + 1)
    for name, marker in (("Han", "o"), ("AGP", "s"), ("DNS", "^")):
        ax.plot(epochs, [s for s, _ in curves[name]], marker, label=f"{name}: measured")
    ax.set_xlabel("epoch after the dense training")
    ax.set_ylabel("kernel sparsity")
    ax.legend()
    plt.show()
""")
md("""
## Side by side

Compression counts weights and biases, as Han et al. do. With the test settings (2,000
training images, 3 epochs) the accuracies only show that the code runs; the full MNIST file
(`JAXPRUNE_MNIST`) and the default epochs give meaningful ones, and
`benchmarks/mnist_han.py`, `mnist_agp.py` and `mnist_dns.py` run the full-length recipes.
""")
code("""
print(f"{'method':<7} {'test accuracy':>14} {'kernel sparsity':>16} {'compression':>12}  densities")
print(f"{'dense':<7} {dense_acc:>14.4f} {0:>16.2%} {1:>11.1f}x")
for name, r in results.items():
    s = r["stats"]
    dens = ", ".join(
        f"{row.path.split('/')[0]} {1 - row.sparsity:.1%}" for row in s.layers if row.masked
    )
    acc, sparsity = r["acc"], s.prunable_sparsity
    print(f"{name:<7} {acc:>14.4f} {sparsity:>16.2%} {s.compression:>11.1f}x  {dens}")
""")

nb["cells"] = cells
nb["metadata"] = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}
nbf.write(nb, "notebooks/05_magnitude_gradual_dns.ipynb")
