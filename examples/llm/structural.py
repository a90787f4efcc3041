"""Width and depth pruning (structural) of the NNX decoder in :mod:`examples.llm.model`.

Glue between the model and jaxprune's declared LLaMA groups
(:func:`jaxprune.llama_groups`): masking, shrinking into a rebuilt smaller model, Minitron
activation scores (Muralidharan et al. 2024), ShortGPT block importance (Men et al. 2024),
and export of the shrunk config with an orbax checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jaxprune
from examples.llm import model as model_lib


def params_dict(m: model_lib.Llama) -> dict:
    """The model's parameters as a nested pure dict."""
    return nnx.to_pure_dict(nnx.state(m, nnx.Param))


def build(cfg: model_lib.Config, params: dict) -> model_lib.Llama:
    """A model of ``cfg`` holding ``params`` (a pure dict of the matching shapes)."""
    m = nnx.eval_shape(lambda: model_lib.Llama(cfg, rngs=nnx.Rngs(0)))
    state = nnx.state(m, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(m, state)
    return m


def masked(m: model_lib.Llama, group_masks: dict, groups) -> model_lib.Llama:
    """A copy of ``m`` whose pruned channels are zeroed (same shapes)."""
    params = params_dict(m)
    mask = jaxprune.expand_group_masks(group_masks, groups, params)
    params = jax.tree.map(
        lambda x, k: x if k is None else x * k.astype(x.dtype),
        params,
        mask,
        is_leaf=lambda x: x is None,
    )
    return build(m.cfg, params)


def shrunk(m: model_lib.Llama, group_masks: dict, groups) -> model_lib.Llama:
    """The smaller model with the pruned channels removed and a matching config."""
    params = jaxprune.shrink(params_dict(m), group_masks, groups)
    cfg = dataclasses.replace(m.cfg, **jaxprune.llama_widths(m.cfg, group_masks))
    return build(cfg, params)


def hidden_states(m: model_lib.Llama, tokens) -> list[jax.Array]:
    """The residual stream entering block 0 and after every block."""
    cos, sin = model_lib.rope_tables(m.cfg, tokens.shape[-1])
    h = m.hidden(tokens)
    out = [h]
    for block in m.blocks:
        h = block(h, cos, sin)
        out.append(h)
    return out


def depth_pruned(m: model_lib.Llama, keep) -> model_lib.Llama:
    """The model with only the blocks where ``keep`` is True, as a shorter model."""
    params = jaxprune.drop_blocks(params_dict(m), keep)
    cfg = dataclasses.replace(m.cfg, num_layers=int(np.sum(keep)))
    return build(cfg, params)


def activation_scores(m: model_lib.Llama, tokens) -> dict[str, jax.Array]:
    """Minitron activation importance per group of :func:`jaxprune.llama_groups`.

    MLP neurons: mean ``|silu(gate) * up|``; KV groups and query heads: L2 norm of the
    attention output of their heads (summed over the heads of a unit), averaged over tokens;
    residual channels: mean ``|RMSNorm output|`` over all norms. Non-fused models only.

    Args:
      m: The model.
      tokens: Calibration tokens ``(batch, seq)``.

    Returns:
      ``{group name: scores}`` for the ``kv_groups``, ``query_heads``, ``hidden`` and
      ``residual`` groups.
    """
    cfg = m.cfg
    cos, sin = model_lib.rope_tables(cfg, tokens.shape[-1])
    h = m.hidden(tokens)
    out, res = {}, 0.0
    kv, g, hd = cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads, cfg.head_dim
    for i, b in enumerate(m.blocks):
        x = b.attn_norm(h)
        res = res + jnp.mean(jnp.abs(x), axis=(0, 1))
        probe = {}

        def o_in(y, probe=probe):
            probe["heads"] = y
            return y

        a = b.attn
        orig = a.o
        a.o = _Tap(orig, o_in)
        try:
            attn_out = a(x, cos, sin)
        finally:
            a.o = orig
        y = probe["heads"].reshape(*probe["heads"].shape[:-1], kv, g, hd)
        per_head = jnp.mean(jnp.linalg.norm(y, axis=-1), axis=(0, 1))  # (kv, g)
        out[f"blocks/{i}/attn/kv_groups"] = per_head.sum(1)
        out[f"blocks/{i}/attn/query_heads"] = per_head.sum(0)
        h = h + attn_out
        x = b.mlp_norm(h)
        res = res + jnp.mean(jnp.abs(x), axis=(0, 1))
        act = jax.nn.silu(b.mlp.gate(x)) * b.mlp.up(x)
        out[f"blocks/{i}/mlp/hidden"] = jnp.mean(jnp.abs(act), axis=(0, 1))
        h = h + b.mlp.down(act)
    out["residual"] = res + jnp.mean(jnp.abs(m.norm(h)), axis=(0, 1))
    return out


class _Tap:
    def __init__(self, fn, hook):
        self.fn, self.hook = fn, hook

    def __call__(self, x):
        return self.fn(self.hook(x))


def keep_top(scores: dict[str, jax.Array], fraction: float) -> dict[str, np.ndarray]:
    """Per group, keeps the same count ``max(1, round(fraction * C))`` of highest scores."""
    masks = {}
    for name, s in scores.items():
        s = np.asarray(s)
        k = max(1, round(fraction * s.size))
        keep = np.zeros(s.size, bool)
        keep[np.argsort(-s, kind="stable")[:k]] = True
        masks[name] = keep
    return masks


def export(m: model_lib.Llama, directory: str) -> None:
    """Writes ``config.json`` and an orbax checkpoint ``params/`` of the model."""
    import orbax.checkpoint as ocp

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(m.cfg), f, indent=1)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(os.path.abspath(os.path.join(directory, "params")), params_dict(m))


def load_exported(directory: str) -> model_lib.Llama:
    """Rebuilds the model written by :func:`export`."""
    import orbax.checkpoint as ocp

    with open(os.path.join(directory, "config.json")) as f:
        cfg = model_lib.Config(**json.load(f))
    abstract = nnx.eval_shape(lambda: model_lib.Llama(cfg, rngs=nnx.Rngs(0)))
    target = params_dict(abstract)
    with ocp.StandardCheckpointer() as ckpt:
        params = ckpt.restore(os.path.abspath(os.path.join(directory, "params")), target)
    return build(cfg, params)
