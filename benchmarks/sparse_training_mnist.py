"""Sparse training on full MNIST: dense, static ERK, SET, RigL, straight-through top-k, AGP.

Every run trains the same model for the same number of epochs with the same inner optimizer
(SGD with momentum 0.9, cosine learning rate from ``--lr``, batch 128), from the seed's initial
weights; only the sparsity method changes. All sparse runs use the Erdős-Rényi-Kernel (ERK)
distribution over the kernels (biases dense) at the target sparsity:

* ``static``: ``sparse_training(method="static")``, a fixed random ERK mask;
* ``set`` / ``rigl``: ``sparse_training(method="set" | "rigl")``, mask updates every
  ``--update-every`` steps until 75% of training, drop fraction 0.3 with RigL's cosine decay
  (Mocanu et al. 2018; Evci et al. 2020); RigL gets the dense gradient as ``raw_grads``;
* ``ste``: dense weights, ``ste_topk`` with the ERK per-layer sparsities in the forward pass
  (the model evaluated is the sparse one);
* ``srste``: the same with SR-STE's decay on the pruned weights (Zhou et al. 2021,
  ``decay=--ste-decay``, default 2e-4, the paper's lambda_w);
* ``agp``: gradual magnitude pruning (Zhu & Gupta 2017), ``optax_sparsity`` with the cubic
  schedule from 10% to 60% of training, masks recomputed every ``--update-every`` steps.

Each run appends a row to ``--out`` (JSON lines, with the run's metadata); at the end the
script prints the median test error over seeds per method and sparsity, and whether RigL's
ordering (RigL <= SET <= static in error) holds.

Run: ``python benchmarks/sparse_training_mnist.py --data PATH/mnist.npz
[--model lenet300|lenet5] [--seeds 0,1,2] [--targets 0.9,0.98] [--epochs 10]``;
``--table FILE`` prints the summary of a results file.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import time

import common
import jax
import jax.numpy as jnp
import optax

import jaxprune

METHODS = ("dense", "static", "set", "rigl", "ste", "srste", "agp")


def make_model(name: str):
    if name == "lenet300":
        return common.LeNet300100()
    if name == "lenet5":
        # LeCun et al. (1998)'s widths: 6 and 16 convolution channels, 120 hidden units.
        return common.LeNet5(widths=(6, 16, 120), conv_relu=True)
    raise ValueError(f"--model must be lenet300 or lenet5, got {name!r}")


def kernels_only(params):
    return jax.tree.map(lambda p: p if p.ndim >= 2 else None, params)


def run(data, model, method, target, seed, args):
    params = model.init(jax.random.key(seed), data.x_train[:1])["params"]
    spe = data.x_train.shape[0] // 128
    total = args.epochs * spe
    inner = optax.sgd(optax.cosine_decay_schedule(args.lr, total), momentum=0.9)
    forward, raw_grads, tx = None, False, inner
    if method in ("static", "set", "rigl"):
        tx = jaxprune.sparse_training(
            inner,
            target,
            method=method,
            distribution="erk",
            update_every=args.update_every,
            end_step=3 * total // 4,
            drop_fraction=0.3,
            seed=seed,
        )
        params = jaxprune.apply_masks(params, jaxprune.masks(jax.jit(tx.init)(params)))
        raw_grads = method == "rigl"
    elif method in ("ste", "srste"):
        erk = jaxprune.distributions.erk(kernels_only(params), target)
        decay = args.ste_decay if method == "srste" else 0.0

        def forward(p):
            return jaxprune.ste_topk(p, erk, decay=decay)

    elif method == "agp":
        begin, end = total // 10, 6 * total // 10
        events = (end - begin) // args.update_every
        tx = optax.chain(
            inner,
            jaxprune.optax_sparsity(
                jaxprune.schedules.polynomial(target, begin, events, frequency=args.update_every),
                distribution="erk",
                update_every=args.update_every,
                begin_step=begin,
                end_step=begin + events * args.update_every,
            ),
        )
    t0 = time.perf_counter()
    params, state = common.fit(
        model,
        params,
        data,
        tx,
        args.epochs,
        seed=seed,
        forward=forward,
        raw_grads=raw_grads,
        loop=args.loop,
        on_epoch=epoch_logger(model, data, method, forward) if args.per_epoch else None,
    )
    jax.block_until_ready(params)
    seconds = time.perf_counter() - t0
    evaluated = forward(params) if forward is not None else params
    # Active = in the mask (a grown weight may still be 0.0, e.g. one fed by an always-black
    # border pixel); for dense and STE, the non-zeros of the evaluated kernels.
    active_of = kernels_only(evaluated)
    if method in ("static", "set", "rigl", "agp"):
        active_of = kernels_only(jaxprune.masks(state))
        evaluated = jaxprune.apply_masks(params, jaxprune.masks(state))
    active = sum(int(jnp.count_nonzero(k)) for k in jax.tree.leaves(active_of))
    n = sum(k.size for k in jax.tree.leaves(kernels_only(params)))
    acc = common.test_accuracy(model, evaluated, data)
    return {
        "model": args.model,
        "method": method,
        "sparsity": target,
        "seed": seed,
        "epochs": args.epochs,
        "error": round(100 * (1 - acc), 3),
        "kernel_sparsity": round(1 - active / n, 5),
        "active_kernel_weights": active,
        "train_seconds": round(seconds, 1),  # compilation included
        "loop": args.loop,
        **({"ste_decay": args.ste_decay} if method == "srste" else {}),
    }


def epoch_logger(model, data, method, forward):
    """``on_epoch`` for ``--per-epoch``: loss, test error and kernel-mask changes per epoch.

    The mask is the state's (``sparse_training``, AGP) or the non-zeros of the evaluated
    kernels (STE); per layer, the entries active now and not at the previous epoch's end (as
    many dropped out: the active count is fixed), the diagnostic of STE's mask oscillation.
    """
    previous = {}

    def log(epoch, params, state, loss):
        evaluated = forward(params) if forward is not None else params
        if method in ("static", "set", "rigl", "agp"):
            evaluated = jaxprune.apply_masks(params, jaxprune.masks(state))
        masks = jax.tree.map(lambda k: k != 0, kernels_only(evaluated))
        flat = {
            jax.tree_util.keystr(path, simple=True, separator="/"): v
            for path, v in jax.tree.leaves_with_path(masks)
        }
        grown = {k: int(jnp.sum(v & ~previous[k])) for k, v in flat.items() if k in previous}
        previous.update(flat)
        error = 100 * (1 - common.test_accuracy(model, evaluated, data))
        print(
            f"  epoch {epoch + 1}: loss {loss:.4f}, test error {error:.2f}%, "
            f"newly active kernel entries {grown or '-'}",
            flush=True,
        )

    return log


def summarize(rows) -> str:
    by = collections.defaultdict(list)
    for r in rows:  # SR-STE runs with different decays are different rows of the table
        method = f"srste {r['ste_decay']:g}" if "ste_decay" in r else r["method"]
        by[(r["model"], r["sparsity"], method)].append(r)
    lines = [
        "| model | sparsity | method | median error % | errors (seeds) | kernel sparsity "
        "| train s (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    medians = {}
    for (model, s, method), rs in sorted(
        by.items(),
        key=lambda kv: (kv[0][0], kv[0][1], METHODS.index(kv[0][2].split()[0]), kv[0][2]),
    ):
        errs = [r["error"] for r in sorted(rs, key=lambda r: r["seed"])]
        med = statistics.median(errs)
        medians[(model, s, method)] = med
        lines.append(
            f"| {model} | {s:g} | {method} | {med:.2f} | {', '.join(f'{e:.2f}' for e in errs)} "
            f"| {statistics.median(r['kernel_sparsity'] for r in rs):.4f} "
            f"| {statistics.median(r['train_seconds'] for r in rs):.0f} |"
        )
    for model, s in sorted({(k[0], k[1]) for k in medians if k[1] > 0}):
        try:
            r, se, st = (medians[(model, s, m)] for m in ("rigl", "set", "static"))
        except KeyError:
            continue
        verdict = "holds" if r <= se <= st else "does not hold"
        lines.append(
            f"\n{model} at {s:g}: RigL {r:.2f} / SET {se:.2f} / static {st:.2f} % error: "
            f"RigL <= SET <= static {verdict}."
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_data_arg(parser)
    parser.add_argument("--model", default="lenet300")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--targets", default="0.9,0.98")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--update-every", type=int, default=100)
    parser.add_argument(
        "--per-epoch", action="store_true", help="print loss, test error and mask swaps per epoch"
    )
    parser.add_argument("--ste-decay", type=float, default=2e-4, help="SR-STE decay (srste)")
    parser.add_argument(
        "--loop",
        choices=("scan", "steps"),
        default="scan",
        help="demo.fit's training loop: 'steps' (a jitted step per batch) is several times "
        "faster for LeNet-5 on CPU, where XLA runs convolutions slowly inside a scan",
    )
    parser.add_argument(
        "--out", default=os.path.join(common.RESULTS_DIR, "sparse_training_mnist.jsonl")
    )
    parser.add_argument("--table", default=None, help="print the summary of FILE and exit")
    args = parser.parse_args()
    if args.table:
        with open(args.table) as f:
            print(summarize([json.loads(line) for line in f if line.strip()]))
        return
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown --methods {unknown}; choose from {list(METHODS)}")
    if args.ste_decay != parser.get_default("ste_decay") and "srste" not in methods:
        parser.error("--ste-decay applies to --methods srste only")
    data = common.load_mnist(args.data)
    model = make_model(args.model)
    common.print_meta()
    print(f"args: {vars(args)}; load average {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for method in methods:
            targets = [0.0] if method == "dense" else [float(t) for t in args.targets.split(",")]
            for target in targets:
                row = run(data, model, method, target, seed, args)
                rows.append(row)
                common.append_row(args.out, row)
                print(json.dumps(row), flush=True)
    print(summarize(rows))


if __name__ == "__main__":
    main()
