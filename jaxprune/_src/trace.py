"""Discovering structured pruning groups from a model's jaxpr.

:func:`trace_groups` traces ``apply_fn(variables, *example_inputs)`` with
:func:`jax.make_jaxpr` on abstract inputs and follows every axis of every variable through
the primitives of the jaxpr. Axes that must keep the same channels are merged in a
union-find over ``(call site, value, axis)`` nodes. Sub-jaxprs (``jit``, ``custom_jvp_call``,
``custom_vjp_call``, ``remat``, ``closed_call``) are walked once per call site with their own
environment: JAX caches and shares the body of, e.g., every ``relu`` of the same shape, so
keying nodes by ``Var`` alone would merge unrelated layers. The walk is a client of
:class:`jaxprune._src.interpret.JaxprWalker`, the library's one jaxpr interpreter.

Rules (each creates unions only where the structure says two axes index the same entries):

* ``dot_general``: contracting dims pairwise, batch dims with the output's leading dims,
  free dims with the output's remaining dims in order. The contracting dims of a *batched*
  ``dot_general`` (attention's ``q . k`` over the head dimension) are unprunable: the scores
  are usually divided by ``sqrt(head_dim)``, a constant the jaxpr does not tie to the axis,
  so a shrunk model would scale differently. Attention heads (the batch dims) stay
  prunable as one group over the query, key, value and output projections.
* ``conv_general_dilated``: input feature axis with the kernel's input axis, kernel output
  axis with the output feature axis, batch with batch. With ``feature_group_count`` equal to
  the number of input channels (depthwise), the input channels are coupled to the output
  channels (with a channel multiplier ``m`` the output is laid out ``(C, m)``). Other grouped
  convolutions (``G`` groups) prune the same in-group index ``j`` in every group, so the
  groups stay equal: the input axis is a strided parent (``outer=G``) of the kernel's input
  axis, and the output axis of a per-group output index. Spatial axes are never channels.
* element-wise primitives (``add``, ``mul``, ``max``, ``exp``, ``select_n``, ...): the same
  axis of operands and result, **only where the sizes are equal and larger than 1**
  (broadcasting from size 1 is not a coupling).
* ``broadcast_in_dim``, ``transpose``, ``squeeze``, reductions, ``argmax``: surviving or
  permuted dims; ``reduce_window*`` (pooling): axes with a window of 1 pass through. A
  reduced axis is unprunable: a mean or norm over channels (LayerNorm) changes when channels
  are removed, so the masked and the shrunk model would differ.
* ``reshape``: dims whose sizes match one to one are coupled (size-1 dims are ignored); a
  merge such as ``(H, W, C) -> H*W*C`` makes the merged axis a *strided* parent of each
  input dim (``Member(..., outer=H*W)`` for the Flax flatten); a split does the converse.
* ``concatenate``, ``pad``, ``slice``, ``split``: the long axis is a parent of segments at
  offsets (``Member(..., offset=..., partial=True)``).
* ``scan``, ``while``, ``cond``: bodies and branches are walked once per call site; carries
  are coupled to the body's results, scanned ``xs``/``ys`` drop their leading axis.
* anything else: every axis it touches is unprunable, with the primitive named as reason.

Parameter axes of size 1 are never members (they hold no channels). Groups are formed from
the classes of the union-find. A class that is split into segments or strided children (a
concatenation's output, a flatten's output) is not a group itself: its members are handed to
the child classes with the composed layout. A class touching an axis of a model input or
output, a spatial or pooled axis, or an unsupported primitive is unprunable, and so are its
children; so is a class whose layout on some member is not one ``(offset, outer, inner)``
stride (a concatenation flattened into a Dense layer), or that has no member spanning its
whole axis (attention heads split out of a projection), or that claims entries of a parent
axis which a sibling view indexes differently (overlapping slices, grouped convolutions with
different group counts on one map). Each group is named after its first
"producer" member, the last axis of a kernel, e.g. ``'params/conv1/kernel[3]'``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxprune._src import base
from jaxprune._src.groups import Group, Member
from jaxprune._src.interpret import JaxprWalker

# -----------------------------------------------------------------------------------------
# Primitive tables.

ELEMENTWISE = frozenset(
    """abs acos acosh add add_any and asin asinh atan atan2 atanh cbrt ceil clamp conj copy
    copy_p cos cosh digamma div eq erf erf_inv erfc exp exp2 expm1 floor ge gt imag
    integer_pow is_finite le lgamma log log1p logistic lt max min mul ne neg nextafter not or
    pow real reduce_precision rem round rsqrt select_n sign sin sinh sqrt square stop_gradient
    sub tan tanh xor convert_element_type sharding_constraint optimization_barrier
    shift_left shift_right_arithmetic shift_right_logical population_count""".split()
)
REDUCTIONS = frozenset(
    "reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor argmax "
    "argmin".split()
)
POOLING = frozenset("reduce_window_sum reduce_window_max reduce_window_min reduce_window".split())
SOURCES = frozenset("iota".split())

INPUT = "axis of a model input"
OUTPUT = "axis of a model output"
SPATIAL = "spatial axis of a convolution"
POOLED = "pooled (windowed) axis"
BATCHED_CONTRACTION = (
    "contracted in a batched dot_general (attention scores are often scaled by a constant "
    "computed from this axis's size, which shrinking would change)"
)


@dataclasses.dataclass(frozen=True)
class _Rel:
    """Child channels ``c`` sit at ``offset + (o * C + c) * inner + i`` of the parent axis."""

    parent: int
    child: int
    offset: int
    outer: int
    inner: int
    partial: bool


class _Graph:
    """Union-find over axis nodes plus the bookkeeping of the walk."""

    def __init__(self):
        self.parent: list[int] = []
        self.size: list[int] = []
        self.reasons: dict[int, set[str]] = {}
        self.members: dict[int, list[tuple[str, int]]] = {}
        self.rels: list[_Rel] = []
        self.ndims: dict[str, int] = {}
        # Nodes whose channels are exactly a strided view of their parent (a grouped conv's
        # per-group output index): their class may have no whole member.
        self.strided_roots: set[int] = set()

    def new(self, shape: Sequence[int]) -> tuple[int, ...]:
        start = len(self.parent)
        self.parent.extend(range(start, start + len(shape)))
        self.size.extend(int(s) for s in shape)
        return tuple(range(start, start + len(shape)))

    def find(self, a: int) -> int:
        p = self.parent
        while p[a] != a:
            p[a] = p[p[a]]
            a = p[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def mark(self, nodes: Sequence[int], reason: str) -> None:
        for n in nodes:
            self.reasons.setdefault(n, set()).add(reason)

    def rel(self, parent, child, offset=0, outer=1, inner=1, partial=False) -> None:
        self.rels.append(_Rel(parent, child, offset, outer, inner, partial))


def _shape(atom: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in atom.aval.shape)


class _Walker(JaxprWalker[tuple[int, ...]]):
    """Values are the axis nodes of a tensor; every rule adds unions and reasons to ``g``."""

    def __init__(self, graph: _Graph):
        self.g = graph

    def literal(self, atom: Any) -> tuple[int, ...]:
        return self.g.new(_shape(atom))

    def constant(self, var: Any, value: Any) -> tuple[int, ...]:
        return self.g.new(_shape(var))

    def equation(self, eqn: Any, ins: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        name = eqn.primitive.name
        outs = [self.g.new(_shape(v)) for v in eqn.outvars]
        ishapes = [_shape(a) for a in eqn.invars]
        oshapes = [_shape(v) for v in eqn.outvars]
        rule = getattr(self, "r_" + name, None)
        if name in ELEMENTWISE:
            rule = self.r_elementwise
        elif name in REDUCTIONS:
            rule = self.r_reduce
        elif name in POOLING:
            rule = self.r_pool
        elif name in SOURCES:
            return outs
        if rule is None:
            reason = f"unsupported primitive `{name}`"
            for nodes in (*ins, *outs):
                self.g.mark(nodes, reason)
            return outs
        rule(eqn, ins, outs, ishapes, oshapes)
        return outs

    # --- rules: (eqn, input nodes, output nodes, input shapes, output shapes) -----------

    def _same(self, a, b, sa, sb) -> None:
        if sa == sb and sa > 1:
            self.g.union(a, b)

    def r_elementwise(self, eqn, ins, outs, ishapes, oshapes):
        if len(outs) == len(ins) and eqn.primitive.name == "optimization_barrier":
            for i, o, si in zip(ins, outs, ishapes, strict=True):
                for a, b, s in zip(i, o, si, strict=True):
                    self._same(a, b, s, s)
            return
        out, so = outs[0], oshapes[0]
        for nodes, s in zip(ins, ishapes, strict=True):
            if len(s) == len(so):
                for ax in range(len(so)):
                    self._same(nodes[ax], out[ax], s[ax], so[ax])

    def r_broadcast_in_dim(self, eqn, ins, outs, ishapes, oshapes):
        for i, d in enumerate(eqn.params["broadcast_dimensions"]):
            self._same(ins[0][i], outs[0][d], ishapes[0][i], oshapes[0][d])

    def r_transpose(self, eqn, ins, outs, ishapes, oshapes):
        for k, p in enumerate(eqn.params["permutation"]):
            self._same(ins[0][p], outs[0][k], ishapes[0][p], oshapes[0][k])

    def r_squeeze(self, eqn, ins, outs, ishapes, oshapes):
        dims = {d % len(ishapes[0]) for d in eqn.params["dimensions"]}
        kept = [i for i in range(len(ishapes[0])) if i not in dims]
        for k, i in enumerate(kept):
            self._same(ins[0][i], outs[0][k], ishapes[0][i], oshapes[0][k])

    def r_reduce(self, eqn, ins, outs, ishapes, oshapes):
        axes = set(eqn.params["axes"])
        # A mean, norm or max over channels changes when channels are removed (LayerNorm):
        # the masked and the shrunk model would differ, so reduced axes are not pruned.
        reason = f"reduced by `{eqn.primitive.name}` (its result depends on the channel count)"
        self.g.mark([ins[0][a] for a in axes if ishapes[0][a] > 1], reason)
        kept = [i for i in range(len(ishapes[0])) if i not in axes]
        for k, i in enumerate(kept):
            self._same(ins[0][i], outs[0][k], ishapes[0][i], oshapes[0][k])

    def r_pool(self, eqn, ins, outs, ishapes, oshapes):
        p = eqn.params
        n_ops = len(outs)
        for ax in range(len(oshapes[0])):
            through = (
                p["window_dimensions"][ax] == 1
                and p["window_strides"][ax] == 1
                and tuple(p["padding"][ax]) == (0, 0)
                and p.get("base_dilation", (1,) * len(oshapes[0]))[ax] == 1
            )
            for k in range(n_ops):
                if not through:
                    self.g.mark([ins[k][ax], outs[k][ax]], POOLED)
                else:
                    self._same(ins[k][ax], outs[k][ax], ishapes[k][ax], oshapes[k][ax])

    def r_dot_general(self, eqn, ins, outs, ishapes, oshapes):
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        lhs, rhs, out = ins[0], ins[1], outs[0]
        sl, sr, so = ishapes[0], ishapes[1], oshapes[0]
        for a, b in zip(lc, rc, strict=True):
            self._same(lhs[a], rhs[b], sl[a], sr[b])
        if lb:  # batched: e.g. attention scores q . k, often scaled by 1/sqrt(axis size)
            self.g.mark([lhs[a] for a in lc] + [rhs[b] for b in rc], BATCHED_CONTRACTION)
        k = 0
        for a, b in zip(lb, rb, strict=True):
            self._same(lhs[a], out[k], sl[a], so[k])
            self._same(rhs[b], out[k], sr[b], so[k])
            k += 1
        for a in range(len(sl)):
            if a not in lc and a not in lb:
                self._same(lhs[a], out[k], sl[a], so[k])
                k += 1
        for b in range(len(sr)):
            if b not in rc and b not in rb:
                self._same(rhs[b], out[k], sr[b], so[k])
                k += 1

    def r_conv_general_dilated(self, eqn, ins, outs, ishapes, oshapes):
        p = eqn.params
        dn = p["dimension_numbers"]
        ls, rs, os_ = dn.lhs_spec, dn.rhs_spec, dn.out_spec
        lhs, rhs, out = ins[0], ins[1], outs[0]
        sl, sr, so = ishapes[0], ishapes[1], oshapes[0]
        g = self.g
        g.mark([lhs[d] for d in ls[2:]] + [rhs[d] for d in rs[2:]], SPATIAL)
        g.mark([out[d] for d in os_[2:]], SPATIAL)
        if p["batch_group_count"] == 1:
            self._same(lhs[ls[0]], out[os_[0]], sl[ls[0]], so[os_[0]])
        else:
            g.mark([lhs[ls[0]], out[os_[0]], rhs[rs[0]]], "batch_group_count > 1")
        self._same(rhs[rs[0]], out[os_[1]], sr[rs[0]], so[os_[1]])
        groups = p["feature_group_count"]
        c_in, c_out = sl[ls[1]], so[os_[1]]
        if groups == 1:
            self._same(lhs[ls[1]], rhs[rs[1]], c_in, sr[rs[1]])
        elif groups == c_in and sr[rs[1]] == 1:
            if c_out == c_in:
                self._same(lhs[ls[1]], out[os_[1]], c_in, c_out)
            else:  # depthwise with channel multiplier: output laid out (C, m)
                g.rel(out[os_[1]], lhs[ls[1]], inner=c_out // c_in)
        elif c_in % groups == 0 and c_out % groups == 0 and sr[rs[1]] == c_in // groups:
            # Grouped: input channel g * (c_in / G) + j meets kernel input row j of every
            # group, and output channel g * (c_out / G) + j belongs to group g. A prunable
            # channel is one j across all G groups, so each group stays the same size: the
            # input axis is a strided parent (outer=G) of the kernel's input axis, and the
            # output axis a strided parent of a new node for the per-group output index.
            g.rel(lhs[ls[1]], rhs[rs[1]], outer=groups)
            (per_group,) = g.new((c_out // groups,))
            g.rel(out[os_[1]], per_group, outer=groups)
            g.strided_roots.add(per_group)
        else:
            g.mark(
                [lhs[ls[1]], rhs[rs[1]], rhs[rs[0]], out[os_[1]]],
                f"grouped convolution (feature_group_count={groups}, {c_in} input channels)",
            )

    def r_reshape(self, eqn, ins, outs, ishapes, oshapes):
        if eqn.params.get("dimensions") is not None:
            self._unsupported(eqn, ins, outs, "reshape with `dimensions`")
            return
        a = [(i, s) for i, s in enumerate(ishapes[0]) if s != 1]
        b = [(j, s) for j, s in enumerate(oshapes[0]) if s != 1]
        i = j = 0
        inn, out = ins[0], outs[0]
        while i < len(a) and j < len(b):
            ga, gb = [a[i]], [b[j]]
            pa, pb = a[i][1], b[j][1]
            i, j = i + 1, j + 1
            while pa != pb:
                if pa < pb:
                    ga.append(a[i])
                    pa *= a[i][1]
                    i += 1
                else:
                    gb.append(b[j])
                    pb *= b[j][1]
                    j += 1
            if len(ga) == 1 and len(gb) == 1:
                self.g.union(inn[ga[0][0]], out[gb[0][0]])
            elif len(gb) == 1:
                self._strided(out[gb[0][0]], [(inn[k], s) for k, s in ga])
            elif len(ga) == 1:
                self._strided(inn[ga[0][0]], [(out[k], s) for k, s in gb])
            else:
                self.g.mark(
                    [inn[k] for k, _ in ga] + [out[k] for k, _ in gb],
                    "reshape that regroups several axes into several axes",
                )

    def _strided(self, parent: int, parts: list[tuple[int, int]]) -> None:
        sizes = [s for _, s in parts]
        for k, (node, _) in enumerate(parts):
            self.g.rel(parent, node, outer=math.prod(sizes[:k]), inner=math.prod(sizes[k + 1 :]))

    def r_concatenate(self, eqn, ins, outs, ishapes, oshapes):
        dim = eqn.params["dimension"]
        out, so = outs[0], oshapes[0]
        off = 0
        for nodes, s in zip(ins, ishapes, strict=True):
            for ax in range(len(so)):
                if ax != dim:
                    self._same(nodes[ax], out[ax], s[ax], so[ax])
            self.g.rel(out[dim], nodes[dim], offset=off, partial=s[dim] != so[dim])
            off += s[dim]

    def r_pad(self, eqn, ins, outs, ishapes, oshapes):
        for ax, (lo, hi, interior) in enumerate(eqn.params["padding_config"]):
            if (lo, hi, interior) == (0, 0, 0):
                self._same(ins[0][ax], outs[0][ax], ishapes[0][ax], oshapes[0][ax])
            elif interior == 0 and lo >= 0 and hi >= 0:
                self.g.rel(outs[0][ax], ins[0][ax], offset=lo, partial=True)
            else:
                self.g.mark([ins[0][ax], outs[0][ax]], "pad with interior or negative padding")

    def r_slice(self, eqn, ins, outs, ishapes, oshapes):
        p = eqn.params
        strides = p.get("strides") or (1,) * len(ishapes[0])
        for ax, (st, lim, step) in enumerate(
            zip(p["start_indices"], p["limit_indices"], strides, strict=True)
        ):
            full = st == 0 and lim == ishapes[0][ax] and step == 1
            if full:
                self._same(ins[0][ax], outs[0][ax], ishapes[0][ax], oshapes[0][ax])
            elif step == 1:
                self.g.rel(ins[0][ax], outs[0][ax], offset=st, partial=True)
            else:
                self.g.mark([ins[0][ax], outs[0][ax]], "strided slice")

    def r_split(self, eqn, ins, outs, ishapes, oshapes):
        axis = eqn.params["axis"]
        off = 0
        for nodes, s in zip(outs, oshapes, strict=True):
            for ax in range(len(s)):
                if ax != axis:
                    self._same(ins[0][ax], nodes[ax], ishapes[0][ax], s[ax])
            self.g.rel(ins[0][axis], nodes[axis], offset=off, partial=s[axis] != ishapes[0][axis])
            off += s[axis]

    def _unsupported(self, eqn, ins, outs, reason):
        for nodes in (*ins, *outs):
            self.g.mark(nodes, reason)

    def cond(self, eqn, ins):
        outs = [self.g.new(_shape(v)) for v in eqn.outvars]
        for branch in eqn.params["branches"]:
            for a, b in zip(self.walk(branch, ins[1:]), outs, strict=True):
                for u, v in zip(a, b, strict=True):
                    self.g.union(u, v)
        return outs

    def while_loop(self, eqn, ins):
        p = eqn.params
        nc, nb = p["cond_nconsts"], p["body_nconsts"]
        carry = ins[nc + nb :]
        self.walk(p["cond_jaxpr"], [*ins[:nc], *carry])
        for a, b in zip(
            self.walk(p["body_jaxpr"], [*ins[nc : nc + nb], *carry]), carry, strict=True
        ):
            for u, v in zip(a, b, strict=True):
                self.g.union(u, v)
        return list(carry)

    def scan(self, eqn, ins):
        p = eqn.params
        nc, nk = p["num_consts"], p["num_carry"]
        body = p["jaxpr"]
        xs = ins[nc + nk :]
        x_nodes = [nodes[1:] for nodes in xs]
        for nodes in xs:
            self.g.mark(nodes[:1], "scanned axis")
        body_outs = self.walk(body, [*ins[:nc], *ins[nc : nc + nk], *x_nodes])
        for a, b in zip(ins[nc : nc + nk], body_outs[:nk], strict=True):
            for u, v in zip(a, b, strict=True):
                self.g.union(u, v)
        ys = []
        for v, nodes in zip(eqn.outvars[nk:], body_outs[nk:], strict=True):
            lead = self.g.new(_shape(v)[:1])
            self.g.mark(lead, "scanned axis")
            ys.append(lead + tuple(nodes))
        return [*body_outs[:nk], *ys]


# -----------------------------------------------------------------------------------------
# Result.


@dataclasses.dataclass(frozen=True)
class Discovery:
    """What :func:`trace_groups` found.

    Attributes:
      groups: The prunable groups, in the order of their first member's leaf.
      unprunable: ``(members, reasons)`` pairs: coupled parameter axes that must not be pruned
        and why (touching a model input or output, a convolution's spatial axis, an
        unsupported primitive, ...).
    """

    groups: list[Group]
    unprunable: list[tuple[tuple[Member, ...], tuple[str, ...]]]

    def explain(self) -> str:
        """Returns a human-readable listing of every group and every unprunable coupling."""
        lines = [f"{len(self.groups)} prunable groups:"]
        for g in self.groups:
            lines.append(f"  {g.name} ({len(g.members)} members)")
            lines.extend(f"    {_fmt(m)}" for m in g.members)
        lines.append(f"{len(self.unprunable)} unprunable couplings:")
        for members, reasons in self.unprunable:
            lines.append("  " + ", ".join(_fmt(m) for m in members))
            lines.append("    because: " + "; ".join(reasons))
        return "\n".join(lines)


def _fmt(m: Member) -> str:
    s = f"{m.path}[{m.axis}]"
    extra = []
    if m.offset:
        extra.append(f"offset={m.offset}")
    if m.outer != 1:
        extra.append(f"outer={m.outer}")
    if m.inner != 1:
        extra.append(f"inner={m.inner}")
    if m.partial and not extra:
        extra.append("partial")
    return s + (" (" + ", ".join(extra) + ")" if extra else "")


def _compose(m: Member, rel: _Rel, parent_len: int, child_len: int) -> Member | None:
    """Layout of the child's channels on ``m``'s axis, or ``None`` if not representable."""
    if m.outer == 1:
        return Member(
            m.path,
            m.axis,
            offset=m.offset + rel.offset * m.inner,
            outer=rel.outer,
            inner=rel.inner * m.inner,
            partial=m.partial or rel.partial,
        )
    if rel.offset == 0 and rel.outer == 1 and child_len * rel.inner == parent_len:
        return Member(m.path, m.axis, m.offset, m.outer, rel.inner * m.inner, m.partial)
    return None


def _merge_same_layout_children(g: _Graph) -> None:
    """Unions children laid out identically on the same parent class: the same channels.

    E.g. a grouped convolution's per-group outputs read by a second grouped convolution with
    the same number of groups, or one map flattened twice.
    """
    changed = True
    while changed:
        changed = False
        seen: dict[tuple, int] = {}
        for r in g.rels:
            key = (g.find(r.parent), r.offset, r.outer, r.inner, r.partial, g.size[r.child])
            other = seen.setdefault(key, r.child)
            if g.find(other) != g.find(r.child):
                g.union(other, r.child)
                changed = True


def _mark_overlapping_children(
    parents_of: dict[int, list[_Rel]], size: dict[int, int], reasons: dict[int, set[str]]
) -> None:
    """Children that claim the same entries of one parent axis in different ways conflict.

    E.g. two slices ``x[..., :4]`` and ``x[..., 2:6]``, or grouped convolutions with
    different group counts reading the same channels: pruning one child's channel would
    remove entries the other indexes differently, so both are left unprunable. Children
    that are orthogonal factors of one layout (the ``H``, ``W`` and ``C`` of a flatten) do
    not conflict.
    """
    by_parent: dict[int, dict[int, _Rel]] = {}
    for rels in parents_of.values():
        for r in rels:
            by_parent.setdefault(r.parent, {})[r.child] = r

    def entries(r: _Rel, n: int) -> np.ndarray:
        c = size[r.child]
        o = np.arange(r.outer)[:, None, None] * c + np.arange(c)[None, :, None]
        idx = (r.offset + o * r.inner + np.arange(r.inner)[None, None, :]).ravel()
        return idx[idx < n]

    def factors(a: _Rel, b: _Rel, n: int) -> bool:
        def tiles(r):
            return not r.partial and r.offset == 0 and r.outer * size[r.child] * r.inner == n

        if not (tiles(a) and tiles(b)):
            return False
        ba, bb = size[a.child] * a.inner, size[b.child] * b.inner
        return b.inner % ba == 0 or a.inner % bb == 0

    for parent, children in by_parent.items():
        if len(children) < 2:
            continue
        n = size[parent]
        rels = list(children.values())
        sets = [set(entries(r, n).tolist()) for r in rels]
        for i in range(len(rels)):
            for j in range(i + 1, len(rels)):
                if sets[i] & sets[j] and not factors(rels[i], rels[j], n):
                    for r in (rels[i], rels[j]):
                        reasons.setdefault(r.child, set()).add(
                            "overlapping views of one axis (slices or groupings that disagree)"
                        )


def _finish(g: _Graph, order: dict[str, int]) -> Discovery:
    _merge_same_layout_children(g)
    find = g.find
    direct: dict[int, set[Member]] = {}
    for node, lst in g.members.items():
        for path, axis in lst:
            direct.setdefault(find(node), set()).add(Member(path, axis))
    reasons: dict[int, set[str]] = {}
    for node, rs in g.reasons.items():
        reasons.setdefault(find(node), set()).update(rs)
    parents_of: dict[int, list[_Rel]] = {}
    is_parent: set[int] = set()
    for r in g.rels:
        rr = _Rel(find(r.parent), find(r.child), r.offset, r.outer, r.inner, r.partial)
        parents_of.setdefault(rr.child, []).append(rr)
        is_parent.add(rr.parent)
    size = {find(i): g.size[i] for i in range(len(g.parent))}
    _mark_overlapping_children(parents_of, size, reasons)

    memo: dict[int, tuple[set[Member], set[str]]] = {}

    def resolve(c: int, stack: frozenset) -> tuple[set[Member], set[str]]:
        if c in memo:
            return memo[c]
        if c in stack:
            return set(), {"cyclic reshape/concatenate layout"}
        mem = set(direct.get(c, ()))
        rs = set(reasons.get(c, ()))
        for rel in parents_of.get(c, ()):
            pm, pr = resolve(rel.parent, stack | {c})
            rs |= pr
            for m in pm:
                cm = _compose(m, rel, size[rel.parent], size[c])
                if cm is None:
                    rs.add(f"layout of {_fmt(m)} through a reshape/concatenate is not one stride")
                else:
                    mem.add(cm)
        memo[c] = (mem, rs)
        return mem, rs

    def key(m: Member):
        return (order[m.path], m.axis, m.offset, m.outer, m.inner)

    groups, unprunable, names = [], [], set()
    strided = {find(n) for n in g.strided_roots}
    roots = sorted({find(i) for i in range(len(g.parent))})
    for c in roots:
        if c in is_parent:
            continue
        mem, rs = resolve(c, frozenset())
        if not mem:
            continue
        members = tuple(sorted(mem, key=key))
        tiles = any(m.offset == 0 and not m.partial for m in members)
        if not rs and not any(m.whole for m in members) and c not in strided and not tiles:
            rs = {"no member spans or tiles the whole axis"}
        if rs:
            unprunable.append((members, tuple(sorted(rs))))
            continue
        groups.append(named_group(members, order, g.ndims, names))
    groups.sort(key=lambda gr: key(gr.members[0]))
    unprunable.sort(key=lambda u: key(u[0][0]))
    return Discovery(groups, unprunable)


def named_group(
    members: Sequence[Member], order: dict[str, int], ndims: dict[str, int], taken: set[str]
) -> Group:
    """The group of ``members`` in canonical form: sorted, named after its first producer.

    Members are sorted by leaf order (``order``), then axis and layout; the name is
    ``'path[axis]'`` of the first member that is the last axis of a kernel (2 or more dims),
    whole ones first, else of the first whole member, else of the first member, with ``'``
    appended until it is not in ``taken`` (which is updated). Shared by discovery and the
    hand-written helpers so both give the same objects.
    """
    members = tuple(
        sorted(members, key=lambda m: (order[m.path], m.axis, m.offset, m.outer, m.inner))
    )

    def producers(ms):
        return [m for m in ms if ndims[m.path] >= 2 and m.axis == ndims[m.path] - 1]

    whole = [m for m in members if m.whole]
    first = (producers(whole) or producers(members) or whole or members)[0]
    name = f"{first.path}[{first.axis}]"
    while name in taken:
        name += "'"
    taken.add(name)
    return Group(name, members)


def trace_groups(
    apply_fn: Callable[..., Any],
    variables: Any,
    *example_inputs: Any,
    prune_inputs: bool = False,
    prune_outputs: bool = False,
) -> Discovery:
    """Discovers the coupled parameter axes of ``apply_fn(variables, *example_inputs)``.

    Member paths name leaves of ``variables`` exactly as passed (``'/'``-joined, NNX
    ``.value`` dropped). For a Linen variables dict the collection is part of the path:
    ``'params/conv1/kernel'``, ``'batch_stats/bn1/mean'``; use :func:`groups_under` to get
    the groups of the ``params`` subtree alone. For a full NNX state (``nnx.split(model)``)
    the paths carry no collection (``'bn1/mean'`` next to ``'bn1/scale'``); use
    :func:`groups_in` to restrict the groups to ``nnx.state(model, nnx.Param)``. Axes of
    the model's inputs and outputs are never pruned. Nothing is evaluated: arrays may be
    ``jax.ShapeDtypeStruct``. Trace the inference function (BatchNorm with running averages,
    no ``mutable``): every output counts as a model output, so returning updated batch
    statistics would make their channels unprunable.

    Args:
      apply_fn: The model function, called as ``apply_fn(variables, *example_inputs)``; for
        NNX use ``lambda state, x: nnx.merge(graphdef, state)(x)``.
      variables: The variables (a pytree of arrays or ``jax.ShapeDtypeStruct``).
      *example_inputs: Inputs of the right shapes and dtypes.
      prune_inputs: Let groups touch the feature axes of the model inputs (the caller then
        drops those input features itself).
      prune_outputs: Let groups touch the model outputs (e.g. to prune a feature extractor's
        output channels together with the heads that read them elsewhere).

    Returns:
      A :class:`Discovery` with ``groups``, ``unprunable`` and ``explain()``.

    Raises:
      TypeError: If ``apply_fn`` cannot be traced with these inputs.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune import trace_groups
      >>> def mlp(p, x):
      ...     h = jax.nn.relu(x @ p["fc1"]["kernel"] + p["fc1"]["bias"][None])
      ...     return h @ p["fc2"]["kernel"]
      >>> p = {"fc1": {"kernel": jnp.ones((4, 8)), "bias": jnp.ones(8)},
      ...      "fc2": {"kernel": jnp.ones((8, 2))}}
      >>> d = trace_groups(mlp, p, jax.ShapeDtypeStruct((3, 4), jnp.float32))
      >>> [(m.path, m.axis) for m in d.groups[0].members]
      [('fc1/bias', 0), ('fc1/kernel', 1), ('fc2/kernel', 0)]
    """

    def spec(x):
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype)

    abstract = jax.tree.map(spec, (variables, example_inputs))
    closed = jax.make_jaxpr(lambda v, xs: apply_fn(v, *xs))(*abstract)
    flat, _ = jax.tree_util.tree_flatten_with_path(abstract[0])
    n_vars = len(flat)
    g = _Graph()
    invars = closed.jaxpr.invars
    in_nodes = [g.new(_shape(v)) for v in invars]
    order = {}
    for k, (path, leaf) in enumerate(flat):
        name = base.path_str(path)
        order[name] = k
        g.ndims[name] = len(leaf.shape)
        for axis, node in enumerate(in_nodes[k]):
            if leaf.shape[axis] > 1:  # a size-1 axis holds no channels to prune
                g.members.setdefault(node, []).append((name, axis))
    if not prune_inputs:
        for nodes in in_nodes[n_vars:]:
            g.mark(nodes, INPUT)
    outs = _Walker(g).walk(closed, in_nodes)
    if not prune_outputs:
        for nodes in outs:
            g.mark(nodes, OUTPUT)
    return _finish(g, order)


def groups_under(groups: Sequence[Group], prefix: str) -> list[Group]:
    """Keeps the members under ``prefix`` and strips it from their paths.

    Args:
      groups: Groups naming paths of a larger tree (e.g. Linen ``variables``).
      prefix: A path prefix such as ``'params'``.

    Returns:
      The groups restricted to that subtree; groups left with no member are dropped.

    Example:
      >>> import jaxprune
      >>> from jaxprune import groups_under
      >>> g = jaxprune.Group("c", (jaxprune.Member("params/a/kernel", 1),
      ...                          jaxprune.Member("batch_stats/bn/mean", 0)))
      >>> [m.path for m in groups_under([g], "params")[0].members]
      ['a/kernel']
    """
    head = prefix.rstrip("/") + "/"
    out = []
    for g in groups:
        ms = tuple(
            dataclasses.replace(m, path=m.path[len(head) :])
            for m in g.members
            if m.path.startswith(head)
        )
        if ms:
            out.append(Group(g.name, ms))
    return out


def groups_in(groups: Sequence[Group], tree: Any) -> list[Group]:
    """Keeps the members whose paths are leaves of ``tree``.

    The NNX counterpart of :func:`groups_under`: groups traced on the full state of an NNX
    model (``nnx.split(model)``) also name its BatchNorm statistics (``'bn/mean'``), which
    ``nnx.state(model, nnx.Param)`` does not hold. ``groups_in(groups, param_state)`` gives
    the groups that :func:`jaxprune.group_scores`, :func:`jaxprune.expand_group_masks` and
    the optax transforms accept on that state. Shrink the model itself with the full groups
    (:func:`jaxprune.shrink_module`), so that the statistics shrink too.

    Args:
      groups: Groups naming paths of a larger tree.
      tree: The tree the groups are for (arrays, ``jax.ShapeDtypeStruct`` or NNX
        ``State``); ``None`` leaves count as absent.

    Returns:
      The groups restricted to the leaves of ``tree``, in order and with their names; groups
      left with no member are dropped.

    Raises:
      ValueError: If no member of any group is a leaf of ``tree`` (the groups name another
        tree: for Linen ``variables`` use :func:`groups_under`).

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> g = jaxprune.Group("c", (jaxprune.Member("fc/kernel", 1),
      ...                          jaxprune.Member("bn/mean", 0)))
      >>> params = {"fc": {"kernel": jnp.ones((3, 4))}, "bn": {"scale": jnp.ones(4)}}
      >>> [m.path for m in jaxprune.groups_in([g], params)[0].members]
      ['fc/kernel']
    """
    present = {p for p, x in base.leaves_with_paths(tree) if x is not None}
    out = []
    for g in groups:
        ms = tuple(m for m in g.members if m.path in present)
        if ms:
            out.append(g if len(ms) == len(g.members) else Group(g.name, ms))
    if groups and not out:
        paths = [m.path for g in groups for m in g.members]
        raise ValueError(
            f"no member of the groups is a leaf of `tree`: members are e.g. {paths[:4]}, "
            f"leaves {sorted(present)[:4]}. For Linen `variables` groups use "
            "jaxprune.groups_under(groups, 'params')."
        )
    return out
