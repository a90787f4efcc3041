"""Structured pruning groups: parameter axes that index the same channels.

A :class:`Group` lists :class:`Member` axes of several parameters that are pruned together:
for ``conv1 -> bn1 -> conv2`` the output channels of ``conv1`` are ``conv1/kernel`` axis -1,
``conv1/bias`` axis 0, ``bn1/scale`` and ``bn1/bias`` axis 0, and the input channels of
``conv2`` (``conv2/kernel`` axis -2). Scores of the members reduce to one vector per group,
selection turns it into one bool vector, and :func:`expand_group_masks` spreads that vector
back onto every member as a broadcastable mask. Groups are plain hashable data: close over
them or pass them as static arguments; everything here is jittable.

A member's axis may hold the group's channels in a strided or offset layout:

* ``offset``: the channels start at this index of the axis (a segment of a concatenation);
* ``outer`` / ``inner``: the segment is laid out as ``(outer, channels, inner)``; a Flax
  conv -> flatten -> Dense maps channel ``c`` of an ``(H, W, C)`` map to the Dense rows
  ``(h * W + w) * C + c``, which is ``outer = H * W``, ``inner = 1``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src import base


@dataclasses.dataclass(frozen=True)
class Member:
    """One parameter axis that indexes the channels of a group.

    Attributes:
      path: The '/'-joined path of the leaf, e.g. ``'conv1/kernel'``.
      axis: The axis of that leaf (negative counts from the end).
      offset: Index along ``axis`` where the group's channels start.
      outer: Repeats of the channel block before it (strided layout, see module doc).
      inner: Entries per channel inside a block (``c * inner + i`` layout).
      partial: Set it for a segment that starts at offset 0 but does not span the whole axis
        (the first input of a concatenation). Members with ``offset``, ``outer`` or
        ``inner`` set are partial anyway.
    """

    path: str
    axis: int
    offset: int = 0
    outer: int = 1
    inner: int = 1
    partial: bool = False

    @property
    def whole(self) -> bool:
        """Whether the member's channels are exactly the entries of its axis."""
        return not self.partial and self.offset == 0 and self.outer == 1 and self.inner == 1

    def span(self, channels: int) -> int:
        """Number of entries of the axis covered by ``channels`` channels."""
        return self.outer * channels * self.inner


@dataclasses.dataclass(frozen=True)
class Group:
    """Axes of several parameters that share one set of channels.

    Attributes:
      name: A unique name; group scores and masks are dicts keyed by it.
      members: The coupled axes.

    Example:
      >>> import jaxprune
      >>> g = jaxprune.Group("conv1_out", (
      ...     jaxprune.Member("conv1/kernel", -1), jaxprune.Member("conv1/bias", 0),
      ...     jaxprune.Member("conv2/kernel", -2)))
      >>> len(g.members)
      3
    """

    name: str
    members: tuple[Member, ...]

    def __post_init__(self):
        object.__setattr__(self, "members", tuple(self.members))
        if not self.members:
            raise ValueError(f"group {self.name!r} has no members.")
        for m in self.members:
            if not isinstance(m, Member):
                raise TypeError(f"group {self.name!r}: members must be jaxprune.Member, got {m!r}.")


def module_of(name: str) -> str:
    """The module path a discovered group name refers to: ``'conv1/kernel[3]'`` -> ``'conv1'``.

    Names without a ``[axis]`` suffix (hand-written groups) are returned unchanged. A
    leading ``'params/'`` (groups of Linen ``variables``) is dropped, as tap names have none.
    """
    if not name.endswith(("]", "]'")) or "[" not in name:
        return name
    path = name[: name.rindex("[")]
    module = path.rsplit("/", 1)[0] if "/" in path else path
    return module.removeprefix("params/")


