"""Tests for jaxprune.select: exact counts against NumPy references, ties, NaN, sharding."""

import math
from fractions import Fraction

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import select
from jaxprune._src import select as select_impl

METHODS = ("radix", "bisect")
SPARSITIES = (0.0, 0.1, 0.5, 0.77, 0.999, 1.0)


# ---------------------------------------------------------------------------------------
# NumPy references.


def _clean(x):
    """The order every selector uses: float32, NaN -> -inf, -0.0 -> 0.0."""
    x = np.asarray(jnp.asarray(x, jnp.float32)).astype(np.float32).copy()
    x[np.isnan(x)] = -np.inf
    x[x == 0] = 0.0
    return x


def _dropped(s, n):
    """``floor(s * n + slack)`` for the float32 value of ``s`` (the documented count)."""
    s = Fraction(float(np.float32(s)))
    return min(max(math.floor(s * n + Fraction(min(n, 2**16), 2**24)), 0), n)


def _num_keep(s, n, floor=0):
    return max(n - _dropped(s, n), floor)


def _ref_top(flat, k):
    keep = np.zeros(flat.size, bool)
    keep[np.argsort(-flat, kind="stable")[:k]] = True
    return keep


def ref_topk(x, s, min_keep=0):
    flat = _clean(x).ravel()
    k = _num_keep(s, flat.size, min(min_keep, flat.size))
    return _ref_top(flat, k).reshape(np.shape(x))


def ref_global(leaves, s, min_keep=0):
    """Global top-k with per-leaf floors: forced entries first, the rest by global rank."""
    flats = [_clean(x).ravel() for x in leaves]
    forced = [_ref_top(f, min(min_keep, f.size)) if f.size else np.zeros(0, bool) for f in flats]
    flat = np.concatenate(flats) if flats else np.zeros(0, np.float32)
    is_forced = np.concatenate(forced) if forced else np.zeros(0, bool)
    k = _num_keep(s, flat.size, int(is_forced.sum()))
    ranked = np.where(is_forced, np.inf, flat)
    order = np.lexsort((np.arange(flat.size), ~is_forced, -ranked))
    keep = np.zeros(flat.size, bool)
    keep[order[:k]] = True
    out, start = [], 0
    for x in leaves:
        out.append(keep[start : start + np.size(x)].reshape(np.shape(x)))
        start += np.size(x)
    return out


