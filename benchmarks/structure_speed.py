"""Structural pruning on ResNets: discovery time, counts before/after 50% pruning, shrink time.

For a Linen ResNet-18 (224x224 input, ImageNet head), ResNet-50, a CIFAR ResNet-56
(16/32/64 widths, 32x32 input) and the same ResNet-56 at 4x width: trace the groups with
``trace_groups``, keep the first half of the channels of every prunable group, shrink the
variables, rebuild the model from the widths spec and count parameters and MACs (batch 1)
before and after. The script checks the dense ResNet-18 numbers against the independent
counts (11,689,512 parameters with BN scale/shift, 1.82G MACs) and that the shrunk
variables have exactly the shapes of the rebuilt model's ``init``. Then it times the
jitted forward (batch 64) of both ResNet-56s before and after shrinking, and one 3x3
convolution per ResNet-56 stage shape at full and half width.

Usage::

    PYTHONPATH=. python benchmarks/structure_speed.py
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Sequence

import common
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import count, shrink, trace_groups, widths


class ResNet(nn.Module):
    """A Linen ResNet whose every conv's width comes from ``w`` (module name -> features)."""

    stages: Sequence[int]
    base: Sequence[int]
    bottleneck: bool
    imagenet: bool
    classes: int
    w: tuple[tuple[str, int], ...] = ()

    def conv_bn(self, x, name, feats, k, s, relu=True):
        feats = dict(self.w).get(name, feats)
        x = nn.Conv(feats, (k, k), (s, s), padding=k // 2, use_bias=False, name=name)(x)
        x = nn.BatchNorm(use_running_average=True, name=name + "_bn")(x)
        return nn.relu(x) if relu else x

    @nn.compact
    def __call__(self, x):
        if self.imagenet:
            x = self.conv_bn(x, "stem", self.base[0], 7, 2)
            x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        else:
            x = self.conv_bn(x, "stem", self.base[0], 3, 1)
        expand = 4 if self.bottleneck else 1
        cin = self.base[0]  # the unpruned width decides the layout, not the actual shapes
        for i, (n, f) in enumerate(zip(self.stages, self.base, strict=True)):
            for j in range(n):
                s = 2 if (i > 0 and j == 0) else 1
                p = f"s{i}b{j}"
                out = f * expand
                if self.bottleneck:
                    y = self.conv_bn(x, p + "c1", f, 1, 1)
                    y = self.conv_bn(y, p + "c2", f, 3, s)
                    y = self.conv_bn(y, p + "c3", out, 1, 1, relu=False)
                else:
                    y = self.conv_bn(x, p + "c1", f, 3, s)
                    y = self.conv_bn(y, p + "c2", out, 3, 1, relu=False)
                if s != 1 or cin != out:
                    x = self.conv_bn(x, p + "proj", out, 1, s, relu=False)
                cin = out
                x = nn.relu(x + y)
        return nn.Dense(self.classes, name="fc")(jnp.mean(x, axis=(1, 2)))


MODELS = {
    "ResNet-18 (224)": (ResNet((2, 2, 2, 2), (64, 128, 256, 512), False, True, 1000), 224),
    "ResNet-50 (224)": (ResNet((3, 4, 6, 3), (64, 128, 256, 512), True, True, 1000), 224),
    "ResNet-56 (CIFAR)": (ResNet((9, 9, 9), (16, 32, 64), False, False, 10), 32),
    "ResNet-56 x4 (CIFAR)": (ResNet((9, 9, 9), (64, 128, 256), False, False, 10), 32),
}
LATENCY = ("ResNet-56 (CIFAR)", "ResNet-56 x4 (CIFAR)")


def conv_probe(batch=64, reps=11):
    """Median ms of one jitted 3x3 conv per ResNet-56 stage shape, full and half width.

    Shows where the time goes: a conv's MACs scale with ``C**2`` but its memory traffic
    with ``C``, so narrow, memory-bound stages cannot speed up by the MACs ratio.
    """
    rng = np.random.default_rng(0)
    conv = jax.jit(
        lambda x, k: jax.lax.conv_general_dilated(
            x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    )
    rows = []
    for c, hw in ((16, 32), (32, 16), (64, 8)):
        args = []
        for w in (c, c // 2):
            x = jnp.asarray(rng.normal(size=(batch, hw, hw, w)), jnp.float32)
            k = jnp.asarray(rng.normal(size=(3, 3, w, w)) / np.sqrt(9 * w), jnp.float32)
            conv(x, k).block_until_ready()  # compile both shapes before timing
            args.append((x, k))
        times = ([], [])
        for _ in range(reps):  # interleaved
            for t, a in zip(times, args, strict=True):
                t0 = time.perf_counter()
                conv(*a).block_until_ready()
                t.append(time.perf_counter() - t0)
        full, half = (statistics.median(t) * 1e3 for t in times)
        gmacs = batch * hw * hw * 9 * c * c / 1e9
        rows.append((c, hw, full, half, gmacs / full * 1e3, gmacs / 4 / half * 1e3))
    return rows


def latency(model, small, variables, small_vars, batch=64, reps=7):
    """Median seconds of the jitted forward, dense and shrunk runs interleaved."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, 32, 32, 3)), jnp.float32)
    fa, fb = jax.jit(model.apply), jax.jit(small.apply)
    fa(variables, x).block_until_ready()
    fb(small_vars, x).block_until_ready()
    ta, tb = [], []
    for _ in range(reps):
        for f, v, out in ((fa, variables, ta), (fb, small_vars, tb)):
            t0 = time.perf_counter()
            f(v, x).block_until_ready()
            out.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-latency", action="store_true", help="skip the ResNet-56 timings")
    args = parser.parse_args()
    common.print_meta()
    rows = []
    lat = {}
    for name, (model, size) in MODELS.items():
        x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
        shapes = jax.eval_shape(model.init, jax.random.key(0), x)
        t0 = time.perf_counter()
        found = trace_groups(model.apply, shapes, x)
        t_trace = time.perf_counter() - t0
        variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
        gm = {}
        for g in found.groups:
            c = next(v.shape[m.axis] for m in g.members if m.whole for v in [_leaf(shapes, m)])
            gm[g.name] = np.arange(c) < c // 2
        t0 = time.perf_counter()
        small_vars = shrink(variables, gm, found.groups)
        t_shrink = time.perf_counter() - t0
        spec = widths(found.groups, gm, shapes)
        small = dataclasses.replace(model, w=tuple(sorted(spec.items())))
        ref = jax.eval_shape(small.init, jax.random.key(0), x)
        same = jax.tree.map(np.shape, small_vars) == jax.tree.map(lambda s: s.shape, ref)
        assert same, "shrunk variables do not match the rebuilt model"
        before, after = count(model.apply, shapes, x), count(small.apply, ref, x)

        def n_params(c):
            return sum(v for k, v in c.params.items() if k.startswith("params/"))

        rows.append(
            (
                name,
                len(found.groups),
                len(found.unprunable),
                n_params(before),
                before.total_macs,
                n_params(after),
                after.total_macs,
                t_trace,
                t_shrink,
            )
        )
        if name in LATENCY and not args.no_latency:
            dense = jax.tree.map(_random_like, shapes)
            small_dense = shrink(dense, gm, found.groups)
            lat[name] = (
                *latency(model, small, dense, small_dense),
                before.total_macs / after.total_macs,
            )
        if name.startswith("ResNet-18"):
            assert n_params(before) == 11_689_512, n_params(before)
            assert abs(before.total_macs / 1.82e9 - 1) < 0.01, before.total_macs
    print(
        "| model | groups | unprunable | params | MACs | params 50% | MACs 50% | "
        "trace_groups | shrink |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:,} | {r[4] / 1e9:.3f}G | {r[5]:,} | "
            f"{r[6] / 1e9:.3f}G | {r[7]:.2f} s | {r[8]:.2f} s |"
        )
    for name, (ta, tb, ratio) in lat.items():
        print(
            f"\n{name} jitted forward, batch 64, median of 7 interleaved: "
            f"dense {ta * 1e3:.1f} ms, shrunk {tb * 1e3:.1f} ms, "
            f"speed-up {ta / tb:.2f}x (MACs ratio {ratio:.2f}x,"
            f" measured / MACs ratio {ta / tb / ratio:.2f})"
        )
    if not args.no_latency:
        print("\nOne 3x3 conv per ResNet-56 stage, batch 64, median of 11 interleaved:")
        print("| channels | map | full ms | half ms | speed-up (MACs 4x) | GMAC/s full | half |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for c, hw, full, half, g_full, g_half in conv_probe():
            print(
                f"| {c} -> {c // 2} | {hw}x{hw} | {full:.2f} | {half:.2f} | {full / half:.2f}x | "
                f"{g_full:.0f} | {g_half:.0f} |"
            )


_RNG = np.random.default_rng(1)


def _random_like(s):
    return jnp.asarray(_RNG.normal(size=s.shape) * 0.1 + 0.5, s.dtype)


def _leaf(tree, member):
    node = tree
    for part in member.path.split("/"):
        node = node[part]
    return node


if __name__ == "__main__":
    main()
