"""Sparsity accounting: `count_kept` and the numbers and table of `summary`."""

import jax
import jax.numpy as jnp

import jaxprune


def test_count_kept_and_summary_numbers():
    p = {
        "conv": {"kernel": jnp.ones((3, 3, 2, 4)), "bias": jnp.ones(4)},
        "fc": {"kernel": jnp.ones((4, 2)).at[0, 0].set(0.0), "bias": jnp.ones(2)},
    }
    m = {
        "conv": {"kernel": jnp.array([True, False, True, False]).reshape(1, 1, 1, 4), "bias": None},
        "fc": {
            "kernel": jnp.array([[True, True], [False, True], [True, True], [True, True]]),
            "bias": None,
        },
    }
    kept = jax.jit(jaxprune.count_kept)(p, m)
    assert int(kept["conv"]["kernel"]) == 2 * 18 and int(kept["fc"]["bias"]) == 2
    lines = []
    stats = jaxprune.summary(p, m, print_fn=lines.append)
    rows = stats.by_path()
    assert rows["conv/kernel"].nonzero == 36 and rows["conv/kernel"].size == 72
    assert rows["fc/kernel"].nonzero == 6 and rows["fc/kernel"].kept == 7  # one zero weight
    assert stats.size == 72 + 4 + 8 + 2 and stats.nonzero == 36 + 4 + 6 + 2
    assert stats.prunable_size == 80 and stats.prunable_nonzero == 42
    assert abs(stats.compression - 86 / 48) < 1e-12
    table = lines[0]
    assert "conv/kernel" in table and "3x3x2x4" in table and "50.00%" in table
    assert "(no mask)" in table and "compression" in table
    # Without masks: counts the params' own zeros.
    assert jaxprune.summary(p, print_fn=None).nonzero == 72 + 4 + 7 + 2
