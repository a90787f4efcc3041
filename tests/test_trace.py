"""Tests for dependency discovery from the jaxpr (`trace_groups`)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
import zoo  # tests/zoo.py (tests/ is on pytest's pythonpath)

import jaxprune
from jaxprune import Member
from jaxprune._src.trace import groups_under, trace_groups


def _abstract(model, shape):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    v = jax.eval_shape(model.init, jax.random.key(0), x)
    return v, x


def _members(group):
    return {(m.path, m.axis, m.offset, m.outer, m.inner) for m in group.members}


def _by_name(d):
    return {g.name: g for g in d.groups}


def test_mlp_groups_and_io_unprunable():
    model = zoo.MLP()
    v, x = _abstract(model, (2, 5))
    d = trace_groups(model.apply, v, x)
    assert [g.name for g in d.groups] == ["params/fc1/kernel[1]", "params/fc2/kernel[1]"]
    g1, g2 = d.groups
    assert _members(g1) == {
        ("params/fc1/bias", 0, 0, 1, 1),
        ("params/fc1/kernel", 1, 0, 1, 1),
        ("params/fc2/kernel", 0, 0, 1, 1),
    }
    assert _members(g2) == {
        ("params/fc2/bias", 0, 0, 1, 1),
        ("params/fc2/kernel", 1, 0, 1, 1),
        ("params/head/kernel", 0, 0, 1, 1),
    }
    reasons = {m.path + f"[{m.axis}]": r for ms, r in d.unprunable for m in ms}
    assert reasons["params/fc1/kernel[0]"] == ("axis of a model input",)
    assert reasons["params/head/kernel[1]"] == ("axis of a model output",)
    assert reasons["params/head/bias[0]"] == ("axis of a model output",)
    text = d.explain()
    assert "2 prunable groups" in text and "because: axis of a model output" in text


def test_lenet5_flatten_is_strided():
    model = zoo.LeNet5()
    v, x = _abstract(model, (1, 28, 28, 1))
    d = trace_groups(model.apply, v, x)
    groups = _by_name(d)
    assert sorted(groups) == [
        "params/conv1/kernel[3]",
        "params/conv2/kernel[3]",
        "params/fc1/kernel[1]",
    ]
    assert _members(groups["params/conv2/kernel[3]"]) == {
        ("params/conv2/bias", 0, 0, 1, 1),
        ("params/conv2/kernel", 3, 0, 1, 1),
        ("params/fc1/kernel", 0, 0, 16, 1),  # (h * 4 + w) * 50 + c
    }
    assert _members(groups["params/conv1/kernel[3]"]) == {
        ("params/conv1/bias", 0, 0, 1, 1),
        ("params/conv1/kernel", 3, 0, 1, 1),
        ("params/conv2/kernel", 2, 0, 1, 1),
    }
    spatial = [ms for ms, r in d.unprunable if "spatial axis of a convolution" in r]
    assert {(m.path, m.axis) for ms in spatial for m in ms} == {
        (f"params/conv{i}/kernel", a) for i in (1, 2) for a in (0, 1)
    }


def test_conv_bn_block_one_group_with_batch_stats():
    model = zoo.ConvBN()
    v, x = _abstract(model, (2, 8, 8, 3))
    d = trace_groups(model.apply, v, x)
    assert len(d.groups) == 1
    assert {(m.path, m.axis) for m in d.groups[0].members} == {
        ("params/conv1/kernel", 3),
        ("params/conv1/bias", 0),
        ("params/bn1/scale", 0),
        ("params/bn1/bias", 0),
        ("batch_stats/bn1/mean", 0),
        ("batch_stats/bn1/var", 0),
        ("params/conv2/kernel", 2),
    }
    [params_group] = groups_under(d.groups, "params")
    assert {m.path for m in params_group.members} == {
        "conv1/kernel",
        "conv1/bias",
        "bn1/scale",
        "bn1/bias",
        "conv2/kernel",
    }


def test_residual_add_couples_stem_and_block_output():
    model = zoo.Residual()
    v, x = _abstract(model, (2, 6, 6, 3))
    d = trace_groups(model.apply, v, x)
    groups = _by_name(d)
    assert sorted(groups) == ["params/a/kernel[3]", "params/b/kernel[3]"]
    res = {(m.path, m.axis) for m in groups["params/b/kernel[3]"].members}
    assert res == {
        ("params/stem/kernel", 3),
        ("params/stem/bias", 0),
        ("params/a/kernel", 2),
        ("params/b/kernel", 3),
        ("params/b/bias", 0),
        ("params/head/kernel", 0),
    }


def test_concatenate_gives_segments():
    model = zoo.Dense2()
    v, x = _abstract(model, (2, 6, 6, 3))
    d = trace_groups(model.apply, v, x)
    groups = _by_name(d)
    assert sorted(groups) == ["params/c1/kernel[3]", "params/c2/kernel[3]", "params/mix/kernel[3]"]
    assert Member("params/mix/kernel", 2, offset=0, partial=True) in (
        groups["params/c1/kernel[3]"].members
    )
    assert Member("params/mix/kernel", 2, offset=6, partial=True) in (
        groups["params/c2/kernel[3]"].members
    )
    assert Member("params/c2/kernel", 2) in groups["params/c1/kernel[3]"].members


def test_depthwise_couples_input_and_output_channels():
    class DW(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(6, (1, 1), name="pw")(x)
            x = nn.Conv(6, (3, 3), feature_group_count=6, name="dw")(x)
            return nn.Conv(2, (1, 1), name="out")(x)

    model = DW()
    v, x = _abstract(model, (1, 5, 5, 3))
    d = trace_groups(model.apply, v, x)
    assert len(d.groups) == 1
    assert {(m.path, m.axis) for m in d.groups[0].members} == {
        ("params/pw/kernel", 3),
        ("params/pw/bias", 0),
        ("params/dw/kernel", 3),
        ("params/dw/bias", 0),
        ("params/out/kernel", 2),
    }
    # The size-1 input axis of the depthwise kernel is never a channel.
    assert all(m.axis != 2 for m in d.groups[0].members if m.path == "params/dw/kernel")


def test_depthwise_multiplier_is_inner_layout():
    class DW(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(4, (1, 1), name="pw")(x)
            x = nn.Conv(8, (3, 3), feature_group_count=4, name="dw")(x)
            return nn.Conv(2, (1, 1), name="out")(x)

    v, x = _abstract(DW(), (1, 5, 5, 3))
    [g] = trace_groups(DW().apply, v, x).groups
    assert Member("params/dw/kernel", 3, inner=2) in g.members
    assert Member("params/out/kernel", 2, inner=2) in g.members


def test_grouped_conv_prunes_one_in_group_index_across_all_groups():
    model = zoo.Grouped()
    v, x = _abstract(model, (1, 5, 5, 3))
    d = trace_groups(model.apply, v, x)
    groups = _by_name(d)
    assert sorted(groups) == ["params/g1/kernel[3]", "params/g2/kernel[3]", "params/pw/kernel[3]"]
    # pw's 8 outputs feed 2 groups of 4: channel j of the group is pw rows {j, 4 + j}.
    assert _members(groups["params/pw/kernel[3]"]) == {
        ("params/pw/kernel", 3, 0, 2, 1),
        ("params/pw/bias", 0, 0, 2, 1),
        ("params/g1/kernel", 2, 0, 1, 1),
    }
    # g1's per-group outputs are g2's per-group inputs (same layout, merged into one group).
    assert _members(groups["params/g1/kernel[3]"]) == {
        ("params/g1/kernel", 3, 0, 2, 1),
        ("params/g1/bias", 0, 0, 2, 1),
        ("params/g2/kernel", 2, 0, 1, 1),
    }
    # No member is whole here: the count comes from the tiling members (8 / 2).
    assert _members(groups["params/g2/kernel[3]"]) == {
        ("params/g2/kernel", 3, 0, 2, 1),
        ("params/g2/bias", 0, 0, 2, 1),
        ("params/out/kernel", 2, 0, 2, 1),
    }
    assert jaxprune.check_groups(d.groups, v) == dict.fromkeys(groups, 4)


def test_overlapping_views_of_one_axis_are_left_out():
    def slices(p, x):
        h = jax.nn.relu(x @ p["a"])
        return h[:, :4] @ p["b"] + h[:, 2:6] @ p["c"]

    p = {"a": jnp.ones((3, 6)), "b": jnp.ones((4, 2)), "c": jnp.ones((4, 2))}
    d = trace_groups(slices, p, jnp.ones((2, 3)))
    assert d.groups == []
    assert any("overlapping views" in " ".join(r) for _, r in d.unprunable)

    def disjoint(p, x):
        h = jax.nn.relu(x @ p["a"])
        return h[:, :4] @ p["b"] + h[:, 4:6] @ p["d"]

    p = {"a": p["a"], "b": p["b"], "d": jnp.ones((2, 2))}
    d = trace_groups(disjoint, p, jnp.ones((2, 3)))
    assert [len(g.members) for g in d.groups] == [2, 2]  # a's columns [0, 4) and [4, 6)

    class TwoGroupings(nn.Module):  # one map read by convs with 2 and with 4 groups
        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Conv(8, (1, 1), name="pw")(x))
            a = nn.Conv(8, (3, 3), feature_group_count=2, name="g2")(h)
            b = nn.Conv(8, (3, 3), feature_group_count=4, name="g4")(h)
            return nn.Conv(2, (1, 1), name="out")(a + b)

    v, x = _abstract(TwoGroupings(), (1, 5, 5, 3))
    d = trace_groups(TwoGroupings().apply, v, x)
    pw = [g for g in d.groups if any(m.path == "params/pw/kernel" for m in g.members)]
    assert pw == []
    assert any(
        "overlapping views" in " ".join(r) and any(m.path == "params/pw/kernel" for m in ms)
        for ms, r in d.unprunable
    )


def test_unsupported_primitive_is_recorded_never_guessed():
    def f(p, x):
        h = x @ p["a"]
        h = jnp.cumsum(h, axis=1)  # cumsum: not mapped
        return h @ p["b"]

    p = {"a": jnp.ones((3, 5)), "b": jnp.ones((5, 2))}
    d = trace_groups(f, p, jnp.ones((2, 3)))
    assert d.groups == []
    for member in (Member("a", 1), Member("b", 0)):
        [(_, reasons)] = [u for u in d.unprunable if member in u[0]]
        assert reasons == ("unsupported primitive `cumsum`",)


def test_shared_subjaxprs_are_scoped_by_call_site():
    # Two relus of the same shape share one cached sub-jaxpr; their layers must stay apart.
    def f(p, x):
        h = jax.nn.relu(x @ p["a"])
        g = jax.nn.relu(x @ p["b"])
        return h @ p["c"] + g @ p["d"]

    p = {k: jnp.ones(s) for k, s in dict(a=(3, 5), b=(3, 5), c=(5, 2), d=(5, 2)).items()}
    d = trace_groups(f, p, jnp.ones((2, 3)))
    assert [{(m.path, m.axis) for m in g.members} for g in d.groups] == [
        {("a", 1), ("c", 0)},
        {("b", 1), ("d", 0)},
    ]


def test_jit_remat_custom_vjp_and_scan_are_followed():
    @jax.custom_vjp
    def ident(h):
        return h

    ident.defvjp(lambda h: (h, None), lambda _, g: (g,))

    @jax.checkpoint
    def block(h, w):
        return jnp.tanh(h @ w)

    @jax.jit
    def f(p, x):
        h = ident(block(x, p["a"]))

        def body(c, _):
            return jax.nn.sigmoid(c * p["s"][None]), None

        h, _ = jax.lax.scan(body, h, None, length=2)
        return h @ p["b"]

    p = {"a": jnp.ones((3, 5)), "b": jnp.ones((5, 2)), "s": jnp.ones(5)}
    d = trace_groups(f, p, jnp.ones((2, 3)))
    assert [{(m.path, m.axis) for m in g.members} for g in d.groups] == [
        {("a", 1), ("b", 0), ("s", 0)}
    ]


def test_broadcast_from_size_one_does_not_couple():
    def f(p, x):
        return (x @ p["a"]) * p["g"][None] @ p["b"]  # g has shape (1,): a scalar gate

    p = {"a": jnp.ones((3, 5)), "b": jnp.ones((5, 2)), "g": jnp.ones((1,))}
    d = trace_groups(f, p, jnp.ones((2, 3)))
    assert [{(m.path, m.axis) for m in g.members} for g in d.groups] == [{("a", 1), ("b", 0)}]


@pytest.mark.parametrize("n", [1, 5])
def test_model_input_axis_never_in_a_group(n):
    def f(p, x):
        return x * p["s"][None] @ p["b"]  # the scale shares the input's feature axis

    p = {"s": jnp.ones(n), "b": jnp.ones((n, 2))}
    d = trace_groups(f, p, jnp.ones((2, n)))
    assert d.groups == []
    asked = trace_groups(f, p, jnp.ones((2, n)), prune_inputs=True, prune_outputs=True)
    expected = [{("b", 1)}] if n == 1 else [{("s", 0), ("b", 0)}, {("b", 1)}]
    assert [{(m.path, m.axis) for m in g.members} for g in asked.groups] == expected


def test_nnx_state_paths():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.fc1 = nnx.Linear(4, 6, rngs=rngs)
            self.fc2 = nnx.Linear(6, 2, rngs=rngs)

        def __call__(self, x):
            return self.fc2(nnx.relu(self.fc1(x)))

    gd, state = nnx.split(Net(nnx.Rngs(0)))
    d = trace_groups(lambda s, x: nnx.merge(gd, s)(x), state, jnp.ones((1, 4)))
    assert [{(m.path, m.axis) for m in g.members} for g in d.groups] == [
        {("fc1/kernel", 1), ("fc1/bias", 0), ("fc2/kernel", 0)}
    ]


def test_cond_and_while_couple_carries_and_branches():
    def f(p, x):
        h = x @ p["a"]
        h = jax.lax.cond(x[0, 0] > 0, lambda h: h * p["s"][None], jnp.tanh, h)
        h = jax.lax.fori_loop(0, 2, lambda i, h: jax.nn.relu(h + p["t"][None]), h)
        return h @ p["b"]

    p = {"a": jnp.ones((3, 5)), "b": jnp.ones((5, 2)), "s": jnp.ones(5), "t": jnp.ones(5)}
    d = trace_groups(f, p, jnp.ones((2, 3)))
    assert [{(m.path, m.axis) for m in g.members} for g in d.groups] == [
        {("a", 1), ("b", 0), ("s", 0), ("t", 0)}
    ]


def test_concat_then_flatten_is_left_out_with_reason():
    # Channel c of segment 2 sits at rows (h * W + w) * 10 + 6 + c: not one stride.
    def f(p, x):
        a = jax.nn.relu(x @ p["a"])  # (N, 2, 2, 6)
        b = jax.nn.relu(x @ p["b"])  # (N, 2, 2, 4)
        h = jnp.concatenate([a, b], axis=-1).reshape(x.shape[0], -1)
        return h @ p["head"]

    p = {"a": jnp.ones((3, 6)), "b": jnp.ones((3, 4)), "head": jnp.ones((40, 2))}
    d = trace_groups(f, p, jnp.ones((1, 2, 2, 3)))
    assert d.groups == []
    left = {m.path: r for ms, r in d.unprunable for m in ms if m.path in ("a", "b")}
    assert all("is not one stride" in " ".join(r) for r in left.values()) and len(left) == 2
    assert "because: layout of head[0] (outer=4)" in d.explain()


def test_layernorm_over_channels_is_unprunable():
    class LN(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.LayerNorm(name="ln")(nn.Dense(6, name="a")(x))
            return nn.Dense(2, name="b")(h)

    v, x = _abstract(LN(), (2, 3))
    d = trace_groups(LN().apply, v, x)
    assert d.groups == []
    [(members, reasons)] = [u for u in d.unprunable if Member("params/a/kernel", 1) in u[0]]
    assert Member("params/ln/scale", 0) in members and Member("params/b/kernel", 0) in members
    assert any("reduced by `reduce_sum`" in r for r in reasons)
