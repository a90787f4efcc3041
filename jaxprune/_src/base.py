"""Shared types, the one rule for ``None`` leaves, parameter paths and input checks.

Every tree that jaxprune reads (params, scores, masks, sparsities) has the structure of the
parameters, with ``None`` where a leaf is absent or never pruned. All mapping goes through
:func:`map_prunable`, which maps with the params-shaped tree first and treats ``None`` as a
leaf, so that a ``None`` anywhere yields ``None`` (the "None rule" of docs/guides/architecture.md).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

Params = Any  # A pytree of arrays; ``None`` leaves mean "absent".
Updates = Any  # A pytree shaped like ``Params``.
Scores = Any  # Params-shaped; float leaves shaped like the mask they produce, or ``None``.
Mask = Any  # Params-shaped; bool leaves broadcastable to the parameter, or ``None``.
Sparsity = Any  # A float, a scalar array, or a prefix tree of those (``None`` = stays dense).

NO_PARAMS_MSG = "This transformation reads the current parameters: pass `params` to `update`."


class ScoreFn(Protocol):
    """Maps parameters (and optionally gradients) to a params-shaped tree of scores."""

    def __call__(self, params: Params, grads: Updates | None = None) -> Scores: ...


class SelectFn(Protocol):
    """Maps scores and a sparsity (scalar or per-leaf tree) to a boolean mask tree."""

    def __call__(self, scores: Scores, sparsity: Sparsity) -> Mask: ...


def is_none(x: Any) -> bool:
    """Returns whether ``x`` is ``None`` (the ``is_leaf`` used for every jaxprune tree)."""
    return x is None


def map_prunable(f: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """Maps ``f`` over leaves where every tree holds a value; ``None`` everywhere else.

    ``tree`` fixes the structure; the trees in ``rest`` must have the same structure, where
    a ``None`` leaf stands for a whole absent subtree.

    Args:
      f: Function of one leaf from each tree.
      tree: The params-shaped tree that fixes the structure.
      *rest: More trees with the structure of ``tree``.

    Returns:
      A tree with the structure of ``tree``.
    """
    return jax.tree.map(
        lambda x, *r: None if x is None or any(y is None for y in r) else f(x, *r),
        tree,
        *rest,
        is_leaf=is_none,
    )


def path_str(path: Any) -> str:
    """Formats a JAX key path as a ``'/'``-joined string, e.g. ``'Dense_0/kernel'``.

    A final ``.value`` attribute (how a Flax NNX ``Variable`` flattens) is dropped, so the
    kernel of an NNX ``Linear`` named ``fc1`` is ``'fc1/kernel'`` in ``nnx.state(model)`` as
    in a Linen params dict.
    """
    path = tuple(path)
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
        path = path[:-1]
    return jax.tree_util.keystr(path, simple=True, separator="/")


def leaves_with_paths(tree: Any) -> list[tuple[str, Any]]:
    """Returns ``(path, leaf)`` pairs in tree order, ``None`` leaves included."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_none)
    return [(path_str(p), x) for p, x in flat]