def _data(kind, shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype(np.float32)
    if kind == "grid":  # heavy ties
        x = np.round(x * 2) / 2
    elif kind == "equal":
        x = np.full(shape, 0.25, np.float32)
    elif kind == "negative":
        x = -np.abs(x)
    elif kind == "nan":
        x[rng.random(shape) < 0.2] = np.nan
        x[rng.random(shape) < 0.1] = -np.inf
        x[rng.random(shape) < 0.1] = -0.0
        x[rng.random(shape) < 0.1] = 0.0
    elif kind == "bf16":
        return jnp.asarray(np.round(x * 8) / 8, jnp.bfloat16)
    return jnp.asarray(x)


KINDS = ("normal", "grid", "equal", "negative", "nan", "bf16")


# ---------------------------------------------------------------------------------------
# topk_mask / layerwise_topk / global_topk against NumPy.


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", KINDS)
def test_topk_mask_matches_numpy(kind, method):
    x = _data(kind, (13, 7))
    f = jax.jit(lambda x, s: select.topk_mask(x, s, method=method))
    for s in SPARSITIES:
        got = np.asarray(f(x, s))
        assert got.dtype == np.bool_ and got.shape == x.shape
        np.testing.assert_array_equal(got, ref_topk(x, s), err_msg=f"{kind} s={s}")
        assert got.sum() == _num_keep(s, x.size)


@pytest.mark.parametrize("method", METHODS)
def test_topk_mask_eager_min_keep_and_tiny(method):
    x = _data("grid", (5, 4), seed=1)
    np.testing.assert_array_equal(select.topk_mask(x, 0.3, method=method), ref_topk(x, 0.3))
    for mk in (2, 50):
        f = jax.jit(lambda x, s, mk=mk: select.topk_mask(x, s, min_keep=mk, method=method))
        for s in (0.0, 0.3, 0.95, 1.0):
            np.testing.assert_array_equal(f(x, s), ref_topk(x, s, mk), err_msg=f"{mk} {s}")
    f = jax.jit(lambda x, s: select.topk_mask(x, s, method=method))
    for x in (jnp.float32(2.0), jnp.ones((1,)), jnp.ones((1, 1)), jnp.zeros((0, 3))):
        for s in (0.0, 0.5, 1.0):
            got = f(x, s)
            assert got.shape == x.shape and got.dtype == jnp.bool_
            np.testing.assert_array_equal(got, ref_topk(x, s))


def test_topk_mask_ties_like_top_k():
    x = jnp.asarray(np.round(np.random.default_rng(3).normal(size=200) * 2).astype(np.float32))
    k = 71
    _, idx = jax.lax.top_k(x, k)
    expected = np.zeros(200, bool)
    expected[np.asarray(idx)] = True
    got = jax.jit(select.topk_mask)(x, 1 - k / 200)
    assert int(got.sum()) == k
    np.testing.assert_array_equal(got, expected)
    # -0.0 ties with 0.0 (lowest index first); NaN ties with -inf.
    z = jnp.array([-1.0, -0.0, 0.0, -0.0, np.nan, -np.inf], jnp.float32)
    for method in METHODS:
        f = jax.jit(lambda z, s, method=method: select.topk_mask(z, s, method=method))
        assert f(z, 4 / 6).tolist() == [False, True, True, False, False, False]
        assert f(z, 1 / 6).tolist() == [True, True, True, True, True, False]


def test_exact_count_large_n():
    # A float32 product gets floor(s * n) wrong for n > 2**24; the count must stay exact.
    n = 2**24 + 7
    x = jnp.zeros((n,), jnp.float32)
    s = np.float32(0.7)
    got = jax.jit(lambda x, s: jnp.sum(select.topk_mask(x, s), dtype=jnp.int32))(x, s)
    assert int(got) == _num_keep(s, n)
    assert int(got) != n - int(np.floor(np.float32(s) * np.float32(n)))  # off by 2 in f32


def test_decimal_sparsities_count_as_written():
    for n in (10, 20, 100, 200, 1000, 65536):
        for s in (0.1, 0.29, 0.3, 0.64, 0.7, 0.9, 0.99):
            exact = Fraction(str(s)) * n
            if exact.denominator == 1:  # decimal product is an integer: drop exactly that
                assert _dropped(s, n) == exact
    x = jnp.arange(10.0)
    assert int(select.topk_mask(x, 0.9).sum()) == 1
    assert int(jax.jit(select.topk_mask)(x, 0.7).sum()) == 3


def test_num_dropped_exact():
    rng = np.random.default_rng(0)
    ss = np.concatenate(
        [rng.random(300), [0, 1, 0.5, 0.8, 0.9, 0.99999994, 1e-30, 1e-45, 1.5, -0.1, 2**-30]]
    ).astype(np.float32)
    f = jax.jit(jax.vmap(select_impl.num_dropped, in_axes=(0, None)), static_argnums=1)
    for n in (0, 1, 3, 10, 65535, 65536, 65537, 2**24 + 1, 25_502_912, 2**31 - 2):
        np.testing.assert_array_equal(f(ss, n), [_dropped(s, n) for s in ss], err_msg=str(n))


@pytest.mark.parametrize("method", METHODS)
def test_layerwise_matches_numpy(method):
    scores = {
        "a": _data("normal", (6, 5)),
        "b": {"k": _data("grid", (3, 3, 2)), "bias": None},
        "c": _data("bf16", (9,)),
        "d": jnp.ones((1,)),
    }
    sp = {"a": 0.5, "b": {"k": 0.9, "bias": None}, "c": 0.3, "d": 1.0}
    f = jax.jit(lambda t, s: select.layerwise_topk(t, s, method=method))
    got = f(scores, sp)
    assert got["b"]["bias"] is None
    for path, x, s in [("a", scores["a"], 0.5), ("c", scores["c"], 0.3), ("d", scores["d"], 1.0)]:
        np.testing.assert_array_equal(got[path], ref_topk(x, s, 1))
    np.testing.assert_array_equal(got["b"]["k"], ref_topk(scores["b"]["k"], 0.9, 1))
    # A None in the sparsity prefix leaves a whole subtree unpruned.
    got = select.layerwise_topk(scores, {"a": 0.5, "b": None, "c": 0.0, "d": 1.0}, min_keep=0)
    assert got["b"] == {"k": None, "bias": None}
    assert not np.asarray(got["d"]).any()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ("normal", "grid", "nan", "bf16"))
