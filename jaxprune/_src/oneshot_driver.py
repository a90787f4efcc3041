"""The sequential block-by-block one-shot driver (the recipe of SparseGPT and Wanda).

A model is pruned one block at a time: the calibration activations entering block ``i`` are
those produced by blocks ``0..i-1`` *after* they were pruned, so that each block's
reconstruction sees the errors its predecessors left. Memory holds one block's activations and
statistics at a time. The linear layers of a block are found in its jaxpr (every 2-D kernel
that meets an activation in a ``dot_general``), so the model is not rewritten; their input
statistics are gathered inside one jitted function per block structure
(the tagged jaxpr interpreter under :func:`jax.jit`).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxprune._src import base
from jaxprune._src import oneshot as ops
from jaxprune._src.interpret import run_tagged


def _check_sparsity(sparsity: Any, n_of_m: Any) -> None:
    if n_of_m is None:
        ops.num_pruned(sparsity, 1)


@dataclasses.dataclass(frozen=True)
class Magnitude:
    """Magnitude pruning per output row (needs no calibration statistics).

    Attributes:
      sparsity: fraction pruned per output row, in ``[0, 1)``.
      n_of_m: ``(n, m)`` for N:M sparsity instead (e.g. ``(2, 4)``).
    """

    sparsity: float = 0.5
    n_of_m: tuple[int, int] | None = None
    needs_gram = False

    def __post_init__(self):
        _check_sparsity(self.sparsity, self.n_of_m)

    def prune(self, kernel, stats, sparsity, in_axis):
        return ops.magnitude(kernel, sparsity, n_of_m=self.n_of_m, in_axis=in_axis)


@dataclasses.dataclass(frozen=True)
class Wanda:
    """Wanda (Sun et al., 2023): ``|W| * ||X||`` per output row; see :func:`wanda`.

    Attributes:
      sparsity: fraction pruned per output row, in ``[0, 1)``.
      n_of_m: ``(n, m)`` for N:M sparsity instead (e.g. ``(2, 4)``).
    """

    sparsity: float = 0.5
    n_of_m: tuple[int, int] | None = None
    needs_gram = False

    def __post_init__(self):
        _check_sparsity(self.sparsity, self.n_of_m)

    def prune(self, kernel, stats, sparsity, in_axis):
        return ops.wanda(kernel, stats, sparsity, n_of_m=self.n_of_m, in_axis=in_axis)


@dataclasses.dataclass(frozen=True)
class SparseGPT:
    """SparseGPT (Frantar & Alistarh, 2023): OBS with reconstruction; see :func:`sparsegpt`.

    Attributes:
      sparsity: fraction pruned, in ``[0, 1)``.
      n_of_m: ``(n, m)`` for N:M sparsity instead.
      blocksize: columns per lazy-update block.
      percdamp: dampening as a fraction of the Hessian's mean diagonal.
    """

    sparsity: float = 0.5
    n_of_m: tuple[int, int] | None = None
    blocksize: int = 128
    percdamp: float = 0.01
    needs_gram = True

    def __post_init__(self):
        _check_sparsity(self.sparsity, self.n_of_m)

    def prune(self, kernel, stats, sparsity, in_axis):
        return ops.sparsegpt(
            kernel,
            stats,
            sparsity,
            n_of_m=self.n_of_m,
            blocksize=self.blocksize,
            percdamp=self.percdamp,
            in_axis=in_axis,
        )


@dataclasses.dataclass(frozen=True)
class OWL:
    """Outlier-weighted layerwise sparsity (Yin et al., 2024) across blocks.

    Each block's outlier ratio is measured on the dense model (Wanda scores of all its linear
    layers pooled, threshold ``threshold`` times their mean), and block sparsities are spread
    within ``lam`` of the target by :func:`owl_sparsities`. Not for N:M.

    Attributes:
      threshold: OWL's ``M``.
      lam: OWL's ``lambda``.
    """

    threshold: float = 5.0
    lam: float = 0.08


class LayerReport(NamedTuple):
    """What the driver did to one linear layer.

    Attributes:
      block: index of the block.
      path: the kernel's path inside the block's parameters.
      shape: the kernel's shape.
      sparsity: fraction of exact zeros written by the method.
      error: relative reconstruction error ``||XW - XW'||^2 / ||XW||^2`` on the calibration
        inputs, or ``None`` when not computed (``errors=False`` for a Gram-free method).
    """

    block: int
    path: str
    shape: tuple[int, ...]
    sparsity: float
    error: float | None


def format_report(report: Sequence[LayerReport]) -> str:
    """A table of a driver report, one line per layer plus the overall sparsity.

    Args:
      report: the :class:`LayerReport` list of :func:`prune_blocks` or :func:`prune_nnx`.

    Returns:
      The table as a string.
    """
    lines = [f"{'block':>5}  {'layer':<28} {'shape':<14} {'sparsity':>8}  {'rel. error':>10}"]
    total = kept = 0
    for r in report:
        err = "-" if r.error is None else f"{r.error:.4g}"
        shape = "x".join(map(str, r.shape))
        lines.append(f"{r.block:>5}  {r.path:<28} {shape:<14} {r.sparsity:>8.2%}  {err:>10}")
        n = math.prod(r.shape)
        total += n
        kept += n * (1 - r.sparsity)
    if total:
        lines.append(f"overall: {1 - kept / total:.2%} of {total:,} weights are zero")
    return "\n".join(lines)


class _Site(NamedTuple):
    path: str
    in_axis: int  # axis of the kernel contracted with the activation
    operand: int  # which dot_general operand is the kernel
    x_axis: int  # contracted axis of the activation
    key: int  # index of the distinct activation feeding the layer


def _find_site(eqn, ts, kernels):
    if eqn.primitive.name != "dot_general":
        return None
    for k_op in (1, 0):
        path = ts[k_op]
        if path in kernels:
            (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
            if lb or rb or len(lc) != 1:
                return None
            k_c = rc[0] if k_op == 1 else lc[0]
            x_c = lc[0] if k_op == 1 else rc[0]
            return path, k_c, k_op, x_c
    return None


def _discover(block_fn, params, x, args, prunable) -> list[_Site]:
    """The block's linear layers, in the order the forward pass meets them."""
    kernels = {
        p
        for p, leaf in base.leaves_with_paths(params)
        if leaf is not None
        and getattr(leaf, "ndim", 0) == 2
        and jnp.issubdtype(leaf.dtype, jnp.floating)
        and (prunable is None or prunable(p, leaf))
    }
    sites: list[_Site] = []
    inputs: list[Any] = []

    def visit(eqn, xs, ts):
        found = _find_site(eqn, ts, kernels)
        if found is None:
            return
        path, k_c, k_op, x_c = found
        if any(s.path == path for s in sites):
            raise ValueError(f"kernel {path!r} is used by more than one matrix product")
        act = xs[1 - k_op]
        key = next((i for i, a in enumerate(inputs) if a is act), None)
        if key is None:
            inputs.append(act)
            key = len(inputs) - 1
        sites.append(_Site(path, k_c, k_op, x_c, key))

    jax.eval_shape(lambda p, xx, a: run_tagged(block_fn, p, (xx, *a), visit), params, x, args)
    if not sites:
        raise ValueError(
            "found no linear layer in the block: no 2-D floating kernel of the block's "
            "parameters meets an activation in a matrix product"
            + ("" if prunable is None else " (check `prunable`)")
        )
    return sites


