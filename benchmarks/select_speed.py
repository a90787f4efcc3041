"""Speed of exact global / layer-wise top-k selection on a ResNet-50-shaped tree.

Times jaxprune's sort-free selectors under ``jax.jit`` against a concat + ``jnp.sort`` threshold
and NumPy's ``np.partition`` on the host, and checks that the kept counts are exact.

Usage::

    python benchmarks/select_speed.py            # 54 leaves, 25,502,912 float32 weights
    python benchmarks/select_speed.py --quick    # widths / 4 (~1.6M weights)
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from fractions import Fraction

import common
import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import select


def resnet50_shapes(div: int = 1) -> dict[str, tuple[int, ...]]:
    """The 53 HWIO conv kernels and the 2048x1000 dense kernel of ResNet-50 (widths / div)."""
    shapes = {"stem/conv": (7, 7, 3, 64 // div)}
    cin = 64 // div
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True)):
        width //= div
        for block in range(blocks):
            p = f"stage{stage}/block{block}"
            shapes[p + "/conv1"] = (1, 1, cin, width)
            shapes[p + "/conv2"] = (3, 3, width, width)
            shapes[p + "/conv3"] = (1, 1, width, 4 * width)
            if block == 0:
                shapes[p + "/proj"] = (1, 1, cin, 4 * width)
            cin = 4 * width
    shapes["head/kernel"] = (cin, 1000 // div)
    return shapes


def num_dropped(s: float, n: int) -> int:
    """jaxprune's documented count: floor(s * n + min(n, 2**16) * 2**-24), s as float32."""
    return min(math.floor(Fraction(float(np.float32(s))) * n + Fraction(min(n, 2**16), 2**24)), n)


def time_jit(fn, *args, reps: int):
    """Returns (output, compile seconds, median run seconds, temp bytes)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    out = jax.block_until_ready(compiled(*args))  # warm-up
    runs = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        runs.append(time.perf_counter() - t0)
    temp = compiled.memory_analysis().temp_size_in_bytes
    return out, compile_s, statistics.median(runs), temp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 4x narrower tree (~1.6M)")
    parser.add_argument("--reps", type=int, default=3, help="timed runs per row (median)")
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--skip-sort", action="store_true", help="skip the slow jnp.sort row")
    args = parser.parse_args()
    common.print_meta()

    shapes = resnet50_shapes(4 if args.quick else 1)
    rng = np.random.default_rng(0)
    host = {k: rng.normal(0.0, 0.05, v).astype(np.float32) for k, v in shapes.items()}
    params = {k: jnp.asarray(v) for k, v in host.items()}
    n = sum(v.size for v in host.values())
    k_global = n - num_dropped(args.sparsity, n)
    k_layer = sum(max(v.size - num_dropped(args.sparsity, v.size), 1) for v in host.values())
    s = jnp.float32(args.sparsity)
    # Magnitudes on a 1e-4 grid: thousands of ties at the threshold (the tie-break path).
    grid = {k: jnp.asarray(np.round(v * 1e4) / 1e4) for k, v in host.items()}

    print(
        f"jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}, load {os.getloadavg()[0]:.1f}"
    )
    print(f"{len(shapes)} leaves, n = {n:,} float32, sparsity {args.sparsity}, K = {k_global:,}")

    def abs_tree(p):
        return jax.tree.map(jnp.abs, p)

    rows = []

    def row(name, fn, tree, expect=None, exact=True):
        masks, c, r, temp = time_jit(fn, tree, s, reps=args.reps)
        kept = int(sum(int(np.asarray(m).sum()) for m in jax.tree.leaves(masks)))
        if expect is None:
            check = "-"
        else:
            check = "exact" if kept == expect else f"{kept - expect:+d}"
            if exact:
                assert kept == expect, (name, kept, expect)
        rows.append((name, r, c, temp / 2**20, kept, check))
        print(f"  {name}: run {r:.3f} s, compile {c:.1f} s", flush=True)
        return masks

    radix = row(
        "global_topk radix",
        lambda p, s: select.global_topk(abs_tree(p), s, method="radix"),
        params,
        k_global,
    )
    bisect = row(
        "global_topk bisect",
        lambda p, s: select.global_topk(abs_tree(p), s, method="bisect"),
        params,
        k_global,
    )
    assert all(bool((radix[k] == bisect[k]).all()) for k in radix)
    row(
        "global_topk radix, 1e-4 grid (tie-break)",
        lambda p, s: select.global_topk(abs_tree(p), s, method="radix"),
        grid,
        k_global,
    )
    row(
        "layerwise_topk radix",
        lambda p, s: select.layerwise_topk(abs_tree(p), s, method="radix"),
        params,
        k_layer,
    )

    def sort_threshold(p, s):
        flat = jnp.concatenate([jnp.abs(x).ravel() for x in jax.tree.leaves(p)])
        t = jnp.sort(flat)[jnp.int32(n) - jnp.int32(k_global)]
        return jax.tree.map(lambda x: jnp.abs(x) >= t, p)

    if not args.skip_sort:
        row("concat + jnp.sort threshold (>= t)", sort_threshold, params, k_global, exact=False)

    flat = np.abs(np.concatenate([v.ravel() for v in host.values()]))
    runs = []
    for _ in range(args.reps + 1):
        t0 = time.perf_counter()
        t = np.partition(flat, n - k_global)[n - k_global]
        kept = int((flat >= t).sum())
        runs.append(time.perf_counter() - t0)
    check = "exact" if kept == k_global else f"{kept - k_global:+d}"
    rows.append(
        ("host np.partition threshold (>= t)", statistics.median(runs[1:]), 0, 0, kept, check)
    )

    print()
    print("| method | median run | compile | temp | kept | kept - K |")
    print("|---|---:|---:|---:|---:|---|")
    for name, r, c, temp, kept, check in rows:
        cs = f"{c:.1f} s" if c else "-"
        ts = f"{temp:.0f} MiB" if c else "-"
        print(f"| {name} | {r:.3f} s | {cs} | {ts} | {kept:,} | {check} |")


if __name__ == "__main__":
    main()
