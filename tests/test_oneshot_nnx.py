"""One-shot pruning of NNX modules in place (`prune_nnx`), sharded kernels included."""

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

import jaxprune
from examples.llm import model as llm

os_ = jaxprune.oneshot


def _tiny_llama():
    m = llm.Llama(llm.TINY, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(3), (8, 24), 0, llm.TINY.vocab_size)
    return m, tokens


def _prune_llama(m, tokens, method, hidden=None):
    cos, sin = llm.rope_tables(m.cfg, tokens.shape[1])
    hidden = m.hidden(tokens) if hidden is None else hidden
    return os_.prune_nnx(
        m.blocks, hidden, method, block_args=(cos, sin), batch_size=8, progress=False
    )


def test_prune_nnx_on_a_llama_prunes_every_projection_in_place():
    m, tokens = _tiny_llama()
    before = m(tokens)
    rep = _prune_llama(m, tokens, os_.Wanda(n_of_m=(2, 4)))  # SparseGPT 2:4: the NumPy test
    names = [
        "attn/q/kernel",
        "attn/k/kernel",
        "attn/v/kernel",
        "attn/o/kernel",
        "mlp/gate/kernel",
        "mlp/up/kernel",
        "mlp/down/kernel",
    ]
    assert [r.path for r in rep] == names * 2
    for b in m.blocks:
        for lin in (b.attn.q, b.attn.o, b.mlp.down):
            k = np.asarray(lin.kernel[...])
            assert np.all((k.reshape(-1, 4, k.shape[1]) != 0).sum(1) == 2)
    after = m(tokens)
    assert np.all(np.isfinite(after)) and not np.allclose(after, before)


def test_prune_nnx_keeps_sharded_kernels_sharded_and_equal_to_single_device():
    m1, tokens = _tiny_llama()
    m2, _ = _tiny_llama()
    auto = (jax.sharding.AxisType.Auto,) * 2
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=auto)
    cols, rep = (
        NamedSharding(mesh, PartitionSpec(None, "model")),
        NamedSharding(mesh, PartitionSpec()),
    )
    for b in m2.blocks:  # every parameter on the mesh; three kernels split by output
        split = {id(lin.kernel) for lin in (b.attn.q, b.mlp.gate, b.mlp.up)}
        for _, var in nnx.iter_graph(b):
            if isinstance(var, nnx.Param):
                var.set_value(jax.device_put(var[...], cols if id(var) in split else rep))
    _prune_llama(m1, tokens, os_.SparseGPT(0.5, blocksize=64))
    hidden = jax.device_put(m2.hidden(tokens), NamedSharding(mesh, PartitionSpec("data")))
    _prune_llama(m2, tokens, os_.SparseGPT(0.5, blocksize=64), hidden=hidden)
    for b1, b2 in zip(m1.blocks, m2.blocks):
        k2 = b2.mlp.gate.kernel[...]
        assert k2.sharding.spec == PartitionSpec(None, "model")
        for l1, l2 in [
            (b1.mlp.gate, b2.mlp.gate),
            (b1.attn.v, b2.attn.v),
            (b1.mlp.down, b2.mlp.down),
        ]:
            np.testing.assert_array_equal(l1.kernel[...] == 0, l2.kernel[...] == 0)
            np.testing.assert_allclose(l1.kernel[...], l2.kernel[...], atol=2e-5)
