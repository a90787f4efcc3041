"""B5-B7: learned sparsity on full MNIST -- network slimming, SSL group lasso, L0 gates.

Three methods, each trained with jaxprune's penalties, then reduced to a physically smaller
dense MLP, evaluated right after removal (before any fine-tuning) and after fine-tuning:

* ``slimming`` (B5, Liu et al. 2017): MLP 784-500-300-10 with BatchNorm (scales initialized to
  0.5) after each hidden Dense; ``add_l1`` (lambda 1.2e-3) on the BN scales
  (``jaxprune.linen.slimming_labels``) before Nesterov SGD with weight decay 5e-4 (the paper
  has 1e-4); prune the 80% smallest ``|gamma|`` of each hidden layer
  (``jaxprune.slimming_masks(..., per_group=True)``, the paper's MNIST rule; the global
  threshold with its per-layer floor is reported too); the BN shift of a removed channel is
  folded into the next layer's bias (``relu(beta)`` is what the channel still emitted);
  fine-tune the 784-99-59-10 network (30 epochs, batch 256, lr 0.01 divided by 10 after 1/3
  and 2/3, weight decay 5e-4), distilling from the sparsity-trained network before removal
  (``--slimming-distill 0.9``, temperature 4; ``--slimming-distill 0`` is the paper's plain
  fine-tuning). Chosen on held-out seeds 3-7, see RESULTS_learned_sparsity.md.
  ``--slimming-scratch`` adds a control: the pruned widths trained from scratch. Flags for
  the variants tried while tuning: ``--slimming-wd``, ``--slimming-schedule``,
  ``--slimming-dense-epochs`` (a dense network first) with ``--slimming-warm-start`` and/or
  ``--slimming-distill-teacher dense``, ``--slimming-scale-init``, ``--slimming-rebalance``,
  ``--slimming-torch-init`` (PyTorch ``nn.Linear`` init), ``--slimming-l1-start`` /
  ``--slimming-l1-stop`` (L1 only in some epochs), ``--slimming-finetune-{lr,wd,batch,schedule}``.
* ``ssl`` (B6, Wen et al. 2016): MLP 784-500-300-10 without BN; ``add_group_lasso`` over
  neuron groups (a hidden unit's input column, bias and output row, one group across two
  layers) and input-pixel groups (rows of the first kernel), plus ``zero_small(1e-4)`` after
  SGD; remove the groups whose norm is below ``--ssl-threshold``
  (``jaxprune.group_norm_masks``) and fine-tune.
* ``l0`` (B7, Louizos et al. 2018): LeNet-300-100 with ``jaxprune.linen.HardConcreteGate`` on
  the inputs of every Dense layer; ``add_gate_penalty(lam / N)`` weighted by the number of
  weights a gate controls, Adam, ``clip_gates``; the deterministic test-time gates give the
  architecture (``jaxprune.gate_masks``) and are folded into the weights
  (``jaxprune.fold_gates``), which is exact, so the error "right after removal" is the gated
  model's own test error; optional fine-tuning of the removed model.

Run from the repository root, e.g.::

    python benchmarks/learned_sparsity_mnist.py --method slimming --data PATH/mnist.npz \
        --seeds 0,1,2

(or set ``JAXPRUNE_MNIST``). ``--method all`` runs the three in sequence. Each run prints
the per-layer learned sparsity, widths before/after, the test error of the sparsity-trained
model, right after removal and after fine-tuning, the strength used, and the median over
seeds, and writes a histogram of the scale / group-norm / gate distribution before and after
training to ``--plot-dir`` (if matplotlib is installed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import common
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

import jaxprune
import jaxprune.linen

G, M = jaxprune.Group, jaxprune.Member
N_TRAIN = 60_000


# ---------------------------------------------------------------------------------------
# Models.


class L0MLP(nn.Module):
    """LeNet-300-100 with a hard-concrete gate on the inputs of every Dense layer."""

    widths: tuple[int, ...] = (300, 100)
    n_in: int = 784

    @nn.compact
    def __call__(self, x, train: bool = False):
        outs = (*self.widths, 10)
        for i, w in enumerate(outs):
            x = jaxprune.linen.HardConcreteGate(
                x.shape[-1], droprate_init=0.2 if i == 0 else 0.5, name=f"gate{i}"
            )(x, deterministic=not train)
            x = nn.Dense(w, name=f"fc{i}")(x)
            if i < len(outs) - 1:
                x = nn.relu(x)
        return x


# ---------------------------------------------------------------------------------------
# Training loop: one jitted lax.scan per epoch over a device-resident training set.


def _xent(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_trainer(model, tx, batch: int, *, stochastic: bool = False, distill=None):
    """Returns ``epoch(params, stats, opt_state, x, y, perm, key, teacher) -> (..., mean loss)``.

    With ``distill=(alpha, temperature)`` the loss is knowledge distillation (Hinton et al.
    2015): ``(1 - alpha) * CE(labels) + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))``
    against the teacher logits ``teacher[i]`` of every training image ``i``.
    """

    def loss_fn(params, stats, xb, yb, tb, key):
        variables = {"params": params, **({"batch_stats": stats} if stats is not None else {})}
        rngs = {"gates": key} if stochastic else {}
        if stats is not None:
            logits, new = model.apply(variables, xb, train=True, mutable=["batch_stats"], rngs=rngs)
            new = new["batch_stats"]
        else:
            logits, new = model.apply(variables, xb, train=True, rngs=rngs), None
        loss = _xent(logits, yb)
        if distill is not None:
            alpha, t = distill
            kl = optax.kl_divergence(jax.nn.log_softmax(logits / t), jax.nn.softmax(tb / t))
            loss = (1 - alpha) * loss + alpha * t * t * jnp.mean(kl)
        return loss, new

    @jax.jit
    def epoch(params, stats, opt_state, x, y, perm, key, teacher=None):
        steps = perm.shape[0] // batch

        def body(carry, i):
            params, stats, opt_state = carry
            idx = jax.lax.dynamic_slice(perm, (i * batch,), (batch,))
            tb = None if teacher is None else teacher[idx]
            (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                params, stats, x[idx], y[idx], tb, jax.random.fold_in(key, i)
            )
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), stats, opt_state), loss

        (params, stats, opt_state), losses = jax.lax.scan(
            body, (params, stats, opt_state), jnp.arange(steps)
        )
        return params, stats, opt_state, jnp.mean(losses)

    return epoch


def test_error(model, params, stats, x, y) -> float:
    variables = {"params": params, **({"batch_stats": stats} if stats is not None else {})}
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    return float(100.0 * jnp.mean(jnp.argmax(logits, -1) != y))


def fit(
    model, params, stats, tx, data, epochs, batch, seed, *, stochastic=False, log=None, teacher=None
):
    """Trains for ``epochs``; ``teacher=(logits, alpha, temperature)`` distills from the
    logits of a teacher on the training images (see ``make_trainer``)."""
    distill = None if teacher is None else teacher[1:]
    epoch = make_trainer(model, tx, batch, stochastic=stochastic, distill=distill)
    opt_state = tx.init(params)
    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    for e in range(epochs):
        perm = jnp.asarray(rng.permutation(N_TRAIN), jnp.int32)
        params, stats, opt_state, loss = epoch(
            params,
            stats,
            opt_state,
            data["x"],
            data["y"],
            perm,
            jax.random.fold_in(key, e),
            None if teacher is None else teacher[0],
        )
        if log is not None and (e + 1) % max(1, epochs // 3) == 0:
            err = test_error(model, params, stats, data["xt"], data["yt"])
            log(f"    epoch {e + 1}/{epochs}: loss {float(loss):.4f}, test error {err:.2f}%")
    return params, stats


def _window(value: float, start: int, stop: int):
    """``value`` for steps in ``[start, stop)``, else 0 (an L1 switched on / off by step)."""
    return lambda count: jnp.where((count >= start) & (count < stop), value, 0.0)


def sgd_schedule(lr: float, epochs: int, batch: int):
    """lr divided by 10 after 1/3 and 2/3 of the epochs (the slimming paper's MNIST recipe)."""
    spe = N_TRAIN // batch
    return optax.piecewise_constant_schedule(
        lr, {max(1, epochs * spe // 3): 0.1, max(2, 2 * epochs * spe // 3): 0.1}
    )


# ---------------------------------------------------------------------------------------
# Physical removal of MLP units (host side).


def remove_units(model, params, stats, group_masks, *, fold_bn_shift: bool = False):
    """The smaller MLP's ``(params, stats)``: ``jaxprune.shrink`` with :func:`unit_groups`.

    ``group_masks`` has a bool vector for ``"in"`` (input pixels) and every hidden layer
    ``"h0"``, ``"h1"``, ... With ``fold_bn_shift``, a removed hidden unit's constant output
    ``relu(beta)`` (its BN shift, what it still emits once its scale is ~0) is added to the
    next layer's bias: the removed units' BN scales are set to 0 (the premise of network
    slimming), then ``jaxprune.fold_forward`` moves the now constant ``relu(beta)`` into the
    consumers' biases before shrinking.
    """
    n_hidden = len([k for k in params if k.startswith("fc")]) - 1
    bn = stats is not None
    variables = {"params": params, **({"batch_stats": stats} if bn else {})}
    groups = unit_groups(n_hidden, bn, collection=True)
    if fold_bn_shift:
        p = dict(params)
        for i in range(n_hidden):
            keep = jnp.asarray(group_masks[f"h{i}"], params[f"bn{i}"]["scale"].dtype)
            p[f"bn{i}"] = {**p[f"bn{i}"], "scale": p[f"bn{i}"]["scale"] * keep}
        hidden = [g for g in groups if g.name != "in"]
        variables, _ = jaxprune.fold_forward(
            lambda v, x: model.apply(v, x, train=False),
            {**variables, "params": p},
            group_masks,
            hidden,
            jnp.zeros((1, params["fc0"]["kernel"].shape[0]), jnp.float32),
        )
    small = jaxprune.shrink(variables, group_masks, groups)
    return small["params"], (small["batch_stats"] if bn else None)


def unit_groups(n_hidden: int, bn: bool, *, collection: bool = False) -> list[jaxprune.Group]:
    """``"in"`` (rows of the first kernel) and one group per hidden layer ``h<i>``: the unit's
    input column, bias, BN entries (and running statistics) and output row. With
    ``collection``, member paths name a Linen ``variables`` tree (``params/...``)."""
    p, s = ("params/", "batch_stats/") if collection else ("", "")
    groups = [G("in", (M(f"{p}fc0/kernel", 0),))]
    for i in range(n_hidden):
        members = [M(f"{p}fc{i}/kernel", 1), M(f"{p}fc{i}/bias", 0)]
        if bn:
            members += [M(f"{p}bn{i}/scale", 0), M(f"{p}bn{i}/bias", 0)]
            if collection:
                members += [M(f"{s}bn{i}/mean", 0), M(f"{s}bn{i}/var", 0)]
        members.append(M(f"{p}fc{i + 1}/kernel", 0))
        groups.append(G(f"h{i}", tuple(members)))
    return groups


def neuron_groups(widths: tuple[int, ...], bn: bool) -> list[jaxprune.Group]:
    """One group per hidden layer: the unit's input column, bias, BN entries, output row."""
    return unit_groups(len(widths), bn)[1:]


def select_inputs(data, keep_in: np.ndarray):
    """The data restricted to the kept input pixels (for a model whose inputs were removed)."""
    idx = jnp.asarray(keep_in)
    return {**data, "x": data["x"][:, idx], "xt": data["xt"][:, idx]}


def widths_str(keep: list[np.ndarray]) -> str:
    return "-".join(str(len(k)) for k in keep) + "-10"


# ---------------------------------------------------------------------------------------
# Plots.


def plot_hist(path: str, title: str, series: dict[str, dict[str, np.ndarray]], xlabel: str):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        print(f"  (matplotlib not installed: no plot {path})")
        return
    fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 3.4))
    axes = np.atleast_1d(axes)
    for ax, (when, layers) in zip(axes, series.items(), strict=True):
        for name, v in layers.items():
            ax.hist(np.asarray(v).ravel(), bins=60, alpha=0.6, label=name)
        ax.set_title(f"{title}: {when}")
        ax.set_xlabel(xlabel)
        ax.set_yscale("log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"  plot: {path}")


# ---------------------------------------------------------------------------------------
# Methods.


def _slimming_tx(args, labels, ep: int, b: int):
    """The sparsity-training optimizer of network slimming and its L1 epochs ``[start, stop)``."""
    if args.slimming_schedule == "step":
        sched = sgd_schedule(0.1, ep, b)
    else:
        sched = optax.cosine_decay_schedule(0.1, ep * (N_TRAIN // b))
    base = [
        optax.add_decayed_weights(args.slimming_wd),
        optax.sgd(sched, momentum=0.9, nesterov=True),
    ]
    lam = args.slimming_lambda
    l1_start, l1_stop = args.slimming_l1_start, args.slimming_l1_stop or ep
    if (l1_start, l1_stop) != (0, ep):  # L1 only during epochs [start, stop)
        spe = N_TRAIN // b
        lam = _window(args.slimming_lambda, l1_start * spe, l1_stop * spe)
    if args.slimming_mode == "coupled":  # the paper: lam * sign(gamma) added to the gradient
        tx = optax.chain(jaxprune.add_l1(lam, prunable=labels), *base)
    else:  # one line: soft-thresholding of the scales after the optimizer (exact zeros)
        tx = optax.chain(
            *base,
            jaxprune.optax_sparsity(
                0.0,
                update_every=10**9,
                slimming=args.slimming_lambda,
                slimming_prunable=labels,
                learning_rate=sched,
            ),
        )
    return tx, (l1_start, l1_stop)


def _slimming_finetune(model, small, trained, removed, dense, data, seed, args, log) -> float:
    """Fine-tunes the removed network ``removed = (params, stats)``, distilling from
    ``trained`` (or ``dense``) if asked; returns its test error."""
    params, stats = trained
    sp, ss = removed
    fe, fb = args.finetune_epochs, args.slimming_finetune_batch
    ft_sched = (
        sgd_schedule(args.slimming_finetune_lr, fe, fb)
        if args.slimming_finetune_schedule == "step"
        else optax.cosine_decay_schedule(args.slimming_finetune_lr, max(1, fe * (N_TRAIN // fb)))
    )
    tx_ft = optax.chain(
        optax.add_decayed_weights(args.slimming_finetune_wd),
        optax.sgd(ft_sched, momentum=0.9, nesterov=True),
    )
    teacher = None
    if args.slimming_distill:  # by default the sparsity-trained network before removal
        variables = {"params": params, "batch_stats": stats}
        if args.slimming_distill_teacher == "dense":
            variables = {"params": dense[0], "batch_stats": dense[1]}
        logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, data["x"])
        teacher = (logits, args.slimming_distill, args.slimming_distill_temperature)
        log(
            f"  fine-tuning distills from the {args.slimming_distill_teacher} network: alpha "
            f"{args.slimming_distill}, temperature {args.slimming_distill_temperature}"
        )
    sp, ss = fit(small, sp, ss, tx_ft, data, fe, fb, seed + 1000, log=log, teacher=teacher)
    err_ft = test_error(small, sp, ss, data["xt"], data["yt"])
    return err_ft


def run_slimming(data, seed, args, log):
    widths = (500, 300)
    model = common.MLP(
        widths, bn=True, scale_init=args.slimming_scale_init, torch_init=args.slimming_torch_init
    )
    v = model.init(jax.random.key(seed), data["x"][:2])
    params, stats = v["params"], v["batch_stats"]
    labels = jaxprune.linen.slimming_labels(v)
    gammas0 = {f"bn{i}": np.abs(np.asarray(params[f"bn{i}"]["scale"])) for i in range(2)}
    b, ep = 256, args.epochs
    dense = None
    if args.slimming_dense_epochs:  # a dense network first: warm start and/or teacher
        de = args.slimming_dense_epochs
        tx_d = optax.chain(
            optax.add_decayed_weights(args.slimming_wd),
            optax.sgd(sgd_schedule(0.1, de, b), momentum=0.9, nesterov=True),
        )
        dense = fit(model, params, stats, tx_d, data, de, b, seed + 500)
        err_dense = test_error(model, *dense, data["xt"], data["yt"])
        log(f"  dense network: {de} epochs without L1, error {err_dense:.2f}%")
        if args.slimming_warm_start:
            params, stats = dense
    tx, (l1_start, l1_stop) = _slimming_tx(args, labels, ep, b)
    log(
        f"  sparsity training: {ep} epochs, L1 on BN scales ({args.slimming_mode}), "
        f"lambda={args.slimming_lambda} during epochs [{l1_start}, {l1_stop}), scale init "
        f"{args.slimming_scale_init}, {'PyTorch' if args.slimming_torch_init else 'Flax'} init, "
        f"weight decay {args.slimming_wd}"
    )
    params, stats = fit(model, params, stats, tx, data, ep, b, seed, log=log)
    err_trained = test_error(model, params, stats, data["xt"], data["yt"])
    gammas = {f"bn{i}": np.abs(np.asarray(params[f"bn{i}"]["scale"])) for i in range(2)}
    groups = neuron_groups(widths, bn=True)
    sel = jaxprune.slimming_masks(params, groups, args.prune_ratio, prunable=labels, per_group=True)
    glob = jaxprune.slimming_masks(params, groups, args.prune_ratio, prunable=labels, min_keep=1)
    keep = [np.arange(784)] + [np.flatnonzero(np.asarray(sel.group_masks[g.name])) for g in groups]
    glob_widths = "-".join(str(int(np.sum(glob.group_masks[g.name]))) for g in groups)
    small = common.MLP(tuple(len(k) for k in keep[1:]), bn=True)
    masks = {"in": np.ones(784, bool), **{g.name: sel.group_masks[g.name] for g in groups}}
    sp, ss = remove_units(model, params, stats, masks, fold_bn_shift=True)
    if args.slimming_rebalance:  # exact: relu(c z) = c relu(z), undone by fc1's kernel / c
        c = args.slimming_rebalance / float(jnp.mean(jnp.abs(sp["bn0"]["scale"])))
        sp = {**sp, "bn0": jax.tree.map(lambda a: a * c, sp["bn0"])}
        sp["fc1"] = {**sp["fc1"], "kernel": sp["fc1"]["kernel"] / c}
    err_removed = test_error(small, sp, ss, data["xt"], data["yt"])
    sp0, ss0 = remove_units(model, params, stats, masks)
    err_removed_nofold = test_error(small, sp0, ss0, data["xt"], data["yt"])
    log(
        f"  after sparsity training: error {err_trained:.2f}%; per-layer |gamma| < 1e-2: "
        + ", ".join(f"{k} {np.mean(v < 1e-2):.1%}" for k, v in gammas.items())
    )
    log(
        f"  pruned {args.prune_ratio:.0%} per layer: 784-500-300-10 -> {widths_str(keep)}; "
        f"error right after removal {err_removed:.2f}% (without folding the BN shift: "
        f"{err_removed_nofold:.2f}%); global threshold {float(glob.threshold):.4g} with "
        f"floor 1 would give 784-{glob_widths}-10"
    )
    err_ft = _slimming_finetune(
        model, small, (params, stats), (sp, ss), dense, data, seed, args, log
    )
    err_scratch = None
    if args.slimming_scratch:  # control: the pruned widths trained from scratch, same recipe
        vs = small.init(jax.random.key(seed + 2000), data["x"][:2])
        tx_s = optax.chain(
            optax.add_decayed_weights(args.slimming_wd),
            optax.sgd(sgd_schedule(0.1, ep, b), momentum=0.9, nesterov=True),
        )
        ps, st = fit(small, vs["params"], vs["batch_stats"], tx_s, data, ep, b, seed + 2000)
        err_scratch = test_error(small, ps, st, data["xt"], data["yt"])
        log(f"  control: {widths_str(keep)} trained from scratch: error {err_scratch:.2f}%")
    plot = {"init": gammas0, "after sparsity training": gammas}
    return {
        "method": "slimming",
        "seed": seed,
        "strength": {
            "lambda": args.slimming_lambda,
            "mode": args.slimming_mode,
            "weight_decay": args.slimming_wd,
            "distill": args.slimming_distill,
        },
        "widths_before": "784-500-300-10",
        "widths_after": widths_str(keep),
        "global_threshold_widths": f"784-{glob_widths}-10",
        "sparsity_per_layer": {f"h{i}": 1 - len(keep[i + 1]) / w for i, w in enumerate(widths)},
        "error_trained": err_trained,
        "error_removed": err_removed,
        "error_removed_no_bn_fold": err_removed_nofold,
        "error_finetuned": err_ft,
        "error_scratch": err_scratch,
    }, plot


def run_ssl(data, seed, args, log):
    widths = (500, 300)
    model = common.MLP(widths, bn=False)
    params = model.init(jax.random.key(seed), data["x"][:2])["params"]
    groups = neuron_groups(widths, bn=False)
    inputs = G("in", (M("fc0/kernel", 0),))
    norms0 = {k: np.asarray(v) for k, v in jaxprune.group_norms(params, [*groups, inputs]).items()}
    b, ep = 128, args.epochs
    lam, lam_in = args.ssl_lambda, args.ssl_lambda_input
    tx = optax.chain(
        jaxprune.add_group_lasso(lam, groups),
        jaxprune.add_group_lasso(lam_in, [inputs]),
        optax.sgd(sgd_schedule(0.05, ep, b), momentum=0.9),
        jaxprune.zero_small(1e-4),
    )
    log(f"  sparsity training: {ep} epochs, group lasso lambda={lam} (inputs {lam_in})")
    params, _ = fit(model, params, None, tx, data, ep, b, seed, log=log)
    err_trained = test_error(model, params, None, data["xt"], data["yt"])
    norms = {k: np.asarray(v) for k, v in jaxprune.group_norms(params, [*groups, inputs]).items()}
    sel = jaxprune.group_norm_masks(params, [*groups, inputs], args.ssl_threshold, min_keep=1)
    keep = [np.flatnonzero(np.asarray(sel.group_masks[n])) for n in ("in", "h0", "h1")]
    small = common.MLP(tuple(len(k) for k in keep[1:]))
    masks = {n: sel.group_masks[n] for n in ("in", "h0", "h1")}
    sp, _ = remove_units(model, params, None, masks)
    data = select_inputs(data, keep[0])
    err_removed = test_error(small, sp, None, data["xt"], data["yt"])
    log(
        f"  after sparsity training: error {err_trained:.2f}%; zero groups: "
        + ", ".join(f"{k} {np.mean(v == 0):.1%}" for k, v in norms.items())
    )
    log(
        "  groups with norm below 1e-4 / 1e-3 / 1e-2 / 1e-1: "
        + ", ".join(
            f"{k} " + "/".join(str(int(np.sum(v < t))) for t in (1e-4, 1e-3, 1e-2, 1e-1))
            for k, v in norms.items()
        )
    )
    log(
        f"  removed groups with norm <= {args.ssl_threshold}: 784-500-300-10 -> "
        f"{widths_str(keep)}; error right after removal {err_removed:.2f}%"
    )
    tx_ft = optax.sgd(sgd_schedule(args.ssl_finetune_lr, args.finetune_epochs, b), momentum=0.9)
    sp, _ = fit(small, sp, None, tx_ft, data, args.finetune_epochs, b, seed + 1000, log=log)
    err_ft = test_error(small, sp, None, data["xt"], data["yt"])
    plot = {"init": norms0, "after group lasso": norms}
    return {
        "method": "ssl",
        "seed": seed,
        "strength": {"neurons": lam, "inputs": lam_in, "threshold": args.ssl_threshold},
        "widths_before": "784-500-300-10",
        "widths_after": widths_str(keep),
        "sparsity_per_layer": {
            "inputs": 1 - len(keep[0]) / 784,
            "h0": 1 - len(keep[1]) / 500,
            "h1": 1 - len(keep[2]) / 300,
        },
        "error_trained": err_trained,
        "error_removed": err_removed,
        "error_finetuned": err_ft,
    }, plot


def run_l0(data, seed, args, log):
    model = L0MLP()
    params = model.init(jax.random.key(seed), data["x"][:2])["params"]
    fan_out = {"gate0": 300.0, "gate1": 100.0, "gate2": 10.0, "fc0": 0.0, "fc1": 0.0, "fc2": 0.0}
    pz0 = {
        f"gate{i}": np.asarray(
            jaxprune.hard_concrete_prob_nonzero(params[f"gate{i}"]["l0_log_alpha"])
        )
        for i in range(3)
    }
    b, ep = 100, args.epochs
    strength = args.l0_lambda / N_TRAIN
    tx = optax.chain(
        jaxprune.add_gate_penalty(strength, weight=fan_out),
        optax.adam(
            args.l0_lr
            if args.l0_schedule == "constant"
            else optax.cosine_decay_schedule(args.l0_lr, ep * (N_TRAIN // b))
        ),
        jaxprune.clip_gates(),
    )
    log(
        f"  L0 training: {ep} epochs, Adam {args.l0_lr} ({args.l0_schedule}), "
        f"lambda={args.l0_lambda} (/N)"
    )
    params, _ = fit(model, params, None, tx, data, ep, b, seed, stochastic=True, log=log)
    err_trained = test_error(model, params, None, data["xt"], data["yt"])
    groups = [G(f"in{i}", (M(f"gate{i}/l0_log_alpha", 0), M(f"fc{i}/kernel", 0))) for i in range(3)]
    sel = jaxprune.gate_masks(params, groups)
    keep = [np.flatnonzero(np.asarray(sel.group_masks[f"in{i}"])) for i in range(3)]
    folded = jaxprune.fold_gates(params, groups)
    plain = {k: v for k, v in folded.items() if k.startswith("fc")}
    small = common.MLP(tuple(len(k) for k in keep[1:]))
    masks = {n: sel.group_masks[f"in{i}"] for i, n in enumerate(("in", "h0", "h1"))}
    sp, _ = remove_units(model, plain, None, masks)
    data = select_inputs(data, keep[0])
    err_removed = test_error(small, sp, None, data["xt"], data["yt"])
    pz = {
        f"gate{i}": np.asarray(
            jaxprune.hard_concrete_prob_nonzero(params[f"gate{i}"]["l0_log_alpha"])
        )
        for i in range(3)
    }
    arch = "-".join(str(len(k)) for k in keep)
    log(
        f"  after L0 training: deterministic-gate error {err_trained:.2f}%; active inputs "
        f"{arch} (of 784-300-100); error right after removal {err_removed:.2f}%"
    )
    err_ft = err_removed
    if args.finetune_epochs:
        tx_ft = optax.adam(optax.cosine_decay_schedule(args.l0_lr / 10, args.finetune_epochs * 600))
        sp, _ = fit(small, sp, None, tx_ft, data, args.finetune_epochs, b, seed + 1000, log=log)
        err_ft = test_error(small, sp, None, data["xt"], data["yt"])
    plot = {"init": pz0, "after L0 training": pz}
    return {
        "method": "l0",
        "seed": seed,
        "strength": {"lambda": args.l0_lambda, "per_gate": "lambda/N * fan_out"},
        "widths_before": "784-300-100",
        "widths_after": arch,
        "sparsity_per_layer": {
            f"fc{i}_inputs": 1 - len(k) / n
            for i, (k, n) in enumerate(zip(keep, (784, 300, 100), strict=True))
        },
        "error_trained": err_trained,
        "error_removed": err_removed,
        "error_finetuned": err_ft,
    }, plot


METHODS = {"slimming": run_slimming, "ssl": run_ssl, "l0": run_l0}
DEFAULT_EPOCHS = {"slimming": (30, 30), "ssl": (30, 20), "l0": (100, 0)}
XLABEL = {"slimming": "|gamma|", "ssl": "group norm", "l0": "P(z != 0)"}


def make_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="all", choices=[*METHODS, "all"])
    common.add_data_arg(parser)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=None, help="sparsity-training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=None)
    parser.add_argument("--slimming-lambda", type=float, default=1.2e-3)
    parser.add_argument("--slimming-wd", type=float, default=5e-4, help="sparsity training")
    parser.add_argument("--slimming-mode", default="coupled", choices=["coupled", "prox"])
    parser.add_argument("--slimming-finetune-lr", type=float, default=0.01)
    parser.add_argument("--slimming-finetune-wd", type=float, default=5e-4)
    parser.add_argument("--slimming-finetune-schedule", default="step", choices=["step", "cosine"])
    parser.add_argument("--slimming-finetune-batch", type=int, default=256)
    parser.add_argument(
        "--slimming-distill", type=float, default=0.9, help="0: plain fine-tuning (the paper)"
    )
    parser.add_argument("--slimming-distill-temperature", type=float, default=4.0)
    parser.add_argument(
        "--slimming-distill-teacher",
        default="sparsity-trained",
        choices=["sparsity-trained", "dense"],
        help="dense: needs --slimming-dense-epochs",
    )
    parser.add_argument(
        "--slimming-dense-epochs", type=int, default=0, help="train a dense network first"
    )
    parser.add_argument(
        "--slimming-warm-start", action="store_true", help="start the L1 phase from it"
    )
    parser.add_argument("--slimming-schedule", default="step", choices=["step", "cosine"])
    parser.add_argument(
        "--slimming-rebalance",
        type=float,
        default=0.0,
        help="after removal, rescale the kept bn0 scales/shifts to this mean |gamma| (fc1 / c)",
    )
    parser.add_argument(
        "--slimming-scratch", action="store_true", help="also train the pruned widths from scratch"
    )
    parser.add_argument("--slimming-scale-init", type=float, default=0.5)
    parser.add_argument("--slimming-torch-init", action="store_true")
    parser.add_argument("--slimming-l1-start", type=int, default=0, help="first L1 epoch")
    parser.add_argument("--slimming-l1-stop", type=int, default=0, help="0: all epochs")
    parser.add_argument("--prune-ratio", type=float, default=0.8)
    parser.add_argument("--ssl-lambda", type=float, default=7e-4)
    parser.add_argument("--ssl-lambda-input", type=float, default=1.5e-4)
    parser.add_argument("--ssl-threshold", type=float, default=1e-3)
    parser.add_argument("--ssl-finetune-lr", type=float, default=0.05)
    parser.add_argument("--l0-lambda", type=float, default=0.1)
    parser.add_argument("--l0-lr", type=float, default=1e-3)
    parser.add_argument("--l0-schedule", default="cosine", choices=["constant", "cosine"])
    parser.add_argument("--plot-dir", default="benchmarks/plots")
    parser.add_argument(
        "--json", default=None, help="also write the results here (.json, plus a .md table)"
    )
    return parser


def main():
    parser = make_parser()
    args = parser.parse_args()
    needs_dense = args.slimming_warm_start or args.slimming_distill_teacher == "dense"
    if needs_dense and not args.slimming_dense_epochs:
        parser.error(
            "--slimming-warm-start / --slimming-distill-teacher dense need "
            "--slimming-dense-epochs N"
        )
    mnist = common.load_mnist(args.data)
    data = {
        "x": jnp.asarray(mnist.x_train.reshape(-1, 784)),
        "y": jnp.asarray(mnist.y_train),
        "xt": jnp.asarray(mnist.x_test.reshape(-1, 784)),
        "yt": jnp.asarray(mnist.y_test),
    }
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = list(METHODS) if args.method == "all" else [args.method]
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; load {os.getloadavg()[0]:.2f}")
    results = {}
    for name in methods:
        run_args = argparse.Namespace(**vars(args))
        e, f = DEFAULT_EPOCHS[name]
        run_args.epochs = e if args.epochs is None else args.epochs
        run_args.finetune_epochs = f if args.finetune_epochs is None else args.finetune_epochs
        rows = []
        for seed in seeds:
            t0 = time.time()
            print(f"[{name}] seed {seed}", flush=True)
            row, plot = METHODS[name](data, seed, run_args, lambda m: print(m, flush=True))
            row["seconds"] = round(time.time() - t0, 1)
            sparsity = {k: round(v, 3) for k, v in row["sparsity_per_layer"].items()}
            print(
                f"[{name}] seed {seed}: {row['widths_before']} -> {row['widths_after']}; error "
                f"trained {row['error_trained']:.2f}%, right after removal "
                f"{row['error_removed']:.2f}%, fine-tuned {row['error_finetuned']:.2f}%; "
                f"learned sparsity {json.dumps(sparsity)}; "
                f"{row['seconds']:.0f} s",
                flush=True,
            )
            if seed == seeds[0] and args.plot_dir:
                plot_hist(
                    os.path.join(args.plot_dir, f"learned_sparsity_{name}.png"),
                    name,
                    plot,
                    XLABEL[name],
                )
            rows.append(row)
        med = {
            k: statistics.median(r[k] for r in rows)
            for k in ("error_trained", "error_removed", "error_finetuned")
        }
        print(
            f"[{name}] median over seeds {seeds}: trained {med['error_trained']:.2f}%, right after "
            f"removal {med['error_removed']:.2f}%, fine-tuned {med['error_finetuned']:.2f}%; "
            f"widths {[r['widths_after'] for r in rows]}",
            flush=True,
        )
        if all(r.get("error_scratch") is not None for r in rows):
            med["error_scratch"] = statistics.median(r["error_scratch"] for r in rows)
            print(f"[{name}] control, pruned widths from scratch: {med['error_scratch']:.2f}%")
        results[name] = {"runs": rows, "median": med}
    if args.json:
        runs = [r for res in results.values() for r in res["runs"]]
        median = {name: res["median"] for name, res in results.items()}
        payload = {"args": vars(args), "runs": runs, "median": median}
        print(f"results: {common.write_result(args.json, payload)}")


if __name__ == "__main__":
    main()
