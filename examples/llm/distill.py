"""Recovery of a pruned decoder by logit distillation from the dense one (Minitron-style).

The student keeps its (pruned) shapes; every parameter trains. The loss is the token-mean
``KL(p_teacher || p_student)`` of the next-token distributions at temperature 1, as in
Muralidharan et al. (2024), "Compact Language Models via Pruning and Knowledge Distillation".
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from examples.llm import data
from examples.llm import model as model_lib


def kl_loss(student_logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
    """Mean over tokens of ``KL(softmax(teacher) || softmax(student))``."""
    t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32), axis=-1)
    s = jax.nn.log_softmax(student_logits.astype(jnp.float32), axis=-1)
    return jnp.mean(jnp.sum(jnp.exp(t) * (t - s), axis=-1))


@nnx.jit
def _step(student, optimizer, teacher, tokens):
    teacher_logits = jax.lax.stop_gradient(teacher(tokens))

    def loss_fn(m):
        return kl_loss(m(tokens), teacher_logits)

    loss, grads = nnx.value_and_grad(loss_fn)(student)
    optimizer.update(student, grads)
    return loss


def distill(
    student: model_lib.Llama,
    teacher: model_lib.Llama,
    tokens: np.ndarray,
    *,
    steps: int,
    batch_size: int = 4,
    seq_len: int = 128,
    lr: float = 2e-4,
    seed: int = 0,
    log_every: int = 25,
) -> list[float]:
    """Trains ``student`` in place to match ``teacher`` on random calibration windows.

    Adam with a linear warmup over the first 10% of ``steps`` and a cosine decay to 10% of
    ``lr``; batches are ``batch_size`` random windows of ``seq_len`` tokens from the
    calibration part of ``tokens`` (:func:`examples.llm.data.random_windows`).

    Returns:
      The loss of every step.
    """
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, lr, max(steps // 10, 1), steps, end_value=0.1 * lr
    )
    optimizer = nnx.Optimizer(student, optax.adam(schedule), wrt=nnx.Param)
    rng = np.random.default_rng(seed)
    losses, t0 = [], time.perf_counter()
    for i in range(steps):
        batch = jnp.asarray(data.random_windows(tokens, batch_size, seq_len, rng))
        losses.append(float(_step(student, optimizer, teacher, batch)))
        if log_every and (i + 1) % log_every == 0:
            print(
                f"  distill step {i + 1}/{steps}: KL {np.mean(losses[-log_every:]):.4f} "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    return losses
