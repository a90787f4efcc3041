"""Regenerates notebooks/06_learned_sparsity.ipynb (outputs stripped). Run from the repo root."""

import nbformat as nbf

nb = nbf.v4.new_notebook()
cells = []
md = lambda s: cells.append(nbf.v4.new_markdown_cell(s.strip()))
code = lambda s: cells.append(nbf.v4.new_code_cell(s.strip()))

md("""
# Learned structured sparsity: network slimming, SSL group lasso and L0 gates

Instead of scoring a trained network, these methods add a penalty to training that pushes
*whole units* towards zero, then read off which units the network gave up, and remove them.
Three of them on an MLP for MNIST, each ending with a **physically smaller dense model**
(`jaxprune.shrink`), its parameter count and its test accuracy:

- **network slimming**: L1 on the BatchNorm scales (Linen);
- **SSL**: group lasso on a unit's weights and on the input pixels (Linen);
- **L0 gates**: hard-concrete gates learned with an expected-L0 penalty (an NNX model).

Runs on a CPU in a few minutes, and on a Colab GPU or TPU runtime unchanged (the install cell
never reinstalls `jax`).

Open in Colab (once the repository is public):
`https://colab.research.google.com/github/<owner>/jaxprune/blob/main/notebooks/06_learned_sparsity.ipynb`
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

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxprune.linen
import jaxprune.nnx
from jaxprune import demo

print("jax", jax.__version__, "on", jax.devices())
# A test runs this notebook with small settings through these variables.
EPOCHS = int(os.environ.get("JAXPRUNE_NB_EPOCHS", 10))
SPARSITY = float(os.environ.get("JAXPRUNE_NB_SPARSITY", 0.9))  # slimming's share of units
TINY = os.environ.get("JAXPRUNE_NB_TINY") == "1"  # 2,000 training images: the code path only
""")
md("""
## Data

`jaxprune.load_mnist(path)` reads a full `mnist.npz` (Keras layout). Without one, the
10,000-image subset that ships with the package is used, so nothing is downloaded. The images
are flattened to 784 pixels.
""")
code("""
path = os.environ.get("JAXPRUNE_MNIST")
data = jaxprune.load_mnist(path) if path else demo.load_subset()
n_train = 2000 if TINY else data.x_train.shape[0]
x_train = jnp.asarray(data.x_train[:n_train].reshape(n_train, -1))
y_train = jnp.asarray(data.y_train[:n_train])
x_test = jnp.asarray(data.x_test.reshape(data.x_test.shape[0], -1))
y_test = jnp.asarray(data.y_test)
x0 = x_train[:2]  # an example input for tracing and rebuilding
print(x_train.shape, x_test.shape)
""")
md("""
## A Linen MLP and a training loop

784-300-100-10, optionally with BatchNorm after each hidden `Dense`. Its widths are fields
named after the layers, so `jaxprune.linen.rebuild` can build the smaller model later.
`train` runs one jitted `lax.scan` over the shuffled batches per epoch and updates the
BatchNorm statistics when there are some.
""")
code("""
BATCH = 64
steps_per_epoch = n_train // BATCH


class MLP(nn.Module):
    fc0: int = 300
    fc1: int = 100
    bn: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        for name in ("fc0", "fc1"):
            x = nn.Dense(getattr(self, name), name=name)(x)
            if self.bn:
                init = nn.initializers.constant(0.5)
                bn = nn.BatchNorm(not train, momentum=0.9, scale_init=init, name="bn" + name[-1])
                x = bn(x)
            x = nn.relu(x)
        return nn.Dense(10, name="head")(x)


def xent(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def train(model, variables, tx, epochs, x=x_train, seed=0):
    # One jitted lax.scan over the shuffled batches per epoch.
    def loss_fn(params, stats, xb, yb):
        if stats is None:
            return xent(model.apply({"params": params}, xb, train=True), yb), None
        v = {"params": params, "batch_stats": stats}
        logits, new = model.apply(v, xb, train=True, mutable=["batch_stats"])
        return xent(logits, yb), new["batch_stats"]

    @jax.jit
    def epoch(carry, x, y, key):
        def step(carry, idx):
            params, stats, opt_state = carry
            (_, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                params, stats, x[idx], y[idx]
            )
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), stats, opt_state), None

        perm = jax.random.permutation(key, x.shape[0])[: steps_per_epoch * BATCH]
        carry, _ = jax.lax.scan(step, carry, perm.reshape(steps_per_epoch, BATCH))
        return carry

    params, stats = variables["params"], variables.get("batch_stats")
    carry = (params, stats, tx.init(params))
    for e in range(epochs):
        carry = epoch(carry, x, y_train, jax.random.key(1000 * seed + e))
    params, stats, _ = carry
    return {"params": params, **({"batch_stats": stats} if stats is not None else {})}


def accuracy(apply_fn, variables, x=x_test):
    logits = jax.jit(apply_fn)(variables, x)
    return float(jnp.mean(jnp.argmax(logits, -1) == y_test))


def n_params(tree):
    return sum(int(np.size(leaf)) for leaf in jax.tree.leaves(tree))


def cosine(lr):
    return optax.cosine_decay_schedule(lr, EPOCHS * steps_per_epoch)


FT_EPOCHS = max(1, EPOCHS // 3)
results = {}
""")
md("""
## (a) Network slimming (Liu et al. 2017)

Liu, Li, Shen, Huang, Yan and Zhang, *Learning Efficient Convolutional Networks through
Network Slimming* (ICCV 2017), reuse the BatchNorm scale `gamma` of every channel as its
importance: an L1 penalty `lam * sum |gamma|` during training drives the scales of the
channels the network can spare towards zero. Afterwards the channels with the smallest
`|gamma|` are removed and the smaller network is fine-tuned.

`jaxprune.linen.slimming_labels` finds the BN scales, and `jaxprune.add_l1` adds
`lam * sign(gamma)` to their gradients, before the optimizer as in the paper.
""")
code("""
slim_model = MLP(bn=True)
variables = slim_model.init(jax.random.key(0), x0)
labels = jaxprune.linen.slimming_labels(variables)  # True for bn0/scale and bn1/scale
tx = optax.chain(
    jaxprune.add_l1(2e-3, prunable=labels),
    optax.add_decayed_weights(5e-4),
    optax.sgd(cosine(0.1), momentum=0.9, nesterov=True),
)
slim_vars = train(slim_model, variables, tx, EPOCHS)
slim_acc = accuracy(slim_model.apply, slim_vars)
gammas = {k: np.abs(np.asarray(slim_vars["params"][k]["scale"])) for k in ("bn0", "bn1")}
print(f"after sparsity training: test accuracy {slim_acc:.4f}")
for k, g in gammas.items():
    print(f"  {k}: |gamma| median {np.median(g):.3f}, below 0.01: {np.mean(g < 0.01):.1%}")
""")
md("""
`jaxprune.trace_groups` finds which axes are removed together (a unit's kernel column, bias,
BN entries and statistics, and the next layer's kernel row) and `rename_groups` names each
group after its layer. `slimming_masks(..., per_group=True)` removes the `SPARSITY` share of
units with the smallest `|gamma|` in every layer. A removed unit still emits a constant (its
BN shift after ReLU); `jaxprune.fold_forward` moves it into the next layer's bias, so that
`shrink` gives the network with only those units' weights removed. `linen.rebuild` then
builds the narrower `MLP` and checks every shape.
""")
code("""
found = jaxprune.trace_groups(slim_model.apply, slim_vars, x0)
groups = jaxprune.rename_groups(found.groups)  # "fc0", "fc1"
pgroups = jaxprune.groups_under(groups, "params")
sel = jaxprune.slimming_masks(
    slim_vars["params"], pgroups, SPARSITY, prunable=labels, per_group=True
)
folded, _ = jaxprune.fold_forward(slim_model.apply, slim_vars, sel.group_masks, groups, x0)
small_vars = jaxprune.shrink(folded, sel.group_masks, groups)
spec = jaxprune.widths(groups, sel.group_masks, slim_vars)
small = jaxprune.linen.rebuild(slim_model, spec, small_vars, x0)
removed_acc = accuracy(small.apply, small_vars)
print(f"new widths: {spec}; test accuracy right after removal {removed_acc:.4f}")

tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(cosine(0.01), momentum=0.9))
small_vars = train(small, small_vars, tx, FT_EPOCHS, seed=1)
results["slimming"] = dict(
    widths=f"784-{spec['fc0']}-{spec['fc1']}-10",
    before=n_params(slim_vars["params"]),
    after=n_params(small_vars["params"]),
    trained=slim_acc,
    removed=removed_acc,
    finetuned=accuracy(small.apply, small_vars),
)
print(f"after {FT_EPOCHS} fine-tuning epoch(s): {results['slimming']['finetuned']:.4f}")
""")
md("""
## (b) SSL: group lasso (Wen et al. 2016)

Wen, Wu, Wang, Chen and Li, *Learning Structured Sparsity in Deep Neural Networks* (NeurIPS
2016), penalize the L2 norm of each *group* of weights, `lam * sum_g ||W_g||_2`: the sum of
norms behaves like an L1 penalty on the groups, so entire groups become zero while the
weights inside a surviving group stay dense. On an MLP the groups are the incoming weights
of a hidden unit, and the rows of the first kernel, one per input pixel (MNIST's border
pixels carry no information, so their rows have nothing to defend them).

Here the penalty is applied in its proximal form, `jaxprune.prox_group_lasso` after the
optimizer, which shrinks every group norm by `lr * lam` per step and sets groups below that
to exactly zero. The groups must not overlap, so each unit's group holds its own kernel
column and bias. The strengths are set as the total shrinkage over the run,
`lam * sum_t lr_t`, so that the notebook removes groups in a short run as in a long one. It
starts from a network trained densely for `EPOCHS` epochs.
""")
code("""
G, M = jaxprune.Group, jaxprune.Member
ssl_model = MLP()
variables = ssl_model.init(jax.random.key(0), x0)
variables = train(ssl_model, variables, optax.sgd(cosine(0.05), momentum=0.9), EPOCHS)
dense_acc = accuracy(ssl_model.apply, variables)
print(f"dense start: test accuracy {dense_acc:.4f}")

groups = jaxprune.rename_groups(jaxprune.trace_groups(ssl_model.apply, variables, x0).groups)
pgroups = jaxprune.groups_under(groups, "params")
units = [G(g.name, tuple(m for m in g.members if m.path.startswith(g.name + "/"))) for g in pgroups]
pixels = G("in", (M("fc0/kernel", 0),))  # one group per input pixel: a row of fc0's kernel

lr = cosine(0.05)
lr_sum = float(sum(lr(t) for t in range(EPOCHS * steps_per_epoch)))
tx = optax.chain(
    optax.sgd(lr, momentum=0.9),
    jaxprune.prox_group_lasso(0.5 / lr_sum, lr, [pixels]),  # total shrinkage 0.5
    jaxprune.prox_group_lasso(0.5 / lr_sum, lr, units),
)
ssl_vars = train(ssl_model, variables, tx, EPOCHS, seed=1)
ssl_acc = accuracy(ssl_model.apply, ssl_vars)
norms = jaxprune.group_norms(ssl_vars["params"], [pixels, *units])
print(f"after group lasso: test accuracy {ssl_acc:.4f}")
for k, v in norms.items():
    print(f"  {k}: {int(jnp.sum(v == 0))} of {v.size} groups exactly zero")
""")
md("""
`group_norm_masks` keeps the groups whose norm is above the threshold (0: the exact zeros).
Removing a zero pixel row means the smaller model reads fewer pixels, so its inputs are the
kept columns of the images. A removed hidden unit has a zero kernel column and bias, so it
outputs `relu(0) = 0` and removing it changes nothing.
""")
code("""
sel = jaxprune.group_norm_masks(ssl_vars["params"], [pixels, *units], 0.0, min_keep=1)
keep = sel.group_masks
pixel_group = G("in", (M("params/fc0/kernel", 0),))  # the same group, on the variables
small_vars = jaxprune.shrink(ssl_vars, keep, [*groups, pixel_group])
spec = jaxprune.widths(groups, keep, ssl_vars)
kept_pixels = np.flatnonzero(np.asarray(keep["in"]))
small = jaxprune.linen.rebuild(ssl_model, spec, small_vars, x0[:, kept_pixels])
removed_acc = accuracy(small.apply, small_vars, x_test[:, kept_pixels])
print(
    f"kept {kept_pixels.size} of 784 pixels, new widths: {spec}; "
    f"test accuracy right after removal {removed_acc:.4f}"
)

tx = optax.sgd(cosine(0.01), momentum=0.9)
small_vars = train(small, small_vars, tx, FT_EPOCHS, x=x_train[:, kept_pixels], seed=2)
results["SSL"] = dict(
    widths=f"{kept_pixels.size}-{spec['fc0']}-{spec['fc1']}-10",
    before=n_params(ssl_vars["params"]),
    after=n_params(small_vars["params"]),
    trained=ssl_acc,
    removed=removed_acc,
    finetuned=accuracy(small.apply, small_vars, x_test[:, kept_pixels]),
)
print(f"after {FT_EPOCHS} fine-tuning epoch(s): {results['SSL']['finetuned']:.4f}")
""")
md("""
## (c) L0 gates, in an NNX model (Louizos et al. 2018)

Louizos, Welling and Kingma, *Learning Sparse Neural Networks through L0 Regularization*
(ICLR 2018), multiply each unit by a gate `z` in `[0, 1]` drawn from a *hard-concrete*
distribution: a stretched, clipped relaxation of a Bernoulli variable, which is exactly 0 or
exactly 1 with positive probability yet has a gradient with respect to its parameter
`log_alpha`. The penalty is the expected number of non-zero gates, `P(z != 0)`, which is
differentiable too; weighting it by the number of weights a gate controls makes it the
expected L0 norm of the weights. At test time the gate is deterministic, and exactly zero
for `log_alpha` below about -2.4, so the units to remove can be read directly off the gates.

`jaxprune.nnx.HardConcreteGate` gates the inputs of `fc1` and `head` (the hidden units);
`add_gate_penalty` adds the penalty's gradient (divided by the number of training images, as
in the paper), `clip_gates` keeps `log_alpha` in its box. The gates learn with a larger Adam
step than the weights so that they settle within a short run.
""")
code("""
class GatedMLP(nnx.Module):
    def __init__(self, rngs):
        self.fc0 = nnx.Linear(784, 300, rngs=rngs)
        self.gate1 = jaxprune.nnx.HardConcreteGate(300, droprate_init=0.5, rngs=rngs)
        self.fc1 = nnx.Linear(300, 100, rngs=rngs)
        self.gate2 = jaxprune.nnx.HardConcreteGate(100, droprate_init=0.5, rngs=rngs)
        self.head = nnx.Linear(100, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.fc0(x))
        x = nnx.relu(self.fc1(self.gate1(x)))
        return self.head(self.gate2(x))


gated = GatedMLP(nnx.Rngs(params=0, gates=1))  # the "gates" stream draws the samples
fan_out = {"gate1": 100.0, "gate2": 10.0, "fc0": 0.0, "fc1": 0.0, "head": 0.0}
tx = optax.chain(
    jaxprune.add_gate_penalty(0.1 / n_train, weight=fan_out),
    optax.multi_transform({True: optax.adam(0.05), False: optax.adam(1e-3)}, jaxprune.gate_labels),
    jaxprune.clip_gates(),
)
optimizer = nnx.Optimizer(gated, tx, wrt=nnx.Param)


@nnx.jit
def gated_step(model, optimizer, xb, yb):
    grads = nnx.grad(lambda m: xent(m(xb), yb))(model)
    optimizer.update(model, grads)


gated.train()  # stochastic gates
rng = np.random.default_rng(0)
for _ in range(EPOCHS):
    perm = rng.permutation(n_train)
    for i in range(steps_per_epoch):
        idx = perm[i * BATCH : (i + 1) * BATCH]
        gated_step(gated, optimizer, x_train[idx], y_train[idx])
gated.eval()  # deterministic test-time gates


def nnx_accuracy(model):
    return float(jnp.mean(jnp.argmax(nnx.jit(lambda m, x: m(x))(model, x_test), -1) == y_test))


l0_acc = nnx_accuracy(gated)
print(f"after L0 training: test accuracy {l0_acc:.4f} with the deterministic gates")
""")
md("""
`trace_groups` works on NNX too (here on `nnx.state`, with `nnx.merge` in the apply
function) and puts each gate in its unit's group. `gate_masks` keeps the units whose test-time
gate is non-zero; `fold_gates` multiplies the gate values into the rows of the consumer
kernel (the weights on one side of the gate) and resets the gates to 1, which is exact.
After `shrink`, the gates are identities and a plain NNX MLP with the new widths takes the
weights.
""")
code("""
graphdef, params, rest = nnx.split(gated, nnx.Param, ...)
found = jaxprune.trace_groups(lambda p, x: nnx.merge(graphdef, p, rest)(x), params, x0)
groups = jaxprune.rename_groups(found.groups)
sel = jaxprune.gate_masks(params, groups)


def consumer_side(g):
    # The gate and the rows of the kernel it feeds: the weights one side of the gate.
    def one_side(m):
        return "gate" in m.path or (m.path.endswith("kernel") and m.axis == 0)

    return G(g.name, tuple(m for m in g.members if one_side(m)))


folded = jaxprune.fold_gates(params, [consumer_side(g) for g in groups])
small_params = jaxprune.shrink(folded, sel.group_masks, groups)
spec = {g.name: int(jnp.sum(sel.group_masks[g.name])) for g in groups}


class PlainMLP(nnx.Module):
    def __init__(self, fc0, fc1, rngs):
        self.fc0 = nnx.Linear(784, fc0, rngs=rngs)
        self.fc1 = nnx.Linear(fc0, fc1, rngs=rngs)
        self.head = nnx.Linear(fc1, 10, rngs=rngs)

    def __call__(self, x):
        return self.head(nnx.relu(self.fc1(nnx.relu(self.fc0(x)))))


plain = PlainMLP(spec["fc0"], spec["fc1"], nnx.Rngs(0))
nnx.update(plain, nnx.State({k: small_params[k] for k in ("fc0", "fc1", "head")}))
removed_acc = nnx_accuracy(plain)
print(f"new widths: {spec}; test accuracy of the plain smaller MLP {removed_acc:.4f}")
results["L0 (NNX)"] = dict(
    widths=f"784-{spec['fc0']}-{spec['fc1']}-10",
    before=n_params(params),
    after=n_params(nnx.state(plain, nnx.Param)),
    trained=l0_acc,
    removed=removed_acc,
    finetuned=None,  # removal is exact: nothing to recover
)
""")
md("""
## Parameter counts and accuracy

"before" counts the trained model's parameters (BN scales and shifts, or gates, included),
"after" those of the smaller dense model. The L0 model is not fine-tuned: folding its gates
is exact, so its accuracy after removal is the gated model's own.
""")
code("""
print(
    f"{'method':<10} {'widths':>16} {'params before':>14} {'after':>8} {'trained':>8} "
    f"{'removed':>8} {'fine-tuned':>10}"
)
for name, r in results.items():
    ft = "-" if r["finetuned"] is None else f"{r['finetuned']:.4f}"
    print(
        f"{name:<10} {r['widths']:>16} {r['before']:>14,} {r['after']:>8,} "
        f"{r['trained']:>8.4f} {r['removed']:>8.4f} {ft:>10}"
    )
""")

nb["cells"] = cells
nb["metadata"] = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}
nbf.write(nb, "notebooks/06_learned_sparsity.ipynb")
