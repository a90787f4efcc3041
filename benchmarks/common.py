"""Shared parts of the benchmark scripts: models, MNIST data, training loops, result files.

The scripts in ``benchmarks/`` are run as ``python benchmarks/<script>.py`` from the
repository root; Python puts the script's directory on ``sys.path``, so they ``import common``.
Only public ``jaxprune`` names are used here (no private modules, nothing from the shipped
``jaxprune.demo``).

Result files. :func:`write_result` writes ``<name>.json`` holding ``{"meta": ..., **payload}``
where ``meta`` (:func:`run_meta`) records the command line, the versions of jax, flax, optax and
jaxprune, the git commit and the machine (platform, CPU count, device kind). Per-run rows go in
``payload["runs"]`` (a list of flat or nested dicts); :func:`write_result` also writes
``<name>.md``, the Markdown table of those rows. ``.jsonl`` files (one JSON object per line, as
``oneshot_smollm2.py`` writes) get the same table. Regenerate a table with::

    python benchmarks/common.py table benchmarks/results/<name>.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

import jaxprune
from jaxprune import importance

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
HAN_DENSITIES = {"Dense_0/kernel": 0.08, "Dense_1/kernel": 0.09, "Dense_2/kernel": 0.26}


# ---------------------------------------------------------------------------------------
# Models. ``importance.tap`` marks activations for ``importance.linen_taps`` and does nothing
# otherwise.


class LeNet300100(nn.Module):
    """LeNet-300-100: ``784 -> 300 -> ReLU -> 100 -> ReLU -> 10`` (266,610 parameters).

    ``names`` names the Dense layers (default: Flax's ``Dense_0``, ``Dense_1``, ``Dense_2``);
    the hidden activations are tapped as ``fc1``, ``fc2``, ... (before dropout).
    """

    widths: tuple[int, ...] = (300, 100)
    num_classes: int = 10
    dropout: float = 0.0  # on the hidden activations, in training only
    names: tuple[str, ...] | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        def name(i):
            return None if self.names is None else self.names[i]

        x = x.reshape((x.shape[0], -1))
        for i, w in enumerate(self.widths):
            x = importance.tap(self, f"fc{i + 1}", nn.relu(nn.Dense(w, name=name(i))(x)))
            if self.dropout:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name=name(len(self.widths)))(x)


class LeNet5(nn.Module):
    """LeNet-5 as in Caffe: ``conv(20, 5x5) -> pool -> conv(50, 5x5) -> pool -> 500 -> 10``.

    431,080 parameters with the default ``widths``. Layers ``conv1``, ``conv2``, ``fc1``,
    ``fc2``; taps ``conv1``, ``pool1``, ``conv2``, ``pool2``, ``fc1``. Caffe's prototxt has no
    ReLU after the convolutions (``conv_relu=False``); activation-based criteria need it.
    """

    widths: tuple[int, int, int] = (20, 50, 500)
    conv_relu: bool = False
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        c1, c2, f1 = self.widths
        act = nn.relu if self.conv_relu else (lambda y: y)
        x = importance.tap(
            self, "conv1", act(nn.Conv(c1, (5, 5), padding="VALID", name="conv1")(x))
        )
        x = importance.tap(self, "pool1", nn.max_pool(x, (2, 2), (2, 2)))
        x = importance.tap(
            self, "conv2", act(nn.Conv(c2, (5, 5), padding="VALID", name="conv2")(x))
        )
        x = importance.tap(self, "pool2", nn.max_pool(x, (2, 2), (2, 2)))
        x = x.reshape(x.shape[0], -1)
        x = importance.tap(self, "fc1", nn.relu(nn.Dense(f1, name="fc1")(x)))
        return nn.Dense(self.num_classes, name="fc2")(x)


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


@dataclasses.dataclass
class HanConfig:
    """Settings of one iterative prune/retrain run (Han et al.'s schedule)."""

    dense_epochs: int = 20
    rounds: int = 3
    retrain_epochs: int = 6
    batch_size: int = 128
    lr: float = 0.05
    retrain_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    dropout: float = 0.0
    densities: dict[str, float] = dataclasses.field(default_factory=lambda: dict(HAN_DENSITIES))
    seed: int = 0


@dataclasses.dataclass
class HanResult:
    """What :func:`train_han` measured."""

    dense_accuracy: float
    accuracy: float
    stats: jaxprune.SparsityStats
    history: list[dict[str, float]]  # per round: sparsity, acc right after pruning, after retrain
    params: Any
    masks: Any
    seconds: float


def _han_lr(cfg: HanConfig, steps_per_epoch: int) -> optax.Schedule:
    dense_steps = cfg.dense_epochs * steps_per_epoch
    round_steps = cfg.retrain_epochs * steps_per_epoch
    parts = [optax.cosine_decay_schedule(cfg.lr, dense_steps, alpha=0.02)]
    parts += [
        optax.cosine_decay_schedule(cfg.retrain_lr, round_steps, alpha=0.1)
        for _ in range(cfg.rounds)
    ]
    boundaries = [dense_steps + r * round_steps for r in range(cfg.rounds)]
    return optax.join_schedules(parts, boundaries)


def han_sparsity(cfg: HanConfig, steps_per_epoch: int):
    """``optax_sparsity`` with per-layer iterative schedules: round ``r`` of ``R`` keeps
    density ``d ** ((r+1)/R)``."""
    begin = cfg.dense_epochs * steps_per_epoch
    per_round = cfg.retrain_epochs * steps_per_epoch
    dist = {
        path: jaxprune.schedules.iterative(
            [1.0 - d ** ((r + 1) / cfg.rounds) for r in range(cfg.rounds)],
            per_round,
            begin_step=begin,
        )
        for path, d in cfg.densities.items()
    }
    when = jaxprune.schedules.iterative_updates(cfg.rounds, per_round, begin_step=begin)
    return jaxprune.optax_sparsity(distribution=dist, update_when=when)


def train_han(data, cfg: HanConfig, *, model: nn.Module | None = None) -> HanResult:
    """Trains densely, then prunes and retrains in rounds; evaluates after every epoch."""
    model = model or LeNet300100(dropout=cfg.dropout)
    steps_per_epoch = data.x_train.shape[0] // cfg.batch_size
    total_epochs = cfg.dense_epochs + cfg.rounds * cfg.retrain_epochs
    params = model.init(jax.random.key(cfg.seed), data.x_train[:1])["params"]
    tx = optax.chain(
        optax.add_decayed_weights(cfg.weight_decay),
        optax.sgd(_han_lr(cfg, steps_per_epoch), momentum=cfg.momentum),
        han_sparsity(cfg, steps_per_epoch),
    )
    history: list[dict[str, float]] = []
    acc_of = jax.jit(lambda p, m: _accuracy(model, jaxprune.apply_masks(p, m), data))
    dense_acc = 0.0

    def on_epoch(e, params, opt_state, loss):
        nonlocal dense_acc
        masks = jaxprune.masks(opt_state)
        acc = float(acc_of(params, masks))
        if e == cfg.dense_epochs - 1:
            dense_acc = acc
        if e >= cfg.dense_epochs and (e - cfg.dense_epochs) % cfg.retrain_epochs == 0:
            # The round's first step recomputes the masks: accuracy right after it.
            stats = jaxprune.summary(params, masks, print_fn=None)
            history.append({"sparsity": stats.sparsity, "after_first_epoch": acc})
        if history and (e - cfg.dense_epochs + 1) % cfg.retrain_epochs == 0:
            history[-1]["retrained"] = acc

    t0 = time.perf_counter()
    params, opt_state = fit(
        model,
        params,
        data,
        tx,
        total_epochs,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        on_epoch=on_epoch,
    )
    masks = jaxprune.masks(opt_state)
    return HanResult(
        dense_accuracy=dense_acc,
        accuracy=float(acc_of(params, masks)),
        stats=jaxprune.summary(params, masks, print_fn=None),
        history=history,
        params=params,
        masks=masks,
        seconds=time.perf_counter() - t0,
    )


def fit(
    model: nn.Module,
    params: Any,
    data,
    tx: optax.GradientTransformation,
    epochs: int,
    *,
    batch_size: int = 128,
    seed: int = 0,
    straight_through: bool = False,
    forward: Callable[[Any], Any] | None = None,
    raw_grads: bool = False,
    on_epoch: Callable[[int, Any, Any, float], Any] | None = None,
) -> tuple[Any, Any]:
    """Trains ``params`` for ``epochs`` epochs with ``tx`` (one jitted ``lax.scan`` per epoch).

    With ``straight_through`` the forward pass uses the optimizer state's masks,
    ``apply_masks(params, masks, straight_through=True)`` (dynamic network surgery).
    ``forward(params)`` (e.g. a straight-through top-k) is what the loss sees, if given.
    With ``raw_grads`` the gradient is also passed as ``tx.update(..., raw_grads=g)`` (RigL).
    ``on_epoch(epoch, params, opt_state, mean_loss)`` is called after each epoch.
    Returns ``(params, opt_state)``.
    """
    n = data.x_train.shape[0]
    steps = n // batch_size
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    opt_state = tx.init(params)

    def loss_fn(p, s, xb, yb, k):
        if straight_through:
            p = jaxprune.apply_masks(p, jaxprune.masks(s), straight_through=True)
        if forward is not None:
            p = forward(p)
        logits = model.apply({"params": p}, xb, train=True, rngs={"dropout": k})
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    @jax.jit
    def epoch(p, s, k):
        idx = jax.random.permutation(k, n)[: steps * batch_size].reshape(steps, batch_size)

        def step(carry, i):
            p, s = carry
            loss, g = jax.value_and_grad(loss_fn)(p, s, x[i], y[i], jax.random.fold_in(k, i[0]))
            u, s = tx.update(g, s, p, raw_grads=g) if raw_grads else tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss

        (p, s), losses = jax.lax.scan(step, (p, s), idx)
        return p, s, jnp.mean(losses)

    key = jax.random.key(seed)
    for e in range(epochs):
        params, opt_state, loss = epoch(params, opt_state, jax.random.fold_in(key, e))
        if on_epoch is not None:
            on_epoch(e, params, opt_state, float(loss))
    return params, opt_state


def _accuracy(model, params, data):
    logits = model.apply({"params": params}, jnp.asarray(data.x_test))
    return jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(data.y_test))


def test_accuracy(model: nn.Module, params: Any, data, masks: Any = None) -> float:
    """Test-set accuracy of ``model`` with ``params`` (masked by ``masks`` if given)."""
    if masks is not None:
        params = jaxprune.apply_masks(params, masks)
    return float(jax.jit(lambda p: _accuracy(model, p, data))(params))


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
