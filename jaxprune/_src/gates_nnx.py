"""Learned gates as Flax NNX modules, with their own ``Variable`` types, and NNX labels.

The modules mirror :mod:`jaxprune._src.gates_linen` exactly (same parameter names, math,
defaults and call signature), and give each gate parameter its own ``nnx.Param`` subclass so
that filters select them by type: ``nnx.state(model, jaxprune.nnx.GateParam)``,
:func:`labels` for penalties and weight-decay masks. ``model.eval()`` /
``nnx.view(model, deterministic=True)`` switch stochastic gates to their test-time value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxprune._src import base, gates_math
from jaxprune._src.gates_linen import hard_concrete_init
from jaxprune._src.gates_math import apply_gate, gate_shape, sample_shape


class GateParam(nnx.Param):
    """Base type of every jaxprune gate parameter (a trainable ``nnx.Param``)."""


class HardConcreteParam(GateParam):
    """``log_alpha`` of a :class:`HardConcreteGate`."""


class BernoulliParam(GateParam):
    """Gate probabilities ``g`` of a :class:`BernoulliGate`."""


class ChannelGateParam(GateParam):
    """Scales of a :class:`ChannelGate`."""


def _stream(rngs: Any, collection: str) -> Any:
    if isinstance(rngs, nnx.Rngs):
        return rngs[collection].fork()
    if isinstance(rngs, nnx.RngStream):
        return rngs.fork()
    if rngs is None:
        return nnx.data(None)
    raise TypeError(f"`rngs` must be nnx.Rngs, nnx.RngStream or None, got {type(rngs)}.")


def _key(call_key: Any, stream: Any, collection: str, name: str) -> jax.Array:
    if call_key is not None:
        if isinstance(call_key, nnx.Rngs):
            return call_key[collection]()
        if isinstance(call_key, nnx.RngStream):
            return call_key()
        return call_key
    if stream is None:
        raise ValueError(
            f"{name} is not deterministic but has no random stream: build it with `rngs=` "
            "(an nnx.Rngs with a 'gates' or default stream), pass `key=` to the call, or "
            "call model.eval()."
        )
    return stream()


def _resolve_deterministic(arg: bool | None, attr: bool | None, name: str) -> bool:
    if arg is not None:
        return bool(arg)
    if attr is None:
        raise ValueError(
            f"{name}: pass `deterministic` to the constructor or the call, or use "
            "model.train() / model.eval()."
        )
    return bool(attr)


class HardConcreteGate(nnx.Module):
    """Hard-concrete (L0) gates on the trailing axes of the input (Louizos et al., 2018).

    The NNX twin of :class:`jaxprune.linen.HardConcreteGate`: same parameter
    (``l0_log_alpha``, a :class:`HardConcreteParam`), sampling, test-time gate and methods.
    Samples come from the ``rng_collection`` stream of ``rngs`` (default ``"gates"``, falling
    back to the default stream of ``nnx.Rngs``).

    Args:
      features: Number of gates on the last axis, or the gated trailing shape.
      droprate_init: Initial probability that a gate is off.
      beta: Temperature.
      gamma: Stretch lower end.
      zeta: Stretch upper end.
      deterministic: Use the test-time gate (``model.eval()`` sets it).
      per_example: Draw one gate vector per example.
      rng_collection: Name of the RNG stream for samples.
      param_dtype: Dtype of ``log_alpha``.
      rngs: ``nnx.Rngs``: its ``params`` stream initializes ``log_alpha``, its
        ``rng_collection`` stream draws gates.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxprune.nnx
      >>> gate = jaxprune.nnx.HardConcreteGate(3, rngs=nnx.Rngs(0))
      >>> gate(jnp.ones((2, 3))).shape
      (2, 3)
      >>> gate.eval()
      >>> bool(jnp.all(gate(jnp.ones((1, 3)))[0] == gate.gate_values()))
      True

    References:
      Louizos, Welling, Kingma, "Learning Sparse Neural Networks through L0 Regularization",
      ICLR 2018. https://arxiv.org/abs/1712.01312
    """

    def __init__(
        self,
        features: int | Sequence[int],
        *,
        droprate_init: float = 0.5,
        beta: float = gates_math.HC_BETA,
        gamma: float = gates_math.HC_GAMMA,
        zeta: float = gates_math.HC_ZETA,
        deterministic: bool | None = False,
        per_example: bool = False,
        rng_collection: str = "gates",
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        shape = gate_shape(features)
        gates_math.check_hc_constants(beta, gamma, zeta)
        self.features = features
        self.beta, self.gamma, self.zeta = beta, gamma, zeta
        self.deterministic = deterministic
        self.per_example = per_example
        self.rng_collection = rng_collection
        init = hard_concrete_init(droprate_init)
        self.l0_log_alpha = HardConcreteParam(init(rngs.params(), shape, param_dtype))
        self.rngs = _stream(rngs, rng_collection)

    def __call__(
        self, x: jax.Array, *, deterministic: bool | None = None, key: Any = None
    ) -> jax.Array:
        """Gates ``x``; ``key`` (a key, ``nnx.Rngs`` or stream) overrides the module's stream."""
        shape = gate_shape(self.features)
        la = self.l0_log_alpha[...]
        if _resolve_deterministic(deterministic, self.deterministic, "HardConcreteGate"):
            z = gates_math.hard_concrete_deterministic(la, gamma=self.gamma, zeta=self.zeta)
        else:
            k = _key(key, self.rngs, self.rng_collection, "HardConcreteGate")
            z = gates_math.hard_concrete_sample(
                k,
                la,
                sample_shape(x, shape, self.per_example),
                beta=self.beta,
                gamma=self.gamma,
                zeta=self.zeta,
            )
        return apply_gate(x, z, shape)

    def set_view(self, deterministic: bool | None = None):
        """Used by ``nnx.view``: sets ``deterministic`` when given."""
        if deterministic is not None:
            self.deterministic = deterministic

    def expected_l0(self) -> jax.Array:
        """Expected number of non-zero gates, ``sum P(z != 0)`` (float32 scalar)."""
        return jnp.sum(
            gates_math.hard_concrete_prob_nonzero(
                self.l0_log_alpha[...], beta=self.beta, gamma=self.gamma, zeta=self.zeta
            )
        )

    def gate_values(self) -> jax.Array:
        """The deterministic (test-time) gates."""
        return gates_math.hard_concrete_deterministic(
            self.l0_log_alpha[...], gamma=self.gamma, zeta=self.zeta
        )

    def mask(self) -> jax.Array:
        """Bool mask of the gates that are non-zero at test time."""
        return self.gate_values() > 0