def _stats_fn(block_fn, sites: Sequence[_Site], gram: bool):
    by_key = {}
    for s in sites:
        by_key.setdefault(s.key, s)

    def step(params, x, args, stats):
        captured = {}
        paths = {s.path: s for s in by_key.values()}

        def visit(eqn, xs, ts):
            found = _find_site(eqn, ts, paths)
            if found is not None:
                s = paths[found[0]]
                captured[s.key] = jnp.moveaxis(xs[1 - s.operand], s.x_axis, -1)

        run_tagged(block_fn, params, (x, *args), visit)
        return {k: ops.input_stats_update(stats[k], captured[k]) for k in by_key}

    def init(params):
        leaves = dict(base.leaves_with_paths(params))
        out = {}
        for k, s in by_key.items():
            features = leaves[s.path].shape[s.in_axis]
            out[k] = ops.input_stats_init(features, gram=gram)
        return out

    return init, jax.jit(step)


def _colocate(x: Any, like: jax.Array) -> Any:
    """Puts ``x`` (a pytree) on ``like``'s devices: replicated over its mesh, if any."""
    s = getattr(like, "sharding", None)
    if s is None:
        return x
    if isinstance(s, jax.sharding.NamedSharding):
        target = jax.sharding.NamedSharding(s.mesh, jax.sharding.PartitionSpec())
    elif len(s.device_set) == 1:
        target = jax.sharding.SingleDeviceSharding(next(iter(s.device_set)))
    else:
        return x
    return jax.tree.map(lambda a: jax.device_put(a, target), x)


def _batches(hidden: jax.Array, batch_size: int):
    for i in range(0, hidden.shape[0], batch_size):
        yield hidden[i : i + batch_size]


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is optional
        return None
    return tqdm(total=total, desc=desc, file=sys.stderr)


