"""B8: structured pruning criteria on full MNIST (LeNet-5 with conv ReLU, LeNet-300-100).

From one dense model per seed, prune 50% of the channels / neurons of every prunable layer
(LeNet-5: conv1 filters, conv2 filters, fc1 neurons; LeNet-300-100: both hidden layers)
one-shot with each criterion, and report test accuracy right after pruning and after one
epoch of fine-tuning (SGD, momentum 0.9, lr 0.01, masks fixed). Criteria:

* ``random``: uniform scores;
* ``l1``: L1 norm of each filter / neuron's kernel slice (Li et al.);
* ``apoz``: ``1 - APoZ`` of the post-ReLU outputs (Hu et al.);
* ``taylor``: per-example ``|mean_m a * dL/da|``, averaged (Molchanov et al.);
* ``thinet``: greedy next-layer reconstruction + least-squares rescaling, layer after layer
  (Luo et al.; 10 images per class x 10 locations); ``thinet-nols`` is the same selection
  without the rescaling (accuracy before fine-tuning only);
* ``nisp``: Inf-FS (alpha 0.5, r = 0.9 / rho) on the final response layer (LeNet-5 fc1 /
  LeNet-300-100's 100-unit layer), propagated back with ``s_k = |W| s_{k+1}`` (Yu et al.).

Activation statistics (APoZ, Taylor, Inf-FS) use 10,000 training images. Fine-tuning runs on
the physically smaller network (the kept channels sliced out), which is the same computation
as fine-tuning the masked network with pruned weights held at zero, and ~3x cheaper for
LeNet-5 (checked: the masked and the sliced networks give the same logits).

Run from the repository root::

    python benchmarks/structured_criteria_mnist.py --data PATH/mnist.npz --seeds 0,1,2

(or set ``JAXPRUNE_MNIST``); ``--json FILE`` also writes the per-seed accuracies (with
``common.run_meta``) and a Markdown table. ``--inf-fs-pixels 10000`` instead runs the B10
unit benchmark: Inf-FS on MNIST pixels against a float64 NumPy/SciPy reference (needs SciPy).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import time

import common
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxprune
from jaxprune import importance

M = jaxprune.Member
CRITERIA = ("random", "l1", "apoz", "taylor", "thinet", "nisp")


def lenet5_spec():
    groups = [
        jaxprune.Group("conv1", (M("conv1/kernel", -1), M("conv1/bias", 0), M("conv2/kernel", -2))),
        jaxprune.Group(
            "conv2", (M("conv2/kernel", -1), M("conv2/bias", 0), M("fc1/kernel", 0, outer=16))
        ),
        jaxprune.Group("fc1", (M("fc1/kernel", 1), M("fc1/bias", 0), M("fc2/kernel", 0))),
    ]
    # ThiNet: (group, tap holding the consumer's input, consumer kernel, consumer member).
    thinet = [
        ("conv1", "pool1", "conv2/kernel", M("conv2/kernel", -2)),
        ("conv2", "pool2", "fc1/kernel", M("fc1/kernel", 0, outer=16)),
        ("fc1", "fc1", "fc2/kernel", M("fc2/kernel", 0)),
    ]
    nisp_layers = [
        importance.ConvLayer("conv1/kernel", name="conv1"),
        importance.PoolLayer((2, 2)),
        importance.ConvLayer("conv2/kernel", name="conv2"),
        importance.PoolLayer((2, 2)),
        importance.FlattenLayer(),
        importance.DenseLayer("fc1/kernel", name="fc1"),
    ]
    return dict(
        name="LeNet-5 (conv ReLU)",
        make=lambda widths=(20, 50, 500): common.LeNet5(tuple(widths), conv_relu=True),
        widths=(20, 50, 500),
        groups=groups,
        thinet=thinet,
        nisp=nisp_layers,
        frl="fc1",
        input_shape=(28, 28, 1),
        dense_lr=0.05,
    )


def lenet300_spec():
    groups = [
        jaxprune.Group("fc1", (M("fc1/kernel", 1), M("fc1/bias", 0), M("fc2/kernel", 0))),
        jaxprune.Group("fc2", (M("fc2/kernel", 1), M("fc2/bias", 0), M("fc3/kernel", 0))),
    ]
    thinet = [
        ("fc1", "fc1", "fc2/kernel", M("fc2/kernel", 0)),
        ("fc2", "fc2", "fc3/kernel", M("fc3/kernel", 0)),
    ]
    nisp_layers = [
        importance.FlattenLayer(),
        importance.DenseLayer("fc1/kernel", name="fc1"),
        importance.DenseLayer("fc2/kernel", name="fc2"),
    ]
    return dict(
        name="LeNet-300-100",
        make=lambda widths=(300, 100): common.LeNet300100(
            tuple(widths), names=("fc1", "fc2", "fc3")
        ),
        widths=(300, 100),
        groups=groups,
        thinet=thinet,
        nisp=nisp_layers,
        frl="fc2",
        input_shape=(28, 28, 1),
        dense_lr=0.05,
    )


# ---------------------------------------------------------------------------------------
# Training and evaluation.


def ce_sum(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()


def make_trainer(model, tx, batch_size):
    @jax.jit
    def step(params, opt_state, masks, x, y):
        def loss_fn(p):
            return ce_sum(model.apply({"params": p}, x), y) / x.shape[0]

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if masks is not None:
            params = jaxprune.apply_masks(params, masks)
        return params, opt_state

    def run_epoch(params, opt_state, x, y, key, masks=None):
        perm = np.asarray(jax.random.permutation(key, x.shape[0]))
        for i in range(x.shape[0] // batch_size):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            params, opt_state = step(params, opt_state, masks, x[idx], y[idx])
        return params, opt_state

    return run_epoch


def accuracy(model, params, x, y, batch=1000):
    @jax.jit
    def correct(params, xb, yb):
        return jnp.sum(jnp.argmax(model.apply({"params": params}, xb), -1) == yb)

    total = sum(
        int(correct(params, x[i : i + batch], y[i : i + batch])) for i in range(0, len(x), batch)
    )
    return total / len(x)


# ---------------------------------------------------------------------------------------
# Statistics and criteria.


def collect_stats(model, params, x, y, taps, frl, batch=500):
    """APoZ / mean / Taylor statistics of `taps` and the FRL response matrix, one pass.

    `taps` maps tap names to channel counts; `frl` is (tap name, width).
    """
    state = importance.channel_stats_init(taps)
    responses = importance.responses_init(frl[1], capacity=x.shape[0])

    @jax.jit
    def step(state, responses, xb, yb):
        t = _taps(model, params, xb, yb)
        acts = {k: t.activations[k] for k in taps}
        grads = {k: t.gradients[k] for k in taps}
        state = importance.channel_stats_update(state, acts, grads)
        return state, importance.responses_update(responses, t.activations[frl[0]])

    for i in range(0, x.shape[0], batch):
        state, responses = step(state, responses, x[i : i + batch], y[i : i + batch])
    return importance.channel_stats_finalize(state), importance.responses_finalize(responses)


def _taps(model, params, x, y):
    return importance.linen_taps(model.apply, {"params": params}, x, loss_fn=lambda o: ce_sum(o, y))


def thinet_prune(model, params, spec, x, y, key, sparsity):
    """Layer after layer: sample, greedy-select, least-squares rescale the consumer."""
    keep_all, params_ls, errors = {}, params, {}
    for name, tap_name, kernel_path, member in spec["thinet"]:
        channels = jaxprune.check_groups(spec["groups"], params)[name]
        state = importance.thinet_init(channels)
        kernel = _leaf(params_ls, kernel_path)

        @jax.jit
        def step(state, k, xb, yb, params_ls=params_ls, kernel=kernel, tap_name=tap_name):
            acts = importance.linen_taps(model.apply, {"params": params_ls}, xb).activations
            return importance.thinet_update(state, k, acts[tap_name], kernel, yb)

        for i in range(0, x.shape[0], 500):
            if int(jnp.min(state.per_class)) >= 10:
                break
            state = step(state, jax.random.fold_in(key, i), x[i : i + 500], y[i : i + 500])
        samples = importance.thinet_finalize(state)
        num_remove = int(np.floor(sparsity * channels))
        keep = importance.thinet_greedy(samples, num_remove)
        scale = importance.thinet_lstsq(samples, keep)
        errors[name] = (
            float(importance.thinet_error(samples, keep.astype(jnp.float32))),
            float(importance.thinet_error(samples, scale)),
        )
        keep_all[name] = keep
        params_ls = importance.scale_input_channels(params_ls, member, scale)
        # Prune this layer before sampling the next one (ThiNet is sequential).
        params_ls = _mask_groups(params_ls, {name: keep}, spec["groups"])
    return keep_all, params_ls, errors


def _mask_groups(params, keep, groups):
    chosen = [g for g in groups if g.name in keep]
    masks = jaxprune.expand_group_masks(keep, chosen, params)
    return jaxprune.apply_masks(params, masks)


def group_scores_for(criterion, model, params, spec, stats, responses, key):
    groups = spec["groups"]
    sizes = jaxprune.check_groups(groups, params)
    if criterion == "random":
        return {
            g: jax.random.uniform(jax.random.fold_in(key, i), (n,))
            for i, (g, n) in enumerate(sizes.items())
        }
    if criterion == "l1":
        producer = [jaxprune.Group(g.name, (g.members[0],)) for g in groups]
        return jaxprune.group_scores(params, producer, reduction="l1")
    if criterion == "apoz":
        return {g: v for g, v in importance.apoz_scores(stats).items() if g in sizes}
    if criterion == "taylor":
        return {g: v for g, v in importance.activation_taylor_scores(stats).items() if g in sizes}
    if criterion == "nisp":
        rows, valid = responses
        frl = jax.jit(importance.inf_fs)(rows, valid=valid)
        return importance.nisp_scores(params, frl, spec["nisp"], spec["input_shape"])
    raise ValueError(criterion)


def _leaf(params, path):
    """The leaf of ``params`` at ``'a/b'``."""
    for k in path.split("/"):
        params = params[k]
    return params


# ---------------------------------------------------------------------------------------


def run_model(spec, data, seed, args, log):
    key = jax.random.key(seed)
    k_init, k_data, k_rand, k_thinet, k_ft = jax.random.split(key, 5)
    model = spec["make"]()
    x_tr, y_tr = data.x_train, data.y_train
    params = model.init(k_init, x_tr[:1])["params"]
    epochs = args.lenet5_epochs if "LeNet-5" in spec["name"] else args.lenet300_epochs
    steps = epochs * (x_tr.shape[0] // args.batch)
    tx = optax.chain(
        optax.add_decayed_weights(5e-4),
        optax.sgd(optax.cosine_decay_schedule(spec["dense_lr"], steps), momentum=0.9),
    )
    run_epoch = make_trainer(model, tx, args.batch)
    opt_state = tx.init(params)
    t0 = time.perf_counter()
    for e in range(epochs):
        params, opt_state = run_epoch(params, opt_state, x_tr, y_tr, jax.random.fold_in(k_data, e))
    dense_acc = accuracy(model, params, data.x_test, data.y_test)
    secs = time.perf_counter() - t0
    log(f"  seed {seed}: dense {epochs} epochs -> {100 * dense_acc:.2f}% ({secs:.0f} s)")

    # Statistics from 10,000 training images (the seed's shuffled order).
    order = np.asarray(jax.random.permutation(jax.random.fold_in(k_data, 999), x_tr.shape[0]))
    xs, ys = x_tr[order[: args.stats_images]], y_tr[order[: args.stats_images]]
    t0 = time.perf_counter()
    sizes = jaxprune.check_groups(spec["groups"], params)
    frl = (spec["frl"], sizes[spec["frl"]])
    stats, responses = collect_stats(model, params, xs, ys, sizes, frl)
    secs = time.perf_counter() - t0
    log(f"  seed {seed}: activation statistics ({args.stats_images} images) {secs:.1f} s")

    groups = spec["groups"]
    small_widths = None
    ft_tx = optax.sgd(args.finetune_lr, momentum=0.9)
    results = {}
    for criterion in args.criteria:
        t0 = time.perf_counter()
        pruned_params = params
        extra = ""
        if criterion == "thinet":
            keep, pruned_params, errors = thinet_prune(
                model, params, spec, xs, ys, k_thinet, args.sparsity
            )
            extra = " sampled error removal -> least squares: " + ", ".join(
                f"{k} {a:.4g} -> {b:.4g}" for k, (a, b) in errors.items()
            )
            nols = _mask_groups(params, keep, groups)
            results["thinet-nols"] = (accuracy(model, nols, data.x_test, data.y_test), None)
        else:
            scores = group_scores_for(
                criterion, model, params, spec, stats, responses, jax.random.fold_in(k_rand, seed)
            )
            keep = importance.select_groups(scores, args.sparsity)
        masked = _mask_groups(pruned_params, keep, groups)
        small = jaxprune.shrink(masked, keep, groups)
        widths = tuple(int(np.sum(keep[g.name])) for g in groups)
        small_model = spec["make"](widths + tuple(spec["widths"][len(widths) :]))
        if small_widths is None:  # check once: masked and sliced networks agree
            a = model.apply({"params": masked}, data.x_test[:256])
            b = small_model.apply({"params": small}, data.x_test[:256])
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
        small_widths = widths
        before = accuracy(small_model, small, data.x_test, data.y_test)
        ft_epoch = make_trainer(small_model, ft_tx, args.batch)
        ft_params, ft_state = small, ft_tx.init(small)
        for e in range(args.finetune_epochs):
            ft_params, ft_state = ft_epoch(
                ft_params, ft_state, x_tr, y_tr, jax.random.fold_in(k_ft, e)
            )
        after = accuracy(small_model, ft_params, data.x_test, data.y_test)
        results[criterion] = (before, after)
        secs = time.perf_counter() - t0
        log(
            f"  seed {seed}: {criterion:<7} widths {widths}: {100 * before:.2f}% -> "
            f"{100 * after:.2f}% after {args.finetune_epochs} epoch(s) ({secs:.0f} s)" + extra
        )
    return dense_acc, results


def inf_fs_pixels(data, n, log):
    """B10: Inf-FS on MNIST pixels against a NumPy/SciPy float64 reference."""
    import scipy.stats

    x = data.x_train[:n].reshape(n, -1)
    const = x.std(axis=0) == 0
    for undefined in (1.0, 0.0):
        f = jax.jit(lambda v, u=undefined: importance.inf_fs(v, undefined_correlation=u))
        jax.block_until_ready(f(x))  # compile
        t0 = time.perf_counter()
        got = np.asarray(jax.block_until_ready(f(x)))
        secs = time.perf_counter() - t0
        x64 = np.asarray(x, np.float64)
        ranks = scipy.stats.rankdata(x64, axis=0, method="average")
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = np.corrcoef(ranks, rowvar=False)
        rho = np.where(np.isnan(rho), undefined, rho)
        sd = x64.std(axis=0)
        sig = np.maximum(sd[:, None], sd[None, :])
        sig = (sig - sig.min()) / (sig.max() - sig.min())
        a = 0.5 * sig + 0.5 * (1 - np.abs(rho))
        r = 0.9 / np.max(np.abs(np.linalg.eigvalsh(a)))
        ref = np.linalg.solve(np.eye(a.shape[0]) - r * a, np.ones(a.shape[0])) - 1
        rel = np.max(np.abs(got - ref) / np.abs(ref))
        below = int(np.sum(got[~const] <= got[const].max()))
        log(
            f"Inf-FS on {n} x {x.shape[1]} MNIST pixels, undefined_correlation={undefined}: "
            f"{secs:.2f} s (jitted, after compilation); max relative difference to the float64 "
            f"NumPy/SciPy reference {rel:.1e}; {int(const.sum())} constant pixels; "
            f"{below} non-constant pixels score at or below the best constant one"
        )


def fmt(values):
    values = [100 * v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_data_arg(parser)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--models", default="lenet300,lenet5")
    parser.add_argument("--criteria", default=",".join(CRITERIA))
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--lenet5-epochs", type=int, default=2)
    parser.add_argument("--lenet300-epochs", type=int, default=10)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--finetune-lr", type=float, default=0.01)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--stats-images", type=int, default=10_000)
    parser.add_argument("--train-subset", type=int, default=0, help="debug: use N training images")
    parser.add_argument(
        "--inf-fs-pixels", type=int, default=0, help="B10: run Inf-FS on N MNIST pixel rows only"
    )
    parser.add_argument(
        "--json", default=None, help="also write the results here (.json, plus a .md table)"
    )
    args = parser.parse_args()
    args.criteria = [c for c in args.criteria.split(",") if c]
    data = common.load_mnist(args.data)
    if args.train_subset:
        data = data._replace(
            x_train=data.x_train[: args.train_subset], y_train=data.y_train[: args.train_subset]
        )
    seeds = [int(s) for s in args.seeds.split(",")]
    specs = {"lenet5": lenet5_spec, "lenet300": lenet300_spec}
    log = functools.partial(print, flush=True)
    log(
        f"{time.strftime('%Y-%m-%d %H:%M')}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; jax {jax.__version__}; "
        f"args {vars(args)}"
    )
    if args.inf_fs_pixels:
        inf_fs_pixels(data, args.inf_fs_pixels, log)
        return
    t_start = time.perf_counter()
    tables, rows = [], []
    for name in args.models.split(","):
        spec = specs[name]()
        log(f"{spec['name']}:")
        dense, per = [], {}
        for seed in seeds:
            d, res = run_model(spec, data, seed, args, log)
            dense.append(d)
            rows.append({"model": name, "seed": seed, "criterion": "dense", "before": d})
            for c, v in res.items():
                per.setdefault(c, []).append(v)
                rows.append(
                    {"model": name, "seed": seed, "criterion": c, "before": v[0], "after": v[1]}
                )
        lines = [
            f"### {spec['name']}: prune {args.sparsity:.0%} of every prunable layer "
            f"(mean ± std over seeds {seeds}, test accuracy %)",
            "",
            "| criterion | before fine-tuning | after fine-tuning | beats random before FT |",
            "|---|---|---|---|",
            f"| dense | {fmt(dense)} | | |",
        ]
        rand = statistics.mean(b for b, _ in per["random"]) if "random" in per else None
        for c, vals in per.items():
            before = [b for b, _ in vals]
            after = [a for _, a in vals]
            beats = (
                ""
                if rand is None or c == "random"
                else ("yes" if statistics.mean(before) > rand else "**no**")
            )
            lines.append(f"| {c} | {fmt(before)} | {fmt(after)} | {beats} |")
        tables.append("\n".join(lines))
        log("")
        log(tables[-1])
        log("")
    log(f"total {time.perf_counter() - t_start:.0f} s")
    if args.json:
        payload = {"args": vars(args), "runs": rows, "tables": tables}
        log(f"results: {common.write_result(args.json, payload)}")


if __name__ == "__main__":
    main()
