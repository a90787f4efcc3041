"""Tests for jaxprune.distributions: ERK/ER against RigL's loop in float64, uniform, per_path."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import distributions

SDS = jax.ShapeDtypeStruct


@pytest.fixture(autouse=True)
def _fresh_trace_counter():
    chex.clear_trace_counter()  # assert_max_traces counts per function across parametrized tests.


def _sds(*shape):
    return SDS(shape, jnp.float32)


def lenet300():
    """LeNet-300-100 kernels; biases are None (not prunable), as in Evci et al. 2020."""
    return {
        "Dense_0": {"kernel": _sds(784, 300), "bias": None},
        "Dense_1": {"kernel": _sds(300, 100), "bias": None},
        "Dense_2": {"kernel": _sds(100, 10), "bias": None},
    }


def lenet5():
    """LeNet-5 (Caffe) kernels (HWIO conv, (in, out) dense); biases None."""
    return {
        "conv1": {"kernel": _sds(5, 5, 1, 20), "bias": None},
        "conv2": {"kernel": _sds(5, 5, 20, 50), "bias": None},
        "fc1": {"kernel": _sds(800, 500), "bias": None},
        "fc2": {"kernel": _sds(500, 10), "bias": None},
    }


LENET300 = ["Dense_0/kernel", "Dense_1/kernel", "Dense_2/kernel"]
LENET5 = ["conv1/kernel", "conv2/kernel", "fc1/kernel", "fc2/kernel"]


def _flat(tree):
    """path -> value for every non-None leaf."""
    return {
        jax.tree_util.keystr(p, simple=True, separator="/"): v
        for p, v in jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]
        if v is not None
    }


def erk_reference(shapes, sparsity, power=1.0, kernel=True):
    """RigL's ERK loop, written plainly in Python float64. Returns (densities, eps)."""
    dense = set()
    while True:
        rhs, divisor, raw = 0.0, 0.0, {}
        for i, shape in enumerate(shapes):
            n = math.prod(shape)
            n_zeros = math.floor(sparsity * n)
            if i in dense:
                rhs -= n_zeros
            else:
                rhs += n - n_zeros
                dims = shape if kernel else shape[-2:]
                raw[i] = (sum(dims) / math.prod(dims)) ** power
                divisor += raw[i] * n
        if not raw:
            return [1.0] * len(shapes), 0.0
        eps = rhs / divisor
        top = max(raw.values())
        if eps * top > 1:
            dense |= {i for i, r in raw.items() if r == top}
        else:
            return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))], eps


# ---------------------------------------------------------------------------------------
# ERK reference vectors for LeNet-300-100 (printed values are densities).

VECTORS = [
    (lenet300, LENET300, 0.90, [0.0796, 0.2302, 1.0]),
    (lenet300, LENET300, 0.95, [0.0385, 0.1113, 0.9185]),
    (lenet300, LENET300, 0.98, [0.0154, 0.0445, 0.3674]),
    (lenet5, LENET5, 0.90, [1.0, 0.0871, 0.0884, 1.0]),
    (lenet5, LENET5, 0.95, [0.7261, 0.0375, 0.0381, 1.0]),
    (lenet5, LENET5, 0.98, [0.2779, 0.0143, 0.0146, 0.4572]),
]


@pytest.mark.parametrize(("net", "paths", "s", "expected"), VECTORS)
def test_erk_test_vectors(net, paths, s, expected):
    out = _flat(distributions.erk(net(), s))
    assert sorted(out) == sorted(paths)
    assert all(isinstance(v, float) for v in out.values())
    assert [round(1.0 - out[p], 4) for p in paths] == expected


@pytest.mark.parametrize(("net", "paths", "s", "expected"), VECTORS)
def test_erk_test_vectors_traced(net, paths, s, expected):
    out = _flat(jax.jit(lambda x: distributions.erk(net(), x))(jnp.float32(s)))
    got = [float(1.0 - out[p]) for p in paths]
    np.testing.assert_allclose(got, expected, atol=5.1e-5)


def test_erk_eps_lenet300():
    out = _flat(distributions.erk(lenet300(), 0.9))
    raw_fc1 = (784 + 300) / (784 * 300)
    eps = (1.0 - out["Dense_0/kernel"]) / raw_fc1
    assert round(eps, 3) == 17.264
    # The same eps as the plain reference loop.
    _, ref_eps = erk_reference([(784, 300), (300, 100), (100, 10)], 0.9)
    assert eps == pytest.approx(ref_eps, rel=1e-12)


