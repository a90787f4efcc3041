"""Learned gates as Flax Linen modules, and Linen label helpers.

Every gate multiplies the trailing axes of its input by one gate per entry of ``features``
(an ``int`` for a per-channel gate on the last axis, or a shape, e.g. a kernel's shape for
Srinivas's per-weight gates). Gate parameters use jaxprune's reserved names
(``l0_log_alpha``, ``bernoulli_gate``, ``channel_gate``), which :func:`jaxprune.gate_labels`,
the penalties and the selectors recognize; the NNX modules in :mod:`jaxprune.nnx` use the same
names and math, so both frameworks behave identically. Stochastic gates draw from the
``"gates"`` RNG stream (``model.apply(..., rngs={"gates": key})``) unless ``deterministic``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxprune._src import base, gates_math
from jaxprune._src import labels as labels_lib
from jaxprune._src.gates_math import apply_gate, gate_shape, sample_shape


def hard_concrete_init(droprate_init: float, std: float = 1e-2):
    """Initializer ``log_alpha ~ N(log(1 - p) - log(p), std)`` of Louizos et al.'s code.

    Args:
      droprate_init: Initial probability ``p`` that a gate is off, in ``(0, 1)``.
      std: Standard deviation of the initial ``log_alpha``.

    Returns:
      A Flax initializer ``(key, shape, dtype) -> array``.

    Raises:
      ValueError: If ``droprate_init`` is not in ``(0, 1)``.
    """
    if not 0.0 < float(droprate_init) < 1.0:
        raise ValueError(f"`droprate_init` must be in (0, 1), got {droprate_init}.")
    mean = math.log1p(-float(droprate_init)) - math.log(float(droprate_init))

    def init(key, shape, dtype=jnp.float32):
        return (mean + std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)

    return init


class HardConcreteGate(nn.Module):
    """Hard-concrete (L0) gates on the trailing axes of the input (Louizos et al., 2018).

    In training (``deterministic=False``) every call draws ``z = clip(sigmoid((logit(u) +
    log_alpha) / beta) * (zeta - gamma) + gamma, 0, 1)`` from the ``"gates"`` RNG stream (one
    draw per call, or one per example with ``per_example=True``); in evaluation the gate is
    the deterministic ``clip(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1)``. Gating the
    *inputs* of a Dense layer prunes input features (L0's MLP setting); gating a conv's output
    prunes feature maps. The penalty is :func:`jaxprune.add_gate_penalty` (expected L0 =
    :meth:`expected_l0`); clamp ``log_alpha`` with :func:`jaxprune.clip_gates`; turn gates into
    masks with :meth:`mask` or :func:`jaxprune.gate_masks`, and fold them into the weights
    with :func:`jaxprune.fold_gates`.

    Attributes:
      features: Number of gates on the last axis, or the gated trailing shape.
      droprate_init: Initial probability that a gate is off (0.5; Louizos et al. use 0.2 for
        the first layer of their MLP).
      beta: Temperature (2/3).
      gamma: Stretch lower end (-0.1).
      zeta: Stretch upper end (1.1).
      deterministic: Default for the call argument of the same name.
      per_example: Draw one gate vector per example instead of one per call.
      param_dtype: Dtype of ``log_alpha``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxprune.linen
      >>> gate = jaxprune.linen.HardConcreteGate(3)
      >>> variables = gate.init(jax.random.key(0), jnp.ones((2, 3)), deterministic=True)
      >>> y = gate.apply(variables, jnp.ones((2, 3)), deterministic=False,
      ...                rngs={"gates": jax.random.key(1)})
      >>> y.shape
      (2, 3)

    References:
      Louizos, Welling, Kingma, "Learning Sparse Neural Networks through L0 Regularization",
      ICLR 2018. https://arxiv.org/abs/1712.01312
    """

    features: int | Sequence[int]
    droprate_init: float = 0.5
    beta: float = gates_math.HC_BETA
    gamma: float = gates_math.HC_GAMMA
    zeta: float = gates_math.HC_ZETA
    deterministic: bool | None = None
    per_example: bool = False
    param_dtype: Any = jnp.float32

    def setup(self):
        self.l0_log_alpha = self.param(
            labels_lib.L0_NAME,
            hard_concrete_init(self.droprate_init),
            gate_shape(self.features),
            self.param_dtype,
        )

    def __call__(
        self, x: jax.Array, deterministic: bool | None = None, key: jax.Array | None = None
    ) -> jax.Array:
        """Gates ``x``.

        Args:
          x: Input whose trailing axes equal the gate shape.
          deterministic: Use the test-time gate (overrides the attribute).
          key: Optional explicit PRNG key instead of the ``"gates"`` stream.

        Returns:
          ``x * z``.
        """
        shape = gate_shape(self.features)
        det = nn.merge_param("deterministic", self.deterministic, deterministic)
        if det:
            z = gates_math.hard_concrete_deterministic(
                self.l0_log_alpha, gamma=self.gamma, zeta=self.zeta
            )
        else:
            key = self.make_rng("gates") if key is None else key
            z = gates_math.hard_concrete_sample(
                key,
                self.l0_log_alpha,
                sample_shape(x, shape, self.per_example),
                beta=self.beta,
                gamma=self.gamma,
                zeta=self.zeta,
            )
        return apply_gate(x, z, shape)

    def expected_l0(self) -> jax.Array:
        """Expected number of non-zero gates, ``sum P(z != 0)`` (float32 scalar)."""
        return jnp.sum(
            gates_math.hard_concrete_prob_nonzero(
                self.l0_log_alpha, beta=self.beta, gamma=self.gamma, zeta=self.zeta
            )
        )

    def gate_values(self) -> jax.Array:
        """The deterministic (test-time) gates."""
        return gates_math.hard_concrete_deterministic(
            self.l0_log_alpha, gamma=self.gamma, zeta=self.zeta
        )

    def mask(self) -> jax.Array:
        """Bool mask of the gates that are non-zero at test time."""
        return self.gate_values() > 0


class BernoulliGate(nn.Module):
    """Srinivas-style gates: ``z ~ Bernoulli(g)`` with a straight-through gradient.

    What is implemented (the paper's Section 3 could not be checked, only its
    abstract: "gate variables ... equivalent to a spike-and-slab prior"): one trainable gate
    probability ``g in [0, 1]`` per entry of ``features`` (per weight when gating a kernel,
    per unit when gating activations), parameter ``bernoulli_gate``. Training draws
    ``z ~ Bernoulli(g)`` from the ``"gates"`` stream and uses ``z = g + stop_gradient(z - g)``
    (straight-through: ``dL/dg = dL/dz``); evaluation uses ``z = 1[g > 0.5]``. The penalty
    ``lam2 * sum g + lam1 * sum g (1 - g)`` is :func:`jaxprune.add_gate_penalty` (``strength =
    lam2``, ``bimodal = lam1``): the first term pushes gates to 0, the second to 0 or 1 (the
    spike and slab); keep ``g`` in ``[0, 1]`` with :func:`jaxprune.clip_gates`.

    Attributes:
      features: Number of gates on the last axis, or the gated trailing shape.
      init_value: Initial ``g`` (0.9: mostly on, still stochastic; the paper's value is not
        known).
      deterministic: Default for the call argument of the same name.
      per_example: Draw one gate sample per example.
      param_dtype: Dtype of ``g``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxprune.linen
      >>> gate = jaxprune.linen.BernoulliGate(3, init_value=1.0, deterministic=True)
      >>> variables = gate.init(jax.random.key(0), jnp.ones((1, 3)))
      >>> gate.apply(variables, jnp.ones((1, 3)))
      Array([[1., 1., 1.]], dtype=float32)

    References:
      Srinivas, Subramanya, Babu, "Training Sparse Neural Networks", CVPR Workshops 2017.
      https://arxiv.org/abs/1611.06694
    """

    features: int | Sequence[int]
    init_value: float = 0.9
    deterministic: bool | None = None
    per_example: bool = False
    param_dtype: Any = jnp.float32

    def setup(self):
        self.bernoulli_gate = self.param(
            labels_lib.BERNOULLI_NAME,
            nn.initializers.constant(self.init_value),
            gate_shape(self.features),
            self.param_dtype,
        )

    def __call__(
        self, x: jax.Array, deterministic: bool | None = None, key: jax.Array | None = None
    ) -> jax.Array:
        """Gates ``x`` (see the class docstring); ``key`` overrides the ``"gates"`` stream."""
        shape = gate_shape(self.features)
        det = nn.merge_param("deterministic", self.deterministic, deterministic)
        if det:
            z = gates_math.bernoulli_gate_deterministic(self.bernoulli_gate)
        else:
            key = self.make_rng("gates") if key is None else key
            z = gates_math.bernoulli_gate_sample(
                key, self.bernoulli_gate, sample_shape(x, shape, self.per_example)
            )
        return apply_gate(x, z, shape)

    def gate_values(self) -> jax.Array:
        """The deterministic (test-time) gates ``1[g > 0.5]``."""
        return gates_math.bernoulli_gate_deterministic(self.bernoulli_gate)

    def mask(self) -> jax.Array:
        """Bool mask ``g > 0.5``."""
        return self.bernoulli_gate > 0.5


class ChannelGate(nn.Module):
    """A learnable scale per channel, ``x * g``: network slimming without normalization layers.

    Penalize it with L1 (:func:`jaxprune.add_l1` with :func:`jaxprune.scale_labels`, or
    ``optax_sparsity(slimming=...)``) and select with :func:`jaxprune.slimming_masks`. Liu et
    al. note that without a following normalization a scale can trade magnitude with the
    weights around it; prefer BatchNorm scales where the network has them.

    Attributes:
      features: Number of gates on the last axis, or the gated trailing shape.
      init_value: Initial gate value.
      param_dtype: Dtype of the gates.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxprune.linen
      >>> gate = jaxprune.linen.ChannelGate(2, init_value=0.5)
      >>> variables = gate.init(jax.random.key(0), jnp.ones((1, 2)))
      >>> gate.apply(variables, jnp.ones((1, 2)))
      Array([[0.5, 0.5]], dtype=float32)
    """

    features: int | Sequence[int]
    init_value: float = 1.0
    param_dtype: Any = jnp.float32

    def setup(self):
        self.channel_gate = self.param(
            labels_lib.CHANNEL_NAME,
            nn.initializers.constant(self.init_value),
            gate_shape(self.features),
            self.param_dtype,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """Returns ``x * g`` over the trailing axes."""
        return apply_gate(x, self.channel_gate, gate_shape(self.features))

    def gate_values(self) -> jax.Array:
        """The gates."""
        return self.channel_gate

    def mask(self) -> jax.Array:
        """Bool mask ``g != 0``."""
        return self.channel_gate != 0


def slimming_labels(variables: Any, *, include_gates: bool = True) -> Any:
    """``True`` for the scales of Linen ``BatchNorm`` layers (and ``channel_gate`` leaves).

    A Linen params dict does not record module types; a BatchNorm is recognized structurally as
    a module that has a ``scale`` in ``params`` *and* running ``mean``/``var`` in
    ``batch_stats`` at the same path, which LayerNorm and GroupNorm never have.

    Args:
      variables: The full variables dict ``{"params": ..., "batch_stats": ...}``.
      include_gates: Also label :class:`ChannelGate` parameters.

    Returns:
      A tree of Python bools with the structure of ``variables["params"]`` (usable as the
      ``prunable`` of :func:`jaxprune.add_l1` or as ``slimming_prunable``).

    Raises:
      ValueError: If ``variables`` has no ``params`` collection, or no ``batch_stats`` while
        ``include_gates`` is off (then nothing could be found).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import flax.linen as nn
      >>> import jaxprune.linen
      >>> class Net(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x):
      ...         x = nn.BatchNorm(use_running_average=False)(nn.Dense(3)(x))
      ...         return nn.LayerNorm()(x)
      >>> v = Net().init(jax.random.key(0), jnp.ones((2, 4)))
      >>> labels = jaxprune.linen.slimming_labels(v)
      >>> labels["BatchNorm_0"]["scale"], labels["LayerNorm_0"]["scale"]
      (True, False)

    References:
      Liu et al., "Learning Efficient Convolutional Networks through Network Slimming",
      ICCV 2017. https://arxiv.org/abs/1708.06519
    """
    if not hasattr(variables, "get") or "params" not in variables:
        raise ValueError(
            "`variables` must be the full Linen variables dict with a 'params' collection "
            "(and 'batch_stats' for BatchNorm scales)."
        )
    stats = variables.get("batch_stats")
    if stats is None and not include_gates:
        raise ValueError(
            "`variables` has no 'batch_stats' collection, so it holds no BatchNorm: pass the "
            "variables of a model with BatchNorm, or include_gates=True."
        )
    bn_paths = set()
    if stats is not None:
        for path, _ in base.leaves_with_paths(stats):
            parent, _, name = path.rpartition("/")
            if name == "mean":
                bn_paths.add(parent)

    def one(path, x):
        parent, _, name = path.rpartition("/")
        if include_gates and name == labels_lib.CHANNEL_NAME:
            return True
        return name == "scale" and parent in bn_paths and len(x.shape) == 1

    return base.map_with_path(one, variables["params"])