def test_global_matches_numpy(kind, method):
    leaves = [_data(kind, (4, 6), 1), None, _data(kind, (3,), 2), _data(kind, (2, 3, 5), 3)]
    scores = {"l0": leaves[0], "l1": leaves[1], "l2": leaves[2], "l3": leaves[3]}
    real = [x for x in leaves if x is not None]
    f = jax.jit(lambda t, s: select.global_topk(t, s, min_keep=0, method=method))
    for s in SPARSITIES:
        got = f(scores, s)
        assert got["l1"] is None
        want = ref_global(real, s)
        for name, w in zip(("l0", "l2", "l3"), want, strict=True):
            np.testing.assert_array_equal(got[name], w, err_msg=f"{kind} s={s} {name}")
        total = sum(int(np.asarray(got[n]).sum()) for n in ("l0", "l2", "l3"))
        assert total == _num_keep(s, 24 + 3 + 30)


def test_global_ties_across_leaves_lowest_leaf_first():
    scores = {"a": jnp.full((2, 2), 1.0), "b": jnp.full((3,), 1.0), "c": jnp.full((2,), 1.0)}
    for method in METHODS:
        got = jax.jit(lambda t, m=method: select.global_topk(t, 4 / 9, min_keep=0, method=m))(
            scores
        )
        assert np.asarray(got["a"]).all() and np.asarray(got["b"]).tolist() == [1, 0, 0]
        assert not np.asarray(got["c"]).any()


@pytest.mark.parametrize("method", METHODS)
def test_global_min_keep_floor(method):
    rng = np.random.default_rng(0)
    scores = {
        "big": jnp.asarray(rng.uniform(1, 2, (40, 10)).astype(np.float32)),
        "tiny": jnp.asarray(rng.uniform(0, 1e-6, (8,)).astype(np.float32)),
        "one": jnp.asarray([0.5], jnp.float32),
    }
    f = jax.jit(lambda t, s: select.global_topk(t, s, min_keep=3, method=method))
    got = f(scores, 0.99)
    assert int(got["tiny"].sum()) == 3 and bool(got["one"][0])
    np.testing.assert_array_equal(got["tiny"], ref_topk(scores["tiny"], 1 - 3 / 8))
    total = sum(int(m.sum()) for m in got.values())
    assert total == _num_keep(0.99, 409, 3 + 3 + 1)
    want = ref_global(jax.tree.leaves(scores), 0.99, min_keep=3)  # tree order: sorted keys
    for m, w in zip(got.values(), want, strict=True):
        np.testing.assert_array_equal(m, w)
    # Forced entries exceed the budget: exactly the forced ones are kept.
    got = f(scores, 1.0)
    assert sum(int(m.sum()) for m in got.values()) == 7
    # min_keep=1 (default, the max-reduction path) and min_keep=0 (a leaf may vanish).
    got = jax.jit(lambda t: select.global_topk(t, 0.99, method=method))(scores)
    assert int(got["tiny"].sum()) == 1 and bool(got["tiny"][np.argmax(scores["tiny"])])
    got = jax.jit(lambda t: select.global_topk(t, 0.99, min_keep=0, method=method))(scores)
    assert int(got["tiny"].sum()) == 0 and sum(int(m.sum()) for m in got.values()) == 5


