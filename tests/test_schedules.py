"""Tests for jaxprune.schedules: AGP test vector, piecewise constancy, predicates, DNS."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxprune import schedules


@pytest.fixture(autouse=True)
def _fresh_trace_counter():
    chex.clear_trace_counter()  # assert_max_traces counts per function across parametrized tests.


def _values(fn, num):
    """fn evaluated at steps 0 .. num-1 (vmapped, one compile)."""
    return np.asarray(jax.vmap(fn)(jnp.arange(num, dtype=jnp.int32)))


def agp_reference(t, s_f, t0, n, s_i=0.0, power=3, dt=1):
    """Zhu & Gupta's discrete schedule in float64: the value of the last event at or before t.

    The events are t0, t0 + dt, ..., t0 + n * dt (n pruning steps after t0).
    """
    if t < t0:
        return s_i
    event = t0 + ((t - t0) // dt) * dt
    p = min((event - t0) / (n * dt), 1.0)
    return s_f + (s_i - s_f) * (1.0 - p) ** power


# ---------------------------------------------------------------------------------------
# Polynomial (AGP).


def test_polynomial_test_vector():
    sched = schedules.polynomial(0.9, begin_step=0, num_steps=10, frequency=100)
    got = {t: round(float(sched(t)), 4) for t in (0, 100, 500, 1000, 2000)}
    assert got == {0: 0.0, 100: 0.2439, 500: 0.7875, 1000: 0.9, 2000: 0.9}
    assert float(sched(1000)) == np.float32(0.9)  # Exactly s_f at the end of the ramp.


@pytest.mark.parametrize(
    ("s_f", "t0", "n", "s_i", "power", "dt"),
    [(0.9, 0, 10, 0.0, 3, 100), (0.75, 37, 3, 0.2, 1, 40), (0.98, 5, 60, 0.5, 2.5, 1)],
)
def test_polynomial_piecewise_constant_against_reference(s_f, t0, n, s_i, power, dt):
    sched = schedules.polynomial(s_f, t0, n, initial_sparsity=s_i, power=power, frequency=dt)
    horizon = t0 + n * dt + 3 * dt + 7
    got = _values(sched, horizon)
    ref = [agp_reference(t, s_f, t0, n, s_i, power, dt) for t in range(horizon)]
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    # Constant between events, and it changes only at events.
    pred = schedules.polynomial_updates(t0, n, dt)
    fires = _values(pred, horizon)
    changes = np.flatnonzero(np.diff(got) != 0) + 1
    assert set(changes) <= set(np.flatnonzero(fires))
    assert list(np.flatnonzero(fires)) == list(range(t0, t0 + n * dt + 1, dt))
    assert got[t0 + n * dt] == np.float32(s_f) and got[t0 + n * dt - 1] != np.float32(s_f)


def test_polynomial_frequency_one_equals_optax():
    ours = schedules.polynomial(0.8, 10, 50, initial_sparsity=0.1, power=3)
    theirs = optax.polynomial_schedule(0.1, 0.8, power=3, transition_steps=50, transition_begin=10)
    np.testing.assert_allclose(_values(ours, 80), _values(theirs, 80), rtol=0, atol=1e-6)


def test_schedules_jit_one_trace_float32():
    scheds = [
        schedules.polynomial(0.9, 100, 10, frequency=100),
        schedules.one_shot(0.5, step=30),
        schedules.iterative([0.5, 0.8, 0.9], 200, begin_step=10),
        schedules.constant(0.7),
        schedules.dns_probability(1e-4, 1.0, stop_step=500),
    ]

    @jax.jit
    @chex.assert_max_traces(n=1)
    def all_values(count):
        return [s(count) for s in scheds]

    for t in (0, 5, 99, 100, 150, 600, 1100, 5000):
        out = all_values(jnp.asarray(t, jnp.int32))
        for value, sched in zip(out, scheds, strict=True):
            assert value.dtype == jnp.float32 and value.shape == ()
            assert not value.weak_type
            assert float(value) == pytest.approx(float(sched(t)), abs=1e-7)


def test_as_optax_schedule_in_a_jitted_step():
    """A joined schedule, read from an optax count inside jit, as optax_sparsity will do it."""
    sched = optax.join_schedules(
        [schedules.polynomial(0.5, 0, 10, frequency=10), schedules.constant(0.9)], [200]
    )
    tx = optax.scale_by_schedule(sched)  # Multiplies the update by sched(count).
    params = jnp.ones(3)
    state = tx.init(params)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(state):
        updates, state = tx.update(params, state)
        return updates, state

    seen = []
    for _ in range(260):
        updates, state = step(state)
        seen.append(float(updates[0]))
    assert seen[0] == 0.0 and seen[10] == pytest.approx(0.5 - 0.5 * 0.9**3, abs=1e-6)
    assert seen[150] == pytest.approx(0.5) and seen[199] == pytest.approx(0.5)
    assert seen[200] == pytest.approx(0.9) and seen[259] == pytest.approx(0.9)


def test_traced_hyperparameters():
    fn = jax.jit(lambda s, t: schedules.polynomial(s, 0, 100)(t))
    assert float(fn(jnp.float32(0.5), 100)) == pytest.approx(0.5)
    fn = jax.jit(lambda s, t: schedules.one_shot(s, 3)(t))
    assert float(fn(jnp.float32(0.25), 3)) == 0.25


# ---------------------------------------------------------------------------------------
# One-shot, iterative, constant.


def test_one_shot_and_constant():
    got = _values(schedules.one_shot(0.8, step=10), 20)
    np.testing.assert_array_equal(got, [0.0] * 10 + [np.float32(0.8)] * 10)
    np.testing.assert_array_equal(_values(schedules.constant(0.3), 5), [np.float32(0.3)] * 5)
    assert float(schedules.one_shot(0.4)(0)) == np.float32(0.4)


def test_iterative_rounds():
    values = [0.5, 0.3, 0.9]  # Non-monotone values are allowed.
    sched = schedules.iterative(values, 100, begin_step=50)
    got = _values(sched, 500)
    ref = [0.0 if t < 50 else values[min((t - 50) // 100, len(values) - 1)] for t in range(500)]
    np.testing.assert_array_equal(got, np.asarray(ref, np.float32))
    pred = schedules.iterative_updates(len(values), 100, begin_step=50)
    assert list(np.flatnonzero(_values(pred, 500))) == [50, 150, 250]


# ---------------------------------------------------------------------------------------
# Predicates.


@pytest.mark.parametrize(
    ("pred", "ref"),
    [
        (schedules.every(7), lambda t: t % 7 == 0),
        (schedules.every(5, begin_step=12), lambda t: t >= 12 and (t - 12) % 5 == 0),
        (
            schedules.every(10, begin_step=3, end_step=63),
            lambda t: 3 <= t <= 63 and (t - 3) % 10 == 0,
        ),
        (schedules.every(1, begin_step=4, end_step=6), lambda t: 4 <= t <= 6),
        (schedules.at_steps((70, 0, 30, 30)), lambda t: t in (0, 30, 70)),
        (schedules.at_steps(()), lambda t: False),
        (schedules.one_shot_updates(42), lambda t: t == 42),
        (schedules.polynomial_updates(20, 3, 20), lambda t: t in (20, 40, 60, 80)),
        (schedules.iterative_updates(1, 9, begin_step=4), lambda t: t == 4),
    ],
)
def test_predicates_against_python(pred, ref):
    got = _values(pred, 150)
    assert got.dtype == np.bool_
    assert list(got) == [ref(t) for t in range(150)]
    assert bool(pred(jnp.float32(42.0))) == ref(42)  # A float count reads as its step.


def test_array_counts_are_elementwise():
    steps = jnp.arange(300, dtype=jnp.int32)
    for fn in (
        schedules.polynomial(0.9, 10, 10, frequency=20),
        schedules.iterative([0.2, 0.6], 50),
        schedules.one_shot(0.5, 7),
        schedules.constant(0.5),
        schedules.dns_probability(stop_step=100),
        schedules.every(3, end_step=200),
        schedules.at_steps((3, 99)),
        schedules.at_steps(()),
    ):
        np.testing.assert_array_equal(np.asarray(fn(steps)), _values(fn, 300))


def test_predicate_in_lax_cond_one_trace():
    pred = schedules.every(10, begin_step=5)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(count, x):
        return jax.lax.cond(pred(count), lambda v: v + 1, lambda v: v, x)

    x = jnp.zeros((), jnp.int32)
    for t in range(40):
        x = step(jnp.asarray(t, jnp.int32), x)
    assert int(x) == 4  # Steps 5, 15, 25, 35.


# ---------------------------------------------------------------------------------------
# DNS probability.


def test_dns_probability_values():
    prob = schedules.dns_probability(gamma=1e-4, power=1.0, stop_step=14_000)
    steps = [0, 1, 100, 10_000, 13_999, 14_000, 20_000]
    got = [float(prob(t)) for t in steps]
    ref = [(1 + 1e-4 * t) ** -1.0 if t < 14_000 else 0.0 for t in steps]
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    prob = schedules.dns_probability(gamma=2e-3, power=0.75)
    got = _values(prob, 3000)
    np.testing.assert_allclose(got, (1 + 2e-3 * np.arange(3000)) ** -0.75, rtol=1e-6)
    assert float(schedules.dns_probability(gamma=0.0)(10**6)) == 1.0


# ---------------------------------------------------------------------------------------
# Argument errors name the argument.


@pytest.mark.parametrize(
    ("make", "err", "match"),
    [
        (lambda: schedules.polynomial(1.5, 0, 100), ValueError, "final_sparsity"),
        (lambda: schedules.polynomial(0.9, 0, 100, initial_sparsity=-0.1), ValueError, "initial"),
        (lambda: schedules.polynomial(0.9, -1, 100), ValueError, "begin_step"),
        (lambda: schedules.polynomial(0.9, 0, 0), ValueError, "num_steps"),
        (lambda: schedules.polynomial(0.9, 0, 100, frequency=0), ValueError, "frequency"),
        (lambda: schedules.polynomial(0.9, 0, 100, power=0), ValueError, "power"),
        (lambda: schedules.polynomial(0.9, 0.5, 100), TypeError, "begin_step"),
        (lambda: schedules.polynomial("0.9", 0, 100), TypeError, "final_sparsity"),
        (lambda: schedules.polynomial(jnp.ones(2), 0, 100), TypeError, "shape"),
        (lambda: schedules.one_shot(float("nan")), ValueError, "sparsity"),
        (lambda: schedules.one_shot(0.5, step=-3), ValueError, "step"),
        (lambda: schedules.iterative([], 10), ValueError, "sparsities"),
        (lambda: schedules.iterative([0.5, 1.2], 10), ValueError, r"sparsities\[1\]"),
        (lambda: schedules.iterative(0.5, 10), TypeError, "sparsities"),
        (lambda: schedules.iterative([0.5], 0), ValueError, "steps_per_round"),
        (lambda: schedules.constant(True), TypeError, "sparsity"),
        (lambda: schedules.every(0), ValueError, "`n`"),
        (lambda: schedules.every(5, begin_step=10, end_step=3), ValueError, "end_step"),
        (lambda: schedules.at_steps(5), TypeError, "steps"),
        (lambda: schedules.at_steps((1, -2)), ValueError, r"steps\[1\]"),
        (lambda: schedules.polynomial_updates(0, 0, 100), ValueError, "num_steps"),
        (lambda: schedules.polynomial_updates(0, 5, 0), ValueError, "frequency"),
        (lambda: schedules.iterative_updates(0, 10), ValueError, "num_rounds"),
        (lambda: schedules.one_shot_updates(-1), ValueError, "step"),
        (lambda: schedules.dns_probability(gamma=-1.0), ValueError, "gamma"),
        (lambda: schedules.dns_probability(power=float("inf")), ValueError, "power"),
        (lambda: schedules.dns_probability(stop_step=1.5), TypeError, "stop_step"),
    ],
)
def test_argument_errors(make, err, match):
    with pytest.raises(err, match=match):
        make()
