"""``python -m jaxprune.demo``: Han et al.'s iterative magnitude pruning of LeNet-300-100.

Trains LeNet-300-100 on MNIST, prunes it in rounds with ``optax_sparsity`` (per-layer
top-k magnitude masks whose densities shrink geometrically towards Han's 8% / 9% / 26%),
retrains after every round, then prints the per-layer summary, the dense and pruned test
accuracy and the compression ratio (weights and biases counted, as Han et al. do), and writes a
PNG with the per-layer densities and the accuracy against sparsity.

With no arguments it runs on a small MNIST subset shipped with the package (10,000 training
and 2,000 test images) in about 15 seconds on two CPU cores. ``--data PATH`` (or
``$JAXPRUNE_MNIST``) uses the full ``mnist.npz``: about 30 seconds (up to a few minutes on a
machine busy with other work).

The functions here (:func:`lenet_300_100`, :func:`train`, :class:`DemoConfig`) are reused by
the scripts in ``benchmarks/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

import jaxprune
from jaxprune import importance
from jaxprune._src import mnist as mnist_lib

HAN_DENSITIES = {"Dense_0/kernel": 0.08, "Dense_1/kernel": 0.09, "Dense_2/kernel": 0.26}
SUBSET_FILE = "mnist_subset.npz"


class LeNet300100(nn.Module):
    """LeNet-300-100: ``784 -> 300 -> ReLU -> 100 -> ReLU -> 10`` (266,610 parameters).

    ``names`` names the Dense layers (default: Flax's ``Dense_0``, ``Dense_1``, ``Dense_2``);
    the hidden activations are tapped as ``fc1``, ``fc2``, ... (before dropout) for
    ``jaxprune.importance.linen_taps``.
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
    ReLU after the convolutions (``conv_relu=False``, the faithful default); activation-based
    criteria need it.
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


def lenet_300_100(dropout: float = 0.0) -> LeNet300100:
    """Returns the LeNet-300-100 Linen module used by the demo and the benchmarks."""
    return LeNet300100(dropout=dropout)


def load_subset() -> mnist_lib.MNIST:
    """Loads the MNIST subset shipped with the package (CC BY-SA 3.0, see ``data/README``)."""
    with resources.files("jaxprune").joinpath("data", SUBSET_FILE).open("rb") as f:
        with np.load(f) as d:
            x_train, y_train, x_test, y_test = (d[k] for k in mnist_lib.KEYS)
    return mnist_lib.MNIST(
        (x_train.astype(np.float32) / 255.0)[..., None],
        y_train.astype(np.int32),
        (x_test.astype(np.float32) / 255.0)[..., None],
        y_test.astype(np.int32),
    )


@dataclasses.dataclass
class DemoConfig:
    """Settings of one prune/retrain run (defaults: the demo on the shipped subset)."""

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
class RunResult:
    """What :func:`train` measured."""

    dense_accuracy: float
    accuracy: float
    stats: jaxprune.SparsityStats
    history: list[dict[str, float]]  # per round: sparsity, acc right after pruning, after retrain
    params: Any
    masks: Any
    seconds: float


def _lr_schedule(cfg: DemoConfig, steps_per_epoch: int) -> optax.Schedule:
    dense_steps = cfg.dense_epochs * steps_per_epoch
    round_steps = cfg.retrain_epochs * steps_per_epoch
    parts = [optax.cosine_decay_schedule(cfg.lr, dense_steps, alpha=0.02)]
    parts += [
        optax.cosine_decay_schedule(cfg.retrain_lr, round_steps, alpha=0.1)
        for _ in range(cfg.rounds)
    ]
    boundaries = [dense_steps + r * round_steps for r in range(cfg.rounds)]
    return optax.join_schedules(parts, boundaries)


def han_sparsity(cfg: DemoConfig, steps_per_epoch: int) -> tuple[dict[str, Any], Callable]:
    """Per-layer iterative schedules: round ``r`` of ``R`` keeps density ``d ** ((r+1)/R)``."""
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
    return dist, when


def train(
    data: mnist_lib.MNIST,
    cfg: DemoConfig,
    *,
    model: nn.Module | None = None,
    sparsity_tx: Callable[[int], optax.GradientTransformationExtraArgs] | None = None,
    progress: Callable[[str], Any] | None = None,
) -> RunResult:
    """Trains densely, then prunes and retrains in rounds; evaluates after every phase.

    Args:
      data: MNIST arrays (``jaxprune.load_mnist`` or :func:`load_subset`).
      cfg: The run's settings.
      model: A Linen module (default: LeNet-300-100).
      sparsity_tx: Optional ``steps_per_epoch -> transform`` replacing Han's iterative
        ``optax_sparsity`` (the benchmarks pass gradual pruning here).
      progress: Called with a one-line status after every epoch (default: a progress bar).

    Returns:
      A :class:`RunResult`.
    """
    model = model or lenet_300_100(cfg.dropout)
    n = data.x_train.shape[0]
    steps_per_epoch = n // cfg.batch_size
    total_epochs = cfg.dense_epochs + cfg.rounds * cfg.retrain_epochs
    key = jax.random.key(cfg.seed)
    params = model.init(key, data.x_train[:1])["params"]

    if sparsity_tx is None:
        dist, when = han_sparsity(cfg, steps_per_epoch)
        sparse = jaxprune.optax_sparsity(distribution=dist, update_when=when)
    else:
        sparse = sparsity_tx(steps_per_epoch)
    tx = optax.chain(
        optax.add_decayed_weights(cfg.weight_decay),
        optax.sgd(_lr_schedule(cfg, steps_per_epoch), momentum=cfg.momentum),
        sparse,
    )
    opt_state = tx.init(params)
    x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)

    def loss_fn(p, xb, yb, k):
        logits = model.apply({"params": p}, xb, train=True, rngs={"dropout": k})
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    @jax.jit
    def epoch(p, s, k):
        perm = jax.random.permutation(k, n)[: steps_per_epoch * cfg.batch_size]
        batches = perm.reshape(steps_per_epoch, cfg.batch_size)

        def step(carry, idx):
            p, s = carry
            kd = jax.random.fold_in(k, idx[0])
            loss, g = jax.value_and_grad(loss_fn)(p, x_train[idx], y_train[idx], kd)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss

        (p, s), losses = jax.lax.scan(step, (p, s), batches)
        return p, s, jnp.mean(losses)

    @jax.jit
    def accuracy(p, masks):
        p = jaxprune.apply_masks(p, masks)
        logits = model.apply({"params": p}, x_test)
        return jnp.mean(jnp.argmax(logits, -1) == y_test)

    bar = _progress_bar(total_epochs) if progress is None else None
    report = progress or (lambda msg: bar.set_postfix_str(msg))
    t0 = time.perf_counter()
    history: list[dict[str, float]] = []
    dense_acc = 0.0
    for e in range(total_epochs):
        if e >= cfg.dense_epochs and (e - cfg.dense_epochs) % cfg.retrain_epochs == 0:
            # The round's first step recomputes the masks: measure accuracy right after it.
            history.append({})
        params, opt_state, loss = epoch(params, opt_state, jax.random.fold_in(key, e))
        masks = jaxprune.masks(opt_state)
        acc = float(accuracy(params, masks))
        if e == cfg.dense_epochs - 1:
            dense_acc = acc
        if history and not history[-1]:
            stats = jaxprune.summary(params, masks, print_fn=None)
            history[-1] = {"sparsity": stats.sparsity, "after_first_epoch": acc}
        if history and (e - cfg.dense_epochs + 1) % cfg.retrain_epochs == 0:
            history[-1]["retrained"] = acc
        report(f"epoch {e + 1}/{total_epochs} loss {float(loss):.4f} test acc {acc:.4f}")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    masks = jaxprune.masks(opt_state)
    stats = jaxprune.summary(params, masks, print_fn=None)
    return RunResult(
        dense_accuracy=dense_acc,
        accuracy=float(accuracy(params, masks)),
        stats=stats,
        history=history,
        params=params,
        masks=masks,
        seconds=time.perf_counter() - t0,
    )


