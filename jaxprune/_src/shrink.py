"""Physically removing pruned channels from params, batch statistics and optimizer state.

:func:`shrink` runs once on the host (NumPy indexing, not jittable by design) and returns a
tree of the same structure with smaller arrays. :func:`widths` returns the new number of
output features of every layer, the spec a Linen model built from a widths config is
rebuilt from (``dataclasses.replace(model, **spec)`` for a model whose fields are named
after its submodules). The Flax glue built on them lives in the flax-facing modules:
:func:`jaxprune.shrink_module` (NNX, in place) in ``shrink_nnx`` and
:func:`jaxprune.linen.rebuild` in ``shrink_linen``; this module imports no flax.

**Matching rule.** A leaf at path ``P`` of the tree is shrunk by the members whose path
``M`` equals ``P`` or is a ``'/'``-suffix of it (``P == X + '/' + M``); when several member
paths match, the longest one wins. So the groups of a Linen ``variables`` tree
(``'params/conv1/kernel'``) shrink ``variables`` itself and any optimizer state built on
it (``'0/mu/params/conv1/kernel'``); for a params-only tree and its optimizer state, pass
``groups_under(groups, 'params')``. Leaves with no matching member (step counts, scalars,
``None``) are returned unchanged. All leaves matched to one member path must have one shape
(they are copies of that parameter); a leaf that only shares the path's ending, with another
shape, raises instead of being cut. A leaf with the same shape that is not a copy cannot be
told apart: keep such leaves out of the tree passed in.

**Masks.** A boolean leaf may also *broadcast* to its parameter: the masks of structured
granularities (``FILTER`` keeps a ``(1, out)`` mask for a ``(in, out)`` kernel) are cut
along their full-length member axes and keep their size-1 axes, so the masks in an
``optax_sparsity`` state shrink with the rest of the optimizer state and still fit the
shrunk parameters: ``shrink(opt_state, keep, groups)`` needs nothing else.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from jaxprune._src import base
from jaxprune._src.groups import Group, channel_indices, name_hint


def _by_path(groups: Sequence[Group], group_masks: Mapping[str, Any]):
    out: dict[str, list] = {}
    for g in groups:
        if g.name not in group_masks:
            raise ValueError(f"no mask for group {g.name!r}.{name_hint(g.name, group_masks)}")
        keep = np.asarray(group_masks[g.name]).astype(bool)
        if keep.ndim != 1:
            raise ValueError(f"mask of group {g.name!r} must be a vector, got {keep.shape}.")
        if keep.size and not keep.any():
            raise ValueError(
                f"the mask of group {g.name!r} keeps none of its {keep.size} channels: a "
                "zero-width layer cannot be rebuilt or run. Keep at least one channel (selection "
                "does with min_keep >= 1), or remove the layer from the model by hand."
            )
        for m in g.members:
            out.setdefault(m.path, []).append((g.name, m, keep))
    return out


def _match(path: str, members: dict[str, list]) -> str | None:
    if path in members:
        return path
    best = None
    for m in members:
        if path.endswith("/" + m) and (best is None or len(m) > len(best)):
            best = m
    return best


def _lines(
    path: str, shape: tuple[int, ...], entries: list, broadcast: bool = False
) -> dict[int, np.ndarray]:
    """``{axis: bool vector of kept entries}`` for one leaf.

    With ``broadcast`` (a boolean leaf: a mask) a size-1 member axis is a broadcast axis of
    a structured mask; it has no entries to cut and is left as it is.
    """
    lines: dict[int, np.ndarray] = {}
    for name, m, keep in entries:
        if not -len(shape) <= m.axis < len(shape):
            raise ValueError(
                f"group {name!r}: axis {m.axis} is out of range for {path!r} with shape {shape}."
            )
        axis = m.axis % len(shape)
        length = shape[axis]
        c = keep.shape[0]
        if broadcast and length == 1:
            continue
        if m.whole and length != c:
            raise ValueError(
                f"group {name!r}: {path!r} axis {axis} has {length} entries but the mask has {c}."
            )
        if m.offset + m.span(c) > length:
            raise ValueError(
                f"group {name!r}: {path!r} axis {axis} has {length} entries, fewer than offset "
                f"{m.offset} + {m.outer} x {c} x {m.inner}."
            )
        line = np.zeros(length, bool)
        line[channel_indices(m, c, length, keep)] = True
        lines[axis] = lines[axis] & line if axis in lines else line
    return lines


def _check_matched(
    members: dict[str, list], matched: set[str], paths: list[str], hint: str
) -> None:
    """Raises ``ValueError`` naming every member path that matched no leaf of the tree."""
    missing = [m for m in members if m not in matched]
    if not missing:
        return
    m = missing[0]
    group = members[m][0][0]
    close = difflib.get_close_matches(m, paths, n=3, cutoff=0.5)
    raise ValueError(
        f"member path {m!r} of group {group!r} matches no leaf of the tree"
        + (f" (and {len(missing) - 1} more: {missing[1:6]})" if len(missing) > 1 else "")
        + (f"; did you mean {close}?" if close else f"; the tree's paths are e.g. {paths[:5]}.")
        + f" {hint}"
    )


def shrink(
    tree: Any,
    group_masks: Mapping[str, Any],
    groups: Sequence[Group],
    *,
    allow_missing: bool = False,
) -> Any:
    """Removes the pruned channels of every group from the matching leaves of ``tree``.

    Works on params, Linen ``variables`` (batch statistics included) and optax states
    (Adam's ``mu``/``nu`` have the params' structure inside namedtuples, and the masks of an
    ``optax_sparsity`` state, structured ones included, shrink with them); see the module
    doc for how leaf paths are matched to member paths and masks.

    Args:
      tree: Any pytree of arrays (``None`` and non-array leaves pass through).
      group_masks: ``{group name: bool vector}`` (``True`` = kept), e.g. from selection.
      groups: The groups, e.g. ``trace_groups(...).groups``.
      allow_missing: Accept member paths that match no leaf of ``tree`` (e.g. an optimizer
        state with no copy of some parameter). By default such a path raises: a misspelled
        path, or groups naming ``'params/...'`` applied to a params-only tree, would
        otherwise return the tree unchanged.

    Returns:
      A tree of the same structure whose matched leaves are smaller ``jax.Array`` s; other
      leaves are returned as they are. A shrunk leaf keeps its ``NamedSharding`` (mesh and
      spec) where its new sizes still divide the mesh axes; a dimension that no longer
      divides is replicated instead (choose ``round_to`` in selection to avoid it). A leaf
      on one device stays on that device; host arrays come back on the default device.

    Raises:
      ValueError: If a group has no mask, a mask keeps no channel, a member path matches no
        leaf (unless ``allow_missing``), a mask does not fit a matched leaf (the message
        names the group and the path), or two leaves matched to the same member path differ
        in shape (e.g. the factored moments of Adafactor, which are not parameter copies),
        unless one is a boolean mask that broadcasts to the other.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> from jaxprune import shrink
      >>> p = {"a": jnp.ones((3, 4)), "b": jnp.ones((4, 2))}
      >>> g = jaxprune.Group("h", (jaxprune.Member("a", 1), jaxprune.Member("b", 0)))
      >>> small = shrink(p, {"h": jnp.array([True, False, True, False])}, [g])
      >>> small["a"].shape, small["b"].shape
      ((3, 2), (2, 2))
    """
    members = _by_path(groups, group_masks)
    seen: dict[str, tuple[str, tuple[int, ...], bool]] = {}
    if not allow_missing:
        paths = [p for p, x in base.leaves_with_paths(tree) if x is not None]
        matched = {m for m in (_match(p, members) for p in paths) if m is not None}
        _check_matched(
            members,
            matched,
            paths,
            "Member paths are leaf paths of `tree` or '/'-suffixes of them; for a params-only "
            "tree pass jaxprune.groups_under(groups, 'params'). Pass allow_missing=True if the "
            "tree legitimately lacks some parameters.",
        )

    def one(path, x):
        if x is None or not hasattr(x, "shape") or not np.ndim(x):
            return x
        p = base.path_str(path)
        m = _match(p, members)
        if m is None:
            return x
        shape = tuple(np.shape(x))
        mask = np.asarray(x).dtype == np.bool_  # masks may broadcast (structured masks)
        first, first_shape, first_mask = seen.setdefault(m, (p, shape, mask))
        if first_mask and not mask:  # the parameter's own shape is the reference
            seen[m] = (p, shape, mask)
        if shape != first_shape and not ((mask or first_mask) and _broadcasts(shape, first_shape)):
            raise ValueError(
                f"{p!r} (shape {shape}) and {first!r} (shape {first_shape}) both match the "
                f"member path {m!r} but differ in shape; shrink only cuts exact copies of a "
                "parameter (params, Adam-like moments) and boolean masks that broadcast to "
                "it. Pass the subtree that mirrors it."
            )
        arr = np.asarray(x)
        for axis, line in _lines(p, arr.shape, members[m], broadcast=mask).items():
            arr = np.take(arr, np.flatnonzero(line), axis=axis)
        out = jnp.asarray(arr, dtype=x.dtype)
        sharding = getattr(x, "sharding", None)
        if isinstance(sharding, NamedSharding):
            out = jax.device_put(out, _fit(sharding, arr.shape))
        elif isinstance(sharding, SingleDeviceSharding):
            out = jax.device_put(out, sharding)
        return out

    return jax.tree_util.tree_map_with_path(one, tree, is_leaf=base.is_none)


def _broadcasts(shape: tuple[int, ...], full: tuple[int, ...]) -> bool:
    """Whether ``shape`` and ``full`` have one rank and agree wherever neither is 1."""
    if len(shape) != len(full):
        return False
    return all(a == b or 1 in (a, b) for a, b in zip(shape, full, strict=True))


def _fit(sharding: NamedSharding, shape: tuple[int, ...]) -> NamedSharding:
    """``sharding`` with every dim that no longer divides evenly replicated instead."""
    spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
    mesh_shape = dict(sharding.mesh.shape)
    for d, entry in enumerate(spec):
        axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        if shape[d] % math.prod(mesh_shape[a] for a in axes):
            spec[d] = None
    return NamedSharding(sharding.mesh, P(*spec), memory_kind=sharding.memory_kind)


def widths(
    groups: Sequence[Group],
    group_masks: Mapping[str, Any],
    tree: Any,
    *,
    strip: str | None = None,
) -> dict[str, int]:
    """Returns the number of output features each layer keeps: ``{module path: features}``.

    A layer is a kernel (a leaf with 2 or more axes) whose last axis (Dense ``(in, out)``,
    Conv ``HWIO``) is a member of some group; its module path is the kernel's path without
    the last component and without a leading ``strip + '/'``. A depthwise convolution's
    kernel ``(kh, kw, 1, C)`` reports ``C``.

    Args:
      groups: The groups.
      group_masks: ``{group name: bool vector}`` (``True`` = kept).
      tree: The params or variables the groups name (only shapes are read).
      strip: A leading collection name to drop from module paths: a top-level key of
        ``tree`` (``''`` keeps the paths whole). Default: ``'params'`` when ``tree`` has
        that top-level key.

    Returns:
      ``{module path: new number of output features}``, e.g. ``{"conv1": 8, "fc1": 250}``.

    Raises:
      ValueError: If ``strip`` is not a top-level key of ``tree``, or a member path matches
        no leaf of ``tree`` (the message names it).

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> from jaxprune import widths
      >>> p = {"params": {"fc1": {"kernel": jnp.ones((3, 4))}, "fc2": {"kernel": jnp.ones((4, 2))}}}
      >>> g = jaxprune.Group("h", (jaxprune.Member("params/fc1/kernel", 1),
      ...                          jaxprune.Member("params/fc2/kernel", 0)))
      >>> widths([g], {"h": jnp.array([True, False, True, False])}, p)
      {'fc1': 2}
    """
    members = _by_path(groups, group_masks)
    items = base.leaves_with_paths(tree)
    tops = sorted({p.split("/", 1)[0] for p, x in items if x is not None and "/" in p})
    if strip is None:
        strip = "params" if "params" in tops else ""
    elif strip and strip.rstrip("/") not in tops:
        raise ValueError(
            f"`strip`={strip!r} is not a top-level collection of `tree` (its top-level keys are "
            f"{tops[:8]}); pass one of them, or '' to keep module paths whole."
        )
    paths = [p for p, x in items if x is not None]
    _check_matched(
        members,
        {m for m in members if m in set(paths)},
        paths,
        "widths() matches member paths to leaf paths exactly: pass the tree the groups name.",
    )
    out = {}
    for path, x in items:
        if x is None or len(np.shape(x)) < 2 or path not in members:
            continue
        shape = tuple(np.shape(x))
        lines = _lines(path, shape, members[path])
        last = len(shape) - 1
        if last not in lines:
            continue
        module = path.rsplit("/", 1)[0] if "/" in path else path
        if strip and module.startswith(strip.rstrip("/") + "/"):
            module = module[len(strip.rstrip("/")) + 1 :]
        out[module] = int(lines[last].sum())
    return out
