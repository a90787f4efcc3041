"""Streaming statistics for data-driven pruning criteria: pure ``init / update / finalize``.

Data-driven criteria (APoZ, mean activation, Taylor, ThiNet, Inf-FS/NISP) read statistics of
activations and activation gradients over many batches. Every accumulator here is a triple of
pure functions over a ``NamedTuple`` state of fixed shapes, so each ``update`` compiles once
under :func:`jax.jit` and can run over any number of batches:

* :func:`channel_stats_init` / :func:`channel_stats_update` / :func:`channel_stats_finalize`:
  per-channel int32 zero counts and float32 sums of activations and of ``a * dL/da`` (APoZ,
  mean activation, Taylor);
* :func:`responses_init` / :func:`responses_update` / :func:`responses_finalize`: a fixed-size
  buffer of response rows (the final-response-layer matrix that Inf-FS ranks);
* :func:`thinet_init` / :func:`thinet_update` / :func:`thinet_finalize`: ThiNet's sampled
  next-layer contributions ``x_hat`` and targets ``y_hat``.

Activations are keyed by tap name (see :func:`jaxprune.importance.tap`); channels are the
**last** axis (Flax NHWC maps and ``(N, F)`` features) and axis 0 is the batch.

Data parallelism: under :func:`jax.shard_map` (or ``pmap``) every device accumulates its own
shard of the batch; the ``finalize`` functions take ``axis_name`` and sum (or gather) across
that mesh axis *before* dividing, so every device holds the same statistics and therefore
selects the same mask. Under plain :func:`jax.jit` with a batch sharded over devices the sums
over the batch axis are already global. :func:`reduce_across` sums any sum-state explicitly.

Counts are int32: a tap may see at most ``2**31 - 1`` (example, position) pairs, e.g. 60,000
MNIST images of a 24 x 24 map use 34.6M.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxprune._src import base

# ---------------------------------------------------------------------------------------
# Helpers.


def reduce_across(state: Any, axis_name: Any) -> Any:
    """Sums every leaf of an accumulator state across a mesh axis (``lax.psum``).

    Use it inside :func:`jax.shard_map` (or ``pmap``) on the sum states of this module
    (:class:`ChannelStatsState`) before finalizing; the ``finalize`` functions do it for you
    when given ``axis_name``.

    Args:
      state: A pytree of int or float arrays holding sums.
      axis_name: The mesh axis (or tuple of axes) the batch is split over.

    Returns:
      The state with every leaf summed over ``axis_name``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune import importance
      >>> state = {"count": jnp.ones((2,), jnp.int32)}
      >>> jax.vmap(lambda s: importance.reduce_across(s, "d"), axis_name="d")(state)["count"]
      Array([2, 2], dtype=int32)
    """
    return jax.tree.map(lambda x: lax.psum(x, axis_name), state)


def _channels_of(name: str, x: Any, what: str) -> int:
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        if x < 1:
            raise ValueError(f"{what}[{name!r}] must be a positive channel count, got {x}.")
        return int(x)
    shape = getattr(x, "shape", None)
    if shape is None:
        raise TypeError(
            f"{what}[{name!r}] must be an array, a jax.ShapeDtypeStruct or a channel count, "
            f"got {type(x).__name__}."
        )
    if len(shape) < 2:
        raise ValueError(
            f"{what}[{name!r}] must have a batch axis and a channel axis (rank >= 2), got "
            f"shape {tuple(shape)}."
        )
    return int(shape[-1])


def _check_mapping(tree: Any, what: str) -> None:
    if not isinstance(tree, Mapping):
        raise TypeError(f"`{what}` must be a dict from tap name to array, got {type(tree)}.")


def _check_names(expected: Any, got: Mapping, what: str) -> None:
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing or extra:
        raise ValueError(
            f"`{what}` must have the tap names of the accumulator: missing {missing}, "
            f"unexpected {extra}."
        )


def _check_float_array(name: str, x: Any, what: str | None) -> jax.Array:
    """Returns ``x`` as an array; raises unless floating point (``what[name]`` or ``name``)."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        label = f"{what}[{name!r}]" if what else f"`{name}`"
        raise TypeError(
            f"{label} must be a floating-point array, got "
            f"{dtype if dtype is not None else type(x).__name__}."
        )
    return jnp.asarray(x)


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    """``num / den`` in float32, with ``0`` where ``den == 0``."""
    den = den.astype(jnp.float32)
    return jnp.where(den > 0, num.astype(jnp.float32) / jnp.maximum(den, 1.0), 0.0)