def _check_stats(block: int, site: _Site, st: ops.InputStats, need_gram: bool) -> None:
    where = f"block {block}, layer {site.path!r}"
    if not bool(jnp.all(jnp.isfinite(st.sq_norms))) or (
        st.gram is not None and not bool(jnp.all(jnp.isfinite(st.gram)))
    ):
        raise ValueError(
            f"{where}: the calibration activations contain NaN or inf (the model diverged "
            "before this layer, or the inputs are bad)"
        )
    features = st.sq_norms.shape[0]
    if need_gram and int(st.count) < features:
        raise ValueError(
            f"{where}: {int(st.count)} calibration tokens for {features} input features: "
            "the Gram matrix X^T X is singular; use more calibration tokens"
        )


def _replace(params: Any, new: dict[str, jax.Array]) -> Any:
    def one(path, x):
        if path not in new:
            return x
        value = new[path]
        sharding = getattr(x, "sharding", None)
        return value if sharding is None else jax.device_put(value, sharding)

    return base.map_with_path(one, params)


def prune_blocks(
    block_fn: Callable[..., jax.Array],
    blocks: Sequence[Any],
    hidden: jax.Array,
    method: Magnitude | Wanda | SparseGPT,
    *,
    block_args: Sequence[Any] = (),
    allocation: OWL | None = None,
    prunable: Callable[[str, jax.Array], bool] | None = None,
    batch_size: int = 8,
    errors: bool = False,
    progress: bool = True,
) -> tuple[list[Any], list[LayerReport]]:
    """Prunes every linear layer of a stack of blocks, one block at a time, from calibration.

    For block ``i``: the activations entering it (``hidden`` for block 0, then the outputs of
    the already pruned previous blocks) are run through the *dense* block once to gather each
    linear layer's :class:`InputStats`; every layer is pruned by ``method``; then the activations
    are run through the *pruned* block to feed block ``i + 1``. All layers of a block are
    pruned from the same pass, as in the SparseGPT and Wanda code.

    Args:
      block_fn: ``block_fn(params, x, *block_args) -> x`` for one block.
      blocks: the blocks' parameter pytrees, in order (same structure for best speed: the
        statistics are compiled once per structure).
      hidden: calibration activations entering the first block, ``(batch, ...)`` (e.g. the
        token embeddings of the calibration sequences). May be sharded over devices.
      method: :class:`Magnitude`, :class:`Wanda` or :class:`SparseGPT`.
      block_args: further arguments of every block call (e.g. RoPE tables).
      allocation: ``None`` (every block at ``method.sparsity``) or :class:`OWL`.
      prunable: ``prunable(path, kernel) -> bool`` restricts which kernels are pruned.
      batch_size: calibration sequences per forward pass.
      errors: also report every layer's relative reconstruction error (adds the Gram matrix
        to Wanda's and magnitude's statistics).
      progress: show a progress bar (if ``tqdm`` is installed).

    Returns:
      ``(pruned_blocks, report)``: the blocks' new parameters (sharded like the inputs) and a
      :class:`LayerReport` per pruned layer.

    Raises:
      ValueError: naming the block and layer, for non-finite activations, fewer calibration
        tokens than a layer's inputs (methods that need the Gram matrix), or an N:M pattern
        that does not divide a layer's inputs; and for bad arguments.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxprune
      >>> def block(p, x):
      ...     return x + jax.nn.relu(x @ p["up"]) @ p["down"]
      >>> k = jax.random.split(jax.random.key(0), 3)
      >>> blocks = [{"up": jax.random.normal(k[i], (8, 16)),
      ...            "down": jax.random.normal(k[i + 1], (16, 8))} for i in range(2)]
      >>> x = jax.random.normal(k[2], (4, 32, 8))
      >>> new, report = jaxprune.oneshot.prune_blocks(
      ...     block, blocks, x, jaxprune.oneshot.Wanda(0.5), progress=False)
      >>> [(r.block, r.path, r.sparsity) for r in report]
      [(0, 'up', 0.5), (0, 'down', 0.5), (1, 'up', 0.5), (1, 'down', 0.5)]
    """
    _check_method(method, allocation)
    batch_size = base.check_int(batch_size, "batch_size", minimum=1)
    blocks = list(blocks)
    if not blocks:
        raise ValueError("blocks is empty")
    hidden = jnp.asarray(hidden) if not isinstance(hidden, jax.Array) else hidden
    cal = _Calibration(block_fn, tuple(block_args), batch_size, prunable, hidden[:batch_size])
    need_gram = method.needs_gram or errors
    need_stats = not isinstance(method, Magnitude) or errors

    sparsities = [method.sparsity] * len(blocks)
    if allocation is not None:
        sparsities = _owl(blocks, hidden, cal, allocation, method, progress)

    bar = _progress(len(blocks), type(method).__name__, progress)
    out, report = [], []
    h = hidden
    for i, params in enumerate(blocks):
        if need_stats:
            sites, stats = cal.gather(params, h, need_gram)
        else:
            sites, stats = cal.sites(params), None
        params, rows = _prune_block(i, params, sites, stats, method, sparsities[i])
        out.append(params)
        report.extend(rows)
        if need_stats and i + 1 < len(blocks):  # magnitude needs no activations
            h = cal.propagate(params, h)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return out, report


