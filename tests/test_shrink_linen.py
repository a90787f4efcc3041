"""Rebuilding a Linen model at its shrunk widths (`jaxprune.linen.rebuild`)."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
import zoo  # tests/zoo.py (tests/ is on pytest's pythonpath)

import jaxprune
from jaxprune._src.shrink import shrink, widths
from jaxprune._src.trace import trace_groups


def test_linen_rebuild_reports_widths_it_cannot_set():
    class Fixed(nn.Module):  # its hidden width is not a field: it cannot be rebuilt
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2, name="out")(nn.relu(nn.Dense(6, name="hidden")(x)))

    x, variables, found, gm, _, small_vars, *_ = zoo.prune_half(zoo.MLP(), (4, 5))
    spec = widths(found.groups, gm, variables)
    assert jaxprune.linen.rebuild(zoo.MLP(), spec, small_vars, x).fc1 == 6
    xf = jnp.ones((4, 5))
    vf = zoo.random_variables(Fixed(), xf, seed=1)
    gf = trace_groups(Fixed().apply, vf, xf).groups
    keep = {gf[0].name: np.arange(6) < 3}
    with pytest.raises(
        ValueError, match=r"params/hidden/kernel: rebuilt \(5, 6\), shrunk \(5, 3\)"
    ):
        jaxprune.linen.rebuild(Fixed(), widths(gf, keep, vf), shrink(vf, keep, gf), xf)
    with pytest.raises(ValueError, match=r"without a width field on the model: \['hidden'\]"):
        jaxprune.linen.rebuild(Fixed(), widths(gf, keep, vf), shrink(vf, keep, gf), xf)