# ---------------------------------------------------------------------------------------
# Per-channel activation statistics (APoZ, mean activation, Taylor).


class ChannelStatsState(NamedTuple):
    """State of :func:`channel_stats_update`; every field is a dict keyed by tap name."""

    zeros: dict[str, jax.Array]  # int32[C]: entries equal to 0 (<= 0 with pre_relu=True).
    total: dict[str, jax.Array]  # float32[C]: sum of the activations (of relu(z) if pre_relu).
    taylor_abs: dict[str, jax.Array]  # float32[C]: sum over examples of |mean_pos(a * g)|.
    taylor_sum: dict[str, jax.Array]  # float32[C]: sum over examples of mean_pos(a * g).
    positions: dict[str, jax.Array]  # int32[]: (example, position) pairs seen.
    examples: dict[str, jax.Array]  # int32[]: examples seen.
    grad_examples: dict[str, jax.Array]  # int32[]: examples seen with gradients.


class ChannelStats(NamedTuple):
    """Finalized per-channel statistics (:func:`channel_stats_finalize`), keyed by tap name.

    Attributes:
      apoz: float32[C], the Average Percentage of Zeros, ``#{a == 0} / (N * M)``.
      mean: float32[C], the mean activation over examples and positions.
      taylor: float32[C], ``mean_n |mean_m a * g|`` (Molchanov et al.'s per-example form,
        not yet normalized per layer).
      taylor_mean: float32[C], ``mean_n mean_m a * g`` (signed; its absolute value is the
        "average before the absolute value" variant).
      examples: int32 scalars, the examples each tap saw.
    """

    apoz: dict[str, jax.Array]
    mean: dict[str, jax.Array]
    taylor: dict[str, jax.Array]
    taylor_mean: dict[str, jax.Array]
    examples: dict[str, jax.Array]


def channel_stats_init(activations: Mapping[str, Any]) -> ChannelStatsState:
    """Starts a per-channel statistics accumulator (zero sums and counts).

    Args:
      activations: A dict from tap name to an example activation (array or
        ``jax.ShapeDtypeStruct`` shaped ``(N, ..., C)``; only the channel count is read) or to
        the channel count ``C`` itself.

    Returns:
      A :class:`ChannelStatsState` with int32 counts and float32 sums.

    Raises:
      TypeError: If ``activations`` is not a dict or an entry is neither an array nor an int.
      ValueError: If an entry has rank < 2 or a non-positive channel count (the message
        names the tap).

    Example:
      >>> from jaxprune import importance
      >>> state = importance.channel_stats_init({"conv1": 20, "fc1": 500})
      >>> state.zeros["conv1"].shape, state.total["fc1"].dtype
      ((20,), dtype('float32'))
    """
    _check_mapping(activations, "activations")
    channels = {k: _channels_of(k, v, "activations") for k, v in activations.items()}
    zeros_i = {k: jnp.zeros((c,), jnp.int32) for k, c in channels.items()}
    zeros_f = {k: jnp.zeros((c,), jnp.float32) for k, c in channels.items()}
    scalar = {k: jnp.zeros((), jnp.int32) for k in channels}
    return ChannelStatsState(
        zeros=zeros_i,
        total=zeros_f,
        taylor_abs=dict(zeros_f),
        taylor_sum=dict(zeros_f),
        positions=scalar,
        examples=dict(scalar),
        grad_examples=dict(scalar),
    )