def _random_shapes(rng, num):
    shapes = []
    for _ in range(num):
        kind = rng.integers(3)
        if kind == 0:
            shapes.append((int(rng.integers(8, 400)), int(rng.integers(8, 400))))
        elif kind == 1:
            k = int(rng.choice([1, 3, 5]))
            shapes.append((k, k, int(rng.integers(1, 64)), int(rng.integers(8, 128))))
        else:
            shapes.append((int(rng.integers(16, 256)),))
    return shapes


def _params_from(shapes):
    """A dict with a None leaf between every pair of real leaves (keys sort as 'l00', ...)."""
    params = {}
    for i, shape in enumerate(shapes):
        params[f"l{i:02d}"] = _sds(*shape)
        params[f"l{i:02d}_absent"] = None
    return params


@pytest.mark.parametrize("kernel", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_erk_matches_reference_concrete_and_traced(seed, kernel):
    rng = np.random.default_rng(seed)
    shapes = _random_shapes(rng, 7)
    params = _params_from(shapes)
    paths = [f"l{i:02d}" for i in range(len(shapes))]

    @jax.jit
    @chex.assert_max_traces(n=1)
    def traced(s):
        return distributions.erk(params, s, kernel=kernel)

    for s in [0.0, 0.3, 0.5, 0.8, 0.9, 0.95, 0.99, 1.0, *rng.uniform(0.5, 0.99, 3)]:
        s = float(s)
        ref, _ = erk_reference(shapes, s, kernel=kernel)
        concrete = _flat(distributions.erk(params, s, kernel=kernel))
        assert set(concrete) == set(paths)
        np.testing.assert_allclose([1 - concrete[p] for p in paths], ref, rtol=0, atol=1e-12)
        out = traced(jnp.float32(s))
        assert all(out[f"{p}_absent"] is None for p in paths)
        got = [float(1.0 - out[p]) for p in paths]
        assert all(out[p].dtype == jnp.float32 and out[p].shape == () for p in paths)
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5)
        assert all(0.0 <= float(out[p]) <= 1.0 for p in paths)


def test_erk_power_scale_against_reference():
    shapes = [(5, 5, 1, 20), (5, 5, 20, 50), (800, 500), (500, 10)]
    params = {f"l{i}": _sds(*s) for i, s in enumerate(shapes)}
    for power in (0.5, 2.0):
        ref, _ = erk_reference(shapes, 0.95, power=power)
        out = _flat(distributions.erk(params, 0.95, power_scale=power))
        np.testing.assert_allclose([1 - out[f"l{i}"] for i in range(4)], ref, atol=1e-12)
    # power 0: every raw is 1, so ERK is uniform up to floor rounding.
    out = _flat(distributions.erk(params, 0.9, power_scale=0.0))
    np.testing.assert_allclose(list(out.values()), 0.9, atol=1e-5)


def test_er_ignores_kernel_dims():
    params = lenet5()
    er = _flat(distributions.er(params, 0.95))
    erk_false = _flat(distributions.erk(params, 0.95, kernel=False))
    assert er == erk_false
    shapes = [(5, 5, 1, 20), (5, 5, 20, 50), (800, 500), (500, 10)]
    ref, _ = erk_reference(shapes, 0.95, kernel=False)
    np.testing.assert_allclose([1 - er[p] for p in LENET5], ref, atol=1e-12)
    # ER gives conv2 (20 -> 50, 1250 connections) the same raw density as a 20x50 dense layer.
    two = {"conv": _sds(5, 5, 20, 50), "fc": _sds(20, 50)}
    out = distributions.er(two, 0.5)
    assert out["conv"] == pytest.approx(out["fc"], abs=1e-12)
    assert distributions.erk(two, 0.5)["conv"] != pytest.approx(out["conv"])


@pytest.mark.parametrize("s", [0.5, 0.8, 0.9, 0.95, 0.98, 0.995])
def test_erk_meets_uniform_budget(s):
    for params in (lenet300(), lenet5()):
        erk = distributions.erk(params, s)
        uni = distributions.uniform(params, s)
        num_leaves = len(_flat(uni))
        got = distributions.nonzero_budget(params, erk)
        want = distributions.nonzero_budget(params, uni)
        assert abs(got - want) <= num_leaves


def test_erk_custom_layers_are_outside_the_budget():
    params = lenet5()
    out = distributions.erk(params, 0.95, custom={"conv1/kernel": 0.5, "fc2/kernel": None})
    assert out["conv1"]["kernel"] == 0.5
    assert out["fc2"]["kernel"] is None
    # The others are ERK over the remaining leaves alone.
    shapes = [(5, 5, 20, 50), (800, 500)]
    ref, _ = erk_reference(shapes, 0.95)
    np.testing.assert_allclose(
        [1 - out["conv2"]["kernel"], 1 - out["fc1"]["kernel"]], ref, atol=1e-12
    )
    rest = {"conv2": params["conv2"], "fc1": params["fc1"]}
    got = distributions.nonzero_budget(rest, {"conv2": out["conv2"], "fc1": out["fc1"]})
    assert abs(got - distributions.nonzero_budget(rest, 0.95)) <= 2
    # A traced custom value passes through.
    traced = jax.jit(
        lambda c, s: distributions.erk(params, s, custom={"conv1/kernel": c})["conv1"]["kernel"]
    )(jnp.float32(0.25), jnp.float32(0.9))
    assert float(traced) == 0.25


