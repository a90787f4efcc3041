"""Group-level selection: one bool vector per group of coupled channels, then masks.

Every structured criterion ends here. A criterion (:mod:`jaxprune._src.criteria`,
:mod:`jaxprune._src.nisp`, :func:`jaxprune.group_scores`, a learned scale or gate) gives one
float vector per group (``{group name: (C,) vector}``, higher = keep); this module turns the
vectors into keep vectors and expands them onto every coupled axis with
:func:`jaxprune._src.groups.expand_group_masks`.

* :func:`select_groups` / :func:`group_masks`: exact counts per scope (layer-wise, global or
  user-defined scopes), per-group caps (``max_sparsity``), floors (``min_keep``) and rounding
  (``round_to``); the layer-wise and global cases without caps or rounding run on the exact
  top-k of :mod:`jaxprune._src.select`.
* Threshold selection after learned sparsity (:func:`slimming_masks`,
  :func:`group_norm_masks`, :func:`gate_masks`): keep ``score > threshold``, then every group
  keeps its ``min_keep`` best channels; they return a :class:`LearnedSelection`.

Element-level selection (per leaf, global over leaves, N:M, thresholds, hysteresis) lives in
:mod:`jaxprune._src.select`, whose count rule (:func:`~jaxprune._src.select.num_keep`) the
scoped selection here shares.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src import base, gates_math
from jaxprune._src import groups as groups_lib
from jaxprune._src import labels as labels_lib
from jaxprune._src import select as select_lib

Normalize = Literal["l2", "l1", "max", "mean"]


# ---------------------------------------------------------------------------------------
# Exact counts per scope.


def select_groups(
    scores: Mapping[str, jax.Array],
    sparsity: Any,
    *,
    scope: Literal["layerwise", "global"] | Mapping[str, Any] = "layerwise",
    normalize: Normalize | None = "l2",
    min_keep: int = 1,
    max_sparsity: float | Mapping[str, float] | None = None,
    round_to: int = 1,
) -> dict[str, jax.Array]:
    """Turns group scores into one bool keep vector per group (exact counts, ties by index).

    Channels are ranked within a *scope*: every group alone (``"layerwise"``), all groups
    together (``"global"``), or user-defined sets of groups (a dict from group name to a scope
    label, e.g. one scope per ResNet stage). A scope of ``N`` channels keeps the
    ``max(N - floor(sparsity * N), F)`` best, where every group first keeps its own ``F_g``
    best channels (``F`` is their total): ``F_g = max(min(min_keep, C_g),
    C_g - floor(max_sparsity_g * C_g))`` for a group of ``C_g`` channels, so no group drops
    more than ``max_sparsity_g`` of its channels. Finally each group's kept count is rounded
    *up* to a multiple of ``round_to`` (capped at ``C_g``), keeping its best channels, so that
    shrunk widths suit the hardware (multiples of 8 for GPU tensor cores, 128 for TPU lanes);
    rounding up never prunes more than asked. Within a group, ties go to the lowest index;
    across groups of a scope, to the group whose name sorts first.

    Scores of the groups in a multi-group scope must be comparable: with ``normalize`` each
    group's vector is first divided by its own norm (Molchanov et al., ICLR 2017); an
    all-zero vector stays zero. Non-finite scores (NaN, ``+inf``, ``-inf``) rank below every
    finite score, and norms are taken over the finite entries.
    Layer-wise rankings do not depend on it. The per-group ratio cap and the rounding follow
    common structured-pruning practice (e.g. Torch-Pruning's ``max_pruning_ratio`` and
    ``round_to``).

    Args:
      scores: A dict from group name to a float score vector (higher = keep).
      sparsity: Fraction of channels to drop in each scope: a float (possibly traced), or a
        dict from scope label (the group name for ``"layerwise"``) to a float, where
        ``None`` keeps the scope whole. ``"global"`` takes one float.
      scope: ``"layerwise"``, ``"global"``, or a dict giving every group a scope label.
      normalize: The per-group normalization in multi-group scopes (``"l2"``, ``"l1"``,
        ``"max"``, ``"mean"``, or ``None`` to compare raw scores).
      min_keep: Every group keeps at least this many channels.
      max_sparsity: The largest fraction of its channels one group may drop: a float in
        ``[0, 1]`` or a dict from group name to a float (missing names are not capped).
      round_to: Kept counts are rounded up to a multiple of this (``1``: no rounding).

    Returns:
      A dict from group name to a bool vector (``True`` = kept).

    Raises:
      ValueError: For an unknown ``scope``, a scope dict that misses groups, a bad
        ``sparsity``/``max_sparsity`` (outside ``[0, 1]``, or naming unknown scopes or
        groups), or ``round_to < 1`` / ``min_keep < 0``.
      TypeError: If a score is not a float vector.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import importance
      >>> s = {"a": jnp.array([0.1, 0.9, 0.5, 0.2]), "b": jnp.array([10.0, 1.0])}
      >>> importance.select_groups(s, 0.5)["a"]
      Array([False,  True,  True, False], dtype=bool)
      >>> importance.select_groups(s, 0.5, scope="global")["b"]
      Array([ True, False], dtype=bool)
      >>> importance.select_groups(s, 0.75, round_to=2)["a"]  # 1 kept, rounded up to 2
      Array([False,  True,  True, False], dtype=bool)
    """
    scores = groups_lib.check_score_dict(scores)
    min_keep = base.check_int(min_keep, "min_keep", 0)
    round_to = base.check_int(round_to, "round_to", 1)
    # The NaN/inf rule: non-finite scores rank below every finite one; norms are taken over
    # the finite entries only, so one NaN cannot turn a whole group's scores into NaN.
    bad = {k: ~jnp.isfinite(v) for k, v in scores.items()}
    scores = {k: jnp.where(bad[k], 0.0, v) for k, v in scores.items()}

    def least(vecs):
        return {k: jnp.where(bad[k], -jnp.inf, v) for k, v in vecs.items()}

    simple = max_sparsity is None and round_to == 1 and isinstance(scope, str)
    if scope == "layerwise" and simple:
        return select_lib.layerwise_topk(least(scores), sparsity, min_keep=min_keep)
    if scope == "global" and simple:
        if normalize is not None:
            scores = groups_lib.normalize_scores(scores, normalize)
        return select_lib.global_topk(least(scores), sparsity, min_keep=min_keep)
    labels = _scope_labels(scores, scope)
    caps = _max_sparsity(scores, max_sparsity)
    members: dict[Any, list[str]] = {}
    for name in sorted(scores):
        members.setdefault(labels[name], []).append(name)
    if isinstance(sparsity, Mapping):
        if scope == "global":
            raise TypeError("`sparsity` must be one number for scope='global'.")
        unknown = [k for k in sparsity if k not in members]
        if unknown:
            raise ValueError(f"`sparsity` names unknown scopes {sorted(map(str, unknown))}.")
        missing = [k for k in members if k not in sparsity]
        if missing:
            raise ValueError(
                f"`sparsity` does not cover the scopes {sorted(map(str, missing))}: give a "
                "value (or None to keep a scope whole) for each."
            )
    out = {}
    for label, names in members.items():
        s = sparsity.get(label) if isinstance(sparsity, Mapping) else sparsity
        s = 0.0 if s is None else s
        what = f"sparsity[{label!r}]" if isinstance(sparsity, Mapping) else "sparsity"
        s = select_lib.check_scalar(s, what)
        vecs = {n: scores[n] for n in names}
        if len(names) > 1 and normalize is not None:
            vecs = groups_lib.normalize_scores(vecs, normalize)
        vecs = least(vecs)
        floors = tuple(_floor(n, int(v.shape[0]), caps, min_keep) for n, v in vecs.items())
        out.update(_select_scope(vecs, s, floors, round_to))
    return {name: out[name] for name in scores}


def _scope_labels(scores: Mapping[str, jax.Array], scope: Any) -> dict[str, Any]:
    if isinstance(scope, str):
        if scope == "layerwise":
            return {n: n for n in scores}
        if scope == "global":
            return {n: None for n in scores}
        raise ValueError(f"`scope` must be 'layerwise', 'global' or a dict, got {scope!r}.")
    if not isinstance(scope, Mapping):
        raise ValueError(f"`scope` must be 'layerwise', 'global' or a dict, got {scope!r}.")
    missing = sorted(set(scores) - set(scope))
    extra = sorted(set(scope) - set(scores))
    if missing or extra:
        raise ValueError(
            f"`scope` must give every group a scope label: groups without one {missing}, "
            f"labels for unknown groups {extra}."
        )
    return dict(scope)


def _max_sparsity(scores: Mapping[str, jax.Array], max_sparsity: Any) -> dict[str, float]:
    if max_sparsity is None:
        return {}
    if isinstance(max_sparsity, Mapping):
        extra = sorted(set(max_sparsity) - set(scores))
        if extra:
            raise ValueError(f"`max_sparsity` names unknown groups {extra}.")
        items = dict(max_sparsity)
    else:
        items = dict.fromkeys(scores, max_sparsity)
    out = {}
    for name, v in items.items():
        if v is None:
            continue
        if not base.is_concrete(v) or np.ndim(v) != 0:
            raise TypeError(f"`max_sparsity` for group {name!r} must be a concrete number.")
        base.check_fraction(v, f"max_sparsity[{name!r}]")
        out[name] = float(v)
    return out


def _ranks(v: jax.Array) -> jax.Array:
    """Rank of each entry, 0 for the best (highest; ties to the lowest index)."""
    order = jnp.argsort(-v, stable=True)
    return jnp.zeros(v.shape, jnp.int32).at[order].set(jnp.arange(v.shape[0], dtype=jnp.int32))


def _floor(name: str, c: int, caps: dict[str, float], min_keep: int) -> int:
    """Channels group ``name`` (of ``c``) keeps whatever the ranking: its floor and its cap."""
    f = min(min_keep, c)
    if name in caps:  # the same count as a sparsity of caps[name] drops
        with jax.ensure_compile_time_eval():
            f = max(f, c - int(select_lib.num_dropped(jnp.float32(caps[name]), c)))
    return f


@functools.partial(jax.jit, static_argnums=(2, 3))
def _select_scope(
    vecs: dict[str, jax.Array], s: jax.Array, floors: tuple[int, ...], round_to: int
) -> dict[str, jax.Array]:
    """Exact selection in one scope (small vectors: a sort is cheap and exact).

    Jitted so that an eager call compiles once per configuration, not once per operation.
    """
    names = list(vecs)
    sizes = [int(vecs[n].shape[0]) for n in names]
    ranks = [_ranks(vecs[n]) for n in names]
    total = sum(sizes)
    k = select_lib.num_keep(s, total, sum(floors))
    if len(names) == 1:
        counts = [k]
    else:
        flat = jnp.concatenate([vecs[n] for n in names])
        forced = jnp.concatenate([r < f for r, f in zip(ranks, floors, strict=True)])
        idx = jnp.arange(total, dtype=jnp.int32)
        # Forced entries first, then by score, then by index.
        order = jnp.lexsort((idx, -flat, (~forced).astype(jnp.int32)))
        kept = jnp.zeros(total, bool).at[order].set(idx < k)
        ends = np.cumsum(sizes)
        counts = [
            jnp.sum(kept[e - c : e], dtype=jnp.int32) for e, c in zip(ends, sizes, strict=True)
        ]
    out = {}
    for n, c, r, cnt in zip(names, sizes, ranks, counts, strict=True):
        if round_to > 1:
            cnt = jnp.minimum(-(-cnt // round_to) * round_to, c)
        out[n] = r < cnt
    return out


def group_masks(
    scores: Mapping[str, jax.Array],
    groups: Sequence[groups_lib.Group],
    params: base.Params,
    sparsity: Any,
    *,
    scope: Literal["layerwise", "global"] | Mapping[str, Any] = "layerwise",
    normalize: Normalize | None = "l2",
    min_keep: int = 1,
    max_sparsity: float | Mapping[str, float] | None = None,
    round_to: int = 1,
) -> base.Mask:
    """Selects channels from group scores and expands them onto every coupled axis.

    :func:`select_groups` followed by :func:`jaxprune.expand_group_masks`: the mask of a
    pruned filter zeroes the producer's kernel slice, its bias and BN entries and the
    consumer's input slice (or flattened rows), whatever members the group lists.

    Args:
      scores: A dict from group name to scores; its names must be the groups' names.
      groups: The :class:`jaxprune.Group` specs.
      params: The parameters (only shapes are read).
      sparsity: As in :func:`select_groups`.
      scope: As in :func:`select_groups`.
      normalize: As in :func:`select_groups`.
      min_keep: As in :func:`select_groups`.
      max_sparsity: As in :func:`select_groups`.
      round_to: As in :func:`select_groups`.

    Returns:
      A mask tree with the structure of ``params`` (``None`` for leaves in no group).

    Raises:
      ValueError: If the score names and group names differ, or a score vector's length
        differs from its group's channel count.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> from jaxprune import importance
      >>> p = {"fc1": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)},
      ...      "fc2": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones(2)}}
      >>> g = jaxprune.Group("fc1", (jaxprune.Member("fc1/kernel", 1),
      ...     jaxprune.Member("fc1/bias", 0), jaxprune.Member("fc2/kernel", 0)))
      >>> m = importance.group_masks({"fc1": jnp.array([4.0, 1.0, 3.0, 2.0])}, [g], p, 0.5)
      >>> m["fc2"]["kernel"][:, 0]
      Array([ True, False,  True, False], dtype=bool)
    """
    scores = groups_lib.check_score_dict(scores)
    sizes = groups_lib.check_groups(groups, params)
    missing = sorted(set(sizes) - set(scores))
    extra = sorted(set(scores) - set(sizes))
    if missing or extra:
        raise ValueError(
            f"score names must be the group names: groups without scores {missing}, scores "
            f"without a group {extra}."
            + (groups_lib.name_hint(missing[0], scores) if missing else "")
        )
    for name, v in scores.items():
        if v.shape != (sizes[name],):
            raise ValueError(
                f"scores[{name!r}] has {v.shape[0]} entries, but group {name!r} has "
                f"{sizes[name]} channels."
            )
    keep = select_groups(
        scores,
        sparsity,
        scope=scope,
        normalize=normalize,
        min_keep=min_keep,
        max_sparsity=max_sparsity,
        round_to=round_to,
    )
    return groups_lib.expand_group_masks(keep, groups, params)


# ---------------------------------------------------------------------------------------
# Threshold selection after learned sparsity.


class LearnedSelection(NamedTuple):
    """What a learned-sparsity selector returns.

    Attributes:
      group_masks: ``{group name: bool vector}``, ``True`` = channel kept.
      masks: The group masks expanded onto every member
        (:func:`jaxprune.expand_group_masks`); ``None`` for leaves in no group.
      threshold: The threshold used: a float32 scalar, or ``{group name: scalar}`` for
        per-group selection.
    """

    group_masks: dict[str, jax.Array]
    masks: base.Mask
    threshold: Any


def _apply_floor(keep: jax.Array, score: jax.Array, min_keep: int) -> jax.Array:
    """Also keeps the ``min_keep`` best-scored channels (ties: lowest index first)."""
    n = keep.shape[0]
    k = min(min_keep, n)
    if k == 0:
        return keep
    _, idx = jax.lax.top_k(score, k)
    return keep | jnp.zeros((n,), jnp.bool_).at[idx].set(True)


def _percentile_index(n: int, ratio: Any) -> Any:
    if base.is_concrete(ratio) and not isinstance(ratio, jax.Array):
        return min(int(n * float(ratio)), n - 1)
    r = jnp.asarray(ratio, jnp.float32)
    return jnp.minimum(jnp.floor(r * n).astype(jnp.int32), n - 1)


def slimming_threshold(scales: Any, ratio: Any) -> jax.Array:
    """Network slimming's global threshold ``sorted(|gamma|)[int(n * ratio)]``.

    All entries of all leaves of ``scales`` (``None`` leaves skipped) are pooled; the index is
    clamped to ``n - 1``. Channels are kept when ``|gamma| > thr`` (strictly), so even
    ``ratio = 0`` drops the smallest scale and its ties, as the authors' code does.

    Args:
      scales: A tree (or list) of scale arrays.
      ratio: The prune ratio ``p`` in ``[0, 1]`` (a float or a scalar array).

    Returns:
      The threshold as a float32 scalar.

    Raises:
      ValueError: If there are no scales or ``ratio`` is outside ``[0, 1]``.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> jaxprune.slimming_threshold([jnp.array([0.5, -0.1]), jnp.array([0.3, 0.0])], 0.5)
      Array(0.3, dtype=float32)

    References:
      Liu et al., "Learning Efficient Convolutional Networks through Network Slimming",
      ICCV 2017. https://arxiv.org/abs/1708.06519
    """
    base.check_fraction(ratio, "ratio")
    vals = [  # replicated: sort and concatenate need an unsharded axis
        base.replicated_along(jnp.abs(jnp.asarray(x).astype(jnp.float32)).ravel(), 0)
        for x in jax.tree.leaves(scales)
    ]
    if not vals or sum(v.size for v in vals) == 0:
        raise ValueError("`scales` holds no entries.")
    flat = jnp.sort(jnp.concatenate(vals))
    return flat[_percentile_index(flat.shape[0], ratio)]


def _selected_member(
    g: groups_lib.Group, flags: dict[str, bool], leaves: dict[str, Any], what: str
) -> groups_lib.Member:
    found = [m for m in g.members if flags.get(m.path, False)]
    if len(found) != 1:
        raise ValueError(
            f"group {g.name!r} must have exactly one member selected by `{what}`, got "
            f"{[m.path for m in found]}; members are {[m.path for m in g.members]}."
        )
    m = found[0]
    if leaves[m.path].ndim != 1 or not m.whole:
        raise ValueError(
            f"group {g.name!r}: the {what} member {m.path!r} must be a vector spanning the "
            f"group's channels, got shape {tuple(leaves[m.path].shape)}."
        )
    return m


def _flags(prunable: Any, params: base.Params, what: str) -> dict[str, bool]:
    tree = base.resolve_tree_arg(prunable, params)
    tree = base.broadcast_prefix(tree, params, what)
    out = {}
    for (path, p), (_, f) in zip(
        base.leaves_with_paths(params), base.leaves_with_paths(tree), strict=True
    ):
        if p is None or f is None:
            continue
        if not isinstance(f, (bool, np.bool_)) and not (
            hasattr(f, "shape") and f.shape == () and base.is_concrete(f)
        ):
            raise TypeError(f"`{what}` must hold one Python bool per leaf; got {f!r} at {path!r}.")
        out[path] = bool(f)
    return out


def _finish(group_masks, groups, params, threshold) -> LearnedSelection:
    return LearnedSelection(
        group_masks=group_masks,
        masks=groups_lib.expand_group_masks(group_masks, groups, params),
        threshold=threshold,
    )


def slimming_masks(
    params: base.Params,
    groups: Sequence[groups_lib.Group],
    ratio: Any,
    *,
    prunable: Any = labels_lib.scale_labels,
    min_keep: int = 1,
    per_group: bool = False,
) -> LearnedSelection:
    """Network slimming's selection: prune the channels with the smallest ``|gamma|``.

    Every group must have exactly one member marked by ``prunable`` (its BatchNorm scale or
    channel gate); that vector scores the group's channels. With ``per_group=False`` one
    global threshold ``thr = sorted(|gamma| of all groups)[int(n * ratio)]`` applies and a
    channel is kept iff ``|gamma| > thr`` (strictly, as in the authors' code); with
    ``per_group=True`` each group uses its own ``sorted(|gamma_g|)[int(n_g * ratio)]`` (the
    paper's MNIST experiment pruned 80% per layer). Then every group keeps at least its
    ``min_keep`` largest scales (the per-layer floor that stops a global threshold from
    emptying a layer). The group masks are expanded onto all members (producer kernel, bias,
    BN scale and shift, the consumer's input axis) by :func:`jaxprune.expand_group_masks`.

    Args:
      params: The trained parameters.
      groups: The channel groups, each including one scale member.
      ratio: Prune ratio ``p`` in ``[0, 1]``.
      prunable: Bool tree (prefix, by path) or callable ``params -> tree`` marking the scale
        leaves whose channels are pruned.
        Default :func:`jaxprune.scale_labels`; use :func:`jaxprune.linen.slimming_labels` or
        :func:`jaxprune.nnx.slimming_labels` to pick BatchNorm scales exactly.
      min_keep: Channels every group keeps at least.
      per_group: One threshold per group instead of one global threshold.

    Returns:
      A :class:`LearnedSelection`.

    Raises:
      ValueError: If a group has zero or several selected members, the selected member is not
        a vector over the channels, or ``ratio`` is outside ``[0, 1]``.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> p = {"fc1": {"kernel": jnp.ones((2, 4))}, "bn": {"scale": jnp.array([.9, .1, .5, .05])},
      ...      "fc2": {"kernel": jnp.ones((4, 3))}}
      >>> g = jaxprune.Group("h", (jaxprune.Member("fc1/kernel", 1), jaxprune.Member("bn/scale", 0),
      ...                          jaxprune.Member("fc2/kernel", 0)))
      >>> sel = jaxprune.slimming_masks(p, [g], 0.5)  # thr = sorted(|gamma|)[2] = 0.5
      >>> sel.group_masks["h"], sel.masks["fc2"]["kernel"].shape
      (Array([ True, False, False, False], dtype=bool), (4, 1))

    References:
      Liu et al., "Learning Efficient Convolutional Networks through Network Slimming",
      ICCV 2017. https://arxiv.org/abs/1708.06519
    """
    base.check_fraction(ratio, "ratio")
    min_keep = base.check_int(min_keep, "min_keep")
    groups = list(groups)
    groups_lib.check_groups(groups, params)
    leaves = {p: x for p, x in base.leaves_with_paths(params) if x is not None}
    flags = _flags(prunable, params, "prunable")
    scores = {}
    for g in groups:
        m = _selected_member(g, flags, leaves, "prunable")
        score = jnp.abs(jnp.asarray(leaves[m.path]).astype(jnp.float32))
        scores[g.name] = base.replicated_along(score, 0)
    if per_group:
        thr = {k: slimming_threshold([v], ratio) for k, v in scores.items()}
        keep = {k: v > thr[k] for k, v in scores.items()}
    else:
        thr = slimming_threshold(list(scores.values()), ratio)
        keep = {k: v > thr for k, v in scores.items()}
    keep = {k: _apply_floor(v, scores[k], min_keep) for k, v in keep.items()}
    return _finish(keep, groups, params, thr)


def group_norm_masks(
    params: base.Params,
    groups: Sequence[groups_lib.Group],
    threshold: Any = 0.0,
    *,
    ord: int = 2,
    min_keep: int = 0,
) -> LearnedSelection:
    """SSL's selection: keep the channels whose group norm exceeds ``threshold``.

    After group-lasso training (and :func:`jaxprune.zero_small` or a proximal step) the
    groups to remove have norm exactly 0 (or tiny); a channel is kept iff its norm over all
    members ``||W_c||`` is strictly greater than ``threshold``. Every group keeps at least
    its ``min_keep`` largest-norm channels.

    Args:
      params: The trained parameters.
      groups: The groups (the same ones the penalty used, or the structural groups to remove).
      threshold: A non-negative float (or scalar array).
      ord: ``2`` (group lasso) or ``1``.
      min_keep: Per-group floor.

    Returns:
      A :class:`LearnedSelection` (``threshold`` as a float32 scalar).

    Raises:
      ValueError: If ``threshold`` is negative or the groups do not fit the params.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> p = {"k": jnp.array([[3.0, 0.0], [4.0, 0.0]])}
      >>> g = jaxprune.Group("out", (jaxprune.Member("k", 1),))
      >>> jaxprune.group_norm_masks(p, [g]).group_masks["out"]
      Array([ True, False], dtype=bool)

    References:
      Wen et al., "Learning Structured Sparsity in Deep Neural Networks", NeurIPS 2016.
      https://arxiv.org/abs/1608.03665
    """
    if base.is_concrete(threshold) and float(np.asarray(threshold)) < 0:
        raise ValueError(f"`threshold` must be >= 0, got {threshold}.")
    min_keep = base.check_int(min_keep, "min_keep")
    groups = list(groups)
    norms = groups_lib.group_norms(params, groups, ord=ord)
    t = jnp.asarray(threshold, jnp.float32)
    keep = {k: _apply_floor(v > t, v, min_keep) for k, v in norms.items()}
    return _finish(keep, groups, params, t)


def gate_masks(
    params: base.Params,
    groups: Sequence[groups_lib.Group],
    threshold: Any = 0.0,
    *,
    min_keep: int = 0,
) -> LearnedSelection:
    """Selection after gate training: keep the channels whose test-time gate exceeds ``threshold``.

    Each group must contain one gate member (found by its reserved name). Hard-concrete gates
    use the deterministic gate ``clip(sigmoid(log_alpha) * 1.2 - 0.1, 0, 1)``, which is
    exactly zero for ``log_alpha <= -2.398``, so the default ``threshold = 0`` keeps exactly the
    channels the deterministic model uses (Louizos et al.); Bernoulli gates use ``1[g > 0.5]``;
    channel gates use ``|g|``.

    Args:
      params: The trained parameters.
      groups: Groups, each with exactly one gate member.
      threshold: Keep ``|test gate| > threshold``.
      min_keep: Per-group floor.

    Returns:
      A :class:`LearnedSelection`.

    Raises:
      ValueError: If a group has no or several gate members.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> p = {"g": {"l0_log_alpha": jnp.array([3.0, -3.0])}, "fc": {"kernel": jnp.ones((2, 2))}}
      >>> grp = jaxprune.Group("in", (jaxprune.Member("g/l0_log_alpha", 0),
      ...                             jaxprune.Member("fc/kernel", 0)))
      >>> jaxprune.gate_masks(p, [grp]).group_masks["in"]
      Array([ True, False], dtype=bool)

    References:
      Louizos, Welling, Kingma, ICLR 2018; Srinivas, Subramanya, Babu, CVPR-W 2017.
    """
    min_keep = base.check_int(min_keep, "min_keep")
    groups = list(groups)
    groups_lib.check_groups(groups, params)
    leaves = {p: x for p, x in base.leaves_with_paths(params) if x is not None}
    t = jnp.asarray(threshold, jnp.float32)
    keep = {}
    for g in groups:
        gm = labels_lib.gate_member(g, labels_lib.ALL_KINDS)
        if gm is None:
            raise ValueError(
                f"group {g.name!r} has no gate member (a leaf named one of "
                f"{labels_lib.GATE_NAMES})."
            )
        v = jnp.abs(
            gates_math.deterministic_gate_values(gm.path, leaves[gm.path]).astype(jnp.float32)
        )
        keep[g.name] = _apply_floor(v > t, v, min_keep)
    return _finish(keep, groups, params, t)