def channel_stats_update(
    state: ChannelStatsState,
    activations: Mapping[str, jax.Array],
    gradients: Mapping[str, jax.Array] | None = None,
    *,
    pre_relu: bool = False,
) -> ChannelStatsState:
    """Adds one batch of activations (and optionally their loss gradients). Jittable.

    For a tap ``a`` of shape ``(N, ..., C)`` with ``M`` positions per example and channel:

    * ``zeros += #{a == 0}`` per channel (APoZ counts exact zeros of a post-ReLU output; with
      ``pre_relu=True`` the tap is the input of a ReLU and ``a <= 0`` is counted instead,
      which is the same event);
    * ``total += sum(a)`` (``sum(relu(a))`` with ``pre_relu=True``);
    * with ``gradients`` ``g = dL/da``: ``t_n = mean_m a * g`` per example and channel, then
      ``taylor_abs += sum_n |t_n|`` and ``taylor_sum += sum_n t_n``. ``a * g`` is the same
      before and after a ReLU (both are 0 where ``z <= 0``), so ``pre_relu`` does not change it.

    For Molchanov et al.'s per-example criterion ``g`` must be the gradient of each example's
    own loss: take the gradient of the **sum** of per-example losses over the batch. A mean
    loss scales every ``g`` by ``1 / N``; that factor cancels in the per-layer normalization
    when all batches have the same size.

    Args:
      state: The accumulator.
      activations: A dict from tap name to an array ``(N, ..., C)``, the names of ``state``.
      gradients: ``None``, or a dict with the same names and shapes holding ``dL/da``.
      pre_relu: Whether the taps are pre-activation values that a ReLU follows.

    Returns:
      The updated state.

    Raises:
      TypeError: If a tap is not a floating-point array.
      ValueError: If the names differ from the state's, or a shape does not match (the
        message names the tap).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import importance
      >>> a = {"h": jnp.array([[0.0, 1.0], [0.0, 3.0], [2.0, 0.0]])}
      >>> state = importance.channel_stats_update(importance.channel_stats_init(a), a)
      >>> importance.channel_stats_finalize(state).apoz["h"]
      Array([0.6666667 , 0.33333334], dtype=float32)
    """
    _check_mapping(activations, "activations")
    _check_names(state.zeros, activations, "activations")
    if gradients is not None:
        _check_mapping(gradients, "gradients")
        _check_names(state.zeros, gradients, "gradients")
    new = {f: dict(getattr(state, f)) for f in ChannelStatsState._fields}
    for name in state.zeros:
        a = _check_float_array(name, activations[name], "activations")
        channels = state.zeros[name].shape[0]
        if a.ndim < 2 or a.shape[-1] != channels:
            raise ValueError(
                f"activations[{name!r}] must have shape (N, ..., {channels}), got {a.shape}."
            )
        a = a.astype(jnp.float32)
        axes = tuple(range(a.ndim - 1))
        pos_axes = tuple(range(1, a.ndim - 1))
        n = a.shape[0]
        m = int(np.prod(a.shape[1:-1], dtype=np.int64))
        hit = a <= 0 if pre_relu else a == 0
        new["zeros"][name] = state.zeros[name] + jnp.sum(hit, axis=axes, dtype=jnp.int32)
        value = jnp.maximum(a, 0.0) if pre_relu else a
        new["total"][name] = state.total[name] + jnp.sum(value, axis=axes)
        new["positions"][name] = state.positions[name] + jnp.int32(n * m)
        new["examples"][name] = state.examples[name] + jnp.int32(n)
        if gradients is not None:
            g = _check_float_array(name, gradients[name], "gradients")
            if g.shape != a.shape:
                raise ValueError(
                    f"gradients[{name!r}] has shape {g.shape}, but the activation has shape "
                    f"{a.shape}."
                )
            t = jnp.mean(a * g.astype(jnp.float32), axis=pos_axes) if pos_axes else a * g
            t = t.astype(jnp.float32)
            new["taylor_abs"][name] = state.taylor_abs[name] + jnp.sum(jnp.abs(t), axis=0)
            new["taylor_sum"][name] = state.taylor_sum[name] + jnp.sum(t, axis=0)
            new["grad_examples"][name] = state.grad_examples[name] + jnp.int32(n)
    return ChannelStatsState(**new)


