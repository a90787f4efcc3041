"""Writing structured groups by hand for common layer patterns.

:func:`channel_group` builds the :class:`~jaxprune.Group` of one set of channels from module
paths: the layers that *produce* the channels (their kernel's last axis and their bias), the
normalization layers that act on them per channel (every vector leaf: BN scale, shift and
running statistics) and the layers that *consume* them (their kernel's input axis, or the
strided rows of a Dense layer after a Flax flatten). :func:`chain_groups` does it for every
boundary of a sequential network. The results are the same objects :func:`jaxprune.trace_groups`
discovers (same members, order and names), so both routes feed the same scoring, selection,
masking and :func:`jaxprune.shrink`. Use these when a model cannot be traced, or to state the
coupling explicitly; nothing here checks that the model really is wired that way.

The coupling rules are those of structured pruning since Li et al. ("Pruning filters for
efficient ConvNets", ICLR 2017: a filter, its feature map and the next layer's kernels go
together) and Wen et al. (SSL, NeurIPS 2016); Fang et al. (DepGraph, CVPR 2023) derive such
groups automatically, as :func:`jaxprune.trace_groups` does from the jaxpr.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxprune._src import base
from jaxprune._src.groups import Group, Member
from jaxprune._src.trace import named_group


def _index(tree: Any) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    items = base.leaves_with_paths(tree)
    shapes = {p: tuple(np.shape(x)) for p, x in items if x is not None}
    order = {p: k for k, (p, x) in enumerate(items) if x is not None}
    return shapes, order


def _module_leaves(shapes: dict[str, tuple[int, ...]], module: str, what: str) -> list[str]:
    """Leaves directly under ``module``, or under ``<collection>/module`` (Linen variables)."""
    if not isinstance(module, str) or not module:
        raise TypeError(f"{what}: module paths must be non-empty strings, got {module!r}.")
    module = module.strip("/")
    exact = [p for p in shapes if p.rsplit("/", 1)[0] == module and "/" in p]
    if exact:
        return exact
    found = [
        p for p in shapes if p.count("/") >= 2 and p.rsplit("/", 1)[0].split("/", 1)[1] == module
    ]
    if not found:
        raise ValueError(f"{what}: no leaves under module {module!r} in the tree.")
    return found


def _kernel(shapes, leaves: list[str], module: str, what: str) -> str:
    kernels = [p for p in leaves if len(shapes[p]) >= 2]
    if len(kernels) != 1:
        raise ValueError(
            f"{what} {module!r} must have exactly one kernel (a leaf with 2 or more axes), "
            f"found {kernels}."
        )
    return kernels[0]


def _channel_count(counts: dict[str, int]) -> int:
    sizes = set(counts.values())
    if len(sizes) != 1:
        raise ValueError(f"producers disagree on the number of channels: {counts}.")
    return sizes.pop()


def _members(shapes, producers, consumers, norms) -> list[Member]:
    if isinstance(producers, str):
        producers = [producers]
    if isinstance(consumers, str):
        consumers = [consumers]
    if isinstance(norms, str):
        norms = [norms]
    if not producers:
        raise ValueError("`producers` must name at least one layer.")
    members, counts = [], {}
    for module in producers:
        leaves = _module_leaves(shapes, module, "producer")
        kernel = _kernel(shapes, leaves, module, "producer")
        counts[kernel] = shapes[kernel][-1]
        for p in leaves:
            if len(shapes[p]) >= 2:
                members.append(Member(p, len(shapes[p]) - 1))
            elif len(shapes[p]) == 1:
                members.append(Member(p, 0))
    channels = _channel_count(counts)
    for module in norms:
        for p in _module_leaves(shapes, module, "norm"):
            if len(shapes[p]) != 1 or shapes[p][0] != channels:
                raise ValueError(
                    f"norm leaf {p!r} has shape {shapes[p]}; a per-channel norm needs "
                    f"({channels},)."
                )
            members.append(Member(p, 0))
    for module in consumers:
        kernel = _kernel(shapes, _module_leaves(shapes, module, "consumer"), module, "consumer")
        shape = shapes[kernel]
        if len(shape) == 2:  # Dense (in, out): whole rows, or a flatten's strided rows
            rows = shape[0]
            if rows % channels:
                raise ValueError(
                    f"consumer {kernel!r} has {rows} input rows, not a multiple of the "
                    f"{channels} channels."
                )
            members.append(Member(kernel, 0, outer=rows // channels))
        else:  # convolution (..., in, out)
            if shape[-2] != channels:
                raise ValueError(
                    f"consumer {kernel!r} reads {shape[-2]} input channels, not {channels} "
                    "(a depthwise convolution that carries the channels on is a producer)."
                )
            members.append(Member(kernel, len(shape) - 2))
    return [m for m in members if shapes[m.path][m.axis] > 1]


def channel_group(
    tree: Any,
    producers: str | Sequence[str],
    consumers: str | Sequence[str] = (),
    *,
    norms: str | Sequence[str] = (),
) -> Group:
    """Builds the group of one set of channels from the layers that produce and read it.

    Module paths are ``'/'``-joined paths of the tree's modules (``'block1/conv2'``); for a
    Linen ``variables`` dict they are looked up under every collection, so
    ``norms='bn1'`` finds ``params/bn1/{scale,bias}`` and ``batch_stats/bn1/{mean,var}``.

    * A **producer** (``Dense``, ``Conv``, a depthwise ``Conv`` that carries the channels on)
      contributes its kernel's last axis and the axis 0 of every vector leaf (its bias).
      Several producers whose outputs are added (a residual sum) share one group.
    * A **norm** contributes axis 0 of every leaf (BN scale, shift, mean, var).
    * A **consumer** contributes its kernel's input axis: axis ``-2`` of a convolution, the
      rows of a Dense kernel; rows that are a multiple of the channels are taken as the
      Flax flatten of an ``(H, W, C)`` map (``Member(..., outer=H * W)``).

    Members are sorted by leaf order and the group is named like discovery names it
    (``'params/conv1/kernel[3]'``), so ``channel_group`` and :func:`jaxprune.trace_groups`
    give equal objects for the same coupling.

    Args:
      tree: The params or Linen variables (arrays or ``jax.ShapeDtypeStruct``; only
        shapes are read).
      producers: Module path(s) whose outputs are the channels.
      consumers: Module path(s) that read the channels.
      norms: Module path(s) of per-channel normalization layers.

    Returns:
      A :class:`jaxprune.Group`.

    Raises:
      ValueError: If a module is not in the tree, a producer or consumer has no single
        kernel, or the channel counts do not fit (the message names the path).
      TypeError: If a module path is not a string.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> p = {"conv1": {"kernel": jnp.ones((3, 3, 1, 8)), "bias": jnp.ones(8)},
      ...      "bn1": {"scale": jnp.ones(8), "bias": jnp.ones(8)},
      ...      "fc": {"kernel": jnp.ones((4 * 4 * 8, 10))}}
      >>> g = jaxprune.channel_group(p, "conv1", "fc", norms="bn1")
      >>> g.name, [(m.path, m.axis, m.outer) for m in g.members]  # doctest: +NORMALIZE_WHITESPACE
      ('conv1/kernel[3]', [('bn1/bias', 0, 1), ('bn1/scale', 0, 1), ('conv1/bias', 0, 1),
       ('conv1/kernel', 3, 1), ('fc/kernel', 0, 16)])
    """
    shapes, order = _index(tree)
    members = _members(shapes, producers, consumers, norms)
    ndims = {p: len(s) for p, s in shapes.items()}
    return named_group(members, order, ndims, set())


def chain_groups(
    tree: Any, layers: Sequence[str], *, norms: Mapping[str, str] | None = None
) -> list[Group]:
    """Groups of a sequential network: one per boundary between consecutive layers.

    For ``layers = [l0, l1, ..., ln]`` the output channels of ``l_i`` (with the norm layer
    ``norms[l_i]`` if given) are read by ``l_{i+1}``; the last layer's outputs are the model
    output and form no group. Activations, pooling and a Flax flatten between layers do not
    change the channels (see :func:`channel_group`). Covers MLPs, LeNet and VGG-style nets.

    Args:
      tree: The params or Linen variables (only shapes are read).
      layers: Module paths in forward order.
      norms: Optional map from a layer to the normalization layer that follows it.

    Returns:
      A list of :class:`jaxprune.Group` in forward order, named as discovery names them.

    Raises:
      ValueError: As :func:`channel_group`, or if ``norms`` names a layer not in ``layers``.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune
      >>> p = {"fc1": {"kernel": jnp.ones((784, 300)), "bias": jnp.ones(300)},
      ...      "fc2": {"kernel": jnp.ones((300, 100)), "bias": jnp.ones(100)},
      ...      "fc3": {"kernel": jnp.ones((100, 10)), "bias": jnp.ones(10)}}
      >>> [g.name for g in jaxprune.chain_groups(p, ["fc1", "fc2", "fc3"])]
      ['fc1/kernel[1]', 'fc2/kernel[1]']
    """
    if isinstance(layers, str) or len(layers) < 2:
        raise ValueError(f"`layers` must list at least two module paths, got {layers!r}.")
    norms = dict(norms or {})
    unknown = sorted(set(norms) - set(layers))
    if unknown:
        raise ValueError(f"`norms` names layers not in `layers`: {unknown}.")
    shapes, order = _index(tree)
    ndims = {p: len(s) for p, s in shapes.items()}
    taken: set[str] = set()
    out = []
    for producer, consumer in itertools.pairwise(layers):
        norm = [norms[producer]] if producer in norms else []
        members = _members(shapes, [producer], [consumer], norm)
        out.append(named_group(members, order, ndims, taken))
    return out
