"""The core data rules of `jaxprune/_src/base.py`: the `None` rule, paths and prefix trees.

Every other module maps trees through these helpers, so the rule is tested once here, on
mixed containers (dicts, tuples, NNX-style ``.value`` paths) with `None` in every position.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxprune._src import base

PARAMS = {
    "Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)},
    "norm": {"scale": None},
    "head": (jnp.full((2, 4), 2.0), None),
}


def test_map_prunable_is_none_wherever_any_tree_is_none():
    scores = {
        "Dense_0": {"kernel": jnp.full((3, 2), 3.0), "bias": None},
        "norm": {"scale": None},
        "head": (jnp.ones((2, 4)), None),
    }
    out = base.map_prunable(lambda p, s: p * s, PARAMS, scores)
    assert out["Dense_0"]["bias"] is None and out["norm"]["scale"] is None
    assert out["head"][1] is None
    np.testing.assert_array_equal(out["Dense_0"]["kernel"], np.full((3, 2), 3.0))
    np.testing.assert_array_equal(out["head"][0], np.full((2, 4), 2.0))
    # The params-shaped tree fixes the structure: the function never sees a None.
    seen = []
    base.map_prunable(lambda p: seen.append(p.shape), PARAMS)
    assert sorted(seen) == [(2,), (2, 4), (3, 2)]


def test_map_with_path_passes_slash_joined_paths():
    paths = []
    base.map_with_path(lambda path, x: paths.append(path), PARAMS)
    assert paths == ["Dense_0/bias", "Dense_0/kernel", "head/0"]
    assert list(base.iter_paths(PARAMS)) == [
        "Dense_0/bias",
        "Dense_0/kernel",
        "head/0",
        "head/1",
        "norm/scale",
    ]


def test_nnx_state_paths_equal_linen_paths():
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    assert sorted(p for p, _ in base.leaves_with_paths(state)) == ["bias", "kernel"]


@pytest.mark.parametrize(
    ("prefix", "want"),
    [
        (0.5, {"Dense_0/bias": 0.5, "Dense_0/kernel": 0.5, "head/0": 0.5}),
        (
            {"Dense_0": 0.9, "head": None},
            {"Dense_0/bias": 0.9, "Dense_0/kernel": 0.9, "head/0": None},
        ),
        (  # the longest matching prefix wins
            {"Dense_0": 0.9, "Dense_0/kernel": 0.1, "head": 0.3},
            {"Dense_0/bias": 0.9, "Dense_0/kernel": 0.1, "head/0": 0.3},
        ),
    ],
)
def test_broadcast_prefix_matches_by_path(prefix, want):
    out = base.broadcast_prefix(prefix, PARAMS, "sparsity")
    got = {p: v for p, v in base.leaves_with_paths(out) if p in want}
    assert got == want
    # None in the params stays None whatever the prefix says.
    assert out["norm"]["scale"] is None and out["head"][1] is None


def test_broadcast_prefix_errors_name_the_argument_and_path():
    with pytest.raises(ValueError, match=r"`sparsity` has entries \['Dense_9'\]"):
        base.broadcast_prefix({"Dense_0": 0.5, "head": 0.5, "Dense_9": 0.5}, PARAMS, "sparsity")
    with pytest.raises(ValueError, match=r"`sparsity` does not cover the parameter 'head/0'"):
        base.broadcast_prefix({"Dense_0": 0.5}, PARAMS, "sparsity")


def test_check_structure_lists_the_paths_that_differ():
    other = {"Dense_0": {"kernel": None}, "norm": {"scale": None}, "head": (None, None)}
    with pytest.raises(ValueError, match=r"missing paths \['Dense_0/bias'\]"):
        base.check_structure(PARAMS, other, "masks")
    # None may stand for a single leaf on either side.
    base.check_structure(PARAMS, jax.tree.map(lambda x: None, PARAMS), "masks")


def test_leaf_flags_resolves_selectors_and_rejects_non_bools():
    flags = base.leaf_flags(None, PARAMS, "prunable", lambda p: {"Dense_0": True, "head": False})
    assert flags["Dense_0"] == {"kernel": True, "bias": True}
    assert flags["norm"]["scale"] is False and flags["head"] == (False, False)
    with pytest.raises(TypeError, match=r"`prunable` must hold one Python bool.*'head/0'"):
        base.leaf_flags({"Dense_0": True, "head": 0.5}, PARAMS, "prunable", lambda p: None)
    ints = {"w": jnp.ones(3, jnp.int32)}
    with pytest.raises(TypeError, match=r"`prunable` selects leaf 'w' must be a floating-point"):
        base.leaf_flags(True, ints, "prunable", lambda p: None)


def test_dataclass_params_work_like_dicts():
    @jax.tree_util.register_dataclass
    @dataclasses.dataclass
    class Layer:
        kernel: jax.Array
        bias: jax.Array | None

    params = [Layer(jnp.ones((2, 2)), None), Layer(jnp.ones((2, 3)), jnp.zeros(3))]
    out = base.map_with_path(lambda path, x: path, params)
    assert out[0].kernel == "0/kernel" and out[0].bias is None and out[1].bias == "1/bias"


def test_check_int_and_fraction_name_the_argument():
    assert base.check_int(3, "batch_size", minimum=1) == 3
    with pytest.raises((TypeError, ValueError), match="batch_size"):
        base.check_int(0, "batch_size", minimum=1)
    with pytest.raises((TypeError, ValueError), match="batch_size"):
        base.check_int(2.5, "batch_size")
    with pytest.raises(ValueError, match="sparsity"):
        base.check_fraction(1.5, "sparsity")