def fit(
    model: nn.Module,
    params: Any,
    data: mnist_lib.MNIST,
    tx: optax.GradientTransformation,
    epochs: int,
    *,
    batch_size: int = 128,
    seed: int = 0,
    straight_through: bool = False,
    forward: Callable[[Any], Any] | None = None,
    raw_grads: bool = False,
    on_epoch: Callable[[int, Any, Any, float], Any] | None = None,
    loop: str = "scan",
) -> tuple[Any, Any]:
    """Trains ``params`` for ``epochs`` epochs with ``tx`` (a jitted ``lax.scan`` per epoch).

    If ``tx`` holds masks (``jaxprune.masks(opt_state)`` finds them) and ``straight_through``
    is set, the forward pass uses ``apply_masks(params, masks, straight_through=True)``: the
    training mode of dynamic network surgery.

    Args:
      model: A Linen classifier.
      params: Its parameters.
      data: MNIST arrays.
      tx: The optimizer.
      epochs: Number of epochs.
      batch_size: Batch size.
      seed: Seeds the shuffling.
      straight_through: Apply the state's masks in the forward pass (straight-through).
      forward: Optional ``params -> params`` applied in the loss (e.g. a straight-through
        top-k, ``lambda p: jaxprune.ste_topk(p, 0.9)``).
      raw_grads: Also pass the gradient as ``tx.update(..., raw_grads=grads)`` (RigL).
      on_epoch: Called as ``on_epoch(epoch, params, opt_state, mean_loss)`` after each epoch.
      loop: ``"scan"``: one jitted ``lax.scan`` per epoch (one dispatch; best for the MLPs);
        ``"steps"``: one jitted step per batch, called from Python, the same computation.
        Use ``"steps"`` for convnets on CPU: XLA:CPU runs convolutions inside a loop body
        several times slower than at top level (LeNet-5 on 10,000 images: 28 s per epoch
        with ``"scan"``, 4.6 s with ``"steps"``; LeNet-300-100: 0.07 s and 0.11 s).

    Returns:
      ``(params, opt_state)``.

    Raises:
      ValueError: If ``loop`` is neither ``"scan"`` nor ``"steps"``.
    """
    if loop not in ("scan", "steps"):
        raise ValueError(f"loop must be 'scan' or 'steps', got {loop!r}.")
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

    def step(carry, i, k):
        p, s = carry
        loss, g = jax.value_and_grad(loss_fn)(p, s, x[i], y[i], jax.random.fold_in(k, i[0]))
        u, s = tx.update(g, s, p, raw_grads=g) if raw_grads else tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), loss

    def batches(k):
        return jax.random.permutation(k, n)[: steps * batch_size].reshape(steps, batch_size)

    @jax.jit
    def epoch(p, s, k):
        (p, s), losses = jax.lax.scan(lambda c, i: step(c, i, k), (p, s), batches(k))
        return p, s, jnp.mean(losses)

    jit_step, jit_batches = jax.jit(step), jax.jit(batches)

    def epoch_by_steps(p, s, k):
        losses = []
        for i in jit_batches(k):
            (p, s), loss = jit_step((p, s), i, k)
            losses.append(loss)
        return p, s, jnp.mean(jnp.stack(losses))

    run_epoch = epoch if loop == "scan" else epoch_by_steps
    key = jax.random.key(seed)
    for e in range(epochs):
        params, opt_state, loss = run_epoch(params, opt_state, jax.random.fold_in(key, e))
        if on_epoch is not None:
            on_epoch(e, params, opt_state, float(loss))
    return params, opt_state