def rename_groups(
    groups: Sequence[Group], names: Mapping[str, str] | Callable[[str], str] | None = None
) -> list[Group]:
    """The groups under new names, e.g. the names of importance taps.

    :func:`jaxprune.trace_groups` and :func:`jaxprune.chain_groups` name a group after its
    producing leaf and axis (``'conv1/kernel[3]'``), while an importance tap at that
    module's output is named after the module (``'conv1'``), and so are the scores that
    :mod:`jaxprune.importance` computes from it. ``rename_groups(groups)`` renames every
    group to its module path (the name without its ``/leaf[axis]`` suffix and without a
    leading ``params/``), so such scores go straight into
    :func:`jaxprune.importance.group_masks`, :func:`jaxprune.expand_group_masks` and
    :func:`jaxprune.shrink` without rebuilding any :class:`Group`.

    Args:
      groups: The groups.
      names: ``None`` for the module paths; a mapping ``{old: new}`` (groups it does not
        name keep theirs); or a callable from the old name to the new one.

    Returns:
      The groups, in order, with the same members and the new names.

    Raises:
      ValueError: If a mapping names no group, or two groups get the same name.

    Example:
      >>> import jaxprune
      >>> g = jaxprune.Group("conv1/kernel[3]", (jaxprune.Member("conv1/kernel", 3),))
      >>> [x.name for x in jaxprune.rename_groups([g])]
      ['conv1']
    """
    old = [g.name for g in groups]
    if names is None:
        new = [module_of(n) for n in old]
    elif isinstance(names, Mapping):
        unknown = sorted(set(names) - set(old))
        if unknown:
            raise ValueError(f"`names` renames {unknown}, which are not group names {old[:6]}.")
        new = [names.get(n, n) for n in old]
    elif callable(names):
        new = [names(n) for n in old]
    else:
        raise TypeError(f"`names` must be None, a mapping or a callable, got {names!r}.")
    for a, b in zip(old, new, strict=True):
        if not isinstance(b, str) or not b:
            raise TypeError(f"the new name of group {a!r} must be a non-empty str, got {b!r}.")
    clashes = sorted({b for b in new if new.count(b) > 1})
    if clashes:
        detail = {b: [a for a, c in zip(old, new, strict=True) if c == b] for b in clashes}
        raise ValueError(
            f"two or more groups would be named alike: {detail}; pass `names` to tell them "
            "apart (a mapping or a callable)."
        )
    return [Group(b, g.members) for g, b in zip(groups, new, strict=True)]


def name_hint(name: str, keys: Any) -> str:
    """A sentence for a 'no vector for group' error when the keys are module names."""
    keys = set(keys)
    if name not in keys and module_of(name) in keys and module_of(name) != name:
        return (
            f" The keys are module names ({module_of(name)!r}) while the groups carry "
            f"discovery names ({name!r}), as importance taps are named: pass "
            "jaxprune.rename_groups(groups) instead of the groups."
        )
    return ""


def _leaves(params: base.Params) -> dict[str, Any]:
    return {p: x for p, x in base.leaves_with_paths(params) if x is not None}


