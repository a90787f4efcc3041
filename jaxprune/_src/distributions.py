"""Per-layer sparsity allocation: how one overall sparsity is split across the leaves.

A *distribution* is a function ``fn(params, sparsity, **options) -> tree``. ``params`` is a
params-shaped tree of arrays or :class:`jax.ShapeDtypeStruct` (only shapes are read) whose
``None`` leaves are not prunable; ``sparsity`` is a scalar (a Python float or a traced JAX
scalar, which never causes a recompile). The result has the params' structure with one
sparsity per prunable leaf (a Python float when every input is concrete, a scalar array when
``sparsity`` is traced) and ``None`` for leaves that are not pruned. The selection step then
removes ``floor(s_l * n_l)`` entries of leaf ``l`` (``n_l`` = its size).

* :func:`uniform` -- the same sparsity everywhere (optionally keeping some leaves dense).
* :func:`erk` / :func:`er` -- Erdős-Rényi(-Kernel) allocation (Mocanu et al. 2018, Evci et al.
  2020): small layers get more density, at the same total number of non-zeros as uniform.
* :func:`per_path` -- a user-given sparsity per path.

"Global" magnitude pruning is **not** a per-leaf allocation: it is one threshold over all
leaves, i.e. ``jaxprune.select.global_topk(scores, sparsity)`` called with the scalar sparsity.
:func:`resolve` maps the name ``"global"`` to the sentinel :data:`GLOBAL` (an instance of
:class:`GlobalSelection`) so that callers can branch on its type.

Paths are ``'/'``-joined key paths (``'Dense_0/kernel'``); paths of ``None`` leaves are valid
paths (they stay ``None``), paths that do not exist in the tree raise ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Collection, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxprune._src import base

ExcludeSpec = Collection[str] | Callable[[str, Any], bool] | str | None

__all__ = [
    "GLOBAL",
    "GlobalSelection",
    "er",
    "erk",
    "nonzero_budget",
    "per_path",
    "resolve",
    "uniform",
]


@dataclasses.dataclass(frozen=True)
class GlobalSelection:
    """The ``"global"`` distribution: one threshold over all leaves, not a per-leaf split.

    Not callable: global selection is ``jaxprune.select.global_topk(scores, sparsity)`` with
    the scalar sparsity. Use the instance :data:`GLOBAL`; :func:`resolve` returns it for the
    name ``"global"``.
    """

    def __repr__(self) -> str:
        return "jaxprune.distributions.GLOBAL"


GLOBAL = GlobalSelection()


# ---------------------------------------------------------------------------------------
# Helpers.


def _shape(x: Any) -> tuple[int, ...]:
    shape = getattr(x, "shape", None)
    return tuple(int(d) for d in (np.shape(x) if shape is None else shape))


def _size(x: Any) -> int:
    return math.prod(_shape(x))


def _check_scalar(value: Any, name: str, *, allow_none: bool = False) -> None:
    """Raises unless ``value`` is a real scalar (concrete values must lie in ``[0, 1]``)."""
    if value is None:
        if allow_none:
            return
        raise TypeError(f"`{name}` must be a number in [0, 1], got None.")
    if callable(value):
        raise TypeError(
            f"`{name}` must be a scalar sparsity, got the callable {value!r}; evaluate a "
            "schedule at the current step first (`schedule(count)`)."
        )
    if isinstance(value, bool | np.bool_):
        raise TypeError(f"`{name}` must be a number in [0, 1], got the bool {value!r}.")
    if isinstance(value, numbers.Real):
        base.check_fraction(value, name)
        return
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(f"`{name}` must be a number in [0, 1], got {type(value).__name__}.")
    if tuple(shape) != ():
        raise TypeError(
            f"`{name}` must be a scalar, got an array of shape {tuple(shape)}; per-leaf "
            "sparsities are written with `per_path` or `custom`."
        )
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
        raise TypeError(f"`{name}` must be a real number, got dtype {dtype}.")
    base.check_fraction(value, name)


def _all_paths(params: base.Params) -> list[str]:
    return list(base.iter_paths(params))


def _check_known(params: base.Params, paths: Collection[str], what: str) -> None:
    known = set(_all_paths(params))
    unknown = sorted(p for p in paths if p not in known)
    if unknown:
        shown = sorted(known)[:12]
        raise ValueError(
            f"`{what}` names paths that are not in the params: {unknown}. Known paths "
            f"(first {len(shown)}): {shown}."
        )


def _excluded_paths(params: base.Params, exclude: ExcludeSpec) -> set[str]:
    """Returns the set of excluded leaf paths (``exclude`` as in :func:`uniform`)."""
    if exclude is None:
        return set()
    if isinstance(exclude, str):
        exclude = (exclude,)
    if callable(exclude):
        out = set()
        for path, leaf in base.leaves_with_paths(params):
            if leaf is None:
                continue
            flag = exclude(path, leaf)
            if not isinstance(flag, bool | np.bool_):
                raise TypeError(
                    f"`exclude` must return a Python bool, got {type(flag).__name__} for path "
                    f"{path!r}."
                )
            if flag:
                out.add(path)
        return out
    if not isinstance(exclude, Collection) or isinstance(exclude, Mapping):
        raise TypeError(
            "`exclude` must be a collection of path strings or a callable (path, leaf) -> bool, "
            f"got {type(exclude).__name__}."
        )
    bad = [p for p in exclude if not isinstance(p, str)]
    if bad:
        raise TypeError(f"`exclude` must contain path strings, got {bad[:5]}.")
    _check_known(params, exclude, "exclude")
    return set(exclude)


def _check_mapping(
    params: base.Params, mapping: Any, what: str, *, allow_schedules: bool = False
) -> dict[str, Any]:
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping):
        raise TypeError(
            f"`{what}` must be a dict from path strings to sparsities, got "
            f"{type(mapping).__name__}."
        )
    bad = [k for k in mapping if not isinstance(k, str)]
    if bad:
        raise TypeError(f"`{what}` keys must be path strings, got {bad[:5]}.")
    _check_known(params, mapping.keys(), what)
    for path, value in mapping.items():
        if not (allow_schedules and callable(value)):
            _check_scalar(value, f"{what}[{path!r}]", allow_none=True)
    return dict(mapping)


# ---------------------------------------------------------------------------------------
# Uniform.


def uniform(
    params: base.Params,
    sparsity: Any,
    *,
    exclude: ExcludeSpec = None,
    dense_first: bool = False,
    dense_last: bool = False,
) -> Any:
    """The same sparsity for every prunable leaf.

    Common practice keeps the first layer (and sometimes the last) dense. ``dense_first`` and
    ``dense_last`` do that by *tree-flatten order*, which for dicts (Linen params) sorts keys
    lexicographically: ``'Dense_10'`` comes before ``'Dense_2'``. Prefer ``exclude`` with
    explicit paths when the order is not obvious.

    Args:
      params: Params-shaped tree of arrays or ``jax.ShapeDtypeStruct``; ``None`` leaves are not
        prunable.
      sparsity: Fraction of entries to prune, a Python float or a (possibly traced) scalar.
      exclude: Leaves that stay dense (``None`` in the result): a collection of path strings
        (a single string is one path), or a callable ``(path, leaf) -> bool`` called on every
        non-``None`` leaf.
      dense_first: Keep the first prunable leaf (after ``exclude``) dense.
      dense_last: Keep the last prunable leaf (after ``exclude``) dense.

    Returns:
      A params-shaped tree holding ``sparsity`` for every pruned leaf and ``None`` elsewhere.

    Raises:
      ValueError: If ``exclude`` names paths that are not in ``params`` (all are listed), or
        a concrete ``sparsity`` is outside ``[0, 1]``.
      TypeError: If ``sparsity`` is not a real scalar or ``exclude`` has the wrong type.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import distributions
      >>> params = {'a': jnp.zeros((4, 3)), 'b': jnp.zeros(3), 'c': None}
      >>> distributions.uniform(params, 0.5, exclude=['b'])
      {'a': 0.5, 'b': None, 'c': None}

    References:
      Zhu & Gupta, "To prune, or not to prune", 2017 (uniform with the first layer dense);
      Gale, Elsen & Hooker, "The state of sparsity in deep neural networks", 2019.
    """
    _check_scalar(sparsity, "sparsity")
    excluded = _excluded_paths(params, exclude)
    order = [p for p, x in base.leaves_with_paths(params) if x is not None and p not in excluded]
    if order and dense_first:
        excluded.add(order[0])
    if order and dense_last:
        excluded.add(order[-1])
    return base.map_with_path(lambda p, _: None if p in excluded else sparsity, params)


# ---------------------------------------------------------------------------------------
# Erdős-Rényi(-Kernel).


def _raw_density(shape: tuple[int, ...], power_scale: float, kernel: bool) -> float:
    """ERK: ``sum(dims) / prod(dims)``; ER: the same over the last two dims (fan in, fan out)."""
    dims = shape if kernel else shape[-2:]
    if not dims:  # A scalar leaf counts as one entry, like a bias of size 1.
        dims = (1,)
    return (sum(dims) / math.prod(dims)) ** power_scale


def _erk_densities(sizes: np.ndarray, raw: np.ndarray, sparsity: Any) -> Any:
    """Densities of RigL's ERK allocation, in closed form.

    RigL's loop marks the group of leaves with the largest ``raw`` dense while
    ``eps * max(raw) > 1`` and recomputes ``eps = rhs / sum_{not dense} raw_l n_l`` with
    ``rhs = sum_{not dense} (n_l - floor(s n_l)) - sum_{dense} floor(s n_l)``, which equals
    ``B(s) - D_k`` with the uniform budget ``B(s) = sum_l (n_l - floor(s n_l))`` and ``D_k`` the
    size of the ``k`` largest-``raw`` groups. Leaves become dense in a fixed order (descending
    ``raw``), so ``eps_k`` is computed for every ``k`` at once and the first valid ``k`` is the
    one the loop stops at. With a traced ``sparsity`` this is a few vector ops and no loop.

    Returns a float64 NumPy array for a concrete ``sparsity``, else a JAX array.
    """
    groups = np.unique(raw)[::-1]  # Distinct raw densities, largest first.
    group_of = np.searchsorted(-groups, -raw)  # Group index of every leaf.
    num_groups = len(groups)
    sizes_f = sizes.astype(np.float64)
    # Static per-k sums: D_k (sizes of dense groups) and the divisor for the remaining ones.
    dense_size = np.array([sizes_f[group_of < k].sum() for k in range(num_groups + 1)])
    divisor = np.array([(raw * sizes_f)[group_of >= k].sum() for k in range(num_groups + 1)])
    max_raw = np.append(groups, 0.0)  # For k = num_groups (all dense) the check is moot.

    if base.is_concrete(sparsity):
        s = float(sparsity)
        budget = float(np.sum(sizes_f - np.floor(s * sizes_f)))
        safe = np.where(divisor > 0, divisor, 1.0)
        eps = np.where(divisor > 0, (budget - dense_size) / safe, 0.0)
        valid = eps * max_raw <= 1.0
        valid[-1] = True
        k = int(np.argmax(valid))
        return np.where(group_of < k, 1.0, eps[k] * raw)

    s = jnp.asarray(sparsity)
    dtype = jnp.promote_types(s.dtype, jnp.float32)
    s = s.astype(dtype)
    n = jnp.asarray(sizes_f, dtype)
    budget = jnp.sum(n - jnp.floor(s * n))
    div = jnp.asarray(divisor, dtype)
    safe = jnp.where(div > 0, div, jnp.ones_like(div))
    eps = jnp.where(div > 0, (budget - jnp.asarray(dense_size, dtype)) / safe, jnp.zeros_like(div))
    valid = (eps * jnp.asarray(max_raw, dtype) <= 1.0).at[-1].set(True)
    k = jnp.argmax(valid)  # First valid number of dense groups.
    # eps * raw <= 1 holds by the validity check; the clip only removes float32 rounding noise
    # (XLA may reorder the division and the product), e.g. a density of 1 + 3e-8 at s = 0.
    density = jnp.clip(eps[k] * jnp.asarray(raw, dtype), 0.0, 1.0)
    return jnp.where(jnp.asarray(group_of) < k, jnp.ones((), dtype), density)


def erk(
    params: base.Params,
    sparsity: Any,
    *,
    power_scale: float = 1.0,
    kernel: bool = True,
    custom: Mapping[str, Any] | None = None,
    exclude: ExcludeSpec = None,
) -> Any:
    """Erdős-Rényi-Kernel (ERK) allocation: density proportional to ``sum(dims) / prod(dims)``.

    Leaf ``l`` of shape ``(d_1, ..., d_k)`` and size ``n_l`` gets density
    ``eps * raw_l`` with ``raw_l = (sum_i d_i / prod_i d_i) ** power_scale`` (ERK) or, with
    ``kernel=False`` (ER), ``raw_l = ((c_in + c_out) / (c_in * c_out)) ** power_scale`` over
    the last two dims only. ``eps`` is chosen so that the total number of kept entries equals
    the uniform budget ``sum_l (n_l - floor(sparsity * n_l))``; leaves whose density would
    exceed 1 are made dense (largest ``raw`` first, ties together) and ``eps`` is recomputed,
    as in RigL's ``sparse_utils``. The loop is evaluated in closed form, so a traced
    ``sparsity`` works under ``jit`` without recompiling; it is computed in float32 then
    (float64 for a concrete ``sparsity``), so ``floor(s * n_l)`` may differ by one entry.

    Every non-``None`` leaf that is not excluded takes part, biases included: pass params with
    ``None`` for leaves that are not pruned, or use ``exclude``.

    Args:
      params: Params-shaped tree of arrays or ``jax.ShapeDtypeStruct``; ``None`` leaves are not
        prunable.
      sparsity: Overall fraction of pruned entries over the participating leaves, a Python
        float or a (possibly traced) scalar.
      power_scale: Exponent applied to the raw ratio; ``< 1`` flattens the allocation, ``0``
        gives uniform. Must be a finite number ``>= 0``.
      kernel: ``True`` for ERK (all dims), ``False`` for ER (last two dims).
      custom: Dict path -> fixed sparsity (``None`` = not pruned). These leaves are left out
        of the computation entirely, so their non-zeros are *not* part of the budget (as in
        RigL).
      exclude: Leaves that stay dense (``None`` in the result), as in :func:`uniform`.

    Returns:
      A params-shaped tree of sparsities ``1 - density`` (Python floats for a concrete
      ``sparsity``, float32 scalars for a traced one; ``custom`` values are passed through)
      with ``None`` for excluded and ``None`` leaves.

    Raises:
      ValueError: If ``exclude`` or ``custom`` name unknown paths, a path is in both, or a
        concrete sparsity or ``power_scale`` is out of range.
      TypeError: For arguments of the wrong type.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from jaxprune import distributions
      >>> params = {'fc1': jax.ShapeDtypeStruct((784, 300), jnp.float32),
      ...           'fc2': jax.ShapeDtypeStruct((300, 100), jnp.float32),
      ...           'fc3': jax.ShapeDtypeStruct((100, 10), jnp.float32), 'bias': None}
      >>> s = distributions.erk(params, 0.9)
      >>> {k: round(1 - v, 4) for k, v in s.items() if v is not None}
      {'fc1': 0.0796, 'fc2': 0.2302, 'fc3': 1.0}

    References:
      Mocanu et al., "Scalable training of artificial neural networks with adaptive sparse
      connectivity inspired by network science", Nature Communications 2018 (ER);
      Evci, Gale, Menick, Castro & Elsen, "Rigging the lottery: making all tickets winners",
      ICML 2020 (ERK; google-research/rigl ``sparse_utils.py``).
    """
    _check_scalar(sparsity, "sparsity")
    if isinstance(power_scale, bool) or not isinstance(power_scale, numbers.Real):
        raise TypeError(f"`power_scale` must be a real number, got {power_scale!r}.")
    if not math.isfinite(power_scale) or power_scale < 0:
        raise ValueError(f"`power_scale` must be a finite number >= 0, got {power_scale!r}.")
    if not isinstance(kernel, bool):
        raise TypeError(f"`kernel` must be a bool, got {kernel!r}.")
    excluded = _excluded_paths(params, exclude)
    custom = _check_mapping(params, custom, "custom")
    both = sorted(excluded & custom.keys())
    if both:
        raise ValueError(f"paths {both} are both in `exclude` and in `custom`; pick one.")

    entries = [
        (p, _shape(x))
        for p, x in base.leaves_with_paths(params)
        if x is not None and p not in excluded and p not in custom and math.prod(_shape(x)) > 0
    ]
    result: dict[str, Any] = {}
    if entries:
        sizes = np.array([math.prod(shape) for _, shape in entries], dtype=np.int64)
        raw = np.array([_raw_density(shape, float(power_scale), kernel) for _, shape in entries])
        density = _erk_densities(sizes, raw, sparsity)
        concrete = isinstance(density, np.ndarray)
        for i, (path, _) in enumerate(entries):
            result[path] = float(1.0 - density[i]) if concrete else 1.0 - density[i]

    def leaf(path: str, x: Any) -> Any:
        if path in excluded:
            return None
        if path in custom:
            return custom[path]
        return result.get(path, 0.0)  # Empty (size-0) leaves: nothing to prune.

    return base.map_with_path(leaf, params)


def er(
    params: base.Params,
    sparsity: Any,
    *,
    power_scale: float = 1.0,
    custom: Mapping[str, Any] | None = None,
    exclude: ExcludeSpec = None,
) -> Any:
    """Erdős-Rényi (ER) allocation: :func:`erk` with ``kernel=False``.

    Density proportional to ``(c_in + c_out) / (c_in * c_out)`` over the last two dims of each
    leaf, at the uniform budget. See :func:`erk` for the arguments.

    Args:
      params: Params-shaped tree of arrays or ``jax.ShapeDtypeStruct``.
      sparsity: Overall sparsity, a Python float or a (possibly traced) scalar.
      power_scale: Exponent applied to the raw ratio.
      custom: Dict path -> fixed sparsity, left out of the budget.
      exclude: Leaves that stay dense (``None`` in the result).

    Returns:
      A params-shaped tree of sparsities, ``None`` for leaves that are not pruned.

    Raises:
      ValueError: As :func:`erk`.
      TypeError: As :func:`erk`.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import distributions
      >>> params = {'conv': jnp.zeros((3, 3, 8, 8)), 'fc': jnp.zeros((8, 8))}
      >>> s = distributions.er(params, 0.5)
      >>> bool(abs(s['conv'] - s['fc']) < 1e-12)  # ER ignores the 3x3 kernel dims
      True

    References:
      Mocanu et al., Nature Communications 2018; Evci et al., ICML 2020.
    """
    return erk(
        params, sparsity, power_scale=power_scale, kernel=False, custom=custom, exclude=exclude
    )


# ---------------------------------------------------------------------------------------
# Per path, budget, names.


def per_path(params: base.Params, mapping: Mapping[str, Any], *, default: Any = None) -> Any:
    """A user-given sparsity per path.

    Args:
      params: Params-shaped tree of arrays or ``jax.ShapeDtypeStruct``; ``None`` leaves stay
        ``None``.
      mapping: Dict path -> sparsity: a float, a traced scalar, ``None`` (not pruned) or a
        schedule ``count -> sparsity``, which is passed through unevaluated for the caller
        (e.g. ``optax_sparsity``) to evaluate at the current step.
      default: Sparsity of the leaves that are not in ``mapping`` (same kinds of value;
        ``None`` = not pruned).

    Returns:
      A params-shaped tree of sparsities, ``None`` for leaves that are not pruned.

    Raises:
      ValueError: If ``mapping`` names paths that are not in ``params`` (all are listed), or a
        concrete value is outside ``[0, 1]``.
      TypeError: If ``mapping`` is not a dict of path strings to scalars.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import distributions
      >>> params = {'conv1': jnp.zeros((5, 5, 1, 20)), 'fc1': jnp.zeros((800, 500))}
      >>> distributions.per_path(params, {'conv1': 0.34}, default=0.92)
      {'conv1': 0.34, 'fc1': 0.92}

    References:
      Han, Pool, Tran & Dally, "Learning both weights and connections for efficient neural
      networks", NeurIPS 2015 (per-layer sparsities from a sensitivity analysis).
    """
    mapping = _check_mapping(params, mapping, "mapping", allow_schedules=True)
    if not callable(default):
        _check_scalar(default, "default", allow_none=True)
    return base.map_with_path(lambda p, _: mapping.get(p, default), params)


def nonzero_budget(params: base.Params, sparsities: Any) -> Any:
    """Total number of entries kept when leaf ``l`` loses ``floor(s_l * n_l)`` entries.

    Leaves whose sparsity is ``None`` count as dense; ``None`` params count nothing.

    Args:
      params: Params-shaped tree of arrays or ``jax.ShapeDtypeStruct``.
      sparsities: Params-shaped tree (or prefix, e.g. one float) of sparsities.

    Returns:
      The kept count, a Python int when every sparsity is concrete (computed in float64),
      else a float32 scalar array.

    Raises:
      ValueError: If ``sparsities`` is not a prefix of the params' structure, or a concrete
        value is outside ``[0, 1]``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import distributions
      >>> params = {'w': jnp.zeros((10, 10)), 'b': jnp.zeros(10)}
      >>> distributions.nonzero_budget(params, {'w': 0.555, 'b': None})
      55

    References:
      Evci et al., "Rigging the lottery", ICML 2020 (the uniform budget ERK matches).
    """
    tree = base.broadcast_prefix(sparsities, params, "sparsities")
    terms = []
    for (path, x), (_, s) in zip(
        base.leaves_with_paths(params), base.leaves_with_paths(tree), strict=True
    ):
        if x is None:
            continue
        n = _size(x)
        if s is None:
            terms.append(n)
            continue
        _check_scalar(s, f"sparsities[{path!r}]")
        if base.is_concrete(s):
            terms.append(n - math.floor(float(s) * n))
        else:
            s = jnp.asarray(s)
            s = s.astype(jnp.promote_types(s.dtype, jnp.float32))
            terms.append(n - jnp.floor(s * n))
    if all(isinstance(t, int) for t in terms):
        return int(sum(terms))
    return sum(jnp.asarray(t, jnp.float32) for t in terms)


_BY_NAME: dict[str, Callable[..., Any]] = {"uniform": uniform, "erk": erk, "er": er}


def resolve(distribution: str | Callable[..., Any]) -> Callable[..., Any] | GlobalSelection:
    """Maps a distribution name to its function; callables pass through.

    Args:
      distribution: ``"uniform"``, ``"erk"``, ``"er"``, ``"global"`` (or :data:`GLOBAL`) or
        a callable ``(params, sparsity) -> tree``.

    Returns:
      The distribution function, the callable itself, or :data:`GLOBAL` (global selection
      is ``jaxprune.select.global_topk`` with the scalar sparsity; the caller branches on
      ``isinstance(result, GlobalSelection)``).

    Raises:
      ValueError: For an unknown name (the valid names are listed).
      TypeError: If ``distribution`` is neither a string nor a callable.

    Example:
      >>> from jaxprune import distributions
      >>> distributions.resolve('erk') is distributions.erk
      True
      >>> distributions.resolve('global')
      jaxprune.distributions.GLOBAL

    References:
      Evci et al., ICML 2020 (uniform, ER, ERK); Zhu & Gupta 2017.
    """
    if callable(distribution) or isinstance(distribution, GlobalSelection):
        return distribution
    if not isinstance(distribution, str):
        raise TypeError(
            f"`distribution` must be a name or a callable, got {type(distribution).__name__}."
        )
    if distribution == "global":
        return GLOBAL
    if distribution not in _BY_NAME:
        raise ValueError(
            f"unknown distribution {distribution!r}; valid names are "
            f"{[*sorted(_BY_NAME), 'global']} or a callable (params, sparsity) -> tree."
        )
    return _BY_NAME[distribution]