def test_global_floor_with_ties_matches_numpy():
    leaves = [_data("grid", (5, 5), 4), _data("equal", (6,)), _data("negative", (3, 4), 5)]
    scores = dict(zip("abc", leaves, strict=True))
    f = jax.jit(lambda t, s: select.global_topk(t, s, min_keep=2))
    for s in (0.0, 0.5, 0.9, 1.0):
        got = f(scores, s)
        for m, w in zip(got.values(), ref_global(leaves, s, 2), strict=True):
            np.testing.assert_array_equal(m, w, err_msg=str(s))


def test_traced_sparsity_compiles_once():
    scores = {"a": _data("normal", (8, 8)), "b": _data("grid", (5,))}

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(t, s):
        return select.global_topk(t, s), select.layerwise_topk(t, s)

    for s in np.linspace(0, 1, 7, dtype=np.float32):
        g, lw = f(scores, s)
        assert sum(int(m.sum()) for m in g.values()) == _num_keep(s, 69, 2)
        assert int(lw["a"].sum()) == _num_keep(s, 64, 1)


def test_methods_agree_on_larger_tree():
    rng = np.random.default_rng(7)
    scores = {
        f"l{i}": jnp.asarray(np.round(rng.normal(size=shape) * 64).astype(np.float32))
        for i, shape in enumerate([(3, 3, 16, 32), (300, 70), (1000,)])
    }
    leaves = list(scores.values())
    fs = {m: jax.jit(lambda t, s, m=m: select.global_topk(t, s, method=m)) for m in METHODS}
    for s in (0.3, 0.8):
        want = ref_global(leaves, s, min_keep=1)
        for method, f in fs.items():
            for m, w in zip(f(scores, s).values(), want, strict=True):
                np.testing.assert_array_equal(m, w, err_msg=f"{method} {s}")


# ---------------------------------------------------------------------------------------
# N:M, thresholds, hysteresis.


