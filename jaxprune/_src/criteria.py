"""Data-driven channel criteria: APoZ, mean activation, activation Taylor, Inf-FS and ThiNet.

Every criterion is a pure function returning **group scores**: a dict from a layer (tap or
group) name to a float32 vector with one score per channel, where a higher score means "more
important, keep". Criteria only score: the same dict goes through the group-level selectors
of :mod:`jaxprune._src.select_groups` (:func:`~jaxprune.importance.select_groups`, layer-wise
or normalized-global exact top-k, and :func:`~jaxprune.importance.group_masks`, which spreads
the kept channels over the coupled axes of each :class:`jaxprune.Group`). Name the groups like
the taps. NISP, which propagates scores through a layer list, lives in
:mod:`jaxprune._src.nisp`.

Choices settled here (each is also stated where it applies):

* **APoZ** counts exact zeros of the post-ReLU output (or ``z <= 0`` for a pre-ReLU tap);
  the importance is ``1 - APoZ``. Selection is a fixed count per layer by default;
  :func:`apoz_std_rule` gives the "more than ``k`` standard deviations above the layer mean"
  threshold instead.
* **Taylor** defaults to the paper's form: ``|mean over positions of a * dL/da|`` per
  example, averaged over examples, then divided by the layer's L2 norm.
  ``abs_per_example=False`` gives the re-implementation's "average, then absolute value".
  Tapping before or after a ReLU gives the same value (``z * dL/dz`` and
  ``relu(z) * dL/drelu(z)`` are both 0 where ``z <= 0``). The FLOPs regularizer is left to
  the caller (subtract ``lam * flops`` from the normalized scores).
* **Inf-FS** uses the 2015 form: ``A = alpha * Sigma + (1 - alpha) * C`` (``alpha``
  multiplies the standard-deviation term, as in the 2020 code; the 2015 ports put ``alpha``
  on the correlation term; both agree at the default ``alpha = 0.5``), ``r = 0.9 / rho(A)``
  and scores ``((I - r A)^-1 - I) 1`` from a linear solve.
* **NISP** propagates ``s_in = |W|^T s_out`` through dense, conv, flatten, pooling and batch
  norm. Convolutions use the channel-level form by default; ``exact=True`` uses the
  transposed convolution of the unrolled map. For VALID padding both give the same channel
  scores (every output position sees the whole kernel); they differ only at SAME-padded
  borders. Max pooling passes each window's score to every input of the window (the
  Lipschitz bound ``|max a - max b| <= sum |a_i - b_i|`` the derivation uses), average
  pooling passes ``1 / window`` of it; both scale a layer's channel scores uniformly for
  non-overlapping windows, so per-layer rankings do not depend on it. Batch norm is the
  per-channel linear map ``|gamma| / sqrt(var + eps)``. Selection is layer-wise by default;
  global selection normalizes each layer first, because propagated scores of different
  layers have different scales.
* **ThiNet** ranks channels by the order of its greedy removal, so layer-wise top-k with
  ``floor(C * (1 - r))`` dropped channels is exactly the greedy set ``T``; rank scores are
  not comparable across layers (select layer-wise).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxprune._src import base
from jaxprune._src import groups as groups_lib
from jaxprune._src import stats as stats_lib

GroupScores = dict[str, jax.Array]

_HIGHEST = lax.Precision.HIGHEST


# ---------------------------------------------------------------------------------------
# Activation-statistics criteria.


def apoz_scores(stats: stats_lib.ChannelStats) -> GroupScores:
    """APoZ importance ``1 - APoZ`` per channel (channels that are rarely zero score high).

    ``APoZ_c = #{O_c == 0} / (N * M)`` over ``N`` examples and ``M`` positions of the
    post-ReLU output ``O_c`` (Hu et al.); channels with high APoZ are pruned.

    Args:
      stats: Finalized statistics (:func:`jaxprune.importance.channel_stats_finalize`).

    Returns:
      A dict from tap name to float32 ``1 - APoZ``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import importance
      >>> a = {"fc1": jnp.array([[0.0, 1.0], [0.0, 2.0], [3.0, 0.0], [0.0, 1.0]])}
      >>> s = importance.channel_stats_update(importance.channel_stats_init(a), a)
      >>> importance.apoz_scores(importance.channel_stats_finalize(s))["fc1"]
      Array([0.25, 0.75], dtype=float32)

    References:
      Hu, Peng, Tai, Tang, "Network Trimming: A Data-Driven Neuron Pruning Approach towards
      Efficient Deep Architectures", 2016. https://arxiv.org/abs/1607.03250
    """
    return {k: 1.0 - v for k, v in stats.apoz.items()}


def apoz_std_rule(stats: stats_lib.ChannelStats, num_std: float = 1.0) -> dict[str, jax.Array]:
    """Keeps the channels whose APoZ is at most ``num_std`` std above their layer's mean.

    The Network Trimming paper removes neurons with a high APoZ relative to their layer; the
    exact cut could not be confirmed from the paper, so this threshold rule is offered
    next to the fixed-count selection of :func:`jaxprune.importance.select_groups`.

    Args:
      stats: Finalized statistics.
      num_std: The cut ``mean + num_std * std`` of each layer's APoZ values.

    Returns:
      A dict from tap name to a bool keep vector (``True`` = kept).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import importance
      >>> a = {"h": jnp.array([[0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0]])}
      >>> s = importance.channel_stats_update(importance.channel_stats_init(a), a)
      >>> importance.apoz_std_rule(importance.channel_stats_finalize(s))["h"]
      Array([False,  True,  True,  True], dtype=bool)
    """
    out = {}
    for k, v in stats.apoz.items():
        out[k] = v <= jnp.mean(v) + jnp.float32(num_std) * jnp.std(v)
    return out


def mean_activation_scores(stats: stats_lib.ChannelStats) -> GroupScores:
    """Mean activation per channel over examples and positions (tap after the ReLU).

    The "mean activation" criterion Molchanov et al. (2017) compare against.

    Args:
      stats: Finalized statistics.

    Returns:
      A dict from tap name to float32 mean activations.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import importance
      >>> a = {"h": jnp.array([[0.0, 1.0], [2.0, 3.0]])}
      >>> s = importance.channel_stats_update(importance.channel_stats_init(a), a)
      >>> importance.mean_activation_scores(importance.channel_stats_finalize(s))["h"]
      Array([1., 2.], dtype=float32)
    """
    return dict(stats.mean)


def activation_taylor_scores(
    stats: stats_lib.ChannelStats, *, abs_per_example: bool = True, normalize: bool = True
) -> GroupScores:
    """Molchanov et al.'s first-order Taylor criterion per channel.

    ``Theta_c = mean_n | (1/M) sum_m a_nmc * dL/da_nmc |`` estimates how much the loss changes
    when channel ``c`` is zeroed (``L(a with a_c = 0) - L(a) ~ -sum a_c dL/da_c``), then
    ``Theta_c / ||Theta||_2`` per layer so that layers compare under global selection.

    Args:
      stats: Finalized statistics with gradients
        (:func:`jaxprune.importance.channel_stats_update` with ``gradients=``).
      abs_per_example: ``True`` (the paper): absolute value per example, then the mean.
        ``False``: ``|mean_n mean_m a * g|``, the average before the absolute value (the
        popular re-implementation; to first order the change of the *total* loss).
      normalize: Divide by each layer's L2 norm.

    Returns:
      A dict from tap name to float32 scores.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import importance
      >>> a = {"h": jnp.array([[1.0, 2.0], [1.0, 2.0]])}
      >>> g = {"h": jnp.array([[3.0, 0.0], [-3.0, 2.0]])}
      >>> s = importance.channel_stats_update(importance.channel_stats_init(a), a, g)
      >>> stats = importance.channel_stats_finalize(s)
      >>> importance.activation_taylor_scores(stats, normalize=False)["h"]
      Array([3., 2.], dtype=float32)
      >>> importance.activation_taylor_scores(stats, abs_per_example=False, normalize=False)["h"]
      Array([0., 2.], dtype=float32)

    References:
      Molchanov, Tyree, Karras, Aila, Kautz, "Pruning Convolutional Neural Networks for
      Resource Efficient Inference", ICLR 2017. https://arxiv.org/abs/1611.06440
    """
    raw = stats.taylor if abs_per_example else {k: jnp.abs(v) for k, v in stats.taylor_mean.items()}
    return groups_lib.normalize_scores(raw, "l2") if normalize else dict(raw)


# ---------------------------------------------------------------------------------------
# Infinite Feature Selection.


def _average_ranks(x: jax.Array, valid: jax.Array) -> jax.Array:
    """1-based ranks of every column, ties sharing their average rank; invalid rows ignored."""
    big = jnp.where(valid[:, None], x, jnp.inf)
    srt = jnp.sort(big, axis=0)

    def col(sorted_col, values):
        lo = jnp.searchsorted(sorted_col, values, side="left")
        hi = jnp.searchsorted(sorted_col, values, side="right")
        return (lo + hi + 1).astype(jnp.float32) * 0.5

    return jax.vmap(col, in_axes=(1, 1), out_axes=1)(srt, big)


def _standardized(x: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Columns centered over the valid rows (weights ``w``) and scaled to unit norm."""
    n = jnp.maximum(jnp.sum(w), 1.0)
    mean = jnp.sum(x * w[:, None], axis=0) / n
    xc = (x - mean[None, :]) * w[:, None]
    norm = jnp.sqrt(jnp.sum(jnp.square(xc), axis=0))
    ok = norm > 0
    return xc / jnp.where(ok, norm, 1.0)[None, :], ok


