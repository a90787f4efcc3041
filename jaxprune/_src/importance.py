"""Data-driven channel importance: APoZ, mean activation, Taylor, ThiNet, Inf-FS and NISP.

Every criterion is a pure function returning **group scores**: a dict from a layer (tap or
group) name to a float32 vector with one score per channel, where a higher score means "more
important, keep". The same dict goes through :func:`select_groups` (layer-wise or
normalized-global exact top-k) and :func:`group_masks`, which spreads the kept channels over
the coupled axes of each :class:`jaxprune.Group` (a conv's filters, its bias and BN entries,
the consumer's input channels or flattened rows). Name the groups like the taps.

Choices settled here (METHODS.md section 19; each is also stated where it applies):

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

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxprune._src import base
from jaxprune._src import groups as groups_lib
from jaxprune._src import select as select_lib
from jaxprune._src import stats as stats_lib

GroupScores = dict[str, jax.Array]
Normalize = Literal["l2", "l1", "max", "mean"]

_HIGHEST = lax.Precision.HIGHEST


def _check_scores_dict(scores: Any, what: str = "scores") -> dict[str, jax.Array]:
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
    exact cut is not confirmed (METHODS.md section 8, [?]), so this threshold rule is offered
    next to the fixed-count selection of :func:`select_groups`.

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


def normalize_scores(scores: Mapping[str, jax.Array], ord: Normalize = "l2") -> GroupScores:
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
    scores = _check_scores_dict(scores)
    return {k: groups_lib.normalized(v, ord) for k, v in scores.items()}


def taylor_scores(
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
      >>> importance.taylor_scores(stats, normalize=False)["h"]
      Array([3., 2.], dtype=float32)
      >>> importance.taylor_scores(stats, abs_per_example=False, normalize=False)["h"]
      Array([0., 2.], dtype=float32)

    References:
      Molchanov, Tyree, Karras, Aila, Kautz, "Pruning Convolutional Neural Networks for
      Resource Efficient Inference", ICLR 2017. https://arxiv.org/abs/1611.06440
    """
    raw = stats.taylor if abs_per_example else {k: jnp.abs(v) for k, v in stats.taylor_mean.items()}
    return normalize_scores(raw, "l2") if normalize else dict(raw)


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
    block = jnp.broadcast_to(scale[None, :, None], (member.outer, c, member.inner)).reshape(-1)
    after = length - member.offset - block.shape[0]
    line = jnp.concatenate([jnp.ones((member.offset,)), block, jnp.ones((after,))])
    shape = [1] * x.ndim
    shape[axis] = length
    factor = line.reshape(shape).astype(x.dtype)

    def fn(path, leaf):
        return leaf * factor if path == member.path else leaf

    return base.map_with_path(fn, params)


# ---------------------------------------------------------------------------------------
# NISP.


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


# ---------------------------------------------------------------------------------------
# Selection and masks over coupled axes.


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
    scores = _check_scores_dict(scores)
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
            scores = normalize_scores(scores, normalize)
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
        s = select_lib._scalar(s, what)
        vecs = {n: scores[n] for n in names}
        if len(names) > 1 and normalize is not None:
            vecs = normalize_scores(vecs, normalize)
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
            f = max(f, c - int(select_lib._num_dropped(jnp.float32(caps[name]), c)))
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
    k = select_lib._num_keep(s, total, sum(floors))
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
    scores = _check_scores_dict(scores)
    sizes = groups_lib.check_groups(groups, params)
    missing = sorted(set(sizes) - set(scores))
    extra = sorted(set(scores) - set(sizes))
    if missing or extra:
        raise ValueError(
            f"score names must be the group names: groups without scores {missing}, scores "
            f"without a group {extra}."
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
