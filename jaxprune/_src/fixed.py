"""``keep_masks``: retrain with a given, fixed mask (one-shot, N:M, random connections, DNS)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxprune._src import base, masking
from jaxprune._src import sparsity as sparsity_lib


def keep_masks(masks: base.Mask) -> optax.GradientTransformationExtraArgs:
    """Keeps the pruned entries of a fixed mask at exactly ``0.0`` during training.

    The masks are stored in the state (a :class:`~jaxprune.SparsityState`, so
    :func:`jaxprune.masks` finds them and checkpoints hold them); every update of a pruned
    entry becomes ``-param``, so ``optax.apply_updates`` leaves it exactly zero whatever the
    optimizer before it did. Place it **last** in the chain: :func:`jaxprune.masks` raises
    when it finds pruned weights that are not zero (see its chain-order check). Use it to
    retrain after one-shot pruning, for N:M (ASP) fine-tuning, for Changpinyo et al.'s fixed
    random connections, or for the fixed-mask phase after dynamic network surgery.

    Args:
      masks: A mask tree for the params (bool leaves broadcastable to the parameter, or
        ``None`` for leaves that are never pruned). Checked against the params at ``init``.

    Returns:
      A :class:`optax.GradientTransformationExtraArgs` whose state is a
      :class:`~jaxprune.SparsityState` with the given masks.

    Raises:
      ValueError: If the masks do not fit the params (the message names the path).
      TypeError: If a mask leaf is not boolean.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import jaxprune
      >>> params = {"w": jnp.array([1.0, 2.0, 3.0])}
      >>> keep = {"w": jnp.array([True, False, True])}
      >>> tx = optax.chain(optax.sgd(0.1), jaxprune.keep_masks(keep))
      >>> updates, _ = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
      >>> optax.apply_updates(params, updates)["w"]
      Array([0.9, 0. , 2.9], dtype=float32)
    """

    def init_fn(params):
        base.check_not_variables(params)
        masking.check_masks(params, masks)
        stored = jax.tree.map(
            lambda p, m: None if (p is None or m is None) else jnp.asarray(m, jnp.bool_),
            params,
            masks,
            is_leaf=base.is_none,
        )
        return sparsity_lib.SparsityState(
            count=jnp.zeros([], jnp.int32), masks=stored, leaked=jnp.zeros([], jnp.int32)
        )

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(base.NO_PARAMS_MSG)
        base.check_not_variables(params)
        base.check_structure(params, updates, "updates")
        leaked = state.leaked
        if leaked is not None:  # The first update is the one that zeroes the pruned entries.
            found = sparsity_lib.count_leaked(params, state.masks)
            leaked = jnp.maximum(leaked, jnp.where(state.count > 0, found, 0))
        updates = jax.tree.map(
            lambda u, p, m: u if (m is None or u is None) else jnp.where(m, u, -p.astype(u.dtype)),
            updates,
            params,
            state.masks,
            is_leaf=base.is_none,
        )
        return updates, state._replace(count=optax.safe_increment(state.count), leaked=leaked)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