def group_size(group: Group, params: base.Params) -> int:
    """Returns the number of channels of ``group``, checked against every member.

    A member whose ``outer``/``inner``/``offset`` are the defaults must span its whole axis;
    the others must fit in it. The count comes from the whole members; a group with none
    (the per-group outputs of a grouped convolution) takes it from members with offset 0
    and ``partial=False``, which tile their axis exactly: ``length / (outer * inner)``.

    Args:
      group: The group.
      params: The parameters (arrays or ``jax.ShapeDtypeStruct``).

    Returns:
      The channel count ``C``.

    Raises:
      ValueError: If a member's path is missing, its axis is out of range, or the members
        disagree on ``C`` (the message lists the members and their sizes).
    """
    leaves = _leaves(params)
    sizes = {}
    for m in group.members:
        if m.path not in leaves:
            raise ValueError(
                f"group {group.name!r}: no parameter at path {m.path!r}. Groups traced on a "
                "larger tree name leaves this one lacks: restrict them with "
                "jaxprune.groups_in(groups, params) (an NNX Param state) or "
                "jaxprune.groups_under(groups, 'params') (Linen variables)."
            )
        shape = tuple(leaves[m.path].shape)
        if not -len(shape) <= m.axis < len(shape):
            raise ValueError(
                f"group {group.name!r}: axis {m.axis} is out of range for {m.path!r} with "
                f"shape {shape}."
            )
        if m.whole:
            sizes[m] = shape[m.axis]
    if not sizes:  # strided members that tile their whole axis fix it too (grouped convs)
        for m in group.members:
            length = leaves[m.path].shape[m.axis]
            if not m.partial and m.offset == 0 and length % (m.outer * m.inner) == 0:
                sizes[m] = length // (m.outer * m.inner)
    if not sizes:
        raise ValueError(
            f"group {group.name!r}: at least one member must span its whole axis (or tile "
            "it with offset 0 and partial=False) to fix the channel count."
        )
    counts = set(sizes.values())
    if len(counts) != 1:
        detail = ", ".join(f"{m.path}[{m.axis}]={n}" for m, n in sizes.items())
        raise ValueError(f"group {group.name!r}: members disagree on the channel count: {detail}.")
    channels = counts.pop()
    for m in group.members:
        length = leaves[m.path].shape[m.axis]
        if m.offset + m.span(channels) > length:
            raise ValueError(
                f"group {group.name!r}: member {m.path!r} axis {m.axis} has {length} entries, "
                f"fewer than offset {m.offset} + {m.outer} x {channels} x {m.inner}."
            )
    return channels


def check_groups(groups: Sequence[Group], params: base.Params) -> dict[str, int]:
    """Validates groups against params and returns ``{name: channel count}``.

    Args:
      groups: The groups.
      params: The parameters (arrays or ``jax.ShapeDtypeStruct``).

    Returns:
      A dict from group name to its number of channels.

    Raises:
      ValueError: For duplicate names or any problem :func:`group_size` reports.
    """
    names = [g.name for g in groups]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"group names must be unique, got duplicates {dupes}.")
    return {g.name: group_size(g, params) for g in groups}


MemberReduction = Literal["sum", "mean", "max", "l1", "l2", "sq"]


