"""Sparsity schedules (sparsity as a function of the step) and mask-update predicates.

A *schedule* is a callable ``count -> float32 scalar`` and is therefore an optax schedule: it
accepts a Python int or an int32 array (traced under ``jit`` without recompiling when the value
changes) and can be composed with ``optax.join_schedules``. A *predicate* is a callable
``count -> bool scalar`` that says whether the masks are recomputed at that step; it is meant
for ``lax.cond(predicate(count), recompute, keep, masks)`` inside a jitted train step.

Every schedule comes with a matching predicate that fires exactly at its pruning events:

=================================  =============================================
schedule                           predicate
=================================  =============================================
``polynomial(s_f, t0, n, ...)``    ``polynomial_updates(t0, n, frequency)``
``iterative(ss, steps, ...)``      ``iterative_updates(len(ss), steps, ...)``
``one_shot(s, step)``              ``one_shot_updates(step)``
``constant(s)``                    ``one_shot_updates(0)`` (or ``every(n)``)
=================================  =============================================

``count`` is the number of updates applied so far (optax's ``state.count``: 0 at the first
``update`` call). Schedules and predicates also work elementwise on an array of counts (e.g.
``schedule(jnp.arange(10_000))`` for a plot).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src import base

Schedule = Callable[[Any], jax.Array]  # count -> float32 scalar.
Predicate = Callable[[Any], jax.Array]  # count -> bool scalar.

__all__ = [
    "at_steps",
    "constant",
    "dns_probability",
    "every",
    "iterative",
    "iterative_updates",
    "one_shot",
    "one_shot_updates",
    "polynomial",
    "polynomial_updates",
]


# ---------------------------------------------------------------------------------------
# Helpers.


def _step(count: Any) -> jax.Array:
    """The step as an int32 array (float counts are floored)."""
    t = jnp.asarray(count)
    if jnp.issubdtype(t.dtype, jnp.floating):
        t = jnp.floor(t)
    return t.astype(jnp.int32)


def _fraction(value: Any, name: str) -> Any:
    """Validates a sparsity hyperparameter (a real scalar in ``[0, 1]``, or a tracer)."""
    if callable(value) or isinstance(value, bool | np.bool_) or value is None:
        raise TypeError(f"`{name}` must be a number in [0, 1], got {value!r}.")
    if not isinstance(value, numbers.Real):
        shape = getattr(value, "shape", None)
        if shape is None:
            raise TypeError(f"`{name}` must be a number in [0, 1], got {type(value).__name__}.")
        if tuple(shape) != ():
            raise TypeError(f"`{name}` must be a scalar, got an array of shape {tuple(shape)}.")
    base.check_fraction(value, name)
    return value


def _real(value: Any, name: str, *, positive: bool = False) -> float:
    """Validates a finite real hyperparameter ``>= 0`` (``> 0`` if ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number, got {value!r}.")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"`{name}` must be a finite number {bound}, got {value!r}.")
    return value


def _f32(x: Any) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


# ---------------------------------------------------------------------------------------
# Schedules.


def polynomial(
    final_sparsity: Any,
    begin_step: int,
    num_steps: int,
    *,
    initial_sparsity: Any = 0.0,
    power: float = 3,
    frequency: int = 1,
) -> Schedule:
    """Gradual (automated gradual pruning, AGP) schedule of Zhu & Gupta.

    ``s_t = s_f + (s_i - s_f) * (1 - p)^power`` with ``p = clip(k / n, 0, 1)``, where
    ``n = num_steps`` and ``k = floor((t - t0) / dt)`` is the index of the last pruning event at
    or before ``t`` (``t0 = begin_step``, ``dt = frequency``). As in the paper's discrete
    schedule, the pruning events are ``t0, t0 + dt, ..., t0 + n * dt`` and the value is held
    constant between them: ``s_i`` up to ``t0 + dt - 1``, ``s_f`` from ``t0 + n * dt`` on.

    ``num_steps`` is the paper's ``n``, the **number of pruning steps** after ``t0``, not a
    length in training steps: the ramp spans ``num_steps * frequency`` training steps. With
    ``frequency=1`` both readings agree and the schedule equals
    ``optax.polynomial_schedule(s_i, s_f, power, num_steps, begin_step)``. Pair it with
    :func:`polynomial_updates` ``(begin_step, num_steps, frequency)``, which fires exactly at
    the events.

    Args:
      final_sparsity: Target sparsity ``s_f`` in ``[0, 1]``.
      begin_step: First pruning event ``t0 >= 0``.
      num_steps: Number ``n >= 1`` of pruning events after ``t0`` (the last one reaches
        ``s_f`` at ``t0 + n * frequency``).
      initial_sparsity: Sparsity ``s_i`` in ``[0, 1]``, held before the first increase.
      power: Exponent (``3`` in the paper, ``1`` is linear); a finite number ``> 0``.
      frequency: Steps between pruning events ``dt >= 1`` (the paper uses 100 to 1000).

    Returns:
      A schedule ``count -> float32 scalar``.

    Raises:
      ValueError: If a sparsity is outside ``[0, 1]``, ``begin_step < 0``, ``num_steps < 1``,
        ``frequency < 1`` or ``power <= 0``.
      TypeError: For arguments of the wrong type.

    Example:
      >>> from jaxprune import schedules
      >>> sched = schedules.polynomial(0.9, begin_step=0, num_steps=10, frequency=100)
      >>> [round(float(sched(t)), 4) for t in (0, 100, 199, 500, 1000, 2000)]
      [0.0, 0.2439, 0.2439, 0.7875, 0.9, 0.9]

    References:
      Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
      compression", arXiv 1710.01878, 2017.
    """
    s_f = _fraction(final_sparsity, "final_sparsity")
    s_i = _fraction(initial_sparsity, "initial_sparsity")
    begin = base.check_int(begin_step, "begin_step", 0)
    n = base.check_int(num_steps, "num_steps", 1)
    dt = base.check_int(frequency, "frequency", 1)
    power = _real(power, "power", positive=True)

    def schedule(count: Any) -> jax.Array:
        events = jnp.clip(jnp.floor_divide(_step(count) - begin, dt), 0, n)
        p = events.astype(jnp.float32) / n  # Progress at the last event.
        return _f32(s_f) + (_f32(s_i) - _f32(s_f)) * (1.0 - p) ** power

    return schedule


def one_shot(sparsity: Any, step: int = 0) -> Schedule:
    """Dense before ``step``, ``sparsity`` from ``step`` on (prune once, then fine-tune).

    Pair it with :func:`one_shot_updates` ``(step)``.

    Args:
      sparsity: Sparsity in ``[0, 1]`` from ``step`` on.
      step: The pruning step, ``>= 0``.

    Returns:
      A schedule ``count -> float32 scalar``.

    Raises:
      ValueError: If ``sparsity`` is outside ``[0, 1]`` or ``step < 0``.
      TypeError: For arguments of the wrong type.

    Example:
      >>> from jaxprune import schedules
      >>> sched = schedules.one_shot(0.8, step=10)
      >>> float(sched(9)), round(float(sched(10)), 4)
      (0.0, 0.8)

    References:
      Han, Pool, Tran & Dally, "Learning both weights and connections for efficient neural
      networks", NeurIPS 2015 (prune once, then retrain).
    """
    s = _fraction(sparsity, "sparsity")
    at = base.check_int(step, "step", 0)

    def schedule(count: Any) -> jax.Array:
        return jnp.where(_step(count) >= at, _f32(s), jnp.zeros((), jnp.float32))

    return schedule


def iterative(sparsities: Iterable[Any], steps_per_round: int, *, begin_step: int = 0) -> Schedule:
    """Han-style iterative prune/retrain rounds.

    Round ``r`` (``r = 0 .. R-1``) starts at ``begin_step + r * steps_per_round`` with
    sparsity ``sparsities[r]``; the value is 0 before ``begin_step`` and the last value is held
    after the last round starts. The values need not increase. Pair it with
    :func:`iterative_updates` ``(len(sparsities), steps_per_round, begin_step=begin_step)``.

    Args:
      sparsities: A non-empty sequence of sparsities in ``[0, 1]``, one per round.
      steps_per_round: Steps between rounds (the retraining length), ``>= 1``.
      begin_step: Start of the first round, ``>= 0``.

    Returns:
      A schedule ``count -> float32 scalar``.

    Raises:
      ValueError: If ``sparsities`` is empty or holds a value outside ``[0, 1]`` (its index is
        named), or a step argument is out of range.
      TypeError: For arguments of the wrong type.

    Example:
      >>> from jaxprune import schedules
      >>> sched = schedules.iterative([0.5, 0.75, 0.9], steps_per_round=100, begin_step=50)
      >>> [round(float(sched(t)), 4) for t in (0, 50, 149, 150, 250, 10_000)]
      [0.0, 0.5, 0.5, 0.75, 0.9, 0.9]

    References:
      Han, Pool, Tran & Dally, "Learning both weights and connections for efficient neural
      networks", NeurIPS 2015.
    """
    if isinstance(sparsities, str) or not isinstance(sparsities, Iterable):
        raise TypeError(
            f"`sparsities` must be a sequence of numbers in [0, 1], got {sparsities!r}."
        )
    values = list(sparsities)
    if not values:
        raise ValueError("`sparsities` must hold at least one value (one per round).")
    for i, v in enumerate(values):
        _fraction(v, f"sparsities[{i}]")
    spr = base.check_int(steps_per_round, "steps_per_round", 1)
    begin = base.check_int(begin_step, "begin_step", 0)
    table = jnp.stack([_f32(v) for v in values])

    def schedule(count: Any) -> jax.Array:
        t = _step(count)
        r = jnp.clip(jnp.floor_divide(t - begin, spr), 0, len(values) - 1)
        return jnp.where(t >= begin, table[r], jnp.zeros((), jnp.float32))

    return schedule


def constant(sparsity: Any) -> Schedule:
    """The same sparsity at every step.

    Args:
      sparsity: Sparsity in ``[0, 1]``.

    Returns:
      A schedule ``count -> float32 scalar`` (the count's value is ignored).

    Raises:
      ValueError: If ``sparsity`` is outside ``[0, 1]``.
      TypeError: If ``sparsity`` is not a real scalar.

    Example:
      >>> from jaxprune import schedules
      >>> float(schedules.constant(0.5)(1234))
      0.5

    References:
      Gale, Elsen & Hooker, "The state of sparsity in deep neural networks", 2019 (fixed
      sparsity, e.g. sparse training from scratch).
    """
    s = _fraction(sparsity, "sparsity")

    def schedule(count: Any) -> jax.Array:
        return jnp.full(jnp.shape(count), s, jnp.float32)

    return schedule


# ---------------------------------------------------------------------------------------
# Mask-update predicates.


def every(n: int, *, begin_step: int = 0, end_step: int | None = None) -> Predicate:
    """True every ``n`` steps from ``begin_step`` up to ``end_step`` (inclusive).

    ``predicate(t) = begin_step <= t <= end_step and (t - begin_step) % n == 0``.

    Args:
      n: Period in steps, ``>= 1``.
      begin_step: First step at which it is true, ``>= 0``.
      end_step: Last step at which it may be true (``None`` = no end), ``>= begin_step``.

    Returns:
      A predicate ``count -> bool scalar``, traceable.

    Raises:
      ValueError: If ``n < 1``, a step is negative or ``end_step < begin_step``.
      TypeError: For non-integer arguments.

    Example:
      >>> from jaxprune import schedules
      >>> pred = schedules.every(100, begin_step=50, end_step=250)
      >>> [t for t in range(400) if pred(t)]
      [50, 150, 250]

    References:
      Zhu & Gupta 2017 (masks updated every ``dt`` steps).
    """
    period = base.check_int(n, "n", 1)
    begin = base.check_int(begin_step, "begin_step", 0)
    end = None if end_step is None else base.check_int(end_step, "end_step", 0)
    if end is not None and end < begin:
        raise ValueError(f"`end_step` ({end}) must be >= `begin_step` ({begin}).")

    def predicate(count: Any) -> jax.Array:
        t = _step(count)
        ok = (t >= begin) & (jnp.remainder(t - begin, period) == 0)
        return ok if end is None else ok & (t <= end)

    return predicate


def at_steps(steps: Iterable[int]) -> Predicate:
    """True exactly at the given steps.

    Args:
      steps: A collection of ints ``>= 0`` (static; duplicates are ignored; empty = never).

    Returns:
      A predicate ``count -> bool scalar``, traceable.

    Raises:
      ValueError: If a step is negative.
      TypeError: If ``steps`` is not a collection of ints.

    Example:
      >>> from jaxprune import schedules
      >>> pred = schedules.at_steps((0, 30, 70))
      >>> [t for t in range(100) if pred(t)]
      [0, 30, 70]

    References:
      Han, Pool, Tran & Dally, NeurIPS 2015 (pruning at hand-chosen rounds).
    """
    if isinstance(steps, str) or not isinstance(steps, Iterable):
        raise TypeError(f"`steps` must be a tuple of ints, got {steps!r}.")
    values = tuple(sorted({base.check_int(s, f"steps[{i}]", 0) for i, s in enumerate(steps)}))
    table = jnp.asarray(np.asarray(values, np.int32))

    def predicate(count: Any) -> jax.Array:
        t = _step(count)
        if not values:
            return jnp.zeros(t.shape, bool)
        hits = jnp.expand_dims(t, -1) == jnp.reshape(table, (1,) * t.ndim + (-1,))
        return jnp.any(hits, axis=-1)

    return predicate


def polynomial_updates(begin_step: int, num_steps: int, frequency: int = 1) -> Predicate:
    """The pruning events of :func:`polynomial`: ``t0 + k * frequency``, ``k`` from 0 to ``n``.

    Args:
      begin_step: ``t0``, as passed to :func:`polynomial`.
      num_steps: ``n``, the number of pruning events after ``t0``, as passed to
        :func:`polynomial`.
      frequency: ``dt``, steps between events.

    Returns:
      A predicate ``count -> bool scalar``, traceable.

    Raises:
      ValueError: If ``begin_step < 0``, ``num_steps < 1`` or ``frequency < 1``.
      TypeError: For non-integer arguments.

    Example:
      >>> from jaxprune import schedules
      >>> pred = schedules.polynomial_updates(100, 3, frequency=100)
      >>> [t for t in range(1000) if pred(t)]
      [100, 200, 300, 400]

    References:
      Zhu & Gupta 2017.
    """
    begin = base.check_int(begin_step, "begin_step", 0)
    n = base.check_int(num_steps, "num_steps", 1)
    dt = base.check_int(frequency, "frequency", 1)
    return every(dt, begin_step=begin, end_step=begin + n * dt)


def iterative_updates(num_rounds: int, steps_per_round: int, begin_step: int = 0) -> Predicate:
    """The round starts of :func:`iterative`: ``begin_step + r * steps_per_round``, r < R.

    Args:
      num_rounds: Number of rounds ``R >= 1`` (``len(sparsities)``).
      steps_per_round: Steps between rounds, ``>= 1``.
      begin_step: Start of the first round, ``>= 0``.

    Returns:
      A predicate ``count -> bool scalar``, traceable.

    Raises:
      ValueError: If an argument is out of range.
      TypeError: For non-integer arguments.

    Example:
      >>> from jaxprune import schedules
      >>> pred = schedules.iterative_updates(3, 100, begin_step=50)
      >>> [t for t in range(1000) if pred(t)]
      [50, 150, 250]

    References:
      Han, Pool, Tran & Dally, NeurIPS 2015.
    """
    rounds = base.check_int(num_rounds, "num_rounds", 1)
    spr = base.check_int(steps_per_round, "steps_per_round", 1)
    begin = base.check_int(begin_step, "begin_step", 0)
    return every(spr, begin_step=begin, end_step=begin + (rounds - 1) * spr)


def one_shot_updates(step: int = 0) -> Predicate:
    """True only at ``step`` (the pruning step of :func:`one_shot`).

    Args:
      step: The pruning step, ``>= 0``.

    Returns:
      A predicate ``count -> bool scalar``, traceable.

    Raises:
      ValueError: If ``step < 0``.
      TypeError: If ``step`` is not an int.

    Example:
      >>> from jaxprune import schedules
      >>> pred = schedules.one_shot_updates(5)
      >>> [t for t in range(10) if pred(t)]
      [5]

    References:
      Han, Pool, Tran & Dally, NeurIPS 2015.
    """
    at = base.check_int(step, "step", 0)

    def predicate(count: Any) -> jax.Array:
        return _step(count) == at

    return predicate


def dns_probability(
    gamma: float = 1e-4, power: float = 1.0, stop_step: int | None = None
) -> Schedule:
    """Dynamic Network Surgery's probability of recomputing the masks at step ``t``.

    ``prob(t) = (1 + gamma * t) ** (-power)`` for ``t < stop_step`` and 0 from ``stop_step``
    on. In a jitted step: ``do = jax.random.uniform(key) < prob(count)``, then
    ``lax.cond(do, recompute, keep, masks)``; a fresh key every step.

    Args:
      gamma: Decay rate, a finite number ``>= 0`` (``1e-4`` in the DNS code).
      power: Exponent, a finite number ``>= 0`` (``1`` in the DNS code).
      stop_step: First step at which masks are no longer updated (the code's ``iter_stop``),
        or ``None`` for never stopping.

    Returns:
      A schedule ``count -> float32 scalar`` in ``[0, 1]`` (negative counts read as 0).

    Raises:
      ValueError: If ``gamma`` or ``power`` is negative or not finite, or ``stop_step < 0``.
      TypeError: For arguments of the wrong type.

    Example:
      >>> from jaxprune import schedules
      >>> prob = schedules.dns_probability(gamma=1e-4, power=1.0, stop_step=14_000)
      >>> [round(float(prob(t)), 4) for t in (0, 10_000, 13_999, 14_000)]
      [1.0, 0.5, 0.4167, 0.0]

    References:
      Guo, Yao & Chen, "Dynamic network surgery for efficient DNNs", NeurIPS 2016
      (yiwenguo/Dynamic-Network-Surgery).
    """
    g = _real(gamma, "gamma")
    pw = _real(power, "power")
    stop = None if stop_step is None else base.check_int(stop_step, "stop_step", 0)

    def schedule(count: Any) -> jax.Array:
        t = jnp.maximum(_step(count), 0)
        prob = (1.0 + g * t.astype(jnp.float32)) ** (-pw)
        return prob if stop is None else jnp.where(t >= stop, jnp.zeros((), jnp.float32), prob)

    return schedule