class BernoulliGate(nnx.Module):
    """Srinivas-style straight-through Bernoulli gates; NNX twin of the Linen module.

    See :class:`jaxprune.linen.BernoulliGate` for exactly what is implemented and why. The
    parameter is ``bernoulli_gate``, a :class:`BernoulliParam`.

    Args:
      features: Number of gates on the last axis, or the gated trailing shape.
      init_value: Initial ``g``.
      deterministic: Use ``1[g > 0.5]`` (``model.eval()`` sets it).
      per_example: Draw one sample per example.
      rng_collection: Name of the RNG stream for samples.
      param_dtype: Dtype of ``g``.
      rngs: ``nnx.Rngs`` (or ``None`` if every call passes ``key`` or is deterministic).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxprune.nnx
      >>> gate = jaxprune.nnx.BernoulliGate(3, init_value=1.0, rngs=nnx.Rngs(0))
      >>> gate(jnp.ones((1, 3)))
      Array([[1., 1., 1.]], dtype=float32)

    References:
      Srinivas, Subramanya, Babu, "Training Sparse Neural Networks", CVPR Workshops 2017.
      https://arxiv.org/abs/1611.06694
    """

    def __init__(
        self,
        features: int | Sequence[int],
        *,
        init_value: float = 0.9,
        deterministic: bool | None = False,
        per_example: bool = False,
        rng_collection: str = "gates",
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs | None = None,
    ):
        shape = gate_shape(features)
        self.features = features
        self.deterministic = deterministic
        self.per_example = per_example
        self.rng_collection = rng_collection
        self.bernoulli_gate = BernoulliParam(jnp.full(shape, init_value, param_dtype))
        self.rngs = _stream(rngs, rng_collection)

    def __call__(
        self, x: jax.Array, *, deterministic: bool | None = None, key: Any = None
    ) -> jax.Array:
        """Gates ``x``; ``key`` overrides the module's stream."""
        shape = gate_shape(self.features)
        g = self.bernoulli_gate[...]
        if _resolve_deterministic(deterministic, self.deterministic, "BernoulliGate"):
            z = gates_math.bernoulli_gate_deterministic(g)
        else:
            k = _key(key, self.rngs, self.rng_collection, "BernoulliGate")
            z = gates_math.bernoulli_gate_sample(k, g, sample_shape(x, shape, self.per_example))
        return apply_gate(x, z, shape)

    def set_view(self, deterministic: bool | None = None):
        """Used by ``nnx.view``: sets ``deterministic`` when given."""
        if deterministic is not None:
            self.deterministic = deterministic

    def gate_values(self) -> jax.Array:
        """The deterministic (test-time) gates ``1[g > 0.5]``."""
        return gates_math.bernoulli_gate_deterministic(self.bernoulli_gate[...])

    def mask(self) -> jax.Array:
        """Bool mask ``g > 0.5``."""
        return self.bernoulli_gate[...] > 0.5


