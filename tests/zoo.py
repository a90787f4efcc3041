"""Tiny models shared by the tests.

Mostly Linen models built from a widths config (field name == submodule name); at the end, a
gated MLP in Linen and NNX (:class:`GatedLinen`, :class:`GatedNNX`: the same parameter paths), the
tapped network of the taps tests, and the trace-mask-shrink-rebuild round trip of the shrink
tests (:func:`prune_half`).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxprune
import jaxprune.importance
import jaxprune.linen
import jaxprune.nnx
from jaxprune._src.shrink import shrink, widths
from jaxprune._src.trace import trace_groups


def random_variables(model, x, seed=0):
    """Host-side random variables with the shapes of ``model.init`` (fast on CPU).

    Kernels are normal, scaled by 1/sqrt(fan in); 1-D leaves (biases, BN scale, shift, mean
    and var) are in [0.5, 1.0), so that a leaking or dropped channel constant would show.
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    rng = np.random.default_rng(seed)

    def one(s):
        if len(s.shape) == 1:
            return jnp.asarray(rng.uniform(0.5, 1.0, s.shape), jnp.float32)
        fan_in = int(np.prod(s.shape[:-1]))
        return jnp.asarray(rng.normal(size=s.shape) / np.sqrt(fan_in), jnp.float32)

    return jax.tree.map(one, shapes)


class MLP(nn.Module):
    fc1: int = 12
    fc2: int = 10
    out: int = 3

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(self.fc1, name="fc1")(x))
        x = nn.tanh(nn.Dense(self.fc2, name="fc2")(x))
        return nn.Dense(self.out, name="head")(x)


class LeNet5(nn.Module):
    """Caffe LeNet-5: 431,080 parameters on 28x28x1 inputs."""

    conv1: int = 20
    conv2: int = 50
    fc1: int = 500

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.conv1, (5, 5), padding="VALID", name="conv1")(x)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.Conv(self.conv2, (5, 5), padding="VALID", name="conv2")(x)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.fc1, name="fc1")(x))
        return nn.Dense(10, name="fc2")(x)


class ConvBN(nn.Module):
    """Conv(16) -> BN -> ReLU -> Conv(8), eval-mode BN."""

    conv1: int = 16

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.conv1, (3, 3), name="conv1")(x)
        x = nn.BatchNorm(use_running_average=True, name="bn1")(x)
        x = nn.relu(x)
        return nn.Conv(8, (3, 3), name="conv2")(x)


class Residual(nn.Module):
    """Stem conv -> basic block with identity shortcut (add coupling) -> pooled head."""

    stem: int = 8
    a: int = 6

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(self.stem, (3, 3), name="stem")(x))
        y = nn.relu(nn.Conv(self.a, (3, 3), name="a")(h))
        y = nn.Conv(self.stem, (3, 3), name="b")(y)
        h = nn.relu(h + y)
        return nn.Dense(4, name="head")(jnp.mean(h, axis=(1, 2)))


class Dense2(nn.Module):
    """DenseNet-style: a conv output concatenated with the conv that reads it."""

    c1: int = 6
    c2: int = 4
    mix: int = 5

    @nn.compact
    def __call__(self, x):
        a = nn.relu(nn.Conv(self.c1, (3, 3), name="c1")(x))
        b = nn.relu(nn.Conv(self.c2, (3, 3), name="c2")(a))
        h = jnp.concatenate([a, b], axis=-1)
        h = nn.Conv(self.mix, (1, 1), name="mix")(h)
        return nn.Dense(3, name="head")(jnp.mean(h, axis=(1, 2)))


class Bottleneck(nn.Module):
    """Stem -> bottleneck block with a strided projection shortcut, eval-mode BN."""

    stem: int = 6
    c1: int = 4
    c2: int = 4
    c3: int = 8
    proj: int = 8

    def cbn(self, x, feats, k, s, name):
        x = nn.Conv(feats, (k, k), (s, s), use_bias=False, name=name)(x)
        return nn.BatchNorm(use_running_average=True, name=name + "_bn")(x)

    @nn.compact
    def __call__(self, x):
        h = nn.relu(self.cbn(x, self.stem, 3, 1, "stem"))
        y = nn.relu(self.cbn(h, self.c1, 1, 1, "c1"))
        y = nn.relu(self.cbn(y, self.c2, 3, 2, "c2"))
        y = self.cbn(y, self.c3, 1, 1, "c3")
        h = nn.relu(y + self.cbn(h, self.proj, 1, 2, "proj"))
        return nn.Dense(3, name="head")(jnp.mean(h, axis=(1, 2)))