def test_erk_exclude_and_errors():
    params = lenet5()
    out = distributions.erk(params, 0.9, exclude=lambda path, leaf: len(leaf.shape) == 4)
    assert out["conv1"]["kernel"] is None and out["conv2"]["kernel"] is None
    ref, _ = erk_reference([(800, 500), (500, 10)], 0.9)
    np.testing.assert_allclose([1 - out["fc1"]["kernel"], 1 - out["fc2"]["kernel"]], ref)
    with pytest.raises(ValueError, match="fc3/kernel"):
        distributions.erk(params, 0.9, exclude=["fc3/kernel"])
    with pytest.raises(ValueError, match="conv9/kernel"):
        distributions.erk(params, 0.9, custom={"conv9/kernel": 0.5})
    with pytest.raises(ValueError, match=r"\['fc1/kernel'\] are both in `exclude` and in `custom`"):
        distributions.erk(params, 0.9, exclude=["fc1/kernel"], custom={"fc1/kernel": 0.5})
    with pytest.raises(ValueError, match=r"custom\['fc1/kernel'\]"):
        distributions.erk(params, 0.9, custom={"fc1/kernel": 1.5})
    with pytest.raises(ValueError, match="power_scale"):
        distributions.erk(params, 0.9, power_scale=-1.0)
    with pytest.raises(TypeError, match="`kernel` must be a bool, got 'yes'"):
        distributions.erk(params, 0.9, kernel="yes")


def test_erk_edge_cases():
    params = {"a": _sds(30, 20), "b": _sds(0, 4), "c": _sds(), "d": None, "e": jnp.ones(7)}
    assert distributions.erk(params, 0.0) == {"a": 0.0, "b": 0.0, "c": 0.0, "d": None, "e": 0.0}
    ones = distributions.erk(params, 1.0)
    assert ones["a"] == 1.0 and ones["c"] == 1.0 and ones["e"] == 1.0
    assert ones["b"] == 0.0  # An empty leaf has nothing to prune.
    assert distributions.erk({"x": None}, 0.5) == {"x": None}
    traced = jax.jit(lambda s: distributions.erk(params, s))(jnp.float32(1.0))
    assert float(traced["a"]) == 1.0


# ---------------------------------------------------------------------------------------
# Uniform.


def test_uniform_basic_and_traced():
    params = {"a": jnp.zeros((4, 3)), "b": jnp.zeros(3), "c": None, "d": [_sds(2, 2), None]}
    assert distributions.uniform(params, 0.5) == {"a": 0.5, "b": 0.5, "c": None, "d": [0.5, None]}

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(s):
        return distributions.uniform(params, s)

    for s in (0.1, 0.7):
        out = f(jnp.float32(s))
        assert float(out["a"]) == pytest.approx(s) and out["c"] is None


def test_uniform_exclude_forms():
    params = {"Dense_0": {"kernel": _sds(4, 3), "bias": _sds(3)}, "Dense_1": {"kernel": _sds(3, 2)}}
    out = distributions.uniform(params, 0.5, exclude=["Dense_0/bias"])
    assert out == {"Dense_0": {"kernel": 0.5, "bias": None}, "Dense_1": {"kernel": 0.5}}
    out = distributions.uniform(params, 0.5, exclude="Dense_1/kernel")
    assert out["Dense_1"]["kernel"] is None and out["Dense_0"]["bias"] == 0.5
    out = distributions.uniform(params, 0.5, exclude=lambda p, x: len(x.shape) == 1)
    assert out["Dense_0"]["bias"] is None and out["Dense_0"]["kernel"] == 0.5
    with pytest.raises(ValueError, match=r"\['Dense_0/b', 'Dense_9/kernel'\]"):
        distributions.uniform(params, 0.5, exclude=["Dense_9/kernel", "Dense_0/b"])
    with pytest.raises(TypeError, match="exclude"):
        distributions.uniform(params, 0.5, exclude=lambda p, x: jnp.asarray(True))
    with pytest.raises(TypeError, match="exclude"):
        distributions.uniform(params, 0.5, exclude=3)