def channel_stats_finalize(state: ChannelStatsState, *, axis_name: Any = None) -> ChannelStats:
    """Turns the sums into per-channel means; optionally sums across devices first.

    Args:
      state: The accumulator after any number of updates.
      axis_name: ``None``, or the mesh axis the batch was split over (inside
        :func:`jax.shard_map` / ``pmap``): sums and counts are ``psum``-ed over it first, so
        every device returns the same statistics.

    Returns:
      A :class:`ChannelStats`. Taps that saw no example (or no gradient) give zeros.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import importance
      >>> a = {"h": jnp.array([[1.0, 2.0], [3.0, 0.0]])}
      >>> g = {"h": jnp.array([[1.0, 1.0], [-1.0, 1.0]])}
      >>> s = importance.channel_stats_init(a)
      >>> s = importance.channel_stats_update(s, a, g)
      >>> stats = importance.channel_stats_finalize(s)
      >>> stats.mean["h"]
      Array([2., 1.], dtype=float32)
      >>> stats.taylor["h"], stats.taylor_mean["h"]
      (Array([2., 1.], dtype=float32), Array([-1.,  1.], dtype=float32))
    """
    if axis_name is not None:
        state = reduce_across(state, axis_name)
    return ChannelStats(
        apoz={k: _safe_div(v, state.positions[k]) for k, v in state.zeros.items()},
        mean={k: _safe_div(v, state.positions[k]) for k, v in state.total.items()},
        taylor={k: _safe_div(v, state.grad_examples[k]) for k, v in state.taylor_abs.items()},
        taylor_mean={k: _safe_div(v, state.grad_examples[k]) for k, v in state.taylor_sum.items()},
        examples=dict(state.examples),
    )


# ---------------------------------------------------------------------------------------
# A buffer of response rows (the matrix Inf-FS ranks).


class ResponsesState(NamedTuple):
    """State of :func:`responses_update`."""

    rows: jax.Array  # float32[capacity, F]: the first `capacity` rows seen.
    count: jax.Array  # int32[]: rows seen (written rows are min(count, capacity)).


def responses_init(num_features: int, capacity: int) -> ResponsesState:
    """Starts a buffer that keeps the first ``capacity`` response rows it is given.

    Args:
      num_features: The feature count ``F`` (e.g. 500 units of LeNet-5's ``fc1``).
      capacity: Rows kept; later rows are dropped.

    Returns:
      A :class:`ResponsesState` of zeros.

    Raises:
      TypeError, ValueError: If an argument is not a positive int.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import importance
      >>> s = importance.responses_init(2, capacity=3)
      >>> s = importance.responses_update(s, jnp.ones((2, 2)))
      >>> s = importance.responses_update(s, 2 * jnp.ones((2, 2)))
      >>> rows, valid = importance.responses_finalize(s)
      >>> rows[:, 0], valid
      (Array([1., 1., 2.], dtype=float32), Array([ True,  True,  True], dtype=bool))
    """
    f = base.check_int(num_features, "num_features", 1)
    cap = base.check_int(capacity, "capacity", 1)
    return ResponsesState(rows=jnp.zeros((cap, f), jnp.float32), count=jnp.zeros((), jnp.int32))


