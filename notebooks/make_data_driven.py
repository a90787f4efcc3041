"""Regenerates notebooks/07_data_driven_criteria.ipynb (outputs stripped). Run from the repo
root."""

import nbformat as nbf

nb = nbf.v4.new_notebook()
cells = []
md = lambda s: cells.append(nbf.v4.new_markdown_cell(s.strip()))
code = lambda s: cells.append(nbf.v4.new_code_cell(s.strip()))

md("""
# Data-driven channel criteria: APoZ, Taylor, ThiNet and NISP

Which channels of a trained convnet can go? The weight norm of a filter is one answer; the
criteria here look at what the channels *do* on real inputs instead. On a LeNet-5 trained on
MNIST, each criterion removes the same share of the channels of every layer (`conv1`'s and
`conv2`'s filters, `fc1`'s units); the model is then shrunk to a smaller dense one,
fine-tuned briefly, and evaluated. Random scores and the L1 norm of each filter (Li et al.,
*Pruning Filters for Efficient ConvNets*, ICLR 2017) serve as references.

Runs on a CPU in a few minutes, and on a Colab GPU or TPU runtime unchanged (the install cell
never reinstalls `jax`).

Open in Colab (once the repository is public):
`https://colab.research.google.com/github/<owner>/jaxprune/blob/main/notebooks/07_data_driven_criteria.ipynb`
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

from jaxprune import demo, importance

print("jax", jax.__version__, "on", jax.devices())
# A test runs this notebook with small settings through these variables.
EPOCHS = int(os.environ.get("JAXPRUNE_NB_EPOCHS", 10))
FRACTION = float(os.environ.get("JAXPRUNE_NB_SPARSITY", 0.75))  # channels removed per layer
TINY = os.environ.get("JAXPRUNE_NB_TINY") == "1"  # 2,000 training images: the code path only
""")
md("""
## Data

`jaxprune.load_mnist(path)` reads a full `mnist.npz` (Keras layout). Without one, the
10,000-image subset that ships with the package is used, so nothing is downloaded. A slice of
the training images serves as the calibration set from which the criteria take their
statistics.
""")
code("""
path = os.environ.get("JAXPRUNE_MNIST")
data = jaxprune.load_mnist(path) if path else demo.load_subset()
n_train = 2000 if TINY else data.x_train.shape[0]
data = data._replace(x_train=data.x_train[:n_train], y_train=data.y_train[:n_train])
n_calib = 500 if TINY else 2000
x_cal, y_cal = jnp.asarray(data.x_train[:n_calib]), jnp.asarray(data.y_train[:n_calib])
print(data.x_train.shape, data.x_test.shape, "calibration", x_cal.shape)
""")
md("""
## A dense LeNet-5

`jaxprune.demo.LeNet5` is Caffe's LeNet-5 (`conv(20) - pool - conv(50) - pool - 500 - 10`),
here at half its widths to keep the notebook fast on a CPU. The activation criteria need a
ReLU after the convolutions (`conv_relu=True`). Its
activations are marked with `importance.tap(self, name, x)`, a line that does nothing in
training: `conv1`, `pool1`, `conv2`, `pool2` and `fc1`.
""")
code("""
WIDTHS = (10, 25, 250)  # conv1, conv2, fc1
model = demo.LeNet5(WIDTHS, conv_relu=True)
params = model.init(jax.random.key(0), data.x_train[:1])["params"]
BATCH = 128
steps_per_epoch = n_train // BATCH
x_tr, y_tr = np.asarray(data.x_train), np.asarray(data.y_train)


def ce_sum(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()


def make_step(tx):
    @jax.jit
    def step(p, opt_state, xb, yb):
        grads = jax.grad(lambda q: ce_sum(model.apply({"params": q}, xb), yb) / xb.shape[0])(p)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    return step


def train(step, p, opt_state, epochs, seed=0):
    # A Python loop over jitted steps: on XLA:CPU, convolutions run faster this way than
    # inside a lax.scan.
    for e in range(epochs):
        perm = np.random.default_rng(seed + e).permutation(n_train)
        for i in range(steps_per_epoch):
            idx = perm[i * BATCH : (i + 1) * BATCH]
            p, opt_state = step(p, opt_state, x_tr[idx], y_tr[idx])
    return p, opt_state


tx = optax.chain(
    optax.add_decayed_weights(5e-4),
    optax.sgd(optax.cosine_decay_schedule(0.05, EPOCHS * steps_per_epoch), momentum=0.9),
)
params, _ = train(make_step(tx), params, tx.init(params), EPOCHS)


@jax.jit
def accuracy(params, masks=None):
    if masks is not None:
        params = jaxprune.apply_masks(params, masks)
    logits = model.apply({"params": params}, data.x_test)
    return jnp.mean(jnp.argmax(logits, -1) == data.y_test)


dense_acc = float(accuracy(params))
print(f"dense LeNet-5: test accuracy {dense_acc:.4f} after {EPOCHS} epochs")
""")
md("""
## Groups named like the taps

`trace_groups` finds the coupled axes of each prunable layer (a filter, its bias and the
matching input channel, or the strided rows of `fc1`'s kernel after the flatten), and
`rename_groups` names every group after its layer, the name of the tap at that layer's
output, so that scores computed from the taps select groups directly.
""")
code("""
found = jaxprune.trace_groups(model.apply, {"params": params}, data.x_train[:1])
groups = jaxprune.groups_under(jaxprune.rename_groups(found.groups), "params")
sizes = jaxprune.check_groups(groups, params)
print("channels per group:", sizes)
""")
md("""
## One pass of statistics

`importance.linen_taps` returns the tapped activations and the gradient of the loss with
respect to each of them; `channel_stats_update` accumulates per-channel sums over batches;
`responses_update` stores the `fc1` responses that NISP needs. All jitted.
""")
code("""
@jax.jit
def stats_step(state, responses, xb, yb):
    t = importance.linen_taps(
        model.apply, {"params": params}, xb, loss_fn=lambda out: ce_sum(out, yb)
    )
    acts = {k: t.activations[k] for k in sizes}
    grads = {k: t.gradients[k] for k in sizes}
    state = importance.channel_stats_update(state, acts, grads)
    return state, importance.responses_update(responses, t.activations["fc1"])


state = importance.channel_stats_init(sizes)
responses = importance.responses_init(sizes["fc1"], capacity=n_calib)
for i in range(0, n_calib, 250):  # any number of batches
    state, responses = stats_step(state, responses, x_cal[i : i + 250], y_cal[i : i + 250])
stats = importance.channel_stats_finalize(state)
""")
md("""
## The criteria

- **APoZ** (Hu, Peng, Tai, Tang, *Network Trimming*, 2016): the Average Percentage of Zeros
  of a channel after the ReLU. A channel that is zero on most inputs contributes little, so
  the score is `1 - APoZ`.
- **Taylor** (Molchanov, Tyree, Karras, Aila, Kautz, *Pruning Convolutional Neural Networks
  for Resource Efficient Inference*, ICLR 2017): a first-order Taylor expansion of the loss
  says that zeroing a channel changes it by about `activation x gradient`; the score is
  `|mean a * dL/da|` per example, averaged and normalized per layer.
- **ThiNet** (Luo, Wu, Lin, ICCV 2017): judge a layer's channels by the *next* layer. It
  samples the next layer's input contributions on a few images, greedily removes the channels
  whose removal changes the next layer's output least, then rescales the kept input channels
  by least squares to reconstruct that output. Layer after layer, each on the already pruned
  network.
- **NISP** (Yu et al., *Neuron Importance Score Propagation*, CVPR 2018): rank the units of
  the final response layer (`fc1`) with Infinite Feature Selection (Roffo, Melzi, Cristani,
  ICCV 2015) on their responses, then propagate the importance backwards through the absolute
  weights, `s_k = |W_k| s_{k+1}`, down to every earlier channel.

Each gives one score vector per group; `importance.select_groups` keeps the top
`1 - FRACTION` of every group (jitted here: it is traced once and then reused for every
criterion).
""")
code("""
keep, scaled = {}, {}  # scaled: ThiNet's rescaled weights
key = jax.random.key(1)
select = jax.jit(lambda scores: importance.select_groups(scores, FRACTION))

keys = dict(zip(sizes, jax.random.split(key, len(sizes)), strict=True))
uniform = {g: jax.random.uniform(keys[g], (n,)) for g, n in sizes.items()}
keep["random"] = select(uniform)
# L1 norm of each producing filter (or unit): the group's member on its own kernel.
producers = [
    jaxprune.Group(g.name, tuple(m for m in g.members if m.path == g.name + "/kernel"))
    for g in groups
]
keep["L1 norm"] = select(jaxprune.group_scores(params, producers, reduction="l1"))
keep["APoZ"] = select(importance.apoz_scores(stats))
keep["Taylor"] = select(importance.activation_taylor_scores(stats))

rows, valid = importance.responses_finalize(responses)
nisp_layers = [
    importance.ConvLayer("conv1/kernel", name="conv1"),
    importance.PoolLayer((2, 2)),
    importance.ConvLayer("conv2/kernel", name="conv2"),
    importance.PoolLayer((2, 2)),
    importance.FlattenLayer(),
    importance.DenseLayer("fc1/kernel", name="fc1"),
]
frl = jax.jit(importance.inf_fs)(rows, valid=valid)
nisp = importance.nisp_scores(params, frl, nisp_layers, input_shape=(28, 28, 1))
keep["NISP"] = select(nisp)
print({name: {g: int(jnp.sum(k[g])) for g in sizes} for name, k in keep.items()})
""")
md("""
ThiNet needs, for each pruned layer, the input of its consumer (the tap *after* pooling for
the convolutions, `fc1` itself for the last one) and the consumer's kernel. `thinet_update`
draws the samples (10 images per class, 10 locations each), `thinet_greedy` picks the
channels to remove, `thinet_lstsq` the scales of those kept, and `scale_input_channels`
applies them to the consumer's kernel.
""")
code("""
M = jaxprune.Member
thinet_layers = [  # (group, tap at the consumer's input, the consumer's input axis)
    ("conv1", "pool1", M("conv2/kernel", -2)),
    ("conv2", "pool2", M("fc1/kernel", 0, outer=16)),
    ("fc1", "fc1", M("fc2/kernel", 0)),
]


def mask_groups(p, k):
    chosen = [g for g in groups if g.name in k]
    return jaxprune.apply_masks(p, jaxprune.expand_group_masks(k, chosen, p))


@jax.jit
def activations(p, x):
    return importance.linen_taps(model.apply, {"params": p}, x).activations


thinet_update = jax.jit(importance.thinet_update)
thinet_greedy = jax.jit(importance.thinet_greedy, static_argnums=1)


p_thinet, keep["ThiNet"], recon = params, {}, {}
for name, tap, member in thinet_layers:
    kernel = p_thinet[member.path.split("/")[0]]["kernel"]
    inputs = activations(p_thinet, x_cal)[tap]
    st = importance.thinet_init(sizes[name])
    st = thinet_update(st, jax.random.fold_in(key, 7), inputs, kernel, y_cal)
    samples = importance.thinet_finalize(st)
    k = thinet_greedy(samples, int(np.floor(FRACTION * sizes[name])))
    scale = importance.thinet_lstsq(samples, k)
    recon[name] = (
        float(importance.thinet_error(samples, k.astype(jnp.float32))),
        float(importance.thinet_error(samples, scale)),
    )
    keep["ThiNet"][name] = k
    p_thinet = importance.scale_input_channels(p_thinet, member, scale)
    p_thinet = mask_groups(p_thinet, {name: k})  # the next layer samples the pruned network
scaled["ThiNet"] = p_thinet
for name, (before, after) in recon.items():
    print(f"ThiNet {name}: sampled reconstruction error {before:.4g}, {after:.4g} after rescaling")
""")
md("""
## Prune, shrink, fine-tune

For each criterion: zero the removed channels on every coupled axis, fine-tune with the masks
held fixed (`jaxprune.keep_masks`; every criterion has the same shapes, so one compiled step
serves them all), then `jaxprune.shrink` the result into a narrower `LeNet5` and check that it
computes the same accuracy with far fewer parameters.
""")
code("""
FT_EPOCHS = max(1, EPOCHS // 3)


def finetune_tx(masks):
    return optax.chain(optax.sgd(0.01, momentum=0.9), jaxprune.keep_masks(masks))


@jax.jit
def finetune_step(p, opt_state, masks, xb, yb):
    grads = jax.grad(lambda q: ce_sum(model.apply({"params": q}, xb), yb) / xb.shape[0])(p)
    updates, opt_state = finetune_tx(masks).update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state


n_dense = sum(int(np.size(v)) for v in jax.tree.leaves(params))
table = {}
for name, k in keep.items():
    masks = jaxprune.expand_group_masks(k, groups, params)
    p = jaxprune.apply_masks(scaled.get(name, params), masks)
    before = float(accuracy(p))

    def step(p, opt_state, xb, yb, masks=masks):
        return finetune_step(p, opt_state, masks, xb, yb)

    p, _ = train(step, p, finetune_tx(masks).init(p), FT_EPOCHS, seed=100)
    small_params = jaxprune.shrink(p, k, groups)
    widths = tuple(int(jnp.sum(k[g])) for g in ("conv1", "conv2", "fc1"))
    small = demo.LeNet5(widths, conv_relu=True)
    logits = jax.jit(small.apply)({"params": small_params}, data.x_test)
    after = float(jnp.mean(jnp.argmax(logits, -1) == data.y_test))
    assert abs(after - float(accuracy(p))) < 1e-3  # the shrunk model computes the masked one
    n_small = sum(int(np.size(v)) for v in jax.tree.leaves(small_params))
    table[name] = (widths, n_small, before, after)
""")
md("""
## Accuracy table

"before" is the test accuracy right after pruning (ThiNet's includes its rescaling), "after"
after the fine-tuning epochs, measured on the shrunk model.
""")
code("""
print(f"dense LeNet-5 {WIDTHS}: {n_dense:,} parameters, test accuracy {dense_acc:.4f}")
print(f"removing {FRACTION:.0%} of the channels of every layer, {FT_EPOCHS} fine-tuning epoch(s):")
print(f"{'criterion':<9} {'widths':>15} {'params':>8} {'before FT':>10} {'after FT':>9}")
for name, (widths, n, before, after) in table.items():
    print(f"{name:<9} {widths!s:>15} {n:>8,} {before:>10.4f} {after:>9.4f}")
""")

nb["cells"] = cells
nb["metadata"] = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}
nbf.write(nb, "notebooks/07_data_driven_criteria.ipynb")