def _varying(x: jax.Array, valid: jax.Array) -> jax.Array:
    """Whether each column takes at least two distinct values on the valid rows."""
    hi = jnp.max(jnp.where(valid[:, None], x, -jnp.inf), axis=0)
    lo = jnp.min(jnp.where(valid[:, None], x, jnp.inf), axis=0)
    return hi > lo


def _spearman(x: jax.Array, valid: jax.Array, undefined: Any = 0.0) -> jax.Array:
    """Spearman correlation matrix (Pearson on average ranks); ``undefined`` where a column
    is constant (where the correlation would be NaN).

    Constant columns are found on the data itself, not from the float32 norm of the centered
    ranks, which rounding can leave slightly above zero for long columns.
    """
    ranks = _average_ranks(x, valid)
    w = valid.astype(jnp.float32)
    z, _ = _standardized(ranks, w)
    ok = _varying(x, valid)
    corr = jnp.matmul(z.T, z, precision=_HIGHEST)
    both = ok[:, None] & ok[None, :]
    return jnp.where(both, jnp.clip(corr, -1.0, 1.0), jnp.float32(undefined))


def inf_fs(
    features: jax.Array,
    *,
    alpha: float = 0.5,
    factor: float = 0.9,
    undefined_correlation: float = 1.0,
    valid: jax.Array | None = None,
) -> jax.Array:
    """Infinite Feature Selection (2015 form): one relevance score per feature (column).

    With features ``x_i`` over ``T`` samples:

    1. ``Sigma_ij = max(sigma_i, sigma_j)`` of the per-feature standard deviations, min-max
       normalized over the matrix (constant matrix -> 0);
    2. ``C_ij = 1 - |rho_ij|`` with Spearman's ``rho`` (Pearson correlation of average ranks);
       where ``rho`` is undefined (a constant feature) ``|rho| = undefined_correlation``;
    3. ``A = alpha * Sigma + (1 - alpha) * C``;
    4. ``S = sum_{l >= 1} (r A)^l = (I - r A)^-1 - I`` with ``r = factor / rho(A)`` (spectral
       radius, from ``eigvalsh``), and the score of feature ``i`` is the row sum of ``S``,
       computed as ``solve(I - r A, 1) - 1``.

    Higher is more relevant. Whether the std uses ``T`` or ``T - 1`` does not matter (the
    min-max normalization removes the factor). ``alpha`` multiplies ``Sigma`` as in the 2020
    code; the 2015 ports use the opposite convention, equal at ``alpha = 0.5``.

    Constant features: the 2015 code turns their undefined correlations into ``rho = 0``,
    i.e. maximal dissimilarity ``C = 1`` to every feature, itself included, and then they need
    not rank last (on 10,000 MNIST training images, 189 of the 673 non-constant pixels score
    below the 111 constant ones). jaxprune's default ``undefined_correlation=1.0`` counts a
    constant feature as fully redundant instead: every entry of its row of ``A`` is then at
    most the matching entry of any other row, so it provably ranks last (constant features
    tie). Pass ``undefined_correlation=0.0`` for the 2015 code's scores.

    Args:
      features: A finite float array ``(T, n)``: samples by features (e.g.
        final-response-layer activations).
      alpha: Loading coefficient in ``[0, 1]``.
      factor: ``r * rho(A)``, in ``(0, 1)``; 0.9 as in the 2015 code.
      undefined_correlation: ``|rho|`` used for constant features, in ``[0, 1]`` (see above).
      valid: Optional bool ``(T,)``: rows to use (e.g. from
        :func:`jaxprune.importance.responses_finalize`); the others are ignored.

    Returns:
      float32 scores ``(n,)``.

    Raises:
      TypeError: If ``features`` is not floating point.
      ValueError: If ``features`` is not 2-D, ``valid`` has the wrong shape, or ``alpha`` /
        ``factor`` are out of range.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune import importance
      >>> scale = jnp.array([[1.0] * 5 + [0.0] * 5])  # features 5-9 are constant
      >>> x = jax.random.normal(jax.random.key(0), (100, 10)) * scale
      >>> s = importance.inf_fs(x)
      >>> sorted(jnp.argsort(s)[:5].tolist())  # they rank last
      [5, 6, 7, 8, 9]

    References:
      Roffo, Melzi, Cristani, "Infinite Feature Selection", ICCV 2015.
    """
    dtype = getattr(features, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`features` must be a floating-point array, got {dtype}.")
    if np.ndim(features) != 2:
        raise ValueError(f"`features` must be (samples, features), got {np.shape(features)}.")
    base.check_fraction(alpha, "alpha")
    base.check_fraction(undefined_correlation, "undefined_correlation")
    if base.is_concrete(factor) and not 0.0 < float(factor) < 1.0:
        raise ValueError(f"`factor` must lie in (0, 1), got {factor!r}.")
    x = jnp.asarray(features).astype(jnp.float32)
    t, n = x.shape
    if valid is None:
        valid = jnp.ones((t,), jnp.bool_)
    else:
        valid = jnp.asarray(valid)
        if valid.shape != (t,) or valid.dtype != jnp.bool_:
            raise ValueError(f"`valid` must be a bool vector of shape ({t},).")
    w = valid.astype(jnp.float32)
    # 1. Standard-deviation term.
    count = jnp.maximum(jnp.sum(w), 1.0)
    mean = jnp.sum(x * w[:, None], axis=0) / count
    sd = jnp.sqrt(jnp.sum(jnp.square((x - mean[None, :]) * w[:, None]), axis=0) / count)
    sd = jnp.where(_varying(x, valid), sd, 0.0)  # exactly 0 for constant features
    sig = jnp.maximum(sd[:, None], sd[None, :])
    lo, hi = jnp.min(sig), jnp.max(sig)
    sig = jnp.where(hi > lo, (sig - lo) / jnp.where(hi > lo, hi - lo, 1.0), 0.0)
    # 2. Correlation term.
    c = 1.0 - jnp.abs(_spearman(x, valid, undefined_correlation))
    # 3-4. Adjacency and path energies.
    a = jnp.float32(alpha) * sig + (1.0 - jnp.float32(alpha)) * c
    rho = jnp.max(jnp.abs(jnp.linalg.eigvalsh(a)))
    r = jnp.where(rho > 0, jnp.float32(factor) / jnp.where(rho > 0, rho, 1.0), 0.0)
    eye = jnp.eye(n, dtype=jnp.float32)
    ones = jnp.ones((n,), jnp.float32)
    return jnp.linalg.solve(eye - r * a, ones) - ones


# ---------------------------------------------------------------------------------------
# ThiNet.


def _contributions(samples: Any, valid: jax.Array | None = None) -> jax.Array:
    if isinstance(samples, stats_lib.ThiNetSamples):
        x, valid = samples.contributions, samples.valid
    else:
        x = samples
    dtype = getattr(x, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating) or np.ndim(x) != 2:
        raise ValueError(
            "`contributions` must be a float (samples, channels) array or ThiNetSamples, got "
            f"{dtype} {np.shape(x)}."
        )
    x = jnp.asarray(x).astype(jnp.float32)
    if valid is not None:
        x = jnp.where(jnp.asarray(valid)[:, None], x, 0.0)
    return x


def thinet_scores(samples: Any, *, valid: jax.Array | None = None) -> jax.Array:
    """Ranks input channels by ThiNet's greedy removal order (removed first = lowest).

    Greedy step ``t`` removes ``c* = argmin_{c not in T} ||acc + x_hat[:, c]||_2`` and adds
    its column to ``acc`` (Luo et al.): it keeps growing the removed set ``T`` whose summed
    contribution to the sampled outputs stays smallest. Channel ``c`` scores the step at
    which it is removed, so dropping the ``k`` lowest scores is exactly greedy removal of
    ``k`` channels, for every ``k``. Ties go to the lower channel index. Jittable (a
    ``fori_loop`` of ``C`` steps, ``O(C * S)`` each).

    Args:
      samples: :class:`jaxprune.importance.ThiNetSamples`, or the contributions ``(S, C)``.
      valid: Optional bool ``(S,)`` rows to use (taken from ``samples`` when given).

    Returns:
      float32 ``(C,)``: removal step ``0 .. C-1`` of every channel.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import importance
      >>> x = jnp.array([[1.0, -1.0, 3.0], [0.0, 0.0, 1.0]])  # channels 0 and 1 cancel
      >>> importance.thinet_scores(x)
      Array([0., 1., 2.], dtype=float32)

    References:
      Luo, Wu, Lin, "ThiNet: A Filter Level Pruning Method for Deep Neural Network
      Compression", ICCV 2017. https://arxiv.org/abs/1707.06342
    """
    x = _contributions(samples, valid)
    c = x.shape[1]
    col_sq = jnp.sum(jnp.square(x), axis=0)

    def body(t, carry):
        acc, removed, order = carry
        cross = jnp.matmul(acc, x, precision=_HIGHEST)  # (C,)
        cost = jnp.sum(jnp.square(acc)) + 2.0 * cross + col_sq
        cost = jnp.where(removed, jnp.inf, cost)
        best = jnp.argmin(cost)
        acc = acc + x[:, best]
        return acc, removed.at[best].set(True), order.at[best].set(t)

    init = (
        jnp.zeros((x.shape[0],), jnp.float32),
        jnp.zeros((c,), bool),
        jnp.zeros((c,), jnp.int32),
    )
    _, _, order = lax.fori_loop(0, c, body, init)
    return order.astype(jnp.float32)


def thinet_greedy(samples: Any, num_remove: Any, *, valid: jax.Array | None = None) -> jax.Array:
    """ThiNet's greedy channel selection: which channels to keep after removing ``num_remove``.

    Args:
      samples: :class:`jaxprune.importance.ThiNetSamples` or contributions ``(S, C)``.
      num_remove: Channels to remove (``C - floor(C * r)`` for a kept fraction ``r``); may be
        traced.
      valid: Optional bool ``(S,)`` rows to use.

    Returns:
      A bool keep vector ``(C,)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import importance
      >>> x = jnp.array([[1.0, -1.2, 0.0], [0.0, 0.0, 1.1]])  # channel 1 cancels channel 0
      >>> importance.thinet_greedy(x, 2)
      Array([False, False,  True], dtype=bool)
    """
    return thinet_scores(samples, valid=valid) >= jnp.asarray(num_remove, jnp.float32)


def thinet_lstsq(
    samples: Any,
    keep: jax.Array,
    targets: jax.Array | None = None,
    *,
    valid: jax.Array | None = None,
) -> jax.Array:
    """ThiNet's least-squares rescaling of the kept input channels.

    ``w = argmin_w ||y_hat - x_hat[:, S] w||^2`` over the kept set ``S`` (minimum-norm
    solution, so kept channels whose contributions are all zero get ``w = 0``); removed
    channels get ``0``. Multiply the consumer's input slices by ``w`` with
    :func:`scale_input_channels`.

    Args:
      samples: :class:`jaxprune.importance.ThiNetSamples` or contributions ``(S, C)``.
      keep: bool ``(C,)`` kept channels.
      targets: ``y_hat`` ``(S,)``; required when ``samples`` is an array.
      valid: Optional bool ``(S,)`` rows to use.

    Returns:
      float32 scales ``(C,)``.

    Raises:
      ValueError: If ``targets`` is missing or shapes do not match.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune import importance
      >>> x = jax.random.normal(jax.random.key(0), (20, 3))
      >>> y = 2.0 * x[:, 0] + 0.5 * x[:, 2]
      >>> w = importance.thinet_lstsq(x, jnp.array([True, False, True]), y)
      >>> [round(float(v), 3) for v in w]
      [2.0, 0.0, 0.5]
    """
    if isinstance(samples, stats_lib.ThiNetSamples):
        targets = samples.targets if targets is None else targets
    x = _contributions(samples, valid)
    if valid is None and isinstance(samples, stats_lib.ThiNetSamples):
        valid = samples.valid
    if targets is None:
        raise ValueError("`targets` (y_hat) is required when `samples` is an array.")
    y = jnp.asarray(targets).astype(jnp.float32)
    if y.shape != (x.shape[0],):
        raise ValueError(f"`targets` must have shape ({x.shape[0]},), got {y.shape}.")
    if valid is not None:
        y = jnp.where(jnp.asarray(valid), y, 0.0)
    keep = jnp.asarray(keep)
    if keep.shape != (x.shape[1],) or keep.dtype != jnp.bool_:
        raise ValueError(f"`keep` must be a bool vector of shape ({x.shape[1]},).")
    xs = jnp.where(keep[None, :], x, 0.0)
    w, *_ = jnp.linalg.lstsq(xs, y)
    return jnp.where(keep, w, 0.0)


def thinet_error(
    samples: Any,
    scale: jax.Array,
    targets: jax.Array | None = None,
    *,
    valid: jax.Array | None = None,
) -> jax.Array:
    """The sampled reconstruction error ThiNet minimizes: ``mean_s (y_hat - x_hat w)^2``.

    Args:
      samples: :class:`jaxprune.importance.ThiNetSamples` or contributions ``(S, C)``.
      scale: float ``(C,)``: ``keep.astype(float)`` for plain removal, or the result of
        :func:`thinet_lstsq`.
      targets: ``y_hat`` ``(S,)``; required when ``samples`` is an array.
      valid: Optional bool ``(S,)`` rows to use.

    Returns:
      A float32 scalar (mean over the valid rows).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import importance
      >>> x = jnp.array([[1.0, 2.0], [3.0, 4.0]])
      >>> importance.thinet_error(x, jnp.array([1.0, 0.0]), x.sum(1))
      Array(10., dtype=float32)
    """
    if isinstance(samples, stats_lib.ThiNetSamples):
        targets = samples.targets if targets is None else targets
        valid = samples.valid if valid is None else valid
    x = _contributions(samples, valid)
    if targets is None:
        raise ValueError("`targets` (y_hat) is required when `samples` is an array.")
    y = jnp.asarray(targets).astype(jnp.float32)
    w = jnp.ones((x.shape[0],), jnp.float32) if valid is None else jnp.asarray(valid, jnp.float32)
    y = y * w
    resid = y - jnp.matmul(x, jnp.asarray(scale, jnp.float32), precision=_HIGHEST)
    return jnp.sum(jnp.square(resid)) / jnp.maximum(jnp.sum(w), 1.0)


def scale_input_channels(
    params: base.Params, member: groups_lib.Member, scale: jax.Array
) -> base.Params:
    """Multiplies the channel slices of one member axis by per-channel factors.

    Applies ThiNet's least-squares scales to the consumer: with ``Member("conv2/kernel", -2)``
    slice ``K[:, :, c, :]`` is multiplied by ``scale[c]``; with a flattened consumer
    ``Member("fc1/kernel", 0, outer=16)`` every row ``(h * W + w) * C + c`` is.

    Args:
      params: The parameters.
      member: The axis to scale (strided/offset layouts as in :class:`jaxprune.Member`).
      scale: float ``(C,)``.

    Returns:
      New params with that leaf scaled (same dtype).

    Raises:
      ValueError: If the path is missing or ``scale`` has the wrong length.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> from jaxprune import importance
      >>> p = {"fc": {"kernel": jnp.ones((2, 3))}}
      >>> m = jaxprune.Member("fc/kernel", 0)
      >>> importance.scale_input_channels(p, m, jnp.array([2.0, 0.5]))["fc"]["kernel"]
      Array([[2. , 2. , 2. ],
             [0.5, 0.5, 0.5]], dtype=float32)
    """
    leaves = dict(base.leaves_with_paths(params))
    x = leaves.get(member.path)
    if x is None:
        raise ValueError(f"no parameter at path {member.path!r}.")
    axis = member.axis % x.ndim
    length = x.shape[axis]
    scale = jnp.asarray(scale, jnp.float32)
    c = scale.shape[0] if scale.ndim == 1 else -1
    if c < 1 or member.offset + member.span(c) > length or (member.whole and c != length):
        raise ValueError(
            f"`scale` of shape {scale.shape} does not fit {member.path!r} axis {member.axis} "
            f"of size {length}."
        )
    line = groups_lib.member_line(scale, member, c, length, 1.0)
    shape = [1] * x.ndim
    shape[axis] = length
    factor = line.reshape(shape).astype(x.dtype)

    def fn(path, leaf):
        return leaf * factor if path == member.path else leaf

    return base.map_with_path(fn, params)