def map_with_path(f: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """Like :func:`map_prunable`, but ``f`` also receives the leaf's path string first."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x, *r: None if x is None or any(y is None for y in r) else f(path_str(p), x, *r),
        tree,
        *rest,
        is_leaf=is_none,
    )


def iter_paths(tree: Any) -> Iterator[str]:
    """Yields the path of every leaf (``None`` included) in tree order."""
    for path, _ in leaves_with_paths(tree):
        yield path


# ---------------------------------------------------------------------------------------
# Structure and value checks (every message names the offending path or argument).


def check_structure(params: Params, other: Any, what: str) -> None:
    """Raises ``ValueError`` unless ``other`` has the tree structure of ``params``.

    ``None`` leaves are leaves on both sides, so a ``None`` in ``other`` may only stand where
    ``params`` holds a single leaf.

    Args:
      params: The reference tree.
      other: The tree to check.
      what: Name of ``other`` used in the message (e.g. ``"masks"``).

    Raises:
      ValueError: If the structures differ; the message lists the paths that differ.
    """
    ref = jax.tree.structure(params, is_leaf=is_none)
    got = jax.tree.structure(other, is_leaf=is_none)
    if ref == got:
        return
    ref_paths = list(iter_paths(params))
    got_paths = list(iter_paths(other))
    missing = [p for p in ref_paths if p not in set(got_paths)]
    extra = [p for p in got_paths if p not in set(ref_paths)]
    detail = []
    if missing:
        detail.append(f"missing paths {missing[:8]}")
    if extra:
        detail.append(f"unexpected paths {extra[:8]}")
    if not detail:
        detail.append(f"container types differ: params {ref} vs {what} {got}")
    raise ValueError(
        f"`{what}` must have the tree structure of the params: " + "; ".join(detail) + "."
    )


def _is_variable(x: Any) -> bool:
    """Whether ``x`` is a Flax NNX ``Variable`` (duck-typed: flax is not imported here)."""
    return hasattr(x, "get_value") and callable(x.get_value) and hasattr(x, "replace")


def unwrap_variables(tree: Any) -> Any:
    """``tree`` with every NNX ``Variable`` (``nnx.Param``, ...) replaced by its value.

    ``nnx.state(model, nnx.Param)`` and the masks read from an ``nnx.Optimizer`` then have
    one structure. Trees without Variables are returned as they are.
    """
    leaves = jax.tree.leaves(tree, is_leaf=lambda x: x is None or _is_variable(x))
    if not any(_is_variable(x) for x in leaves):
        return tree
    return jax.tree.map(
        lambda x: x.get_value() if _is_variable(x) else x,
        tree,
        is_leaf=lambda x: x is None or _is_variable(x),
    )


def rewrap_variables(like: Any, tree: Any) -> Any:
    """Puts the values of ``tree`` back into the NNX Variables of ``like`` (same layout)."""
    if unwrap_variables(like) is like:
        return tree
    return jax.tree.map(
        lambda v, x: v.replace(x) if _is_variable(v) else x,
        like,
        tree,
        is_leaf=lambda x: x is None or _is_variable(x),
    )


def check_not_variables(params: Params, what: str = "params") -> None:
    """Raises ``ValueError`` if ``params`` looks like Linen ``variables``, not ``params``.

    A mapping with a top-level ``"params"`` key next to other collections (``batch_stats``,
    ``cache``, ...) is a Linen variables dict: an optimizer on it would train the batch
    statistics as if they were weights.

    Args:
      params: The tree passed as parameters.
      what: The name used in the message.
    """
    if not isinstance(params, Mapping) or "params" not in params:
        return
    others = sorted(str(k) for k in params if k != "params")
    if others:
        raise ValueError(
            f"`{what}` looks like Linen `variables`: it holds the collection 'params' and also "
            f"{others}. The optimizer must see only the weights: pass `variables['params']` to "
            f"`tx.init` and `tx.update` (and its gradients), and keep {others} out of the "
            "optimizer (`model.apply(..., mutable=[...])` updates them)."
        )


def is_concrete(x: Any) -> bool:
    """Returns whether ``x`` has a value now (not a tracer)."""
    return not isinstance(x, jax.core.Tracer)


def check_fraction(value: Any, name: str) -> None:
    """Raises ``ValueError`` if a concrete ``value`` lies outside ``[0, 1]`` or is NaN.

    Traced values cannot be checked at trace time and are accepted as they are.

    Args:
      value: A Python number or array (scalar or not).
      name: The argument name or path used in the message.
    """
    if value is None or not is_concrete(value) or callable(value):
        return
    arr = np.asarray(value)
    if arr.dtype == object:
        raise TypeError(f"`{name}` must be a number in [0, 1], got {value!r}.")
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != np.bool_:
        raise TypeError(f"`{name}` must be a number in [0, 1], got dtype {arr.dtype}.")
    if np.any(np.isnan(arr)) or np.any(arr < 0) or np.any(arr > 1):
        raise ValueError(f"`{name}` must lie in [0, 1], got {value!r}.")


def check_float_leaf(path: str, x: Any, what: str = "prunable leaf") -> None:
    """Raises ``TypeError`` unless ``x`` has a floating dtype."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{what} {path!r} must be a floating-point array, got "
            f"{dtype if dtype is not None else type(x).__name__}."
        )


def check_mask_leaf(path: str, mask: Any, param: Any) -> None:
    """Raises unless ``mask`` is a bool array broadcastable to ``param``'s shape."""
    dtype = getattr(mask, "dtype", None)
    if dtype is None or dtype != jnp.bool_:
        raise TypeError(
            f"mask at {path!r} must be a bool array, got "
            f"{dtype if dtype is not None else type(mask).__name__}."
        )
    mshape, pshape = tuple(mask.shape), tuple(param.shape)
    ok = len(mshape) == len(pshape) and all(
        m in (1, p) for m, p in zip(mshape, pshape, strict=True)
    )
    if not ok:
        raise ValueError(
            f"mask at {path!r} has shape {mshape}, which does not broadcast to the parameter "
            f"shape {pshape} (a mask keeps the parameter's rank; pruned-together axes have size "
            "1)."
        )


