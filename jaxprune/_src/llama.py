"""Structural width and depth pruning of LLaMA-style decoders.

The groups here are **declared** from a config-like object, with names a config can be
rebuilt from (:func:`llama_widths`). :func:`jaxprune.trace_groups` discovers the same
attention and MLP groups from the jaxpr of such a decoder (the KV groups and query heads
through the reshapes to ``(kv_heads, groups, head_dim)``, fused segments as offset members;
about 0.4-0.7 s for the 30 blocks of SmolLM2-135M), plus a value-``head_dim`` group per block
that a single-``head_dim`` config cannot express; it finds the residual width unprunable
(RMSNorm's mean depends on the width). Paths follow the naming of a Flax NNX/Linen
decoder with ``blocks/{i}/attn/{q,k,v,o}`` (or a fused ``qkv``), ``blocks/{i}/mlp/{gate,up,
down}`` (or a fused ``gate_up``), ``blocks/{i}/{attn_norm,mlp_norm}/scale``, ``embed/
embedding``, ``norm/scale`` and, untied, ``head/kernel``. Kernels use Flax's ``(in, out)``
layout.

* Attention heads (``heads='kv_group'``): one channel is a KV group: one key head, one value
  head and the ``num_heads // num_kv_heads`` query heads that read it, with the matching rows
  of the output projection. ``heads='query_head'``: one channel is the ``i``-th query head of
  *every* KV group alike, so the query/KV ratio stays an integer after shrinking.
  ``head_dim`` is never a channel: RoPE rotates pairs of its dimensions together and the
  logits are scaled by ``1/sqrt(head_dim)``.
* SwiGLU MLP: the gate and up output neurons and the down projection's input rows.
* Fused projections: the segments of a ``qkv`` or ``gate_up`` kernel are offset members.
* Residual width (``residual=True``): every norm scale, every projection's input or output
  and the (tied) embedding form one group across the whole model. RMSNorm averages over the
  width, so a masked model is not numerically the shrunk one for this group (the mean runs
  over a different count); the attention and MLP groups are exact.

Depth: :func:`block_importance` scores blocks by how much they change the residual stream
(Men et al. 2024, "ShortGPT: Layers in Large Language Models are More Redundant Than You
Expect"; Muralidharan et al. 2024, "Compact Language Models via Pruning and Knowledge
Distillation" (Minitron)), and :func:`drop_blocks` removes blocks from a parameter tree.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxprune._src.groups import Group, Member

_FIELDS = ("dim", "num_layers", "num_heads", "num_kv_heads", "head_dim", "hidden_dim")


def _read(config: Any) -> dict[str, Any]:
    out = {}
    for f in _FIELDS:
        v = config.get(f) if isinstance(config, Mapping) else getattr(config, f, None)
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"config.{f} must be a positive int, got {v!r}.")
        out[f] = int(v)
    for f, default in (("tie_embeddings", True), ("fused_qkv", False), ("fused_gate_up", False)):
        v = config.get(f, default) if isinstance(config, Mapping) else getattr(config, f, default)
        out[f] = bool(v)
    if out["num_heads"] % out["num_kv_heads"]:
        raise ValueError(
            f"config.num_heads={out['num_heads']} is not a multiple of "
            f"config.num_kv_heads={out['num_kv_heads']}."
        )
    return out


def llama_groups(
    config: Any,
    *,
    heads: str | None = "kv_group",
    mlp: bool = True,
    residual: bool = False,
    block_path: str = "blocks/{i}",
) -> list[Group]:
    """Declared structured groups of a LLaMA-style decoder (GQA, SwiGLU, tied embedding).

    Args:
      config: An object or mapping with int ``dim``, ``num_layers``, ``num_heads``,
        ``num_kv_heads``, ``head_dim``, ``hidden_dim`` and optional bool ``tie_embeddings``
        (default True), ``fused_qkv``, ``fused_gate_up`` (default False).
      heads: ``'kv_group'`` (one channel per KV group, named ``blocks/{i}/attn/kv_groups``),
        ``'query_head'`` (one channel per query head index within a KV group, the same in
        every group, named ``blocks/{i}/attn/query_heads``) or ``None`` (no head groups).
      mlp: Whether to add one group of SwiGLU neurons per block (``blocks/{i}/mlp/hidden``).
      residual: Whether to add the model-wide residual-width group ``residual``.
      block_path: Path of block ``i``, a format string with ``{i}``: ``"blocks/{i}"`` for an
        NNX ``nnx.List`` of blocks (the default), ``"blocks_{i}"`` for a Linen module that
        holds ``self.blocks = [Block(...) for ...]`` (Linen names them ``blocks_0``, ...).

    Returns:
      A list of :class:`jaxprune.Group` whose member paths match ``nnx.state(model)`` (or a
      Linen params dict with the same module names and ``block_path``).

    Raises:
      ValueError: If a config field is missing or not a positive int, ``num_heads`` is not a
        multiple of ``num_kv_heads``, ``heads`` is not one of the choices, or
        ``block_path`` does not contain ``{i}`` exactly once.

    Example:
      >>> import jaxprune
      >>> cfg = dict(dim=8, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=2,
      ...            hidden_dim=6)
      >>> [g.name for g in jaxprune.llama_groups(cfg)]
      ['blocks/0/attn/kv_groups', 'blocks/0/mlp/hidden']
      >>> [g.name for g in jaxprune.llama_groups(cfg, block_path="blocks_{i}")]
      ['blocks_0/attn/kv_groups', 'blocks_0/mlp/hidden']
    """
    c = _read(config)
    if heads not in ("kv_group", "query_head", None):
        raise ValueError(f"heads must be 'kv_group', 'query_head' or None, got {heads!r}.")
    block = _block_format(block_path, "block_path")
    h, kv, hd, ff = c["num_heads"], c["num_kv_heads"], c["head_dim"], c["hidden_dim"]
    g = h // kv
    out: list[Group] = []
    for i in range(c["num_layers"]):
        a, m = f"{block(i)}/attn", f"{block(i)}/mlp"
        if heads == "kv_group":
            if c["fused_qkv"]:
                qkv = f"{a}/qkv/kernel"
                proj = [
                    Member(qkv, -1, inner=g * hd, partial=True),
                    Member(qkv, -1, offset=h * hd, inner=hd),
                    Member(qkv, -1, offset=(h + kv) * hd, inner=hd),
                ]
            else:
                proj = [
                    Member(f"{a}/q/kernel", -1, inner=g * hd),
                    Member(f"{a}/k/kernel", -1, inner=hd),
                    Member(f"{a}/v/kernel", -1, inner=hd),
                ]
            out.append(Group(f"{a}/kv_groups", (*proj, Member(f"{a}/o/kernel", 0, inner=g * hd))))
        elif heads == "query_head":
            q = f"{a}/qkv/kernel" if c["fused_qkv"] else f"{a}/q/kernel"
            out.append(
                Group(
                    f"{a}/query_heads",
                    (
                        Member(q, -1, outer=kv, inner=hd, partial=c["fused_qkv"]),
                        Member(f"{a}/o/kernel", 0, outer=kv, inner=hd),
                    ),
                )
            )
        if mlp:
            if c["fused_gate_up"]:
                gu = f"{m}/gate_up/kernel"
                proj = [Member(gu, -1, partial=True), Member(gu, -1, offset=ff)]
            else:
                proj = [Member(f"{m}/gate/kernel", -1), Member(f"{m}/up/kernel", -1)]
            out.append(Group(f"{m}/hidden", (*proj, Member(f"{m}/down/kernel", 0))))
    if residual:
        mem = [Member("embed/embedding", 1)]
        for i in range(c["num_layers"]):
            a, m = f"{block(i)}/attn", f"{block(i)}/mlp"
            mem.append(Member(f"{block(i)}/attn_norm/scale", 0))
            names = ["qkv"] if c["fused_qkv"] else ["q", "k", "v"]
            mem += [Member(f"{a}/{n}/kernel", 0) for n in names]
            mem.append(Member(f"{a}/o/kernel", 1))
            mem.append(Member(f"{block(i)}/mlp_norm/scale", 0))
            names = ["gate_up"] if c["fused_gate_up"] else ["gate", "up"]
            mem += [Member(f"{m}/{n}/kernel", 0) for n in names]
            mem.append(Member(f"{m}/down/kernel", 1))
        mem.append(Member("norm/scale", 0))
        if not c["tie_embeddings"]:
            mem.append(Member("head/kernel", 0))
        out.append(Group("residual", tuple(mem)))
    return out


def _block_format(spec: Any, what: str):
    """``spec`` (a string with one ``{i}``) as a function of the block index."""
    if not isinstance(spec, str) or spec.count("{i}") != 1 or spec.replace("{i}", "").count("{"):
        raise ValueError(
            f"{what} must be a string with '{{i}}' once (e.g. 'blocks/{{i}}' or "
            f"'blocks_{{i}}'), got {spec!r}."
        )
    return lambda i: spec.replace("{i}", str(i))


def _count(mask: Any) -> int:
    return int(np.asarray(mask, bool).sum())


def llama_widths(config: Any, group_masks: Mapping[str, Any]) -> dict[str, int]:
    """The config fields of a decoder shrunk by ``group_masks`` of :func:`llama_groups`.

    Every block must keep the same number of channels per group kind (a single config has
    one width per kind); select with the same count per block (e.g. per-group top-k).

    Args:
      config: The dense config (see :func:`llama_groups`).
      group_masks: ``{group name: bool vector}`` (``True`` = kept) for some of the groups.

    Returns:
      ``{'dim', 'num_layers', 'num_heads', 'num_kv_heads', 'head_dim', 'hidden_dim'}`` of the
      shrunk model; pass them to the config constructor (``dataclasses.replace``).

    Raises:
      ValueError: If blocks keep different counts (the message names the groups), a group
        keeps nothing, or a group name is not one of :func:`llama_groups`.

    Example:
      >>> import numpy as np, jaxprune
      >>> cfg = dict(dim=8, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=2,
      ...            hidden_dim=6)
      >>> jaxprune.llama_widths(cfg, {"blocks/0/mlp/hidden": np.arange(6) < 3})["hidden_dim"]
      3
    """
    c = _read(config)
    out = {f: c[f] for f in _FIELDS}
    g = c["num_heads"] // c["num_kv_heads"]
    seen: dict[str, tuple[str, int]] = {}
    for name, mask in group_masks.items():
        n = _count(mask)
        if n == 0:
            raise ValueError(f"group {name!r} keeps no channel.")
        kind = name.rsplit("/", 1)[-1] if name != "residual" else "residual"
        if kind not in ("kv_groups", "query_heads", "hidden", "residual"):
            raise ValueError(f"group {name!r} is not a group of jaxprune.llama_groups.")
        first = seen.setdefault(kind, (name, n))
        if first[1] != n:
            raise ValueError(
                f"group {name!r} keeps {n} channels but {first[0]!r} keeps {first[1]}; a "
                "single config needs the same width in every block."
            )
    if "kv_groups" in seen:
        out["num_kv_heads"] = seen["kv_groups"][1]
        out["num_heads"] = seen["kv_groups"][1] * g
        g = out["num_heads"] // out["num_kv_heads"]
    if "query_heads" in seen:
        out["num_heads"] = out["num_kv_heads"] * seen["query_heads"][1]
    if "hidden" in seen:
        out["hidden_dim"] = seen["hidden"][1]
    if "residual" in seen:
        out["dim"] = seen["residual"][1]
    return out


def block_importance(hidden_states: Sequence[Any]) -> jnp.ndarray:
    """Block importance as one minus the cosine similarity of a block's input and output.

    ShortGPT's Block Influence (Men et al. 2024) and Minitron's depth score (Muralidharan
    et al. 2024): a block that barely turns the residual stream is redundant. The cosine is
    taken per token over the hidden axis and averaged over all tokens.

    Args:
      hidden_states: ``L + 1`` arrays of one shape ``(..., dim)``: the residual stream entering
        block 0, then after each of the ``L`` blocks (on calibration data).

    Returns:
      A float32 vector of length ``L``; larger means more important (drop the smallest).

    Raises:
      ValueError: If fewer than two hidden states are given or their shapes differ.

    Example:
      >>> import jax.numpy as jnp, jaxprune
      >>> h = [jnp.ones((2, 4)), jnp.ones((2, 4)), -jnp.ones((2, 4))]
      >>> jaxprune.block_importance(h).tolist()
      [0.0, 2.0]
    """
    hs = list(hidden_states)
    if len(hs) < 2:
        raise ValueError(f"hidden_states needs at least 2 arrays, got {len(hs)}.")
    shape = jnp.shape(hs[0])
    for i, x in enumerate(hs):
        if jnp.shape(x) != shape:
            raise ValueError(
                f"hidden_states[{i}] has shape {jnp.shape(x)}, hidden_states[0] {shape}."
            )
    out = []
    for a, b in itertools.pairwise(hs):
        a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
        num = jnp.sum(a * b, -1)
        den = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
        out.append(1.0 - jnp.mean(num / jnp.maximum(den, 1e-12)))
    return jnp.stack(out)


def drop_blocks(tree: Mapping[str, Any], keep: Sequence[bool], *, key: str = "blocks") -> dict:
    """Removes decoder blocks from a nested parameter dict and renumbers the rest.

    Args:
      tree: A nested dict (e.g. ``nnx.to_pure_dict(nnx.state(model))`` or Linen params)
        whose ``tree[key]`` maps block indices (int or digit strings) to block subtrees.
      keep: One bool per block, ``True`` = kept.
      key: The entry holding the blocks; or, with ``{i}`` in it (``"blocks_{i}"``, Linen's
        naming of a list of submodules), the top-level entries ``blocks_0``, ``blocks_1``,
        ... themselves.

    Returns:
      A shallow copy of ``tree`` with the kept blocks renumbered ``0..K-1`` (keys keep their
      int/str type; with ``{i}``, the kept entries renamed ``blocks_0..blocks_{K-1}``).

    Raises:
      ValueError: If the blocks are missing, ``keep`` has the wrong length or keeps no block.

    Example:
      >>> import jaxprune
      >>> t = {"blocks": {0: "a", 1: "b", 2: "c"}, "norm": "n"}
      >>> jaxprune.drop_blocks(t, [True, False, True])["blocks"]
      {0: 'a', 1: 'c'}
      >>> linen = {"blocks_0": "a", "blocks_1": "b", "blocks_2": "c", "norm": "n"}
      >>> jaxprune.drop_blocks(linen, [True, False, True], key="blocks_{i}")
      {'norm': 'n', 'blocks_0': 'a', 'blocks_1': 'c'}
    """
    if isinstance(key, str) and "{i}" in key:
        return _drop_flat_blocks(tree, keep, key)
    if not isinstance(tree, Mapping) or key not in tree:
        raise ValueError(f"tree has no entry {key!r} holding the blocks.")
    blocks = tree[key]
    idx = sorted(blocks, key=lambda k: int(k))
    keep = [bool(k) for k in keep]
    if len(keep) != len(idx):
        raise ValueError(f"keep has {len(keep)} entries but tree[{key!r}] has {len(idx)} blocks.")
    if not any(keep):
        raise ValueError("keep keeps no block.")
    as_str = isinstance(idx[0], str)
    kept = [blocks[k] for k, f in zip(idx, keep, strict=True) if f]
    out = dict(tree)
    out[key] = {(str(j) if as_str else j): b for j, b in enumerate(kept)}
    return out


def _drop_flat_blocks(tree: Mapping[str, Any], keep: Sequence[bool], key: str) -> dict:
    name = _block_format(key, "key")
    if not isinstance(tree, Mapping):
        raise ValueError(f"tree must be a dict holding the blocks {name(0)!r}, ...")
    n = 0
    while name(n) in tree:
        n += 1
    if n == 0:
        raise ValueError(f"tree has no entry {name(0)!r}: blocks named {key!r} are missing.")
    keep = [bool(k) for k in keep]
    if len(keep) != n:
        raise ValueError(f"keep has {len(keep)} entries but tree has {n} blocks {key!r}.")
    if not any(keep):
        raise ValueError("keep keeps no block.")
    kept = [tree[name(i)] for i in range(n) if keep[i]]
    out = {k: v for k, v in tree.items() if k not in {name(i) for i in range(n)}}
    out.update({name(j): b for j, b in enumerate(kept)})
    return out