def responses_update(state: ResponsesState, responses: jax.Array) -> ResponsesState:
    """Appends a batch of response rows ``(N, F)`` while there is room. Jittable.

    Args:
      state: The buffer.
      responses: A float array ``(N, F)``.

    Returns:
      The updated buffer.

    Raises:
      TypeError: If ``responses`` is not floating point.
      ValueError: If its shape is not ``(N, F)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import importance
      >>> s = importance.responses_update(importance.responses_init(3, 8), jnp.ones((5, 3)))
      >>> int(s.count)
      5
    """
    x = _check_float_array("responses", responses, None)
    cap, f = state.rows.shape
    if x.ndim != 2 or x.shape[1] != f:
        raise ValueError(f"`responses` must have shape (N, {f}), got {x.shape}.")
    idx = state.count + jnp.arange(x.shape[0], dtype=jnp.int32)
    idx = jnp.where(idx < cap, idx, cap)  # out of range: dropped
    rows = state.rows.at[idx].set(x.astype(jnp.float32), mode="drop")
    return ResponsesState(rows=rows, count=state.count + jnp.int32(x.shape[0]))


def responses_finalize(
    state: ResponsesState, *, axis_name: Any = None
) -> tuple[jax.Array, jax.Array]:
    """Returns the buffered rows and which of them hold data.

    Args:
      state: The buffer.
      axis_name: ``None``, or a mesh axis to gather every device's buffer over (inside
        :func:`jax.shard_map`); the result then has ``devices * capacity`` rows on every device.

    Returns:
      ``(rows, valid)``: float32 ``(R, F)`` and bool ``(R,)``. Pass both to
      :func:`jaxprune.importance.inf_fs` (``valid=``), which ignores the unused rows.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import importance
      >>> s = importance.responses_update(importance.responses_init(2, 4), jnp.ones((3, 2)))
      >>> importance.responses_finalize(s)[1]
      Array([ True,  True,  True, False], dtype=bool)
    """
    cap = state.rows.shape[0]
    valid = jnp.arange(cap, dtype=jnp.int32) < state.count
    rows = state.rows
    if axis_name is not None:
        rows = lax.all_gather(rows, axis_name, tiled=True)
        valid = lax.all_gather(valid, axis_name, tiled=True)
    return rows, valid


# ---------------------------------------------------------------------------------------
# ThiNet samples of next-layer contributions.


class ThiNetState(NamedTuple):
    """State of :func:`thinet_update`."""

    contributions: jax.Array  # float32[images, locations, C]: x_hat (unused rows stay 0).
    targets: jax.Array  # float32[images, locations]: y_hat = sum_c x_hat_c.
    images: jax.Array  # int32[]: images sampled so far.
    per_class: jax.Array  # int32[num_classes]: images sampled per class.


class ThiNetSamples(NamedTuple):
    """Finalized ThiNet samples (:func:`thinet_finalize`).

    Attributes:
      contributions: float32 ``(S, C)``: ``x_hat[s, c]``, input channel ``c``'s contribution
        to the sampled output; unused rows are 0 (they change neither the greedy selection
        nor the least squares).
      targets: float32 ``(S,)``: the sampled output without bias, ``sum_c x_hat[s, c]``.
      valid: bool ``(S,)``: which rows hold samples.
    """

    contributions: jax.Array
    targets: jax.Array
    valid: jax.Array