def ref_n_of_m(x, n, m, axis):
    x = np.moveaxis(_clean(x), axis, -1)
    g = x.reshape(*x.shape[:-1], x.shape[-1] // m, m)
    order = np.argsort(-g, axis=-1, kind="stable")
    keep = np.zeros(g.shape, bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    return np.moveaxis(keep.reshape(x.shape), -1, axis)


@pytest.mark.parametrize(("n", "m", "axis"), [(2, 4, -2), (1, 4, 0), (3, 8, -1), (2, 4, 2)])
def test_n_of_m_brute_force(n, m, axis):
    x = _data("grid", (4, 8, 8, 8), 8)
    got = jax.jit(lambda x: select.n_of_m_mask(x, n, m, axis))(x)
    np.testing.assert_array_equal(got, ref_n_of_m(x, n, m, axis))
    xn = _data("nan", (8, 3), 9)
    np.testing.assert_array_equal(select.n_of_m_mask(xn, n, m, 0), ref_n_of_m(xn, n, m, 0))


def test_n_of_m_tree_and_errors():
    tree = {"conv": {"kernel": _data("normal", (3, 3, 8, 4))}, "bias": None}
    got = select.top_n_of_m(tree, 2, 4)
    assert got["bias"] is None
    np.testing.assert_array_equal(
        got["conv"]["kernel"], ref_n_of_m(tree["conv"]["kernel"], 2, 4, -2)
    )
    assert select.top_n_of_m({"w": jnp.ones((4, 2))}, 4, 4)["w"].all()
    with pytest.raises(ValueError, match=r"conv/kernel.*not divisible"):
        select.top_n_of_m({"conv": {"kernel": jnp.ones((3, 3, 6, 4))}}, 2, 4)
    with pytest.raises(ValueError, match=r"'b'.*rank 1"):
        select.top_n_of_m({"b": jnp.ones((8,))}, 2, 4)
    with pytest.raises(ValueError, match="n <= m"):
        select.top_n_of_m(tree, 5, 4)
    with pytest.raises(TypeError, match="conv/kernel"):
        select.top_n_of_m({"conv": {"kernel": jnp.ones((4, 4), jnp.int32)}}, 2, 4)


def test_threshold_strict_and_prefix():
    x = jnp.array([0.5, 1.0, 2.0, np.nan], jnp.float32)
    tree = {"a": x, "b": {"c": x.astype(jnp.bfloat16)}, "n": None}
    got = select.threshold(tree, 1.0)
    assert got["a"].tolist() == [False, False, True, False] and got["n"] is None
    got = select.threshold(tree, {"a": 1.0, "b": 0.5, "n": None}, strict=False)
    assert got["a"].tolist() == [False, True, True, False]
    assert got["b"]["c"].tolist() == [True, True, True, False]
    f = jax.jit(lambda t, v: select.threshold(t, v))
    assert f(tree, jnp.float32(0.7))["a"].tolist() == [False, True, True, False]


def test_std_threshold_matches_numpy():
    rng = np.random.default_rng(2)
    w = {"d": jnp.asarray(rng.normal(0, 0.1, (20, 30)).astype(np.float32)), "b": None}
    w["c"] = jnp.asarray(rng.normal(0, 1, (3, 3, 4, 5)), jnp.bfloat16)
    got = jax.jit(select.std_threshold)(w, 1.5)
    for name in ("d", "c"):
        v = np.asarray(w[name], np.float32)
        np.testing.assert_array_equal(got[name], np.abs(v) > 1.5 * v.std())
    assert got["b"] is None
    # A fixed reference (Distiller: the dense weights) sets the threshold.
    ref = {"d": w["d"] * 2, "b": None, "c": w["c"]}
    got = select.std_threshold(w, {"d": 0.5, "b": None, "c": 0.0}, reference=ref)
    v = np.asarray(w["d"])
    np.testing.assert_array_equal(got["d"], np.abs(v) > 0.5 * (2 * v).std())
    assert bool(np.asarray(got["c"]).all())
    nan_w = {"k": jnp.array([np.nan, 3.0, 0.1, -5.0])}  # std of the non-NaN values: 3.31
    assert select.std_threshold(nan_w, 0.1)["k"].tolist() == [False, True, False, True]
    with pytest.raises(ValueError, match="must be >= 0"):
        select.std_threshold(w, -1.0)
    with pytest.raises(ValueError, match="reference"):
        select.std_threshold(w, 1.0, reference={"d": w["d"]})


def test_hysteresis_band():
    s = {"w": jnp.array([0.1, 0.3, 0.5, 0.5, 0.7, 0.9, np.nan]), "b": None}
    old = {"w": jnp.array([True, True, True, False, False, False, True]), "b": None}
    got = jax.jit(select.hysteresis)(s, old, 0.3, 0.7)
    # < low pruned; > high kept; band [low, high] keeps the old value; NaN pruned.
    assert got["w"].tolist() == [False, True, True, False, False, True, False]
    assert got["b"] is None
    got = select.hysteresis(s, old, {"w": 0.0, "b": None}, 1.0)
    np.testing.assert_array_equal(got["w"], [True, True, True, False, False, False, False])
    with pytest.raises(ValueError, match=r"'w'.*low <= high"):
        select.hysteresis(s, old, 0.8, 0.2)
    with pytest.raises(TypeError, match=r"'w'.*bool"):
        select.hysteresis(s, {"w": jnp.ones(7), "b": None}, 0.1, 0.2)
    with pytest.raises(ValueError, match=r"'w'.*shape"):
        select.hysteresis(s, {"w": jnp.ones(6, bool), "b": None}, 0.1, 0.2)


# ---------------------------------------------------------------------------------------
# Sharding.


def test_explicit_sharding_global_topk():
    mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Explicit,))
    host = {"a": _data("grid", (16, 64), 11), "b": _data("normal", (5,), 12)}
    want = select.global_topk(host, 0.7)
    with jax.set_mesh(mesh):
        a = jax.device_put(host["a"], jax.NamedSharding(mesh, jax.P(None, "x")))
        scores = {"a": a, "b": host["b"]}
        compiled = jax.jit(lambda t, s: select.global_topk(t, s)).lower(scores, 0.7).compile()
        assert "all-gather" not in compiled.as_text()  # counts: scalar all-reduces only
        got = compiled(scores, 0.7)
        assert got["a"].sharding.spec == jax.P(None, "x")
        lw = jax.jit(lambda t: select.layerwise_topk(t, 0.3))(scores)
        assert lw["a"].sharding.spec == jax.P(None, "x")
        with pytest.raises(ValueError, match=r"'a'.*method='bisect'"):
            select.global_topk(scores, 0.7, method="radix")
    for name in host:
        np.testing.assert_array_equal(got[name], want[name])
    np.testing.assert_array_equal(lw["a"], select.topk_mask(host["a"], 0.3, min_keep=1))


