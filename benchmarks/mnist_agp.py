"""B4: gradual magnitude pruning (Zhu & Gupta 2017) of LeNet-300-100 with three distributions.

30 epochs of SGD with momentum (cosine learning rate from 0.05); the cubic schedule ramps the
kernel sparsity from 0 at epoch 2 to the target at epoch 20, recomputing the masks every 100
steps, with the per-layer sparsity allocated ``uniform``, ``erk`` (Erdős-Rényi-Kernel) or
``global`` (one magnitude threshold over all kernels). Biases stay dense. Reports, per target
and distribution, the median test error over seeds, the per-layer densities and the
compression (weights and biases counted), and which distribution wins.

Run: ``python benchmarks/mnist_agp.py --data PATH/mnist.npz [--seeds 0,1,2]
[--targets 0.95,0.98]``
"""

from __future__ import annotations

import argparse
import os
import statistics

import common
import jax
import optax

import jaxprune


def run(data, target, distribution, seed, args):
    model = common.LeNet300100()
    params = model.init(jax.random.key(seed), data.x_train[:1])["params"]
    spe = data.x_train.shape[0] // 128
    begin, end, dt = args.begin_epoch * spe, args.end_epoch * spe, args.dt
    events = (end - begin) // dt
    schedule = jaxprune.schedules.polynomial(target, begin, events, frequency=dt)
    tx = optax.chain(
        optax.add_decayed_weights(args.weight_decay),
        optax.sgd(
            optax.cosine_decay_schedule(args.lr, args.epochs * spe, alpha=0.01), momentum=0.9
        ),
        jaxprune.optax_sparsity(
            schedule,
            distribution=distribution,
            update_every=dt,
            begin_step=begin,
            end_step=begin + events * dt,
        ),
    )
    params, state = common.fit(model, params, data, tx, args.epochs, seed=seed)
    masks = jaxprune.masks(state)
    acc = common.test_accuracy(model, params, data)
    stats = jaxprune.summary(params, masks, print_fn=None)
    return {
        "error": 100 * (1 - acc),
        "kernel_sparsity": stats.prunable_sparsity,
        "compression": stats.compression,
        "densities": {
            r.path.split("/")[0]: round(1 - r.sparsity, 4) for r in stats.layers if r.masked
        },
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_data_arg(parser)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--targets", default="0.95,0.98")
    parser.add_argument("--distributions", default="uniform,erk,global")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--begin-epoch", type=int, default=2)
    parser.add_argument("--end-epoch", type=int, default=20)
    parser.add_argument("--dt", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    data = common.load_mnist(args.data)
    print(f"args: {vars(args)}; load average {os.getloadavg()[0]:.2f}", flush=True)
    results = {}
    for target in [float(t) for t in args.targets.split(",")]:
        for dist in args.distributions.split(","):
            runs = [run(data, target, dist, int(s), args) for s in args.seeds.split(",")]
            med = statistics.median(r["error"] for r in runs)
            results[f"{target}/{dist}"] = runs
            print(
                f"target {target:.0%} {dist:<8} median error {med:.2f}% (runs "
                + ", ".join(f"{r['error']:.2f}" for r in runs)
                + f"); kernel sparsity {runs[0]['kernel_sparsity']:.2%}, compression "
                f"{runs[0]['compression']:.1f}x, densities {runs[0]['densities']}",
                flush=True,
            )
        best = min(
            args.distributions.split(","),
            key=lambda d: statistics.median(r["error"] for r in results[f"{target}/{d}"]),
        )
        print(f"target {target:.0%}: lowest median error with {best}", flush=True)
    if args.json:
        rows = []
        for key, runs in results.items():
            target, dist = key.split("/")
            rows += [{"target": float(target), "distribution": dist, **r} for r in runs]
        common.write_result(args.json, {"args": vars(args), "runs": rows})


if __name__ == "__main__":
    main()