def thinet_init(
    num_channels: int,
    *,
    images_per_class: int = 10,
    num_classes: int = 10,
    locations: int = 10,
) -> ThiNetState:
    """Starts a ThiNet sample buffer for a consumer layer with ``num_channels`` inputs.

    ThiNet (Luo et al. 2017; official code) draws 10 training images per class and 10 random
    (output channel, location) pairs per image; the buffer holds
    ``num_classes * images_per_class * locations`` samples.

    Args:
      num_channels: Input channels ``C`` of the consumer (the filters being selected).
      images_per_class: Images sampled per class (a quota per device under data parallelism).
      num_classes: Number of classes; with ``labels=None`` in :func:`thinet_update` the first
        ``images_per_class * num_classes`` images are taken regardless of class.
      locations: Samples per image.

    Returns:
      A :class:`ThiNetState`.

    Raises:
      TypeError, ValueError: If an argument is not a positive int.

    Example:
      >>> from jaxprune import importance
      >>> importance.thinet_init(20).contributions.shape  # (images, locations, channels)
      (100, 10, 20)
    """
    c = base.check_int(num_channels, "num_channels", 1)
    per = base.check_int(images_per_class, "images_per_class", 1)
    k = base.check_int(num_classes, "num_classes", 1)
    loc = base.check_int(locations, "locations", 1)
    return ThiNetState(
        contributions=jnp.zeros((per * k, loc, c), jnp.float32),
        targets=jnp.zeros((per * k, loc), jnp.float32),
        images=jnp.zeros((), jnp.int32),
        per_class=jnp.zeros((k,), jnp.int32),
    )