class InvertedResidual(nn.Module):
    """MobileNetV2-style: expand 1x1 -> depthwise 3x3 -> project 1x1, identity add."""

    stem: int = 4
    expand: int = 12
    project: int = 4

    @nn.compact
    def __call__(self, x):
        h = nn.relu6(nn.Conv(self.stem, (3, 3), name="stem")(x))
        y = nn.relu6(nn.Conv(self.expand, (1, 1), name="expand")(h))
        y = nn.relu6(nn.Conv(self.expand, (3, 3), feature_group_count=self.expand, name="dw")(y))
        y = nn.Conv(self.project, (1, 1), name="project")(y)
        return nn.Dense(2, name="head")(jnp.mean(h + y, axis=(1, 2)))


class UNet(nn.Module):
    """U-Net-style: down conv, pool, bottom conv, nearest upsampling, skip concatenation."""

    down: int = 4
    bottom: int = 6
    up: int = 4

    @nn.compact
    def __call__(self, x):
        d = nn.relu(nn.Conv(self.down, (3, 3), name="down")(x))
        b = nn.max_pool(d, (2, 2), (2, 2))
        b = nn.relu(nn.Conv(self.bottom, (3, 3), name="bottom")(b))
        u = jnp.repeat(jnp.repeat(b, 2, axis=1), 2, axis=2)
        h = jnp.concatenate([d, u], axis=-1)
        h = nn.relu(nn.Conv(self.up, (3, 3), name="up")(h))
        return nn.Conv(1, (1, 1), name="out")(h)


class VGG(nn.Module):
    """VGG-style: (conv-BN-ReLU) x 2, pool, conv-BN-ReLU, flatten, dense, dense."""

    c1: int = 4
    c2: int = 6
    c3: int = 8
    fc: int = 10

    @nn.compact
    def __call__(self, x):
        for name in ("c1", "c2"):
            x = nn.Conv(getattr(self, name), (3, 3), use_bias=False, name=name)(x)
            x = nn.relu(nn.BatchNorm(use_running_average=True, name=name + "_bn")(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.Conv(self.c3, (3, 3), use_bias=False, name="c3")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=True, name="c3_bn")(x))
        x = nn.relu(nn.Dense(self.fc, name="fc")(x.reshape(x.shape[0], -1)))
        return nn.Dense(3, name="head")(x)


class Grouped(nn.Module):
    """ResNeXt-style: 1x1 conv -> two grouped 3x3 convs (2 groups) -> 1x1 conv."""

    pw: int = 8
    g1: int = 8
    g2: int = 8

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(self.pw, (1, 1), name="pw")(x))
        x = nn.relu(nn.Conv(self.g1, (3, 3), feature_group_count=2, name="g1")(x))
        x = nn.relu(nn.Conv(self.g2, (3, 3), feature_group_count=2, name="g2")(x))
        return nn.Conv(3, (1, 1), name="out")(x)


class Transformer(nn.Module):
    """Embedding -> multi-head self-attention (residual) -> MLP (residual) -> mean -> head."""

    heads: int = 4
    head_dim: int = 4
    mlp: int = 32

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(16, name="embed")(x)
        h = nn.MultiHeadDotProductAttention(
            num_heads=self.heads, qkv_features=self.heads * self.head_dim, name="attn"
        )(x, x)
        x = x + h
        x = x + nn.Dense(16, name="mlp2")(nn.relu(nn.Dense(self.mlp, name="mlp1")(x)))
        return nn.Dense(3, name="head")(x.mean(1))


