"""Granularity specs: mask shapes, n:m, and errors that name the path."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

import jaxprune


@pytest.mark.parametrize(
    "gran, conv_shape, dense_shape",
    [
        (jaxprune.UNSTRUCTURED, (3, 3, 4, 8), (8, 5)),
        (jaxprune.FILTER, (1, 1, 1, 8), (1, 5)),
        (jaxprune.INPUT_CHANNEL, (1, 1, 4, 1), (8, 1)),
        (jaxprune.FILTER_SHAPE, (3, 3, 4, 1), (8, 1)),
        (jaxprune.CONNECTION, (1, 1, 4, 8), (8, 5)),
        (jaxprune.LAYER, (1, 1, 1, 1), (1, 1)),
        (jaxprune.n_of_m(2, 4), (3, 3, 4, 8), (8, 5)),
    ],
)
def test_mask_shapes(gran, conv_shape, dense_shape):
    assert gran.mask_shape((3, 3, 4, 8)) == conv_shape
    assert gran.mask_shape((8, 5)) == dense_shape
    # Granularities are hashable data (equal specs hash alike) and jax.tree leaves.
    twin = dataclasses.replace(gran)
    assert twin == gran and hash(twin) == hash(gran) and len({gran, twin}) == 1
    assert jax.tree.leaves({"g": gran}) == [gran]


@pytest.mark.parametrize(
    "gran", [jaxprune.INPUT_CHANNEL, jaxprune.FILTER_SHAPE, jaxprune.CONNECTION]
)
def test_granularity_that_does_not_fit_names_the_path(gran):
    with pytest.raises(ValueError, match="conv/bias"):
        gran.mask_shape((8,), "conv/bias")


def test_n_of_m_divisibility_error_names_path():
    with pytest.raises(ValueError, match=r"'fc/kernel'.*not divisible by M=4"):
        jaxprune.n_of_m(2, 4).mask_shape((6, 3), "fc/kernel")
    with pytest.raises(ValueError, match="n <= m"):
        jaxprune.n_of_m(5, 4)


def test_unknown_granularity_name():
    with pytest.raises(TypeError, match="granularity must be"):
        jaxprune.scores.norm({"k": jnp.ones((2, 2))}, "rows")
