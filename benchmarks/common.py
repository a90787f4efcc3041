"""Shared parts of the benchmark scripts: models, MNIST data, training loops, result files.

The scripts in ``benchmarks/`` are run as ``python benchmarks/<script>.py`` from the
repository root; Python puts the script's directory on ``sys.path``, so they ``import common``.
Only public ``jaxprune`` names are used here (no private modules). The MNIST models
(LeNet-300-100, LeNet-5), Han et al.'s prune/retrain loop and the epoch loop ``fit`` are the
shipped ``jaxprune.demo``'s, re-exported here.

Result files. :func:`write_result` writes ``<name>.json`` holding ``{"meta": ..., **payload}``
where ``meta`` (:func:`run_meta`) records the command line, the versions of jax, flax, optax and
jaxprune, the git commit and the machine (platform, CPU count, device kind). Per-run rows go in
``payload["runs"]`` (a list of flat or nested dicts); :func:`write_result` also writes
``<name>.md``, the Markdown table of those rows. ``.jsonl`` files (one JSON object per line, as
``oneshot_smollm2.py`` writes) get the same table. Regenerate a table with::

    python benchmarks/common.py table benchmarks/results/<name>.json
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

import jaxprune
from jaxprune import demo

# The MNIST models and training loops live in the shipped demo (one home for each).
from jaxprune.demo import HAN_DENSITIES, LeNet5, LeNet300100, fit, test_accuracy  # noqa: F401
from jaxprune.demo import DemoConfig as HanConfig
from jaxprune.demo import RunResult as HanResult

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# ---------------------------------------------------------------------------------------
# Models. ``importance.tap`` marks activations for ``importance.linen_taps`` and does nothing
# otherwise.


class MLP(nn.Module):
    """Dense -> [BatchNorm] -> ReLU per hidden layer; Dense layers ``fc0..fcL``, BN ``bn0..``."""

    widths: tuple[int, ...]
    bn: bool = False
    scale_init: float = 0.5
    torch_init: bool = False  # PyTorch nn.Linear's default init
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        def dense(w, name):
            if not self.torch_init:
                return nn.Dense(w, name=name)
            bound = 1.0 / np.sqrt(x.shape[-1])  # U(-1/sqrt(fan_in), 1/sqrt(fan_in))

            def uniform(key, shape, dtype=jnp.float32):
                return jax.random.uniform(key, shape, dtype, -bound, bound)

            return nn.Dense(w, kernel_init=uniform, bias_init=uniform, name=name)

        for i, w in enumerate(self.widths):
            x = dense(w, f"fc{i}")(x)
            if self.bn:
                x = nn.BatchNorm(
                    use_running_average=not train,
                    momentum=0.9,
                    scale_init=nn.initializers.constant(self.scale_init),
                    name=f"bn{i}",
                )(x)
            x = nn.relu(x)
        return dense(self.num_classes, f"fc{len(self.widths)}")(x)


# ---------------------------------------------------------------------------------------
# Data.


def add_data_arg(parser) -> None:
    """Adds ``--data PATH`` (default ``$JAXPRUNE_MNIST``) to an argparse parser."""
    parser.add_argument(
        "--data",
        default=None,
        help="full MNIST .npz (keys x_train, y_train, x_test, y_test); default: $JAXPRUNE_MNIST",
    )


def load_mnist(path: str | None = None):
    """Full MNIST through ``jaxprune.load_mnist``; exits with its how-to message if missing."""
    try:
        return jaxprune.load_mnist(path)
    except FileNotFoundError as e:
        sys.exit(f"error: {e}")


# ---------------------------------------------------------------------------------------
# Training.


def _silent(msg: str) -> None:
    del msg


def train_han(data, cfg: HanConfig, *, model: nn.Module | None = None) -> HanResult:
    """Han et al.'s dense training then prune/retrain rounds (``jaxprune.demo.train``), quietly."""
    return demo.train(data, cfg, model=model, progress=_silent)


# ---------------------------------------------------------------------------------------
# Result files.


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return out + ("-dirty" if dirty else "")


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except (ImportError, AttributeError):
        return None


def run_meta(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command, library versions, git commit and machine of this run."""
    argv = sys.argv if argv is None else argv
    devices = jax.devices()
    return {
        "command": "python " + shlex.join(argv),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "versions": {m: _version(m) for m in ("jax", "flax", "optax", "jaxprune")},
        "git_commit": _git_commit(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average": round(os.getloadavg()[0], 2),
            "device_kind": devices[0].device_kind,
            "device_count": len(devices),
        },
    }


def print_meta() -> None:
    """Prints :func:`run_meta` as one ``meta {...}`` line (for the scripts that only print)."""
    print("meta " + json.dumps(run_meta()), flush=True)


def _flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif not isinstance(v, list):
            out[prefix + k] = v
    return out


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """One Markdown row per dict; nested dicts become ``a.b`` columns, lists are left out."""
    flat = [_flatten(r) for r in rows]
    cols: list[str] = []
    for r in flat:
        cols += [c for c in r if c not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in flat]
    return "\n".join(lines)


def table(path: str) -> str:
    """The Markdown table of a result file (``.json`` with ``runs``, or ``.jsonl``)."""
    with open(path) as f:
        if path.endswith(".jsonl"):
            rows = [json.loads(line) for line in f if line.strip()]
            meta = next((r["meta"] for r in reversed(rows) if "meta" in r), None)
            rows = [{k: v for k, v in r.items() if k != "meta"} for r in rows]
        else:
            doc = json.load(f)
            rows, meta = doc.get("runs", []), doc.get("meta")
    head = []
    if meta:
        v = meta["versions"]
        m = meta["machine"]
        head = [
            f"`{meta['command']}` ({meta['date_utc']} UTC, commit {meta['git_commit']}; "
            + ", ".join(f"{k} {x}" for k, x in v.items())
            + f"; {m['processor']}, {m['cpu_count']} CPUs, {m['device_kind']})",
            "",
        ]
    return "\n".join(head) + markdown_table(rows) + "\n"


def write_result(path: str, payload: dict[str, Any], *, argv: Sequence[str] | None = None) -> str:
    """Writes ``{"meta": run_meta(), **payload}`` to ``path`` (``.json``) and its table to the
    same name with ``.md``; returns the JSON path. ``payload["runs"]``: the per-run rows."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"meta": run_meta(argv), **payload}, f, indent=1, default=str)
    with open(os.path.splitext(path)[0] + ".md", "w") as f:
        f.write(table(path))
    return path


def append_row(path: str, row: dict[str, Any], *, argv: Sequence[str] | None = None) -> None:
    """Appends ``{**row, "meta": run_meta()}`` as one line of the ``.jsonl`` file ``path``."""
    with open(path, "a") as f:
        f.write(json.dumps({**row, "meta": run_meta(argv)}, default=str) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) != 2 or argv[0] != "table":
        sys.exit("usage: python benchmarks/common.py table RESULT_FILE(.json|.jsonl)")
    print(table(argv[1]), end="")


if __name__ == "__main__":
    main()