def _pad_amounts(size: int, k: int, s: int, padding: Any, name: str) -> tuple[int, int, int]:
    """Returns ``(low, high, out_size)`` for one spatial axis (``lax.conv`` conventions)."""
    if padding == "VALID":
        lo = hi = 0
    elif padding == "SAME":
        out = -(-size // s)
        total = max((out - 1) * s + k - size, 0)
        lo, hi = total // 2, total - total // 2
    elif isinstance(padding, (tuple, list)) and len(padding) == 2:
        lo, hi = (int(p) for p in padding)
    else:
        raise ValueError(
            f"`{name}` must be 'VALID', 'SAME' or ((lo, hi), (lo, hi)), got {padding!r}."
        )
    out = (size + lo + hi - k) // s + 1
    if out < 1:
        raise ValueError(f"`{name}`: a {k}-wide kernel does not fit an input of size {size}.")
    return lo, hi, out


def _strides(strides: Any) -> tuple[int, int]:
    s = (strides, strides) if isinstance(strides, int) else tuple(int(v) for v in strides)
    if len(s) != 2 or min(s) < 1:
        raise ValueError(f"`strides` must be an int or a pair of positive ints, got {strides!r}.")
    return s  # type: ignore[return-value]


def _thinet_contributions(
    key: jax.Array, x: jax.Array, kernel: jax.Array, locations: int, strides: Any, padding: Any
) -> jax.Array:
    """``(N, locations, C)`` contributions ``x_hat`` of random samples of one batch."""
    n, c = x.shape[0], x.shape[-1]
    d_out = kernel.shape[-1]
    k_d, k_y, k_x = jax.random.split(key, 3)
    d = jax.random.randint(k_d, (n, locations), 0, d_out)
    if kernel.ndim == 4:  # conv -> conv: one (d, y, x) sample reads one input patch
        kh, kw = kernel.shape[0], kernel.shape[1]
        sh, sw = _strides(strides)
        if isinstance(padding, str):
            pad_y = pad_x = padding
        elif isinstance(padding, (tuple, list)) and len(padding) == 2:
            pad_y, pad_x = padding
        else:
            raise ValueError(
                f"`padding` must be 'VALID', 'SAME' or ((lo, hi), (lo, hi)), got {padding!r}."
            )
        py = _pad_amounts(x.shape[1], kh, sh, pad_y, "padding")
        px = _pad_amounts(x.shape[2], kw, sw, pad_x, "padding")
        xp = jnp.pad(x, ((0, 0), (py[0], py[1]), (px[0], px[1]), (0, 0)))
        ys = jax.random.randint(k_y, (n, locations), 0, py[2]) * sh
        xs = jax.random.randint(k_x, (n, locations), 0, px[2]) * sw

        def one(img, dd, yy, xx):
            patch = lax.dynamic_slice(img, (yy, xx, 0), (kh, kw, c))
            w = jnp.take(kernel, dd, axis=3)  # (kh, kw, C)
            return jnp.sum(patch * w, axis=(0, 1))

        per_image = jax.vmap(one, in_axes=(None, 0, 0, 0))
        return jax.vmap(per_image)(xp, d, ys, xs)
    # Dense consumer: x is (N, C), or an (N, H, W, C) map flattened in Flax order
    # ((h * W + w) * C + c), so kernel rows are (positions, C).
    flat = x.reshape(n, -1, c)  # (N, P, C)
    k3 = kernel.reshape(flat.shape[1], c, d_out)  # (P, C, D)
    w = jnp.transpose(jnp.take(k3, d, axis=2), (2, 3, 0, 1))  # (N, locations, P, C)
    return jnp.einsum("npc,nlpc->nlc", flat, w, precision=lax.Precision.HIGHEST)


def thinet_update(
    state: ThiNetState,
    key: jax.Array,
    inputs: jax.Array,
    kernel: jax.Array,
    labels: jax.Array | None = None,
    *,
    strides: Any = 1,
    padding: Any = "VALID",
) -> ThiNetState:
    """Samples next-layer contributions from one batch while the per-class quotas last.

    For the consumer layer whose **input** channels are being selected, with input ``X`` (the
    tensor the consumer actually reads: post-ReLU, post-pooling) and kernel ``K``, each
    sample draws an output channel ``d`` and (for a conv) a location ``(y, x)`` and records

    * conv -> conv: ``x_hat[c] = sum_{i,j} K[i, j, c, d] * X[y*s + i, x*s + j, c]`` (padded),
    * conv -> flatten -> dense: ``x_hat[c] = sum_{h,w} K[(h*W + w)*C + c, d] * X[h, w, c]``,
    * dense -> dense: ``x_hat[c] = K[c, d] * X[c]``,

    and ``y_hat = sum_c x_hat[c]`` (the consumer's output minus its bias). Jittable; with
    labels, an image is used while its class has fewer than ``images_per_class`` images.

    Args:
      state: The buffer from :func:`thinet_init`.
      key: A PRNG key for this batch (under data parallelism, fold in the device index).
      inputs: The consumer's input: ``(N, H, W, C)`` or ``(N, C)``.
      kernel: The consumer's kernel: HWIO ``(kh, kw, C, D)`` for a conv, ``(C, D)`` for a
        dense layer, or ``(H * W * C, D)`` for a dense layer after a flatten.
      labels: ``None``, or int labels ``(N,)``; images whose label lies outside
        ``[0, num_classes)`` are skipped.
      strides: The conv's strides (int or pair).
      padding: The conv's padding: ``'VALID'``, ``'SAME'`` or ``((lo, hi), (lo, hi))``.

    Returns:
      The updated buffer.

    Raises:
      TypeError: If ``inputs`` or ``kernel`` is not floating point.
      ValueError: If the shapes of ``inputs``, ``kernel`` and ``labels`` do not fit together.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune import importance
      >>> x = jnp.ones((4, 6, 6, 3))  # the consumer conv's input map
      >>> k = jnp.ones((3, 3, 3, 8))  # its HWIO kernel
      >>> s = importance.thinet_init(3, images_per_class=1, num_classes=2, locations=2)
      >>> s = importance.thinet_update(s, jax.random.key(0), x, k, jnp.array([0, 0, 1, 1]))
      >>> s.per_class, s.contributions[0, 0]  # each x_hat[c] sums 3 x 3 ones
      (Array([1, 1], dtype=int32), Array([9., 9., 9.], dtype=float32))
    """
    x = _check_float_array("inputs", inputs, None).astype(jnp.float32)
    k = _check_float_array("kernel", kernel, None).astype(jnp.float32)
    cap, locations, c = state.contributions.shape
    num_classes = state.per_class.shape[0]
    quota = cap // num_classes
    if x.shape[-1] != c or x.ndim not in (2, 4):
        raise ValueError(
            f"`inputs` must have shape (N, H, W, {c}) or (N, {c}), got {tuple(x.shape)}."
        )
    if k.ndim == 4:
        if x.ndim != 4 or k.shape[2] != c:
            raise ValueError(
                f"a conv `kernel` (kh, kw, {c}, D) needs `inputs` (N, H, W, {c}); got kernel "
                f"{tuple(k.shape)} and inputs {tuple(x.shape)}."
            )
    elif k.ndim == 2:
        fan_in = int(np.prod(x.shape[1:]))
        if k.shape[0] != fan_in:
            raise ValueError(
                f"a dense `kernel` must have {fan_in} rows for inputs {tuple(x.shape)}, got "
                f"{tuple(k.shape)}."
            )
    else:
        raise ValueError(f"`kernel` must be HWIO (rank 4) or (in, out), got {tuple(k.shape)}.")
    n = x.shape[0]
    contrib = _thinet_contributions(key, x, k, locations, strides, padding)  # (N, L, C)
    if labels is None:
        accept = state.images + jnp.arange(n, dtype=jnp.int32) < cap
        per_class = state.per_class
    else:
        labels = jnp.asarray(labels)
        if labels.shape != (n,) or not jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(f"`labels` must be ints of shape ({n},), got {labels.shape}.")
        labels = labels.astype(jnp.int32)
        onehot = (labels[:, None] == jnp.arange(num_classes, dtype=jnp.int32)[None, :]).astype(
            jnp.int32
        )
        earlier = jnp.cumsum(onehot, axis=0) - onehot  # same-class images earlier in the batch
        seen = jnp.sum(onehot * (earlier + state.per_class[None, :]), axis=1)
        accept = (jnp.sum(onehot, axis=1) > 0) & (seen < quota)
        per_class = state.per_class + jnp.sum(
            jnp.where(accept[:, None], onehot, 0), axis=0, dtype=jnp.int32
        )
    slot = state.images + jnp.cumsum(accept.astype(jnp.int32)) - 1
    slot = jnp.where(accept, slot, cap)  # rejected images are dropped by the scatter
    contributions = state.contributions.at[slot].set(contrib, mode="drop")
    targets = state.targets.at[slot].set(jnp.sum(contrib, axis=-1), mode="drop")
    images = state.images + jnp.sum(accept, dtype=jnp.int32)
    return ThiNetState(contributions, targets, images, per_class)


def thinet_finalize(state: ThiNetState, *, axis_name: Any = None) -> ThiNetSamples:
    """Returns the samples as rows (gathered from every device when ``axis_name`` is given).

    Args:
      state: The buffer after any number of :func:`thinet_update` calls.
      axis_name: ``None``, or the mesh axis to gather the buffers over (inside
        :func:`jax.shard_map`).

    Returns:
      :class:`ThiNetSamples` with ``images * locations`` rows (times the device count).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune import importance
      >>> x = jax.random.uniform(jax.random.key(0), (4, 3))  # dense -> dense, 3 inputs
      >>> k = jax.random.normal(jax.random.key(1), (3, 2))
      >>> s = importance.thinet_init(3, images_per_class=2, num_classes=1, locations=5)
      >>> s = importance.thinet_update(s, jax.random.key(2), x, k)
      >>> samples = importance.thinet_finalize(s)
      >>> samples.contributions.shape, bool(samples.valid.all())
      ((10, 3), True)
      >>> bool(jnp.allclose(samples.contributions.sum(-1), samples.targets))
      True
    """
    cap, locations, c = state.contributions.shape
    valid = jnp.arange(cap, dtype=jnp.int32) < state.images
    contributions = state.contributions.reshape(cap * locations, c)
    targets = state.targets.reshape(cap * locations)
    valid = jnp.repeat(valid, locations)
    if axis_name is not None:
        contributions = lax.all_gather(contributions, axis_name, tiled=True)
        targets = lax.all_gather(targets, axis_name, tiled=True)
        valid = lax.all_gather(valid, axis_name, tiled=True)
    return ThiNetSamples(contributions, targets, valid)
