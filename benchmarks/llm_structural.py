"""Width and depth pruning of SmolLM2-135M, then recovery by distillation; size, MACs, latency.

Width: per block keep 2 of the 3 KV groups (6 of 9 query heads) and 672 of 1536 SwiGLU
neurons, chosen by Minitron activation scores (Muralidharan et al. 2024) on calibration text;
about 50% of the non-embedding parameters remain. Depth: drop the 10 of 30 blocks with the
lowest ShortGPT block importance (Men et al. 2024). Both are real, smaller dense models
(``jaxprune.shrink`` / ``jaxprune.drop_blocks`` and a rebuilt config).

Then, for each pruned model: perplexity on the held-out ``pydoc_data`` windows right after
pruning; recovery by logit distillation from the dense model (``examples/llm/distill.py``:
``KL(teacher || student)`` on random calibration windows, Adam, shapes kept) and perplexity
again; the fraction of the perplexity gap that recovery closed.

Latency (jitted, the three models interleaved round by round, median reported): prefill of a
batch of 8 x 256 tokens and greedy batch-1 decoding of 128 tokens with a KV cache. MACs are
counted from each function's jaxpr with ``jaxprune.count``; the efficiency is the measured
speed-up divided by the MACs ratio (target >= 0.8 for prefill).

Usage (from the repository root; ``pip install -e ".[llm]"``)::

    PYTHONPATH=. python benchmarks/llm_structural.py [--distill-steps 200] [--rounds 5]
    PYTHONPATH=. python benchmarks/llm_structural.py --skip-quality --rounds 7 \
        --out benchmarks/results/llm_structural_latency.json   # latency only, on an idle machine
"""

from __future__ import annotations

import argparse
import os
import time

import common
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jaxprune
from examples.llm import data, distill, evaluate, gguf_loader, structural

DECODE_TOKENS = 128


def non_embedding_params(m) -> int:
    p = structural.params_dict(m)
    total = sum(x.size for x in jax.tree.leaves(p))
    return total - p["embed"]["embedding"].size


def _macs(m, fn, *args) -> int:
    graphdef, state = nnx.split(m)
    return jaxprune.count(lambda s, *a: fn(nnx.merge(graphdef, s), *a), state, *args).total_macs


@nnx.jit
def prefill(m, tokens):
    return m(tokens)


@nnx.jit
def decode(m, first):
    """Greedy decoding of ``DECODE_TOKENS`` tokens from ``first`` ``(batch,)``, KV-cached."""
    cache = m.init_cache(first.shape[0], DECODE_TOKENS)

    def step(pos, carry):
        tok, cache, out = carry
        logits, cache = m.decode_step(tok, cache, pos)
        tok = jnp.argmax(logits, axis=-1).astype(tok.dtype)
        return tok, cache, out.at[:, pos].set(tok)

    out = jnp.zeros((first.shape[0], DECODE_TOKENS), first.dtype)
    return jax.lax.fori_loop(0, DECODE_TOKENS, step, (first, cache, out))[2]


def prune(dense, calib):
    t0 = time.perf_counter()
    groups = jaxprune.llama_groups(dense.cfg, heads="kv_group")
    analysis_s = time.perf_counter() - t0
    scores = structural.activation_scores(dense, calib)
    fracs = {"kv_groups": 2 / 3, "hidden": 672 / 1536}
    masks = {}
    for g in groups:
        kind = g.name.rsplit("/", 1)[-1]
        masks.update(structural.keep_top({g.name: scores[g.name]}, fracs[kind]))
    width = structural.shrunk(dense, masks, groups)
    imp = np.asarray(jaxprune.block_importance(structural.hidden_states(dense, calib)))
    keep = np.ones(dense.cfg.num_layers, bool)
    keep[np.argsort(imp, kind="stable")[:10]] = False
    depth = structural.depth_pruned(dense, keep)
    info = {
        "llama_groups_seconds": round(analysis_s, 4),
        "block_importance": np.round(imp, 4).tolist(),
        "dropped_blocks": np.flatnonzero(~keep).tolist(),
    }
    return {"width": width, "depth": depth}, info