def test_uniform_dense_first_last_in_flatten_order():
    params = {f"Dense_{i}": {"kernel": _sds(4, 4), "bias": None} for i in (0, 1, 2, 10)}
    out = _flat(distributions.uniform(params, 0.5, dense_first=True, dense_last=True))
    # Dict keys sort lexicographically: Dense_0, Dense_1, Dense_10, Dense_2.
    assert out == {"Dense_1/kernel": 0.5, "Dense_10/kernel": 0.5}
    # After exclude: the first *remaining* leaf is kept dense.
    out = _flat(distributions.uniform(params, 0.5, exclude=["Dense_0/kernel"], dense_first=True))
    assert out == {"Dense_10/kernel": 0.5, "Dense_2/kernel": 0.5}


@pytest.mark.parametrize(
    ("bad", "err", "match"),
    [
        (1.5, ValueError, "sparsity"),
        (-0.1, ValueError, "sparsity"),
        (float("nan"), ValueError, "sparsity"),
        (True, TypeError, "bool"),
        ("0.5", TypeError, "sparsity"),
        (jnp.array([0.5, 0.5]), TypeError, "shape"),
        (lambda t: 0.5, TypeError, "schedule"),
        (None, TypeError, "sparsity"),
    ],
)
def test_sparsity_argument_errors(bad, err, match):
    with pytest.raises(err, match=match):
        distributions.uniform(lenet300(), bad)
    with pytest.raises(err, match=match):
        distributions.erk(lenet300(), bad)


# ---------------------------------------------------------------------------------------
# per_path, resolve, nonzero_budget.


def test_per_path():
    params = lenet5()
    out = distributions.per_path(params, {"conv1/kernel": 0.34, "fc2/kernel": None}, default=0.9)
    assert _flat(out) == {"conv1/kernel": 0.34, "conv2/kernel": 0.9, "fc1/kernel": 0.9}
    assert out["fc2"]["kernel"] is None and out["fc1"]["bias"] is None
    # Paths of None leaves are known paths: they stay None.
    out = distributions.per_path(params, {"fc1/bias": 0.5})
    assert out["fc1"]["bias"] is None and out["fc1"]["kernel"] is None
    traced = jax.jit(lambda s: distributions.per_path(params, {"fc1/kernel": s})["fc1"]["kernel"])
    assert float(traced(jnp.float32(0.25))) == 0.25
    # Schedules are passed through for the caller to evaluate.
    sched = lambda count: 0.5
    out = distributions.per_path(params, {"fc1/kernel": sched}, default=sched)
    assert out["fc1"]["kernel"] is sched and out["conv1"]["kernel"] is sched
    with pytest.raises(ValueError, match=r"\['fc3/kernel'\]"):
        distributions.per_path(params, {"fc3/kernel": 0.5})
    with pytest.raises(ValueError, match=r"mapping\['fc1/kernel'\]"):
        distributions.per_path(params, {"fc1/kernel": 2.0})
    with pytest.raises(ValueError, match="default"):
        distributions.per_path(params, {}, default=-1.0)
    with pytest.raises(TypeError, match="mapping"):
        distributions.per_path(params, [("fc1/kernel", 0.5)])


def test_resolve():
    assert distributions.resolve("uniform") is distributions.uniform
    assert distributions.resolve("erk") is distributions.erk
    assert distributions.resolve("er") is distributions.er
    assert distributions.resolve("global") is distributions.GLOBAL
    assert isinstance(distributions.GLOBAL, distributions.GlobalSelection)
    assert distributions.resolve(distributions.GLOBAL) is distributions.GLOBAL
    assert repr(distributions.GLOBAL) == "jaxprune.distributions.GLOBAL"
    fn = lambda params, s: params
    assert distributions.resolve(fn) is fn
    with pytest.raises(ValueError, match=r"'er', 'erk', 'uniform', 'global'"):
        distributions.resolve("ERK2")
    with pytest.raises(TypeError, match="distribution"):
        distributions.resolve(3)


def test_nonzero_budget():
    params = {"w": jnp.zeros((10, 10)), "b": jnp.zeros(10), "c": None}
    assert distributions.nonzero_budget(params, {"w": 0.555, "b": None, "c": None}) == 55
    assert distributions.nonzero_budget(params, 0.5) == 55
    assert distributions.nonzero_budget(params, {"w": 1.0, "b": 0.0, "c": 0.3}) == 10
    traced = jax.jit(lambda s: distributions.nonzero_budget(params, s))(jnp.float32(0.5))
    assert float(traced) == 55.0
    with pytest.raises(ValueError, match="sparsities"):
        distributions.nonzero_budget(params, {"w": 0.5})
    with pytest.raises(ValueError, match=r"`sparsities\['w'\]` must lie in \[0, 1\], got 1.5"):
        distributions.nonzero_budget(params, {"w": 1.5, "b": None, "c": None})
