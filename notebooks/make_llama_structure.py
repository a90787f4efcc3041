"""Regenerates notebooks/08_llama_structure.ipynb (outputs stripped). Run from the repo root."""

import nbformat as nbf

nb = nbf.v4.new_notebook()
cells = []
md = lambda s: cells.append(nbf.v4.new_markdown_cell(s.strip()))
code = lambda s: cells.append(nbf.v4.new_code_cell(s.strip()))

md("""
# Width and depth pruning of a LLaMA-style decoder (SmolLM2-135M)

Structured pruning makes a pretrained decoder genuinely smaller: fewer KV groups and SwiGLU
neurons per block (**width**), or fewer blocks (**depth**). This notebook

1. finds the structured groups of the decoder from its jaxpr with `jaxprune.trace_groups`
   (grouped-query attention, SwiGLU, tied embedding) and checks them against the groups that
   `jaxprune.llama_groups` declares from the config;
2. scores them from calibration activations (Minitron, Muralidharan et al. 2024) and shrinks
   the model to a smaller dense one with `jaxprune.shrink` and `jaxprune.llama_widths`;
3. scores the blocks by how little they change the residual stream (ShortGPT, Men et al.
   2024) and drops the least important with `jaxprune.drop_blocks`;
4. recovers both by distillation from the dense model, and times prefill.

With the optional extra (`pip install -e ".[llm]"` in a clone of the repository) it runs on
SmolLM2-135M-Instruct read from its GGUF file (several minutes on 2 CPU cores, most of it in
distillation). `JAXPRUNE_NB_TINY=1` runs the same cells on a tiny random model with random
tokens instead (what the test suite and the documentation build do: the code path, not the
numbers). `benchmarks/llm_structural.py` measures the full table with 200 distillation steps.

Open in Colab (once the repository is public):
`https://colab.research.google.com/github/<owner>/jaxprune/blob/main/notebooks/08_llama_structure.ipynb`
""")
code("""
import os
import sys
import time

sys.path.insert(0, os.path.abspath(".."))  # the repository root, for `examples`
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jaxprune
from examples.llm import data, distill, evaluate, model, structural

TINY = os.environ.get("JAXPRUNE_NB_TINY") == "1"
DISTILL_STEPS = 5 if TINY else 200
""")
code("""
if TINY:  # a random 2-block model (4 query heads, 2 KV heads) and a random token stream
    dense = model.Llama(model.TINY, rngs=nnx.Rngs(0))
    stream = np.random.default_rng(0).integers(0, model.TINY.vocab_size, 20_000)
    calib = data.calibration(stream, num=8, seq_len=64)
    evals = data.evaluation(stream, num=8, seq_len=64)
    seq_len, kv_keep, mlp_keep, drop = 64, 1 / 2, 1 / 2, 1
else:
    from examples.llm import gguf_loader

    dense = gguf_loader.load()
    stream = data.token_stream(gguf_loader.load_tokenizer())
    calib = data.calibration(stream, num=16, seq_len=256)
    evals = data.evaluation(stream, num=64, seq_len=256)
    seq_len, kv_keep, mlp_keep, drop = 256, 2 / 3, 672 / 1536, 10
print(dense.cfg)
""")
md("""
## 1. The structured groups, discovered from the jaxpr

`trace_groups` follows every parameter axis through the model's computation and couples the
axes that must be pruned together. For a LLaMA block it finds the KV groups (one K head, one V
head, the query heads that read them and their rows of the output projection), the query heads
inside a KV group, the SwiGLU neurons (gate, up and the down projection's rows), and the value
`head_dim`; the residual width is unprunable because RMSNorm's mean depends on it.
""")
code("""
graphdef, state = nnx.split(dense)
t = time.perf_counter()
found = jaxprune.trace_groups(
    lambda s, x: nnx.merge(graphdef, s)(x), state, jnp.zeros((1, 8), jnp.int32)
)
print(f"trace_groups: {len(found.groups)} groups in {time.perf_counter() - t:.2f} s")

flat, _ = jax.tree_util.tree_flatten_with_path(structural.params_dict(dense))
ndim = {jax.tree_util.keystr(k, simple=True, separator="/"): v.ndim for k, v in flat}


def members(g):
    return frozenset((m.path, m.axis % ndim[m.path], m.offset) for m in g.members)


declared = jaxprune.llama_groups(dense.cfg, heads="kv_group")
discovered = {members(g) for g in found.groups}
print(
    "declared groups found in the jaxpr:",
    sum(members(g) in discovered for g in declared),
    "of",
    len(declared),
)
for g in declared[:2]:
    print(" ", g.name, "->", [m.path.split("/", 2)[-1] for m in g.members])
""")
md("""
## 2. Width: score the groups from activations, keep the best, shrink

Minitron's activation scores: the mean `|silu(gate) * up|` of each SwiGLU neuron and the norm
of each KV group's attention output, over the calibration tokens. The kept channels become a
smaller dense model with a matching config.
""")
code("""
def n_params(m):
    return sum(x.size for x in jax.tree.leaves(structural.params_dict(m)))


scores = structural.activation_scores(dense, jnp.asarray(calib))
fractions = {"kv_groups": kv_keep, "hidden": mlp_keep}
group_masks = {}
for g in declared:
    kind = g.name.rsplit("/", 1)[-1]  # "kv_groups" or "hidden"
    group_masks.update(structural.keep_top({g.name: scores[g.name]}, fractions[kind]))
width = structural.shrunk(dense, group_masks, declared)
print("new widths:", jaxprune.llama_widths(dense.cfg, group_masks))
before, after = n_params(dense), n_params(width)
print(f"parameters {before:,} -> {after:,} ({after / before:.2f})")
""")
md("""
## 3. Depth: drop the blocks that change the residual stream least

ShortGPT's block importance is one minus the cosine similarity of a block's input and output
hidden states, averaged over the calibration tokens.
""")
code("""
hidden = structural.hidden_states(dense, jnp.asarray(calib))
importance = np.asarray(jaxprune.block_importance(hidden))
keep = np.ones(dense.cfg.num_layers, bool)
keep[np.argsort(importance, kind="stable")[:drop]] = False
depth = structural.depth_pruned(dense, keep)
print("block importance:", np.round(importance, 3))
print("dropped blocks:", np.flatnonzero(~keep).tolist(), "->", depth.cfg.num_layers, "blocks")
""")
md("""
## 4. Perplexity, recovery by distillation, and prefill time

Pruning without retraining hurts a 135M model a lot; a short distillation from the dense
model (`KL(teacher || student)` on calibration windows, shapes kept) recovers most of it.
""")
code("""
ppl_dense = evaluate.perplexity(dense, evals)
print(f"dense: perplexity {ppl_dense:.2f}")
for name, m in (("width", width), ("depth", depth)):
    before = evaluate.perplexity(m, evals)
    distill.distill(
        m,
        dense,
        stream,
        steps=DISTILL_STEPS,
        batch_size=4,
        seq_len=min(128, seq_len),
        lr=3e-4,
        log_every=0,
    )
    after = evaluate.perplexity(m, evals)
    print(
        f"{name}: perplexity {before:.2f} pruned, {after:.2f} after "
        f"{DISTILL_STEPS} distillation steps"
    )
""")
code("""
@nnx.jit
def prefill(m, tokens):
    return m(tokens)


x = jnp.zeros((8, seq_len), jnp.int32)
times = {}
for name, m in (("dense", dense), ("width", width), ("depth", depth)):
    jax.block_until_ready(prefill(m, x))  # compile
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        jax.block_until_ready(prefill(m, x))
        runs.append(time.perf_counter() - t)
    times[name] = float(np.median(runs))
for name in ("width", "depth"):
    print(f"{name}: prefill speed-up {times['dense'] / times[name]:.2f}x")
""")
md("""
On SmolLM2-135M (2 CPU cores), `benchmarks/README.md` records: width pruning to 0.495 of the
non-embedding parameters goes from perplexity 116.1 to 24.7 after 200 distillation steps
(dense 16.1), depth pruning to 20 of 30 blocks from 88.6 to 21.2; prefill is 1.56x and 1.41x
faster. `examples/llm/structural.py` also exports a pruned model (`export`, `load_exported`:
a `config.json` and an orbax checkpoint).
""")

nb["cells"] = cells
nb["metadata"]["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, "notebooks/08_llama_structure.ipynb")