class ChannelGate(nnx.Module):
    """A learnable scale per channel, ``x * g``; NNX twin of the Linen module.

    The parameter is ``channel_gate``, a :class:`ChannelGateParam`.

    Args:
      features: Number of gates on the last axis, or the gated trailing shape.
      init_value: Initial gate value.
      param_dtype: Dtype of the gates.
      rngs: Unused (accepted for a uniform constructor).

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune.nnx
      >>> jaxprune.nnx.ChannelGate(2, init_value=0.5)(jnp.ones((1, 2)))
      Array([[0.5, 0.5]], dtype=float32)
    """

    def __init__(
        self,
        features: int | Sequence[int],
        *,
        init_value: float = 1.0,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs | None = None,
    ):
        del rngs
        self.features = features
        self.channel_gate = ChannelGateParam(
            jnp.full(gate_shape(features), init_value, param_dtype)
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """Returns ``x * g`` over the trailing axes."""
        return apply_gate(x, self.channel_gate[...], gate_shape(self.features))

    def gate_values(self) -> jax.Array:
        """The gates."""
        return self.channel_gate[...]

    def mask(self) -> jax.Array:
        """Bool mask ``g != 0``."""
        return self.channel_gate[...] != 0


def _as_filter(types: Sequence[Any]) -> Any:
    if not types:
        raise TypeError("give at least one Variable type (e.g. jaxprune.nnx.GateParam).")
    for t in types:
        if not (isinstance(t, type) and issubclass(t, nnx.Variable)):
            raise TypeError(f"labels are selected by nnx.Variable subclasses, got {t!r}.")
    return tuple(types)


def labels(model: nnx.Module, *types: type, wrt: Any = nnx.Param) -> dict:
    """``True`` for the parameters of ``model`` whose ``Variable`` is one of ``types``.

    The result is a plain nested dict over ``nnx.state(model, wrt)`` (the tree
    ``nnx.Optimizer(model, tx, wrt=wrt)`` hands to optax). jaxprune's transforms match it to
    the parameters by path, so it works as their ``mask`` inside ``nnx.Optimizer``; for optax's
    own masks (``optax.adamw(..., mask=...)``) use :func:`mask_fn`.

    Args:
      model: An NNX module.
      *types: ``nnx.Variable`` subclasses, e.g. :class:`GateParam`.
      wrt: The filter of the optimized state (default ``nnx.Param``).

    Returns:
      A nested dict of Python bools.

    Raises:
      TypeError: If no type is given or one is not an ``nnx.Variable`` subclass.

    Example:
      >>> from flax import nnx
      >>> import jaxprune.nnx
      >>> class Net(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.fc = nnx.Linear(2, 3, rngs=rngs)
      ...         self.gate = jaxprune.nnx.ChannelGate(3)
      >>> jaxprune.nnx.labels(Net(nnx.Rngs(0)), jaxprune.nnx.GateParam)
      {'fc': {'bias': False, 'kernel': False}, 'gate': {'channel_gate': True}}
    """
    kinds = _as_filter(types)
    state = nnx.state(model, wrt)
    tree = jax.tree.map(
        lambda v: isinstance(v, kinds), state, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )
    return nnx.to_pure_dict(tree)


def mask_fn(
    model: nnx.Module, *types: type, wrt: Any = nnx.Param, invert: bool = False
) -> Callable[[Any], Any]:
    """A callable ``params -> bool tree shaped like params`` for optax masks (by type).

    Use it where optax needs a mask with exactly the structure it sees, e.g. weight decay that
    spares the gates inside ``nnx.Optimizer``::

        no_gates = jaxprune.nnx.mask_fn(model, jaxprune.nnx.GateParam, invert=True)
        tx = optax.adamw(1e-3, weight_decay=1e-4, mask=no_gates)

    Args:
      model: An NNX module.
      *types: ``nnx.Variable`` subclasses.
      wrt: The filter of the optimized state.
      invert: Label the parameters that are *not* of ``types``.

    Returns:
      A function of a params tree.

    Example:
      >>> from flax import nnx
      >>> import jaxprune.nnx
      >>> gate = jaxprune.nnx.ChannelGate(3)
      >>> fn = jaxprune.nnx.mask_fn(gate, jaxprune.nnx.GateParam, invert=True)
      >>> fn({"channel_gate": 0.0})
      {'channel_gate': False}
    """
    flags = labels(model, *types, wrt=wrt)
    if invert:
        flags = jax.tree.map(lambda f: not f, flags)

    def fn(params):
        return base.broadcast_prefix(flags, params, "labels")

    return fn


def gate_labels(model: nnx.Module, *, wrt: Any = nnx.Param) -> dict:
    """Labels of every jaxprune gate parameter of ``model`` (by type: :class:`GateParam`).

    Args:
      model: An NNX module.
      wrt: The filter of the optimized state.

    Returns:
      A nested dict of Python bools over ``nnx.state(model, wrt)``.

    Example:
      >>> from flax import nnx
      >>> import jaxprune.nnx
      >>> jaxprune.nnx.gate_labels(jaxprune.nnx.ChannelGate(2))
      {'channel_gate': True}
    """
    return labels(model, GateParam, wrt=wrt)


def slimming_labels(model: nnx.Module, *, include_gates: bool = True, wrt: Any = nnx.Param) -> dict:
    """``True`` for the ``scale`` of every ``nnx.BatchNorm`` (and :class:`ChannelGate` gates).

    Found by module type, so ``LayerNorm``/``GroupNorm`` scales are not selected.

    Args:
      model: An NNX module.
      include_gates: Also label :class:`ChannelGateParam` parameters.
      wrt: The filter of the optimized state.

    Returns:
      A nested dict of Python bools over ``nnx.state(model, wrt)``.

    Example:
      >>> from flax import nnx
      >>> import jaxprune.nnx
      >>> class Net(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.bn = nnx.BatchNorm(3, rngs=rngs)
      ...         self.ln = nnx.LayerNorm(3, rngs=rngs)
      >>> labels = jaxprune.nnx.slimming_labels(Net(nnx.Rngs(0)))
      >>> labels["bn"]["scale"], labels["ln"]["scale"]
      (True, False)

    References:
      Liu et al., "Learning Efficient Convolutional Networks through Network Slimming",
      ICCV 2017. https://arxiv.org/abs/1708.06519
    """
    scale_paths = set()
    for path, module in nnx.iter_modules(model):
        if isinstance(module, nnx.BatchNorm) and module.scale is not None:
            scale_paths.add("/".join(str(k) for k in (*path, "scale")))
    state = nnx.state(model, wrt)

    def one(path, v):
        p = base.path_str(path)
        if include_gates and isinstance(v, ChannelGateParam):
            return True
        return p in scale_paths

    tree = jax.tree_util.tree_map_with_path(
        one, state, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )
    return nnx.to_pure_dict(tree)