def _reduce_member(x: jax.Array, m: Member, channels: int, reduction: MemberReduction):
    """One value per channel of ``m``: the ``reduction`` of the channel's entries.

    The other axes are reduced first, so only a vector along the member axis is ever
    gathered (a strided or offset member of a sharded axis has no sharding rule for the
    split into ``(outer, channels, inner)``; see :func:`base.replicated_along`).
    """
    if reduction not in ("sum", "mean", "max", "l1", "l2", "sq"):
        raise ValueError(
            f"`reduction` must be one of 'sum', 'mean', 'max', 'l1', 'l2', 'sq', got {reduction!r}."
        )
    x = x.astype(jnp.float32)
    if reduction == "l1":
        x = jnp.abs(x)
    elif reduction in ("l2", "sq"):
        x = jnp.square(x)
    reduce = jnp.max if reduction == "max" else jnp.sum
    axis = m.axis % x.ndim
    line = reduce(x, axis=tuple(a for a in range(x.ndim) if a != axis))
    if not m.whole:
        line = base.replicated_along(line, 0)
        line = line[m.offset : m.offset + m.span(channels)]
    v = reduce(line.reshape(m.outer, channels, m.inner), axis=(0, 2))
    if reduction == "mean":
        return v / (x.size // x.shape[axis] * m.outer * m.inner)
    return jnp.sqrt(v) if reduction == "l2" else v


def group_scores(
    scores: base.Scores,
    groups: Sequence[Group],
    *,
    reduction: MemberReduction = "sum",
    combine: Literal["sum", "mean", "max"] = "sum",
    normalize: Literal["mean", "max", "l1", "l2"] | None = None,
) -> dict[str, jax.Array]:
    """Reduces element scores of every member to one score per channel of each group.

    Args:
      scores: A tree of element scores (e.g. ``jaxprune.scores.magnitude(params)``) or the
        params themselves (with ``reduction="l1"``/``"l2"``).
      groups: The groups.
      reduction: How the entries of one channel *within* a member combine.
      combine: How the per-member channel vectors combine (``"sum"``, ``"mean"``, ``"max"``).
      normalize: Optionally divide each group's vector by its ``"mean"``, ``"max"``, ``"l1"``
        or ``"l2"`` norm, so that groups compare on one scale for global selection (as
        Molchanov et al. normalize Taylor scores per layer).

    Returns:
      A dict ``{group name: float32 vector of length C}``.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> p = {"a": {"kernel": jnp.array([[1.0, -2.0], [3.0, 0.0]])},
      ...      "b": {"kernel": jnp.array([[1.0], [1.0]])}}
      >>> g = jaxprune.Group("a_out", (jaxprune.Member("a/kernel", -1),
      ...                              jaxprune.Member("b/kernel", 0)))
      >>> jaxprune.group_scores(p, [g], reduction="l1")["a_out"]
      Array([5., 3.], dtype=float32)
    """
    sizes = check_groups(groups, scores)
    leaves = _leaves(scores)
    out = {}
    for g in groups:
        vecs = [  # replicated: members may shard their channel axes differently
            base.replicated_along(_reduce_member(leaves[m.path], m, sizes[g.name], reduction), 0)
            for m in g.members
        ]
        stacked = jnp.stack(vecs)
        if combine == "sum":
            v = jnp.sum(stacked, axis=0)
        elif combine == "mean":
            v = jnp.mean(stacked, axis=0)
        elif combine == "max":
            v = jnp.max(stacked, axis=0)
        else:
            raise ValueError(f"`combine` must be 'sum', 'mean' or 'max', got {combine!r}.")
        if normalize is not None:
            v = normalized(v, normalize, "normalize")
        out[g.name] = v
    return out


def normalized(v: jax.Array, ord: str, what: str = "ord") -> jax.Array:
    """``v`` divided by its ``"l2"``, ``"l1"``, ``"max"`` or ``"mean"`` (of ``|v|``) norm.

    An all-zero vector stays zero. ``what`` names the argument in the error message.
    """
    if ord == "l2":
        d = jnp.sqrt(jnp.sum(jnp.square(v)))
    elif ord == "l1":
        d = jnp.sum(jnp.abs(v))
    elif ord == "max":
        d = jnp.max(jnp.abs(v))
    elif ord == "mean":
        d = jnp.mean(jnp.abs(v))
    else:
        raise ValueError(f"`{what}` must be 'l2', 'l1', 'max' or 'mean', got {ord!r}.")
    return v / jnp.where(d > 0, d, jnp.ones_like(d))


def check_score_dict(scores: Any, what: str = "scores") -> dict[str, jax.Array]:
    """Validates group scores (``{name: float vector}``) and returns them as float32."""
    if not isinstance(scores, Mapping):
        raise TypeError(f"`{what}` must be a dict from group name to a score vector.")
    out = {}
    for name, v in scores.items():
        dtype = getattr(v, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"{what}[{name!r}] must be a float vector, got {dtype}.")
        if np.ndim(v) != 1:
            raise ValueError(f"{what}[{name!r}] must be a vector, got shape {np.shape(v)}.")
        out[name] = jnp.asarray(v).astype(jnp.float32)
    return out


def normalize_scores(
    scores: Mapping[str, jax.Array], ord: Literal["l2", "l1", "max", "mean"] = "l2"
) -> dict[str, jax.Array]:
    """Divides every layer's score vector by its own norm, so layers compare globally.

    Args:
      scores: A dict from name to a float vector.
      ord: ``"l2"`` (Molchanov et al.), ``"l1"``, ``"max"`` or ``"mean"`` (of absolute
        values). An all-zero vector stays zero.

    Returns:
      The normalized dict (float32).

    Raises:
      ValueError: For an unknown ``ord``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import importance
      >>> importance.normalize_scores({"a": jnp.array([3.0, 4.0])})["a"]
      Array([0.6, 0.8], dtype=float32)
    """
    scores = check_score_dict(scores)
    return {k: normalized(v, ord) for k, v in scores.items()}


def group_norms(params: base.Params, groups: Sequence[Group], *, ord: int = 2):
    """Returns the ``ord``-norm of every channel of every group, over all its members.

    ``||W_c||_2 = sqrt(sum over members and entries of channel c of w^2)``: the group lasso
    norm of Wen et al. (SSL) and Lebedev & Lempitsky.

    Args:
      params: The parameters.
      groups: The groups.
      ord: ``1`` or ``2``.

    Returns:
      A dict ``{group name: float32 vector of length C}``.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> p = {"k": jnp.array([[3.0, 0.0], [4.0, 1.0]])}
      >>> jaxprune.group_norms(p, [jaxprune.Group("out", (jaxprune.Member("k", 1),))])["out"]
      Array([5., 1.], dtype=float32)
    """
    if ord == 1:
        return group_scores(params, groups, reduction="l1")
    if ord == 2:
        sq = group_scores(params, groups, reduction="sq")
        return {k: jnp.sqrt(v) for k, v in sq.items()}
    raise ValueError(f"`ord` must be 1 or 2, got {ord!r}.")


def member_line(vec: jax.Array, member: Member, channels: int, length: int, fill: Any) -> jax.Array:
    """Lays one value per channel along a member's axis of ``length`` entries.

    A whole-axis member gets ``vec`` itself; a strided or offset member gets the
    ``(outer, channels, inner)`` block at ``offset`` and ``fill`` everywhere else.

    Args:
      vec: The ``(channels,)`` vector.
      member: The member.
      channels: The group's channel count.
      length: The size of the member's axis.
      fill: The value outside the group's segment (``True`` for masks, ``0`` or ``1`` for
        penalty coefficients).

    Returns:
      A ``(length,)`` vector with ``vec``'s dtype.
    """
    if member.whole:
        return vec
    block = jnp.broadcast_to(vec[None, :, None], (member.outer, channels, member.inner)).reshape(-1)
    after = length - member.offset - block.shape[0]
    return jnp.concatenate(
        [
            jnp.full((member.offset,), fill, vec.dtype),
            block,
            jnp.full((after,), fill, vec.dtype),
        ]
    )


def expand_group_masks(
    group_masks: dict[str, jax.Array], groups: Sequence[Group], params: base.Params
) -> base.Mask:
    """Spreads one bool vector per group onto every member as a broadcastable mask.

    A member spanning its whole axis gets a mask of shape ``(1, ..., C, ..., 1)``; a strided
    or offset member gets a vector over its whole axis (entries outside the group's segment
    stay ``True``). A leaf in several groups (a kernel's input and output channels) gets the
    logical AND; leaves in no group get ``None``.

    Args:
      group_masks: ``{group name: bool vector of length C}`` (``True`` = kept).
      groups: The groups.
      params: The parameters (only shapes are read).

    Returns:
      A mask tree with the structure of ``params``.

    Raises:
      ValueError: If a group has no mask, or a mask has the wrong length.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> p = {"a": jnp.ones((3, 2)), "b": jnp.ones((2, 4))}
      >>> g = jaxprune.Group("h", (jaxprune.Member("a", 1), jaxprune.Member("b", 0)))
      >>> m = jaxprune.expand_group_masks({"h": jnp.array([True, False])}, [g], p)
      >>> m["a"].shape, m["b"].shape
      ((1, 2), (2, 1))
    """
    per_leaf = expand_group_values(
        group_masks, groups, params, fill=True, combine="and", dtype=jnp.bool_, what="mask"
    )
    return jax.tree_util.tree_map_with_path(
        lambda p, x: None if x is None else per_leaf.get(base.path_str(p)),
        params,
        is_leaf=base.is_none,
    )


def expand_group_values(
    values: Mapping[str, Any],
    groups: Sequence[Group],
    params: base.Params,
    *,
    fill: Any,
    combine: Literal["and", "add", "mul"],
    dtype: Any = jnp.float32,
    skip: Callable[[Member], bool] | None = None,
    what: str = "values",
) -> dict[str, jax.Array]:
    """Spreads one vector per group onto each member's axis: the one group expansion.

    A member spanning its whole axis gets shape ``(1, ..., C, ..., 1)``; a strided or offset
    member gets its whole axis with ``fill`` outside the group's segment
    (:func:`member_line`). Several members on one leaf combine with ``combine``: ``"and"``
    for masks (:func:`expand_group_masks`), ``"add"`` or ``"mul"`` for per-channel penalty
    coefficients and gate factors.

    Args:
      values: ``{group name: vector of length C}``.
      groups: The groups.
      params: The parameters (only shapes are read).
      fill: The value outside a strided or offset member's segment.
      combine: How the arrays of several members on one leaf combine.
      dtype: The dtype the vectors are cast to.
      skip: Optional predicate: members for which it is true get nothing.
      what: Names the vectors in error messages (``"mask"``, ``"values"``).

    Returns:
      ``{path: broadcastable array}`` for every leaf that is a member of some group (minus
      ``skip``).

    Raises:
      ValueError: If a group has no vector, or a vector has the wrong length.
    """
    sizes = check_groups(groups, params)
    leaves = _leaves(params)
    out: dict[str, jax.Array] = {}
    for g in groups:
        if g.name not in values:
            raise ValueError(f"no {what} for group {g.name!r}.{name_hint(g.name, values)}")
        vec = jnp.asarray(values[g.name])
        c = sizes[g.name]
        if vec.shape != (c,):
            raise ValueError(f"{what} of group {g.name!r} has shape {vec.shape}, expected ({c},).")
        vec = vec.astype(dtype)
        for m in g.members:
            if skip is not None and skip(m):
                continue
            shape = tuple(leaves[m.path].shape)
            axis = m.axis % len(shape)
            length = shape[axis]
            target = [1] * len(shape)
            target[axis] = length
            arr = member_line(vec, m, c, length, fill).reshape(target)
            old = out.get(m.path)
            if old is None:
                out[m.path] = arr
            elif combine == "and":
                out[m.path] = jnp.logical_and(old, arr)
            elif combine == "add":
                out[m.path] = old + arr
            else:
                out[m.path] = old * arr
    return out


def check_disjoint(groups: Sequence[Group], params: base.Params, what: str) -> None:
    """Raises ``ValueError`` if two groups (or two members) cover one parameter entry."""
    sizes = check_groups(groups, params)
    leaves = {p: x for p, x in base.leaves_with_paths(params) if x is not None}
    by_leaf: dict[str, list[tuple[Group, Member]]] = {}
    for g in groups:
        for m in g.members:
            by_leaf.setdefault(m.path, []).append((g, m))
    for path, entries in by_leaf.items():
        if len(entries) < 2:
            continue
        shape = tuple(leaves[path].shape)
        axes = {m.axis % len(shape) for _, m in entries}
        names = sorted({g.name for g, _ in entries})
        if len(axes) > 1:
            raise ValueError(
                f"{what}: groups {names} cover {path!r} along different axes, so they overlap "
                "(the proximal step of overlapping groups has no closed form)."
            )
        axis = axes.pop()
        count = np.zeros(shape[axis], np.int64)
        for g, m in entries:
            seg = np.zeros(shape[axis], bool)
            block = np.ones((m.outer, sizes[g.name], m.inner), bool).reshape(-1)
            seg[m.offset : m.offset + block.size] = True
            count += seg
        if np.any(count > 1):
            raise ValueError(
                f"{what}: groups {names} share entries of {path!r} (axis {axis}); the proximal "
                "step of overlapping groups has no closed form."
            )


def channel_indices(member: Member, channels: int, length: int, keep: np.ndarray) -> np.ndarray:
    """Host-side: indices along a member's axis that survive when channels ``keep`` are kept.

    Args:
      member: The member.
      channels: The group's channel count.
      length: The size of the member's axis.
      keep: A bool vector of length ``channels``.

    Returns:
      A sorted int array of the axis entries to keep (entries outside the segment included).
    """
    keep = np.asarray(keep, bool)
    block = np.broadcast_to(keep[None, :, None], (member.outer, channels, member.inner))
    line = np.ones(length, bool)
    line[member.offset : member.offset + block.size] = block.reshape(-1)
    return np.flatnonzero(line)