def latency(models, rounds):
    x = jnp.zeros((8, 256), jnp.int32) + 17
    first = jnp.asarray([1], jnp.int32)
    for m in models.values():  # compile
        jax.block_until_ready(prefill(m, x))
        jax.block_until_ready(decode(m, first))
    times = {k: {"prefill": [], "decode": []} for k in models}
    for _ in range(rounds):
        for k, m in models.items():
            t = time.perf_counter()
            jax.block_until_ready(prefill(m, x))
            times[k]["prefill"].append(time.perf_counter() - t)
            t = time.perf_counter()
            jax.block_until_ready(decode(m, first))
            times[k]["decode"].append(time.perf_counter() - t)
    out = {}
    for k, m in models.items():
        cache = m.init_cache(1, DECODE_TOKENS)
        macs_prefill = _macs(m, lambda mm, t: mm(t), x)
        # One decode step at the middle of the cache (attention reads all of it, masked).
        macs_decode = _macs(
            m, lambda mm, t, c: mm.decode_step(t, c, DECODE_TOKENS // 2)[0], first, cache
        )
        out[k] = {
            "prefill_s": float(np.median(times[k]["prefill"])),
            "decode_s": float(np.median(times[k]["decode"])),
            "prefill_macs": macs_prefill,
            "decode_step_macs": macs_decode,
        }
    base = out["dense"]
    for r in out.values():
        for phase, macs in (("prefill", "prefill_macs"), ("decode", "decode_step_macs")):
            speedup = base[f"{phase}_s"] / r[f"{phase}_s"]
            ratio = base[macs] / r[macs]
            r[f"{phase}_speedup"] = round(speedup, 3)
            r[f"{phase}_macs_ratio"] = round(ratio, 3)
            r[f"{phase}_efficiency"] = round(speedup / ratio, 3)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-seqs", type=int, default=64)
    ap.add_argument("--calib-seqs", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--distill-steps", type=int, default=200)
    ap.add_argument("--distill-batch", type=int, default=4)
    ap.add_argument("--distill-len", type=int, default=128)
    ap.add_argument("--distill-lr", type=float, default=3e-4)
    ap.add_argument("--models", default="width,depth")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument(
        "--skip-quality", action="store_true", help="latency only: no perplexity, no distillation"
    )
    ap.add_argument("--out", default=os.path.join(common.RESULTS_DIR, "llm_structural.json"))
    args = ap.parse_args()
    common.print_meta()

    t0 = time.perf_counter()
    dense = gguf_loader.load()
    tok = gguf_loader.load_tokenizer()
    stream = data.token_stream(tok)
    calib = jnp.asarray(data.calibration(stream, args.calib_seqs, 256))
    evals = data.evaluation(stream, args.eval_seqs, 256)
    print(f"load {time.perf_counter() - t0:.1f}s", flush=True)

    # Record the output path relative to the repository, not this machine's absolute path.
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = {"args": {**vars(args), "out": os.path.relpath(os.path.abspath(args.out), repo)}}
    with jax.numpy_rank_promotion("allow"):
        pruned, info = prune(dense, calib)
        pruned = {k: pruned[k] for k in args.models.split(",")}
        result.update(info)
        print(info, flush=True)
        models = {"dense": dense, **pruned}
        if not args.skip_latency:
            result["latency"] = latency(models, args.rounds)
            print(result["latency"], flush=True)
            common.write_result(args.out, result)
        if args.skip_quality:
            return
        rows = []
        base_p = non_embedding_params(dense)
        ppl_dense = evaluate.perplexity(dense, evals)
        for k, m in models.items():
            c = m.cfg
            n = non_embedding_params(m)
            row = {
                "model": k,
                "config": f"L={c.num_layers} H={c.num_heads} KV={c.num_kv_heads} ff={c.hidden_dim}",
                "non_embedding_params": n,
                "params_ratio": round(n / base_p, 3),
                "ppl_pruned": round(
                    ppl_dense if k == "dense" else evaluate.perplexity(m, evals), 3
                ),
            }
            print(row, flush=True)
            if k != "dense" and args.distill_steps:
                t0 = time.perf_counter()
                losses = distill.distill(
                    m,
                    dense,
                    stream,
                    steps=args.distill_steps,
                    batch_size=args.distill_batch,
                    seq_len=args.distill_len,
                    lr=args.distill_lr,
                )
                row["distill_seconds"] = round(time.perf_counter() - t0, 1)
                row["distill_kl_first_last"] = [
                    round(float(np.mean(losses[:10])), 4),
                    round(float(np.mean(losses[-10:])), 4),
                ]
                row["ppl_distilled"] = round(evaluate.perplexity(m, evals), 3)
                gap = row["ppl_pruned"] - ppl_dense
                row["gap_closed"] = round((row["ppl_pruned"] - row["ppl_distilled"]) / gap, 3)
                print(row, flush=True)
            rows.append(row)
            result["runs"] = rows
            common.write_result(args.out, result)
    print(common.table(args.out))


if __name__ == "__main__":
    main()