def check_int(value: Any, name: str, minimum: int = 0) -> int:
    """Returns ``value`` as an int, raising if it is not an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
    return int(value)


def resolve_tree_arg(arg: Any, params: Params) -> Any:
    """Calls ``arg(params)`` if it is callable, else returns ``arg``."""
    return arg(params) if callable(arg) else arg


def broadcast_prefix(prefix: Any, params: Params, what: str) -> Any:
    """Broadcasts a prefix tree (e.g. one float per layer) to the structure of ``params``.

    The prefix is matched by *path*, not by container type, so a plain dict prefix fits a
    Linen params dict, a ``FrozenDict`` or an NNX ``State`` alike: every leaf of ``params``
    takes the value of the prefix entry whose path is the longest prefix of its own path.
    ``None`` in the prefix stands for a whole subtree of ``None``.

    Args:
      prefix: A single value, or a tree whose leaves are values for whole subtrees.
      params: The tree that fixes the structure.
      what: The argument name used in messages.

    Returns:
      A tree with the structure of ``params`` (``None`` where ``params`` is ``None``).

    Raises:
      ValueError: If an entry of ``prefix`` matches no path of ``params``, or a leaf of
        ``params`` is not covered by the prefix.
    """
    entries = leaves_with_paths(prefix)
    if len(entries) == 1 and entries[0][0] == "":
        value = entries[0][1]
        return jax.tree.map(lambda p: None if p is None else value, params, is_leaf=is_none)
    table = dict(entries)
    param_paths = [p for p, _ in leaves_with_paths(params)]

    def covers(prefix_path: str, path: str) -> bool:
        return path == prefix_path or path.startswith(prefix_path + "/")

    unused = [k for k in table if not any(covers(k, p) for p in param_paths)]
    if unused:
        raise ValueError(
            f"`{what}` has entries {unused[:8]} that match no parameter path; parameter paths "
            f"are e.g. {param_paths[:6]}."
        )

    def lookup(path: str) -> Any:
        parts = path.split("/")
        for n in range(len(parts), -1, -1):
            key = "/".join(parts[:n])
            if key in table:
                return table[key]
        raise ValueError(
            f"`{what}` does not cover the parameter {path!r}: give a value (or None) for it "
            "or for one of its parents."
        )

    return jax.tree_util.tree_map_with_path(
        lambda p, x: None if x is None else lookup(path_str(p)), params, is_leaf=is_none
    )


def leaf_flags(mask: Any, params: Params, what: str, default: Callable[[Params], Any]) -> Any:
    """Resolves a whole-leaf selector to a tree of Python bools shaped like ``params``.

    ``mask`` is a bool tree (a prefix, matched by path), a callable of the params, or ``None``
    for ``default(params)``. ``False`` where the params hold ``None``. Selected leaves must be
    floating point.

    Raises:
      TypeError: If a flag is not a Python bool (or a concrete bool scalar), or a selected
        leaf is not floating point; the message names ``what`` and the path.
      ValueError: If the selector does not fit the params' structure.
    """
    tree = default(params) if mask is None else resolve_tree_arg(mask, params)
    tree = broadcast_prefix(tree, params, what)
    out = []
    for (path, p), (_, f) in zip(leaves_with_paths(params), leaves_with_paths(tree), strict=True):
        if p is None or f is None:
            out.append(False)
            continue
        if isinstance(f, (bool, np.bool_)):
            flag = bool(f)
        elif hasattr(f, "shape") and f.shape == () and is_concrete(f):
            flag = bool(f)
        else:
            raise TypeError(
                f"`{what}` must hold one Python bool per leaf (whole leaves are selected); got "
                f"{f!r} at {path!r}."
            )
        if flag:
            check_float_leaf(path, p, f"`{what}` selects leaf")
        out.append(flag)
    treedef = jax.tree.structure(params, is_leaf=is_none)
    return jax.tree.unflatten(treedef, out)


def select_leaves(tree: Any, flags: Any) -> Any:
    """``tree`` with ``None`` wherever ``flags`` is ``False``."""
    return jax.tree.map(
        lambda x, f: x if (f and x is not None) else None, tree, flags, is_leaf=is_none
    )


def replicated_along(x: jax.Array, axis: int) -> jax.Array:
    """``x`` with no explicit sharding along ``axis`` (the other axes keep theirs).

    JAX has no sharding rule for sorting, concatenating or stacking arrays along an explicitly
    sharded axis, for slicing a segment out of it, or for splitting it into ``(outer,
    channels, inner)``; callers gather that one axis first (cheap for per-channel vectors).
    Arrays without explicit sharding (Auto axes, single device, NumPy) are returned as they are.
    """
    try:
        spec = jax.typeof(x).sharding.spec
    except (AttributeError, TypeError):  # pragma: no cover - older JAX
        return x
    if len(spec) <= axis or spec[axis] is None:
        return x
    spec = tuple(None if a == axis else s for a, s in enumerate(spec))
    return jax.sharding.reshard(x, jax.sharding.PartitionSpec(*spec))
