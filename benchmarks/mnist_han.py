"""B1: Han et al.'s iterative magnitude pruning of LeNet-300-100 on full MNIST.

Dense training, then ``--rounds`` prune/retrain rounds whose per-layer densities shrink
geometrically towards Han's 8% / 9% / 26% (fc1 / fc2 / fc3; biases stay dense), with
``optax_sparsity`` and the per-path iterative schedules of ``jaxprune.demo.han_sparsity``.
Reports, per seed and as the median over seeds: dense and pruned test error, non-zeros
(weights and biases), compression and per-layer densities.

Target (issue 3): at least 12x at test error <= 1.55% (Han et al.: 12x at 1.59%).

Run: ``python benchmarks/mnist_han.py --data PATH/mnist.npz [--seeds 0,1,2]``
(or set ``JAXPRUNE_MNIST``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics

import common


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_data_arg(parser)
    parser.add_argument("--seeds", default="0,1,2")
    cfg = common.HanConfig(dense_epochs=40, rounds=3, retrain_epochs=10)
    for field in dataclasses.fields(cfg):
        if field.type in ("int", "float"):
            parser.add_argument(
                "--" + field.name.replace("_", "-"),
                type=int if field.type == "int" else float,
                default=getattr(cfg, field.name),
            )
    parser.add_argument(
        "--densities",
        default="0.08,0.09,0.26",
        help="final kernel densities of fc1,fc2,fc3 (Han et al.: 8%%, 9%%, 26%%)",
    )
    parser.add_argument(
        "--json", default=None, help="also write the results here (.json, plus a .md table)"
    )
    args = parser.parse_args()
    data = common.load_mnist(args.data)
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cfg)
        if f.type in ("int", "float") and f.name != "seed"
    }
    dens = [float(d) for d in args.densities.split(",")]
    overrides["densities"] = {f"Dense_{i}/kernel": d for i, d in enumerate(dens)}
    print(f"config: {overrides}; load average {os.getloadavg()[0]:.2f}")
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        run_cfg = dataclasses.replace(cfg, seed=seed, **overrides)
        r = common.train_han(data, run_cfg)
        per_layer = {
            row.path: round(1 - row.sparsity, 4)
            for row in r.stats.layers
            if row.path.endswith("kernel")
        }
        rows.append(
            {
                "seed": seed,
                "dense_error": 100 * (1 - r.dense_accuracy),
                "error": 100 * (1 - r.accuracy),
                "nonzero": r.stats.nonzero,
                "compression": r.stats.compression,
                "densities": per_layer,
                "rounds": r.history,
                "seconds": r.seconds,
            }
        )
        print(
            f"seed {seed}: dense error {rows[-1]['dense_error']:.2f}% -> pruned "
            f"{rows[-1]['error']:.2f}%, {r.stats.nonzero:,} non-zeros, "
            f"{r.stats.compression:.2f}x, densities {per_layer}, {r.seconds:.0f} s",
            flush=True,
        )
    med = statistics.median(r["error"] for r in rows)
    med_dense = statistics.median(r["dense_error"] for r in rows)
    comp = statistics.median(r["compression"] for r in rows)
    print(
        f"median over {len(rows)} seeds: dense error {med_dense:.2f}%, pruned error {med:.2f}% "
        f"at {comp:.2f}x (target: >= 12x at <= 1.55%)"
    )
    if args.json:
        common.write_result(args.json, {"config": overrides, "runs": rows})


if __name__ == "__main__":
    main()