def test_auto_mesh_radix():
    mesh = jax.make_mesh((4, 2), ("d", "m"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    host = {"a": _data("grid", (16, 64), 13), "b": _data("grid", (8, 4), 14)}
    want = select.global_topk(host, 0.6)
    with jax.set_mesh(mesh):
        scores = {
            "a": jax.device_put(host["a"], jax.NamedSharding(mesh, jax.P("d", "m"))),
            "b": host["b"],
        }
        got = jax.jit(lambda t: select.global_topk(t, 0.6, method="radix"))(scores)
    for name in host:
        np.testing.assert_array_equal(got[name], want[name])


# ---------------------------------------------------------------------------------------
# Bad input.


def test_bad_inputs_name_the_argument():
    tree = {"layer": {"kernel": jnp.ones((4, 4))}, "bias": None}
    with pytest.raises(ValueError, match=r"sparsity.*\[0, 1\]"):
        select.global_topk(tree, 1.5)
    with pytest.raises(ValueError, match=r"sparsity\['layer/kernel'\].*\[0, 1\]"):
        select.layerwise_topk(tree, {"layer": {"kernel": 1.5}, "bias": None})
    with pytest.raises(ValueError, match="sparsity"):
        select.layerwise_topk(tree, {"other": 0.5})
    with pytest.raises(ValueError, match="scalar"):
        select.topk_mask(jnp.ones(4), jnp.array([0.5, 0.5]))
    with pytest.raises(TypeError, match="schedules"):
        select.global_topk(tree, lambda step: 0.5)
    with pytest.raises(TypeError, match=r"'layer/kernel'.*floating"):
        select.global_topk({"layer": {"kernel": jnp.ones((4,), jnp.int32)}}, 0.5)
    with pytest.raises(TypeError, match=r"'layer/kernel'.*floating"):
        select.layerwise_topk({"layer": {"kernel": jnp.ones((4,), bool)}}, 0.5)
    with pytest.raises(TypeError, match="scores"):
        select.topk_mask(np.arange(4), 0.5)
    with pytest.raises(ValueError, match="method"):
        select.topk_mask(jnp.ones(4), 0.5, method="sort")
    with pytest.raises(ValueError, match="min_keep"):
        select.global_topk(tree, 0.5, min_keep=-1)
    with pytest.raises(ValueError, match=r"t\['layer/kernel'\]"):
        select.threshold(tree, {"layer": {"kernel": jnp.ones(3)}, "bias": None})
    with pytest.raises(ValueError, match=r"`t` has entries \['0'\] that match no parameter path"):
        select.threshold(tree, [1.0])


def test_all_none_and_empty_trees():
    assert select.global_topk({"a": None, "b": None}, 0.5) == {"a": None, "b": None}
    assert select.layerwise_topk({"a": None}, 0.5) == {"a": None}
    got = select.global_topk({"a": jnp.zeros((0,)), "b": jnp.ones((3,))}, 0.5)
    assert got["a"].shape == (0,) and int(got["b"].sum()) == 2
