"""Folding the constant output of pruned channels forward into the consumers.

When a channel's producer weights are removed, the channel does not go silent: it keeps
emitting a constant, ``act(bias)`` or ``act(beta - gamma * mean / sqrt(var + eps))`` for a
batch-normalized channel (network slimming prunes channels whose ``gamma`` is near zero,
which emit exactly that). Masking the bias and BN shift too (what
:func:`jaxprune.expand_group_masks` does) drops that constant, which changes the function.
:func:`fold_forward` instead measures the constant each pruned channel feeds every consumer
and adds its contribution to the consumer's bias (or, for a bias-free consumer followed by
batch normalization, subtracts it from the running mean), so that the shrunk network computes
what the network with only the producer weights removed computes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src import base
from jaxprune._src.groups import Group, Member, channel_indices, check_groups, name_hint
from jaxprune._src.interpret import run_tagged


def _kernels_on(g: Group, ndims: dict[str, int], from_end: int) -> list[Member]:
    """Members on axis ``ndim - from_end`` of a kernel (a leaf with 2 or more axes)."""
    return [
        m
        for m in g.members
        if ndims[m.path] >= 2 and m.axis % ndims[m.path] == ndims[m.path] - from_end
    ]


def _producer_kernels(g: Group, ndims: dict[str, int]) -> list[Member]:
    return _kernels_on(g, ndims, 1)


def _consumer_kernels(g: Group, ndims: dict[str, int]) -> list[Member]:
    return _kernels_on(g, ndims, 2)


def _capture(
    apply_fn: Any, variables: Any, inputs: tuple, kernels: set[str]
) -> dict[str, np.ndarray]:
    """The left operand of every dot_general/conv whose kernel is one of ``kernels``.

    Evaluates ``apply_fn(variables, *inputs)`` equation by equation
    (:func:`jaxprune._src.interpret.run_tagged`, a client of the one jaxpr walker), following
    each kernel leaf through dtype conversions.
    """
    seen: dict[str, np.ndarray] = {}

    def visit(eqn, xs, ts):
        if eqn.primitive.name in ("dot_general", "conv_general_dilated") and ts[1] in kernels:
            seen[ts[1]] = np.asarray(xs[0])

    run_tagged(apply_fn, variables, inputs, visit)
    return seen


def fold_forward(
    apply_fn: Any,
    variables: Any,
    group_masks: Mapping[str, Any],
    groups: Sequence[Group],
    *example_inputs: Any,
) -> tuple[Any, Any]:
    """Moves the constant output of pruned channels into the consumers' biases.

    For every group, the kernels that *produce* its channels (members on a kernel's last
    axis) are zeroed at the pruned channels; ``apply_fn`` then runs once on
    ``example_inputs``, evaluated equation by equation from its jaxpr, recording the input of
    every *consumer* kernel (members on a kernel's input axis) at its ``dot_general`` or
    convolution. A pruned channel's value there is a constant; its contribution
    ``sum(value * kernel slice)`` is added to the consumer's ``bias`` (the leaf next to its
    kernel), or, for a consumer without a bias whose output channels are batch-normalized
    (one group member named ``mean``), subtracted from that running mean. Shrinking the
    returned variables then gives the network with only the producer weights removed:
    exactly for Dense consumers (flattened maps included) and ``VALID`` convolutions; a
    ``SAME``-padded convolution sees zeros instead of the constant at the border, so there
    the fold is exact only in the interior. Works for Linen (``model.apply`` and its
    variables) and NNX (``lambda state, x: nnx.merge(graphdef, state)(x)`` and the state).

    This keeps what channel pruning by small BN scales (Liu et al., "Learning efficient
    convolutional networks through network slimming", ICCV 2017) leaves behind: a channel
    with ``gamma ~ 0`` still emits ``act(beta)``.

    Args:
      apply_fn: The model function, called as ``apply_fn(variables, *example_inputs)``, in
        inference mode (BN with running averages).
      variables: Its variables (Linen ``{"params": ..., "batch_stats": ...}`` or an NNX
        state); group member paths name leaves of this tree, as
        :func:`jaxprune.trace_groups` returns them.
      group_masks: ``{group name: bool vector}`` (``True`` = kept).
      groups: The groups.
      *example_inputs: Inputs for one forward pass (a small real batch).

    Returns:
      ``(folded, reference)``: the folded variables (shrink them with
      :func:`jaxprune.shrink`), and the variables with only the producer weights of pruned
      channels zeroed, whose outputs the shrunk folded model reproduces.

    Raises:
      ValueError: If a group has no mask, a consumer is never reached, a pruned channel's
        input to a consumer is not constant (the message names the consumer), or a
        consumer has neither a bias nor a batch-normalized output to fold into.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> import jaxprune
      >>> class MLP(nn.Module):
      ...     hidden: int = 4
      ...     @nn.compact
      ...     def __call__(self, x):
      ...         h = nn.relu(nn.Dense(self.hidden, name="hidden")(x))
      ...         return nn.Dense(2, name="out")(h)
      >>> x = jnp.ones((3, 5))
      >>> v = MLP().init(jax.random.key(0), x)
      >>> v = jax.tree.map(lambda a: a + 0.5, v)  # non-zero biases
      >>> g = jaxprune.trace_groups(MLP().apply, v, x).groups
      >>> keep = {g[0].name: jnp.array([True, False, True, True])}
      >>> folded, ref = jaxprune.fold_forward(MLP().apply, v, keep, g, x)
      >>> small = jaxprune.shrink(folded, keep, g)
      >>> bool(jnp.allclose(MLP(hidden=3).apply(small, x), MLP().apply(ref, x), atol=1e-5))
      True
    """
    leaves = dict(base.leaves_with_paths(variables))
    ndims = {p: np.ndim(x) for p, x in leaves.items() if x is not None}
    sizes = check_groups(groups, variables)
    keeps = _keep_vectors(groups, group_masks, sizes)
    reference = _rebuild(variables, _zero_producers(leaves, groups, ndims, sizes, keeps))
    consumers = {m.path for g in groups for m in _consumer_kernels(g, ndims)}
    seen = _capture(apply_fn, reference, example_inputs, consumers)

    folded = {p: (None if x is None else np.array(x)) for p, x in leaves.items()}
    for g in groups:
        drop_mask = ~keeps[g.name]
        if not drop_mask.any():
            continue
        for m in _consumer_kernels(g, ndims):
            delta = _pruned_contribution(g, m, seen, leaves[m.path], sizes[g.name], drop_mask)
            _fold_into(folded, groups, g, m, ndims, delta)
    return _rebuild(variables, folded), reference


def _keep_vectors(
    groups: Sequence[Group], group_masks: Mapping[str, Any], sizes: Mapping[str, int]
) -> dict[str, np.ndarray]:
    """``{group name: bool keep vector}``, checked against the groups' channel counts."""
    keeps = {}
    for g in groups:
        if g.name not in group_masks:
            raise ValueError(f"no mask for group {g.name!r}.{name_hint(g.name, group_masks)}")
        keep = np.asarray(group_masks[g.name]).astype(bool)
        if keep.shape != (sizes[g.name],):
            raise ValueError(
                f"the keep vector of group {g.name!r} has shape {keep.shape}, but the group has "
                f"{sizes[g.name]} channels: pass one bool per channel."
            )
        keeps[g.name] = keep
    return keeps


def _zero_producers(
    leaves: Mapping[str, Any],
    groups: Sequence[Group],
    ndims: Mapping[str, int],
    sizes: Mapping[str, int],
    keeps: Mapping[str, np.ndarray],
) -> dict[str, Any]:
    """The reference leaves: producer kernels of pruned channels zeroed, nothing else."""
    ref = {p: (None if x is None else np.array(x)) for p, x in leaves.items()}
    for g in groups:
        for m in _producer_kernels(g, ndims):
            arr = ref[m.path]
            axis = m.axis % arr.ndim
            drop = channel_indices(m, sizes[g.name], arr.shape[axis], ~keeps[g.name])
            idx = [slice(None)] * arr.ndim
            idx[axis] = drop
            arr[tuple(idx)] = 0
    return ref


def _pruned_contribution(
    g: Group,
    m: Member,
    seen: Mapping[str, np.ndarray],
    kernel: Any,
    size: int,
    drop_mask: np.ndarray,
) -> np.ndarray:
    """What the (constant) pruned channels of ``g`` add to each output of consumer ``m``."""
    if m.path not in seen:
        raise ValueError(f"consumer kernel {m.path!r} was not used by the model.")
    x = np.asarray(seen[m.path], np.float64)
    kernel = np.asarray(kernel, np.float64)
    if x.shape[-1] != kernel.shape[-2]:
        raise ValueError(
            f"consumer {m.path!r} reads {x.shape[-1]} channels with a kernel of "
            f"{kernel.shape[-2]} inputs (a grouped convolution): folding into it is "
            "not supported."
        )
    if kernel.ndim > 2:  # a conv: the values at an interior position
        x = x[(slice(None), *(s // 2 for s in x.shape[1:-1]))]
    rows = channel_indices(m, size, x.shape[-1], drop_mask)
    vals = np.take(x.reshape(-1, x.shape[-1]), rows, axis=1)
    spread = np.ptp(vals, axis=0)
    if np.any(spread > 1e-4 * np.maximum(np.abs(vals).max(axis=0), 1.0)):
        raise ValueError(
            f"the pruned channels of group {g.name!r} do not feed {m.path!r} a "
            "constant: cannot fold (is the model in inference mode?)."
        )
    const = vals.mean(axis=0)
    w = np.take(kernel, rows, axis=kernel.ndim - 2)  # (..., rows, out)
    delta = np.tensordot(const, np.moveaxis(w, -2, 0), axes=1)  # (..., out)
    return delta.reshape(-1, w.shape[-1]).sum(axis=0)  # over the kernel window


def _fold_into(
    folded: dict[str, Any],
    groups: Sequence[Group],
    g: Group,
    m: Member,
    ndims: Mapping[str, int],
    delta: np.ndarray,
) -> None:
    """Adds ``delta`` to the bias of consumer ``m``, or subtracts it from its BN mean."""
    bias = m.path.rsplit("/", 1)[0] + "/bias"
    if folded.get(bias) is not None:
        folded[bias] = folded[bias] + delta.astype(folded[bias].dtype)
        return
    mean = _following_mean(groups, m.path, ndims)
    if mean is None:
        raise ValueError(
            f"consumer {m.path!r} has no bias and no batch-normalized output to fold "
            f"the pruned channels of group {g.name!r} into (a bias-free consumer "
            "needs exactly one BN running mean in the group of its output channels; "
            "residual streams with several BN layers are not supported)."
        )
    folded[mean] = folded[mean] - delta.astype(folded[mean].dtype)


def _following_mean(groups: Sequence[Group], kernel_path: str, ndims: dict[str, int]):
    """The BN ``mean`` leaf in the group of ``kernel_path``'s output channels, if any."""
    for g in groups:
        if any(m.path == kernel_path and m in _producer_kernels(g, ndims) for m in g.members):
            means = [m.path for m in g.members if m.path.rsplit("/", 1)[-1] == "mean" and m.whole]
            if len(means) == 1:
                return means[0]
    return None


def _rebuild(variables: Any, flat: dict[str, Any]) -> Any:
    def one(path, x):
        if x is None:
            return None
        return jnp.asarray(flat[base.path_str(path)], dtype=x.dtype)

    return jax.tree_util.tree_map_with_path(one, variables, is_leaf=base.is_none)
