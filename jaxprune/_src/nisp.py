"""NISP: final-response importance propagated back through a list of linear layers.

Yu et al., "NISP: Pruning Networks using Neuron Importance Score Propagation" (CVPR 2018).
The layer classes (:class:`DenseLayer`, :class:`ConvLayer`, :class:`PoolLayer`,
:class:`FlattenLayer`, :class:`BatchNormLayer`) describe the network between the pruned layers
and the final response layer; :func:`nisp_scores` returns group scores like every criterion of
:mod:`jaxprune._src.criteria`. The choices (channel-level conv form, pooling, batch norm) are
listed in that module's docstring.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxprune._src import base

GroupScores = dict[str, jax.Array]

_HIGHEST = lax.Precision.HIGHEST


def _leaf(params: base.Params, path: str, what: str) -> jax.Array:
    leaves = {p: x for p, x in base.leaves_with_paths(params) if x is not None}
    if path not in leaves:
        raise ValueError(f"{what}: no parameter at path {path!r}; paths are {list(leaves)[:8]}.")
    return jnp.asarray(leaves[path]).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class DenseLayer:
    """A dense layer ``y = x @ W`` (Flax ``(in, out)`` kernel) for :func:`nisp_scores`.

    Attributes:
      kernel: Path of the kernel.
      name: If set, :func:`nisp_scores` reports the scores of this layer's outputs under it.
    """

    kernel: str
    name: str | None = None

    def forward(self, params: base.Params, x: jax.Array) -> jax.Array:
        w = _leaf(params, self.kernel, "DenseLayer")
        if w.ndim != 2 or w.shape[0] != x.shape[-1]:
            raise ValueError(
                f"DenseLayer {self.kernel!r}: kernel {w.shape} does not take inputs with "
                f"{x.shape[-1]} features."
            )
        return jnp.matmul(x, jnp.abs(w), precision=_HIGHEST)

    def channel_backward(self, params: base.Params, s: jax.Array, in_shape: tuple) -> jax.Array:
        return jnp.matmul(jnp.abs(_leaf(params, self.kernel, "DenseLayer")), s, precision=_HIGHEST)


@dataclasses.dataclass(frozen=True)
class ConvLayer:
    """A 2-D convolution (HWIO kernel, NHWC maps) for :func:`nisp_scores`.

    Attributes:
      kernel: Path of the kernel ``(kh, kw, C_in, C_out)``.
      strides: Int or pair.
      padding: ``'VALID'``, ``'SAME'`` or ``((lo, hi), (lo, hi))``.
      name: If set, report this layer's output channel scores under it.
    """

    kernel: str
    strides: Any = 1
    padding: Any = "VALID"
    name: str | None = None

    def forward(self, params: base.Params, x: jax.Array) -> jax.Array:
        k = _leaf(params, self.kernel, "ConvLayer")
        if k.ndim != 4 or x.ndim != 3 or k.shape[2] != x.shape[-1]:
            raise ValueError(
                f"ConvLayer {self.kernel!r}: kernel {k.shape} (HWIO) does not take an input "
                f"map of shape {x.shape} (H, W, C)."
            )
        strides = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
        padding = self.padding if isinstance(self.padding, str) else tuple(map(tuple, self.padding))
        y = lax.conv_general_dilated(
            x[None],
            jnp.abs(k),
            strides,
            padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=_HIGHEST,
        )
        return y[0]

    def channel_backward(self, params: base.Params, s: jax.Array, in_shape: tuple) -> jax.Array:
        k = jnp.abs(_leaf(params, self.kernel, "ConvLayer"))
        return jnp.matmul(jnp.sum(k, axis=(0, 1)), s, precision=_HIGHEST)


@dataclasses.dataclass(frozen=True)
class PoolLayer:
    """Max or average pooling (NHWC, no padding) for :func:`nisp_scores`.

    Max pooling passes each window's score to every input of the window; average pooling
    passes ``1 / (window size)`` of it (see the module docstring).

    Attributes:
      window: Pair (or int) window size.
      strides: Pair (or int); defaults to the window.
      kind: ``"max"`` or ``"avg"``.
      name: If set, report this layer's output channel scores under it.
    """

    window: Any = (2, 2)
    strides: Any = None
    kind: Literal["max", "avg"] = "max"
    name: str | None = None

    def _weight(self) -> float:
        if self.kind not in ("max", "avg"):
            raise ValueError(f"PoolLayer `kind` must be 'max' or 'avg', got {self.kind!r}.")
        wh, ww = (self.window,) * 2 if isinstance(self.window, int) else tuple(self.window)
        return 1.0 if self.kind == "max" else 1.0 / (wh * ww)

    def forward(self, params: base.Params, x: jax.Array) -> jax.Array:
        del params
        win = (self.window,) * 2 if isinstance(self.window, int) else tuple(self.window)
        st = self.strides if self.strides is not None else win
        st = (st,) * 2 if isinstance(st, int) else tuple(st)
        y = lax.reduce_window(x, 0.0, lax.add, (*win, 1), (*st, 1), "VALID")
        return y * jnp.float32(self._weight())

    def channel_backward(self, params: base.Params, s: jax.Array, in_shape: tuple) -> jax.Array:
        win = (self.window,) * 2 if isinstance(self.window, int) else tuple(self.window)
        return s * jnp.float32(self._weight() * win[0] * win[1])


@dataclasses.dataclass(frozen=True)
class FlattenLayer:
    """A Flax flatten of an ``(H, W, C)`` map (index ``(h * W + w) * C + c``) for NISP.

    Attributes:
      name: If set, report the scores of the flattened vector's entries under it.
    """

    name: str | None = None

    def forward(self, params: base.Params, x: jax.Array) -> jax.Array:
        del params
        return x.reshape(-1)

    def channel_backward(self, params: base.Params, s: jax.Array, in_shape: tuple) -> jax.Array:
        return jnp.sum(s.reshape(-1, in_shape[-1]), axis=0)


@dataclasses.dataclass(frozen=True)
class BatchNormLayer:
    """Batch norm as the per-channel linear map ``x * |gamma| / sqrt(var + eps)`` for NISP.

    The shift (``beta``, the mean) does not enter ``|W|``.

    Attributes:
      scale: Path of ``gamma`` (``None``: no scale, as ``use_scale=False``).
      var: Path of the running variance (e.g. ``'batch_stats/bn/var'`` when ``params`` is
        the whole Linen variables dict), or ``None`` to ignore it.
      eps: The layer's epsilon (Flax default ``1e-5``).
      name: If set, report this layer's output channel scores under it.
    """

    scale: str | None = None
    var: str | None = None
    eps: float = 1e-5
    name: str | None = None

    def _factor(self, params: base.Params, channels: int) -> jax.Array:
        f = jnp.ones((channels,), jnp.float32)
        if self.scale is not None:
            f = f * jnp.abs(_leaf(params, self.scale, "BatchNormLayer"))
        if self.var is not None:
            f = f / jnp.sqrt(_leaf(params, self.var, "BatchNormLayer") + jnp.float32(self.eps))
        if f.shape != (channels,):
            raise ValueError(
                f"BatchNormLayer {self.scale!r}: {f.shape[0]} entries for {channels} channels."
            )
        return f

    def forward(self, params: base.Params, x: jax.Array) -> jax.Array:
        return x * self._factor(params, x.shape[-1]).reshape((1,) * (x.ndim - 1) + (-1,))

    def channel_backward(self, params: base.Params, s: jax.Array, in_shape: tuple) -> jax.Array:
        return s * self._factor(params, s.shape[0])


NispLayer = DenseLayer | ConvLayer | PoolLayer | FlattenLayer | BatchNormLayer


def nisp_scores(
    params: base.Params,
    frl_scores: jax.Array,
    layers: Sequence[Any],
    input_shape: Sequence[int],
    *,
    exact: bool = False,
) -> GroupScores:
    """NISP: propagates final-response-layer importance back to every named layer.

    For each linear map ``y = M x`` (dense, conv, pooling, batch norm) the importance of the
    inputs is ``s_x = |M|^T s_y``, so ``s_k = |W_{k+1}|^T ... |W_n|^T s_n`` (in Flax's
    ``(in, out)`` layout ``s_k = |W| s_{k+1}``); element-wise activations (ReLU, dropout) pass
    scores through. A layer's channel score is the sum of its neurons' scores over positions.
    See the module docstring for the pooling and batch-norm choices.

    Args:
      params: The tree the layers' paths point into (for batch-norm statistics pass e.g.
        ``{"params": ..., "batch_stats": ...}`` and paths below it).
      frl_scores: Scores of the last layer's outputs (e.g. :func:`inf_fs` of the final
        response layer): its channel vector, or for ``exact=True`` optionally its full
        per-example output shape.
      layers: The linear layers from the network input up to the final response layer, in
        forward order: :class:`DenseLayer`, :class:`ConvLayer`, :class:`PoolLayer`,
        :class:`FlattenLayer`, :class:`BatchNormLayer`. Layers with a ``name`` report their
        output scores.
      input_shape: Per-example input shape, e.g. ``(28, 28, 1)`` or ``(784,)``.
      exact: Propagate full neuron maps through convolutions with the transposed convolution
        instead of the channel-level form.

    Returns:
      A dict from layer name to float32 channel scores.

    Raises:
      ValueError: For duplicate names, missing paths, shapes that do not chain, or
        ``frl_scores`` that does not fit the last layer.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import importance
      >>> p = {"fc1": jnp.array([[1.0, -2.0], [0.5, 1.0], [0.0, 3.0]]),  # 3 -> 2
      ...      "fc2": jnp.array([[1.0], [-1.0]])}                         # 2 -> 1
      >>> layers = [importance.DenseLayer("fc1", name="h"), importance.DenseLayer("fc2")]
      >>> importance.nisp_scores(p, jnp.array([2.0]), layers, (3,))["h"]
      Array([2., 2.], dtype=float32)

    References:
      Yu et al., "NISP: Pruning Networks using Neuron Importance Score Propagation",
      CVPR 2018. https://arxiv.org/abs/1711.05908
    """
    layers = list(layers)
    if not layers:
        raise ValueError("`layers` is empty.")
    names = [layer.name for layer in layers if getattr(layer, "name", None) is not None]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"layer names must be unique, got duplicates {dupes}.")
    for layer in layers:
        if not isinstance(layer, (DenseLayer, ConvLayer, PoolLayer, FlattenLayer, BatchNormLayer)):
            raise TypeError(f"`layers` entries must be NISP layer specs, got {layer!r}.")
    # Shapes along the chain (per example).
    shapes = [tuple(int(d) for d in input_shape)]
    for layer in layers:
        spec = jax.ShapeDtypeStruct(shapes[-1], jnp.float32)
        out = jax.eval_shape(lambda v, layer=layer: layer.forward(params, v), spec)
        shapes.append(tuple(out.shape))
    s = jnp.asarray(frl_scores).astype(jnp.float32)
    out_shape = shapes[-1]
    if s.shape not in ((out_shape[-1],), out_shape):
        raise ValueError(
            f"`frl_scores` must have shape ({out_shape[-1]},) (or {out_shape} with exact=True) "
            f"for the last layer's output, got {s.shape}."
        )
    if s.shape != out_shape and exact and len(out_shape) > 1:
        positions = int(np.prod(out_shape[:-1]))
        s = jnp.broadcast_to(s / positions, out_shape)
    scores: GroupScores = {}
    for i in range(len(layers) - 1, -1, -1):
        layer, in_shape, o_shape = layers[i], shapes[i], shapes[i + 1]
        if layer.name is not None:
            scores[layer.name] = s.reshape(-1, o_shape[-1]).sum(0) if s.ndim > 1 else s
        if exact:
            _, vjp = jax.vjp(
                lambda v, layer=layer: layer.forward(params, v), jnp.zeros(in_shape, jnp.float32)
            )
            s = vjp(s.reshape(o_shape))[0]
        else:
            if s.ndim > 1:  # a map from a full-shape frl_scores: channel sums
                s = s.reshape(-1, s.shape[-1]).sum(0)
            s = layer.channel_backward(params, s, in_shape)
    return {k: scores[k] for k in names}