def _check_method(method: Any, allocation: Any) -> None:
    if not isinstance(method, (Magnitude, Wanda, SparseGPT)):
        raise TypeError(
            f"method must be Magnitude, Wanda or SparseGPT, got {type(method).__name__}"
        )
    if allocation is not None and not isinstance(allocation, OWL):
        raise TypeError(f"allocation must be None or OWL, got {type(allocation).__name__}")
    if allocation is not None and method.n_of_m is not None:
        raise ValueError("OWL allocates unstructured sparsities; it does not apply to N:M")


class _Calibration:
    """Runs blocks on calibration batches; caches layer sites and compiled statistics.

    Sites and the statistics function are compiled once per block structure (tree structure,
    shapes and dtypes), so a stack of identical blocks compiles once.
    """

    def __init__(self, block_fn, block_args, batch_size, prunable, example):
        self.block_fn, self.block_args, self.batch_size = block_fn, block_args, batch_size
        self.prunable, self.example = prunable, example
        self.fwd = jax.jit(block_fn)
        self.site_cache: dict[Any, list[_Site]] = {}
        self.stats_cache: dict[Any, tuple] = {}

    @staticmethod
    def structure(params):
        leaves = tuple((x.shape, x.dtype) for x in jax.tree.leaves(params))
        return jax.tree.structure(params), leaves

    def sites(self, params) -> list[_Site]:
        key = self.structure(params)
        if key not in self.site_cache:
            self.site_cache[key] = _discover(
                self.block_fn, params, self.example, self.block_args, self.prunable
            )
        return self.site_cache[key]

    def gather(self, params, h, gram: bool):
        """The block's layer sites and their input statistics over all of ``h``."""
        sites = self.sites(params)
        key = self.structure(params), gram
        if key not in self.stats_cache:
            self.stats_cache[key] = _stats_fn(self.block_fn, sites, gram)
        init, step = self.stats_cache[key]
        stats = init(params)
        for hb in _batches(h, self.batch_size):
            stats = step(params, hb, self.block_args, stats)
        return sites, stats

    def propagate(self, params, h):
        """The block's outputs for all of ``h``, batch by batch."""
        return jnp.concatenate(
            [self.fwd(params, hb, *self.block_args) for hb in _batches(h, self.batch_size)]
        )


def _prune_block(i, params, sites, stats, method, sparsity):
    """Prunes every site of block ``i``; returns the new parameters and the report rows."""
    leaves = dict(base.leaves_with_paths(params))
    new, rows = {}, []
    for s in sites:
        kernel = leaves[s.path]
        st = None if stats is None else _colocate(stats[s.key], kernel)
        if st is not None:
            _check_stats(i, s, st, method.needs_gram)
        try:
            pruned = method.prune(kernel, st, sparsity, s.in_axis)
        except ValueError as e:
            raise ValueError(f"block {i}, layer {s.path!r}: {e}") from None
        new[s.path] = pruned.kernel
        err = None
        if st is not None and st.gram is not None:
            err = float(ops.reconstruction_error(kernel, pruned.kernel, st, in_axis=s.in_axis))
        sp = 1.0 - float(jnp.mean(pruned.mask.astype(jnp.float32)))
        rows.append(LayerReport(i, s.path, tuple(kernel.shape), sp, err))
    return _replace(params, new), rows


def _owl(blocks, hidden, cal, allocation, method, progress):
    """OWL's per-block sparsities from the dense model's Wanda scores."""
    ratios = []
    bar = _progress(len(blocks), "OWL outlier ratios", progress)
    h = hidden
    for i, params in enumerate(blocks):
        sites, stats = cal.gather(params, h, False)
        leaves = dict(base.leaves_with_paths(params))
        scores = [
            ops.wanda_scores(
                leaves[s.path], _colocate(stats[s.key], leaves[s.path]), in_axis=s.in_axis
            )
            for s in sites
        ]
        ratios.append(float(ops.outlier_ratio(scores, allocation.threshold)))
        if i + 1 < len(blocks):
            h = cal.propagate(params, h)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return [float(s) for s in ops.owl_sparsities(ratios, method.sparsity, allocation.lam)]
