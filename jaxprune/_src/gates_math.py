"""Gate maths shared by the Linen and NNX gate layers (framework-free).

* the hard-concrete distribution of Louizos, Welling & Kingma (ICLR 2018): sampling, the
  probability that a gate is non-zero (the expected L0 norm) and the deterministic test gate;
* the straight-through Bernoulli gate of Srinivas, Subramanya & Babu (CVPR-W 2017);
* the deterministic (test-time) value of any jaxprune gate leaf and its identity value;
* the shape helpers both gate-layer families use (:func:`gate_shape`, :func:`apply_gate`,
  :func:`sample_shape`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxprune._src import base
from jaxprune._src import labels as labels_lib

# Hard-concrete constants of Louizos et al. (2018) and their official code.
HC_BETA = 2.0 / 3.0
HC_GAMMA = -0.1
HC_ZETA = 1.1
HC_EPS = 1e-6
LOG_ALPHA_BOUNDS = (math.log(1e-2), math.log(1e2))


def check_hc_constants(beta: float, gamma: float, zeta: float) -> None:
    """Raises ``ValueError`` unless ``beta > 0`` and ``gamma < 0 < 1 < zeta`` (concrete values)."""
    if not (base.is_concrete(beta) and base.is_concrete(gamma) and base.is_concrete(zeta)):
        return
    if not float(beta) > 0:
        raise ValueError(f"`beta` must be > 0, got {beta}.")
    if not (float(gamma) < 0 < 1 < float(zeta)):
        raise ValueError(
            f"the stretch interval needs gamma < 0 and zeta > 1, got gamma={gamma}, zeta={zeta}."
        )


def _float_array(x: Any, name: str) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"`{name}` must be a floating-point array, got {x.dtype}.")
    return x


def hard_concrete_sample(
    key: jax.Array,
    log_alpha: jax.Array,
    shape: Sequence[int] | None = None,
    *,
    beta: float = HC_BETA,
    gamma: float = HC_GAMMA,
    zeta: float = HC_ZETA,
    eps: float = HC_EPS,
) -> jax.Array:
    """Draws hard-concrete gates ``z in [0, 1]``, differentiable with respect to ``log_alpha``.

    With ``u ~ U(eps, 1 - eps)``::

        s = sigmoid((log u - log(1 - u) + log_alpha) / beta)
        z = clip(s * (zeta - gamma) + gamma, 0, 1)

    The stretch to ``(gamma, zeta)`` followed by the clip gives exact zeros and ones with
    positive probability; the gradient reaches ``log_alpha`` through ``s`` wherever ``z`` is
    not clipped (the reparameterization trick).

    Args:
      key: A ``jax.random`` key.
      log_alpha: Location parameters, one per gate.
      shape: Shape of the sample; its trailing axes must broadcast against ``log_alpha``
        (e.g. ``(batch, features)`` for one gate draw per example). Default:
        ``log_alpha.shape``.
      beta: Temperature (2/3 in the paper).
      gamma: Lower end of the stretch interval (< 0).
      zeta: Upper end of the stretch interval (> 1).
      eps: Keeps ``u`` away from 0 and 1.

    Returns:
      Gates of ``shape`` in the dtype of ``log_alpha``.

    Raises:
      ValueError: If ``beta <= 0`` or not ``gamma < 0 < 1 < zeta``.
      TypeError: If ``log_alpha`` is not floating point.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxprune
      >>> z = jaxprune.hard_concrete_sample(jax.random.key(0), jnp.zeros(4))
      >>> bool(jnp.all((z >= 0) & (z <= 1)))
      True

    References:
      Louizos, Welling, Kingma, "Learning Sparse Neural Networks through L0 Regularization",
      ICLR 2018. https://arxiv.org/abs/1712.01312
    """
    log_alpha = _float_array(log_alpha, "log_alpha")
    check_hc_constants(beta, gamma, zeta)
    shape = tuple(log_alpha.shape) if shape is None else tuple(shape)
    la = log_alpha.astype(jnp.float32)
    if la.ndim < len(shape):
        la = la.reshape((1,) * (len(shape) - la.ndim) + la.shape)
    u = jax.random.uniform(key, shape, jnp.float32, eps, 1.0 - eps)
    s = jax.nn.sigmoid((jnp.log(u) - jnp.log1p(-u) + la) / beta)
    z = jnp.clip(s * (zeta - gamma) + gamma, 0.0, 1.0)
    return z.astype(log_alpha.dtype)


def hard_concrete_prob_nonzero(
    log_alpha: jax.Array,
    *,
    beta: float = HC_BETA,
    gamma: float = HC_GAMMA,
    zeta: float = HC_ZETA,
) -> jax.Array:
    """``P(z != 0) = sigmoid(log_alpha - beta * log(-gamma / zeta))``, the expected L0 per gate.

    Summed over the gates (weighted by how many weights each gate controls) this is the
    differentiable L0 penalty of Louizos et al.; :func:`jaxprune.add_gate_penalty` adds its
    gradient.

    Args:
      log_alpha: Location parameters.
      beta: Temperature.
      gamma: Lower end of the stretch interval (< 0).
      zeta: Upper end of the stretch interval (> 1).

    Returns:
      Probabilities shaped like ``log_alpha`` (float32 for lower-precision inputs).

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> jaxprune.hard_concrete_prob_nonzero(jnp.array([-10.0, 0.0, 10.0])).round(4)
      Array([2.000e-04, 8.318e-01, 1.000e+00], dtype=float32)

    References:
      Louizos, Welling, Kingma, ICLR 2018 (Eq. 12). https://arxiv.org/abs/1712.01312
    """
    log_alpha = _float_array(log_alpha, "log_alpha")
    check_hc_constants(beta, gamma, zeta)
    la = log_alpha.astype(jnp.promote_types(log_alpha.dtype, jnp.float32))
    return jax.nn.sigmoid(la - beta * math.log(-gamma / zeta))


def hard_concrete_deterministic(
    log_alpha: jax.Array, *, gamma: float = HC_GAMMA, zeta: float = HC_ZETA
) -> jax.Array:
    """The test-time hard-concrete gate ``clip(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1)``.

    It is exactly ``0`` for ``log_alpha <= logit(-gamma / (zeta - gamma))`` (about -2.398 with
    the default constants) and exactly ``1`` for ``log_alpha >= logit((1 - gamma) / (zeta -
    gamma))`` (about 2.398).

    Args:
      log_alpha: Location parameters.
      gamma: Lower end of the stretch interval (< 0).
      zeta: Upper end of the stretch interval (> 1).

    Returns:
      Gates in ``[0, 1]`` shaped like ``log_alpha``, in its dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> jaxprune.hard_concrete_deterministic(jnp.array([-3.0, 0.0, 3.0]))
      Array([0. , 0.5, 1. ], dtype=float32)

    References:
      Louizos, Welling, Kingma, ICLR 2018. https://arxiv.org/abs/1712.01312
    """
    log_alpha = _float_array(log_alpha, "log_alpha")
    check_hc_constants(HC_BETA, gamma, zeta)
    z = jax.nn.sigmoid(log_alpha.astype(jnp.float32)) * (zeta - gamma) + gamma
    return jnp.clip(z, 0.0, 1.0).astype(log_alpha.dtype)


def bernoulli_gate_sample(
    key: jax.Array, gate: jax.Array, shape: Sequence[int] | None = None
) -> jax.Array:
    """Samples ``z ~ Bernoulli(g)`` with a straight-through gradient ``dz/dg = 1``.

    The forward value is exactly ``0`` or ``1``; the backward pass treats the sample as ``g``
    (``z = g + stop_gradient(b - g)``), the straight-through estimator used for Srinivas et
    al.'s gates. ``g`` is clipped to ``[0, 1]`` for the draw only.

    Args:
      key: A ``jax.random`` key.
      gate: Gate probabilities ``g``.
      shape: Sample shape, broadcasting against ``gate`` as in :func:`hard_concrete_sample`.

    Returns:
      Gates of ``shape`` in ``gate``'s dtype.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxprune
      >>> jaxprune.bernoulli_gate_sample(jax.random.key(0), jnp.array([0.0, 1.0]))
      Array([0., 1.], dtype=float32)

    References:
      Srinivas, Subramanya, Babu, "Training Sparse Neural Networks", CVPR Workshops 2017.
      https://arxiv.org/abs/1611.06694
    """
    gate = _float_array(gate, "gate")
    shape = tuple(gate.shape) if shape is None else tuple(shape)
    g = gate
    if g.ndim < len(shape):
        g = g.reshape((1,) * (len(shape) - g.ndim) + g.shape)
    u = jax.random.uniform(key, shape, jnp.float32)
    b = (u < jnp.clip(jax.lax.stop_gradient(g).astype(jnp.float32), 0.0, 1.0)).astype(gate.dtype)
    return g + jax.lax.stop_gradient(b - g)


def bernoulli_gate_deterministic(gate: jax.Array) -> jax.Array:
    """The test-time Srinivas gate ``1[g > 0.5]`` in the gate's dtype.

    Args:
      gate: Gate probabilities ``g``.

    Returns:
      ``0``/``1`` values shaped like ``gate``.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> jaxprune.bernoulli_gate_deterministic(jnp.array([0.2, 0.5, 0.9]))
      Array([0., 0., 1.], dtype=float32)
    """
    gate = _float_array(gate, "gate")
    return (gate > 0.5).astype(gate.dtype)


def deterministic_gate_values(path: str, leaf: jax.Array, kind: str | None = None) -> jax.Array:
    """Deterministic (evaluation) gate values of one gate leaf, by its kind.

    Args:
      path: The leaf's path (its name gives the kind unless ``kind`` is set).
      leaf: The gate parameter.
      kind: ``"hard_concrete"``, ``"bernoulli"`` or ``"channel"`` (default: from the name).

    Returns:
      The gate's test-time values in the leaf's dtype.

    Raises:
      ValueError: If the kind cannot be determined.
    """
    kind = kind or labels_lib.gate_kind(path)
    if kind == "hard_concrete":
        return hard_concrete_deterministic(leaf)
    if kind == "bernoulli":
        return bernoulli_gate_deterministic(leaf)
    if kind == "channel":
        return jnp.asarray(leaf)
    raise ValueError(
        f"{path!r} is not a jaxprune gate (its name is not one of {labels_lib.GATE_NAMES}); "
        "pass `kind`."
    )


def identity_gate_value(kind: str, leaf: jax.Array) -> jax.Array:
    """The value of a gate leaf whose test-time gate is exactly 1 (after folding)."""
    if kind == "hard_concrete":  # The upper clamp bound: the test gate is exactly 1 there.
        return jnp.full(leaf.shape, LOG_ALPHA_BOUNDS[1], leaf.dtype)
    return jnp.ones(leaf.shape, leaf.dtype)


# ---------------------------------------------------------------------------------------
# Shapes shared by the gate layers.


def gate_shape(features: int | Sequence[int]) -> tuple[int, ...]:
    """The gated trailing shape from a gate layer's ``features`` (an int or a shape)."""
    shape = (features,) if isinstance(features, int) else tuple(features)
    if not shape or any(not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(f"`features` must be a positive int or a shape, got {features!r}.")
    return shape


def apply_gate(x: jax.Array, z: jax.Array, gate_shape: tuple[int, ...]) -> jax.Array:
    """``x * z`` with ``z`` over the trailing axes of ``x`` (explicit broadcast)."""
    k = len(gate_shape)
    if x.ndim < k or tuple(x.shape[x.ndim - k :]) != gate_shape:
        raise ValueError(
            f"the gate has shape {gate_shape}, which must equal the trailing axes of the "
            f"input, got input shape {tuple(x.shape)}."
        )
    if z.ndim < x.ndim:
        z = z.reshape((1,) * (x.ndim - z.ndim) + tuple(z.shape))
    return x * z.astype(x.dtype)


def sample_shape(x: jax.Array, gate_shape: tuple[int, ...], per_example: bool) -> tuple:
    """The shape of one gate draw: the input's shape per example, else the gate's."""
    return tuple(x.shape) if per_example else gate_shape
