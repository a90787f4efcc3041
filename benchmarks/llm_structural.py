"""Width and depth pruning of SmolLM2-135M, no retraining: perplexity, params, forward time.

Width: per block keep 2 of the 3 KV groups (6 of 9 query heads) and 672 of 1536 SwiGLU
neurons, chosen by Minitron activation scores (Muralidharan et al. 2024) on calibration text;
about 50% of the non-embedding parameters remain. Depth: drop the 10 of 30 blocks with the
lowest ShortGPT block importance (Men et al. 2024). Forward time: batch 8 x 256 tokens,
jitted, the models timed interleaved round by round, median reported.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/llm_structural.py [--eval-seqs 64] [--calib-seqs 16]
"""

from __future__ import annotations

import argparse
import time

import common
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jaxprune
from examples.llm import data, evaluate, gguf_loader, structural


def non_embedding_params(m) -> int:
    p = structural.params_dict(m)
    total = sum(x.size for x in jax.tree.leaves(p))
    return total - p["embed"]["embedding"].size


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval-seqs", type=int, default=64)
    ap.add_argument("--calib-seqs", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    common.print_meta()

    t0 = time.perf_counter()
    dense = gguf_loader.load()
    tok = gguf_loader.load_tokenizer()
    stream = data.token_stream(tok)
    calib = jnp.asarray(data.calibration(stream, args.calib_seqs, 256))
    evals = data.evaluation(stream, args.eval_seqs, 256)
    print(f"load {time.perf_counter() - t0:.1f}s")

    with jax.numpy_rank_promotion("allow"):
        t0 = time.perf_counter()
        groups = jaxprune.llama_groups(dense.cfg, heads="kv_group")
        print(f"llama_groups (30 blocks) {time.perf_counter() - t0:.4f}s")
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
        print("block importance:", np.round(imp, 4).tolist())
        print("dropped blocks:", np.flatnonzero(~keep).tolist())

        models = {"dense": dense, "width": width, "depth": depth}
        fwd = nnx.jit(lambda m, t: m(t))
        x = jnp.asarray(evals[:8])
        for m in models.values():
            fwd(m, x).block_until_ready()
        times = {k: [] for k in models}
        for _ in range(args.rounds):
            for k, m in models.items():
                t = time.perf_counter()
                fwd(m, x).block_until_ready()
                times[k].append(time.perf_counter() - t)
        base_t = np.median(times["dense"])
        base_p = non_embedding_params(dense)
        print("| model | config | non-emb params | ratio | ppl | fwd 8x256 (s) | speed-up |")
        print("|---|---|---|---|---|---|---|")
        for k, m in models.items():
            c = m.cfg
            t0 = time.perf_counter()
            ppl = evaluate.perplexity(m, evals)
            te = time.perf_counter() - t0
            n = non_embedding_params(m)
            med = np.median(times[k])
            desc = f"L={c.num_layers} H={c.num_heads} KV={c.num_kv_heads} ff={c.hidden_dim}"
            print(
                f"| {k} | {desc} | {n:,} | {n / base_p:.3f} | {ppl:.2f} | {med:.3f} | "
                f"{base_t / med:.2f}x |  (eval {te:.0f}s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