def test_accuracy(model: nn.Module, params: Any, data: mnist_lib.MNIST, masks: Any = None):
    """Test-set accuracy of ``model`` with ``params`` (masked by ``masks`` if given)."""
    if masks is not None:
        params = jaxprune.apply_masks(params, masks)
    logits = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, data.x_test)
    return float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(data.y_test)))


class _PlainBar:
    def __init__(self, total):
        self.total, self.n, self.msg = total, 0, ""

    def set_postfix_str(self, msg):
        self.msg = msg

    def update(self, k):
        self.n += k
        print(f"[{self.n}/{self.total}] {self.msg}", flush=True)

    def close(self):
        pass


def _progress_bar(total: int):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is an optional extra
        return _PlainBar(total)
    return tqdm(total=total, unit="epoch", desc="training", leave=True)


def plot(result: RunResult, path: str) -> str | None:
    """Writes per-layer densities and accuracy against sparsity to a PNG; returns its path.

    Returns ``None`` (and writes nothing) when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in result.stats.layers if r.path.endswith("kernel")]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.bar([r.path.split("/")[0] for r in rows], [1 - r.sparsity for r in rows])
    ax1.set_ylabel("density (fraction of weights kept)")
    ax1.set_title("per-layer density")
    for r, row in enumerate(rows):
        ax1.text(r, 1 - row.sparsity, f"{1 - row.sparsity:.1%}", ha="center", va="bottom")
    sp = [0.0] + [h["sparsity"] for h in result.history]
    after = [result.dense_accuracy] + [h["after_first_epoch"] for h in result.history]
    retrained = [result.dense_accuracy] + [h.get("retrained", np.nan) for h in result.history]
    ax2.plot(sp, [100 * (1 - a) for a in after], "o--", label="after 1 retrain epoch")
    ax2.plot(sp, [100 * (1 - a) for a in retrained], "s-", label="after retraining")
    ax2.set_xlabel("overall sparsity (weights + biases)")
    ax2.set_ylabel("test error (%)")
    ax2.set_title("error against sparsity, per round")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> RunResult:
    """Runs the demo from the command line; see ``python -m jaxprune.demo --help``.

    Args:
      argv: The command-line arguments (``None``: ``sys.argv[1:]``).

    Returns:
      The :class:`RunResult`.

    Raises:
      FileNotFoundError: If ``--data`` (or ``$JAXPRUNE_MNIST``) names no file.
      ValueError: If that file is not an MNIST ``.npz``. :func:`cli` reports both in one
        line instead.
    """
    args = _parser().parse_args(argv)
    return _run(args, *_data(args.data))


def cli(argv: list[str] | None = None) -> int:
    """The ``python -m jaxprune.demo`` entry point: :func:`main`, as a command line tool.

    A missing or unreadable ``--data`` file is reported in one line on stderr (what is wrong,
    and where the full MNIST file can be obtained) with exit status 2, not as a traceback.

    Args:
      argv: The command-line arguments (``None``: ``sys.argv[1:]``).

    Returns:
      The exit status: 0 after a run, 2 for a bad data file.
    """
    args = _parser().parse_args(argv)
    try:
        data = _data(args.data)
    except (FileNotFoundError, ValueError) as e:
        print(f"python -m jaxprune.demo: error: {e}", file=sys.stderr)
        return 2
    _run(args, *data)
    return 0


def _data(path: str | None) -> tuple[mnist_lib.MNIST, str]:
    path = path or os.environ.get(mnist_lib.ENV_VAR)
    if path:
        return mnist_lib.load_mnist(path), f"full MNIST from {path}"
    return load_subset(), "the MNIST subset shipped with jaxprune (use --data for the full set)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jaxprune.demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--data",
        default=None,
        help=f"full MNIST .npz (default: ${mnist_lib.ENV_VAR}, else the shipped subset)",
    )
    cfg = DemoConfig()
    parser.add_argument("--dense-epochs", type=int, default=cfg.dense_epochs)
    parser.add_argument("--rounds", type=int, default=cfg.rounds)
    parser.add_argument("--retrain-epochs", type=int, default=cfg.retrain_epochs)
    parser.add_argument("--seed", type=int, default=cfg.seed)
    parser.add_argument("--plot", default="jaxprune_demo.png", help="PNG path ('' = none)")
    return parser


def _run(args: argparse.Namespace, data: mnist_lib.MNIST, source: str) -> RunResult:
    cfg = DemoConfig(
        dense_epochs=args.dense_epochs,
        rounds=args.rounds,
        retrain_epochs=args.retrain_epochs,
        seed=args.seed,
    )
    print(
        f"LeNet-300-100 on {source}: {data.x_train.shape[0]} train / {data.x_test.shape[0]} "
        f"test images; {cfg.dense_epochs} dense epochs, then {cfg.rounds} prune/retrain "
        f"rounds of {cfg.retrain_epochs} epochs towards per-layer densities "
        + ", ".join(f"{k.split('/')[0]} {v:.0%}" for k, v in cfg.densities.items())
    )
    result = train(data, cfg)
    print()
    jaxprune.summary(result.params, result.masks)
    print()
    for r, h in enumerate(result.history):
        print(
            f"round {r + 1}: sparsity {h['sparsity']:.2%}, test accuracy "
            f"{h['after_first_epoch']:.4f} after one retrain epoch, {h['retrained']:.4f} "
            "after retraining"
        )
    s = result.stats
    print(
        f"dense test accuracy {result.dense_accuracy:.4f} (error "
        f"{100 * (1 - result.dense_accuracy):.2f}%) -> pruned {result.accuracy:.4f} (error "
        f"{100 * (1 - result.accuracy):.2f}%)"
    )
    print(
        f"non-zeros {s.nonzero:,} of {s.size:,} parameters (weights and biases): compression "
        f"{s.compression:.1f}x, in {result.seconds:.0f} s"
    )
    if args.plot:
        written = plot(result, args.plot)
        print(f"plot written to {written}" if written else "matplotlib not installed: no plot")
    return result


if __name__ == "__main__":
    sys.exit(cli())