class LlamaLinen(nn.Module):
    """A LLaMA decoder in Linen (GQA, RoPE, SwiGLU, tied embedding), the maths of
    ``examples.llm.model.Llama``; its blocks are named ``blocks_0``, ``blocks_1``, ...

    ``cfg`` is an ``examples.llm.model.Config`` (fused ``qkv`` / ``gate_up`` supported).
    """

    cfg: object

    def setup(self):
        c = self.cfg
        self.embed = nn.Embed(c.vocab_size, c.dim, embedding_init=nn.initializers.normal(0.02))
        self.blocks = [_LlamaBlockLinen(c) for _ in range(c.num_layers)]
        self.norm = _RMSNormLinen(c.norm_eps)

    def __call__(self, tokens):
        from examples.llm import model as model_lib

        cos, sin = model_lib.rope_tables(self.cfg, tokens.shape[-1])
        h = self.embed(tokens)
        for block in self.blocks:
            h = block(h, cos, sin)
        return self.embed.attend(self.norm(h))


class _RMSNormLinen(nn.Module):
    eps: float

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        y = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
        return y * scale[None, None, :]


def _dense(features, name):
    return nn.Dense(features, use_bias=False, kernel_init=nn.initializers.normal(0.02), name=name)


class _AttentionLinen(nn.Module):
    cfg: object

    @nn.compact
    def __call__(self, y, cos, sin):
        from examples.llm import model as model_lib

        c = self.cfg
        h, kv, hd = c.num_heads, c.num_kv_heads, c.head_dim
        b, t, _ = y.shape
        if c.fused_qkv:
            qkv = _dense((h + 2 * kv) * hd, "qkv")(y)
            q, k, v = (
                qkv[..., : h * hd],
                qkv[..., h * hd : (h + kv) * hd],
                qkv[..., (h + kv) * hd :],
            )
        else:
            q, k, v = (_dense(n * hd, m)(y) for n, m in ((h, "q"), (kv, "k"), (kv, "v")))
        q = model_lib.apply_rope(q.reshape(b, t, h, hd), cos, sin)
        k = model_lib.apply_rope(k.reshape(b, t, kv, hd), cos, sin)
        q = q.reshape(b, t, kv, h // kv, hd)
        logits = jnp.einsum("bqkgd,bskd->bkgqs", q, k) / jnp.sqrt(jnp.float32(hd))
        causal = jnp.tril(jnp.ones((t, t), bool))[None, None, None]
        probs = jax.nn.softmax(jnp.where(causal, logits, jnp.finfo(jnp.float32).min), axis=-1)
        out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v.reshape(b, t, kv, hd))
        return _dense(c.dim, "o")(out.reshape(b, t, h * hd))


class _MLPLinen(nn.Module):
    cfg: object

    @nn.compact
    def __call__(self, y):
        ff = self.cfg.hidden_dim
        if self.cfg.fused_gate_up:
            gu = _dense(2 * ff, "gate_up")(y)
            g, u = gu[..., :ff], gu[..., ff:]
        else:
            g, u = _dense(ff, "gate")(y), _dense(ff, "up")(y)
        return _dense(self.cfg.dim, "down")(jax.nn.silu(g) * u)


class _LlamaBlockLinen(nn.Module):
    cfg: object

    @nn.compact
    def __call__(self, x, cos, sin):
        eps = self.cfg.norm_eps
        x = x + _AttentionLinen(self.cfg, name="attn")(
            _RMSNormLinen(eps, name="attn_norm")(x), cos, sin
        )
        return x + _MLPLinen(self.cfg, name="mlp")(_RMSNormLinen(eps, name="mlp_norm")(x))


class GatedLinen(nn.Module):
    """Hard-concrete input gate, Dense, BatchNorm, channel gate after the ReLU, LayerNorm."""

    @nn.compact
    def __call__(self, x, train=True):
        x = jaxprune.linen.HardConcreteGate(6, name="gate_in")(x, deterministic=not train)
        x = nn.Dense(8, name="fc1")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn1")(x)
        x = jaxprune.linen.ChannelGate(8, name="cg")(nn.relu(x))
        x = nn.LayerNorm(name="ln")(x)
        return nn.Dense(3, name="fc2")(x)


class GatedNNX(nnx.Module):
    """:class:`GatedLinen` in NNX."""

    def __init__(self, rngs):
        self.gate_in = jaxprune.nnx.HardConcreteGate(6, rngs=rngs)
        self.fc1 = nnx.Linear(6, 8, rngs=rngs)
        self.bn1 = nnx.BatchNorm(8, rngs=rngs)
        self.cg = jaxprune.nnx.ChannelGate(8)
        self.ln = nnx.LayerNorm(8, rngs=rngs)
        self.fc2 = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        x = self.bn1(self.fc1(self.gate_in(x)))
        return self.fc2(self.ln(self.cg(nnx.relu(x))))


def taps_batch(n=6, seed=0):
    """A batch for :class:`TappedLinen`: ``(n, 6, 6, 1)`` images and labels in ``[0, 3)``."""
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, (n, 6, 6, 1)), jax.random.randint(ky, (n,), 0, 3)


def taps_loss(logits, y):
    # Sum over the batch: per-example gradients (the convention of Taylor's criterion).
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()


class TappedLinen(nn.Module):
    """Conv -> ReLU -> Dense -> ReLU -> Dense, with explicit taps ``conv`` and ``fc``."""

    tapped: bool = True

    @nn.compact
    def __call__(self, x):
        z = nn.Conv(4, (3, 3), padding="VALID", name="conv")(x)
        a = nn.relu(z)
        if self.tapped:
            a = jaxprune.importance.tap(self, "conv", a)
        h = nn.relu(nn.Dense(5, name="fc")(a.reshape(a.shape[0], -1)))
        if self.tapped:
            h = jaxprune.importance.tap(self, "fc", h)
        return nn.Dense(3, name="out")(h)


def half_masks(sizes):
    """Keeps a random half of each group's channels (seeded)."""
    rng = np.random.default_rng(0)
    masks = {}
    for name, n in sizes.items():
        keep = np.zeros(n, bool)
        keep[rng.permutation(n)[: n // 2]] = True
        masks[name] = keep
    return masks


def prune_half(model, shape):
    """Traces ``model``'s groups, keeps half of each and shrinks and rebuilds the model.

    Returns ``(x, variables, found, group_masks, masked, small_vars, small, spec)``.
    """
    x = jax.random.normal(jax.random.key(2), shape)
    variables = random_variables(model, x, seed=1)
    found = trace_groups(model.apply, variables, x)
    sizes = jaxprune.check_groups(found.groups, variables)
    gm = half_masks(sizes)
    masks = jaxprune.expand_group_masks(gm, found.groups, variables)
    masked = jaxprune.apply_masks(variables, masks)
    small_vars = shrink(variables, gm, found.groups)
    spec = widths(found.groups, gm, variables)
    small = jaxprune.linen.rebuild(model, spec, small_vars, x)  # checks every shape
    return x, variables, found, gm, masked, small_vars, small, spec


def conv_fc_params(key=0, dtype=jnp.float32):
    """Random conv, dense and output-layer params (the output layer has no bias)."""
    k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
    return {
        "conv": {"kernel": jax.random.normal(k1, (3, 3, 4, 8), dtype), "bias": jnp.zeros(8, dtype)},
        "fc": {"kernel": jax.random.normal(k2, (32, 16), dtype), "bias": jnp.zeros(16, dtype)},
        "out": {"kernel": jax.random.normal(k3, (16, 4), dtype), "bias": None},
    }


def random_grads(params, step):
    """Random gradients shaped like ``params``, different at each ``step``."""
    key = jax.random.fold_in(jax.random.key(99), step)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    )


def assert_pruned_are_zero(params, masks):
    for (path, p), (_, m) in zip(
        jaxprune._src.base.leaves_with_paths(params), jaxprune._src.base.leaves_with_paths(masks)
    ):
        if m is None or p is None:
            continue
        full = np.broadcast_to(np.asarray(m), p.shape)
        vals = np.asarray(p.astype(jnp.float32))
        assert np.all(vals[~full] == 0.0), f"pruned entries of {path} are not exactly zero"


# The optimizers that pruned weights must survive exactly zero.
OPTIMIZERS = {
    "sgd": lambda: optax.sgd(0.05),
    "momentum": lambda: optax.sgd(0.05, momentum=0.9),
    "nesterov": lambda: optax.sgd(0.05, momentum=0.9, nesterov=True),
    "adam": lambda: optax.adam(1e-2),
    "adamw": lambda: optax.adamw(1e-2, weight_decay=1e-2),
    "lion": lambda: optax.lion(1e-3),
}
