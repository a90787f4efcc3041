"""The one-shot block driver (`prune_blocks`): sequential calibration, OWL allocation, errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune

os_ = jaxprune.oneshot


def _stats(x, gram=True):
    return os_.input_stats_update(os_.input_stats_init(x.shape[-1], gram=gram), jnp.asarray(x))


def _mlp_block(p, x):
    return x + jax.nn.relu(x @ p["up"]) @ p["down"]


def _mlp_blocks(n=3, d=16, h=32, seed=0):
    ks = jax.random.split(jax.random.key(seed), 2 * n)
    return [
        {
            "up": jax.random.normal(ks[2 * i], (d, h)) / 4,
            "down": jax.random.normal(ks[2 * i + 1], (h, d)) / 6,
        }
        for i in range(n)
    ]


def test_driver_calibrates_each_block_on_the_pruned_previous_blocks():
    blocks = _mlp_blocks()
    x = jax.random.normal(jax.random.key(9), (8, 20, 16))
    traces = []

    def counted(p, h):
        traces.append(1)
        return _mlp_block(p, h)

    new, report = os_.prune_blocks(
        counted, blocks, x, os_.SparseGPT(0.5, blocksize=8), batch_size=4, progress=False
    )
    assert len(traces) <= 3  # discovery, one statistics step, one forward: for all blocks
    # The same by hand: statistics of each layer's inputs, from the pruned predecessors.
    h = x
    for i, p in enumerate(blocks):
        s_up = _stats(h.reshape(-1, 16))
        up = os_.sparsegpt(p["up"], s_up, 0.5, blocksize=8).kernel
        s_down = _stats(jax.nn.relu(h @ p["up"]).reshape(-1, 32))
        down = os_.sparsegpt(p["down"], s_down, 0.5, blocksize=8).kernel
        np.testing.assert_allclose(new[i]["up"], up, atol=1e-5)
        np.testing.assert_allclose(new[i]["down"], down, atol=1e-5)
        h = _mlp_block({"up": up, "down": down}, h)
    assert [(r.block, r.path) for r in report] == [(i, n) for i in range(3) for n in ("up", "down")]
    assert all(r.sparsity == 0.5 and r.error is not None and 0 < r.error < 1 for r in report)
    assert "overall: 50.00%" in os_.format_report(report)


def test_driver_errors_name_the_block_and_layer():
    blocks = _mlp_blocks(n=2)
    x = jax.random.normal(jax.random.key(0), (2, 4, 16))  # 8 tokens < 16 inputs
    with pytest.raises(ValueError, match=r"block 0, layer 'up': 8 calibration tokens for 16"):
        os_.prune_blocks(_mlp_block, blocks, x, os_.SparseGPT(), progress=False)
    bad = x.at[1, 2, 3].set(jnp.nan)
    with pytest.raises(ValueError, match=r"block 0, layer 'up': .*NaN or inf"):
        os_.prune_blocks(_mlp_block, blocks, bad, os_.Wanda(), progress=False)
    with pytest.raises(ValueError, match=r"block 0, layer 'down': .*m=3 does not divide"):
        os_.prune_blocks(
            _mlp_block,
            blocks,
            x,
            os_.Wanda(n_of_m=(1, 3)),
            prunable=lambda path, k: path == "down",
            progress=False,
        )
    with pytest.raises(ValueError, match="does not apply to N:M"):
        os_.prune_blocks(_mlp_block, blocks, x, os_.Wanda(n_of_m=(2, 4)), allocation=os_.OWL())
    with pytest.raises(TypeError, match="method must be"):
        os_.prune_blocks(_mlp_block, blocks, x, "wanda")


def test_owl_allocation_follows_the_dense_models_outlier_ratios():
    blocks = _mlp_blocks(n=3)
    blocks[1] = {k: v.at[0, :4].multiply(30.0) for k, v in blocks[1].items()}  # outliers
    x = jax.random.normal(jax.random.key(1), (4, 16, 16))
    _, rep = os_.prune_blocks(
        _mlp_block,
        blocks,
        x,
        os_.Wanda(0.6),
        allocation=os_.OWL(threshold=3.0, lam=0.1),
        progress=False,
    )
    ratios, h = [], x
    for p in blocks:  # the dense model's ratios, by hand
        s_up = _stats(h.reshape(-1, 16), gram=False)
        s_down = _stats(jax.nn.relu(h @ p["up"]).reshape(-1, 32), gram=False)
        scores = [os_.wanda_scores(p["up"], s_up), os_.wanda_scores(p["down"], s_down)]
        ratios.append(float(os_.outlier_ratio(scores, 3.0)))
        h = _mlp_block(p, h)
    want = os_.owl_sparsities(ratios, 0.6, lam=0.1)
    assert len(set(np.round(want, 3))) == 3
    for b in range(3):  # per-row counts are floors of the block's sparsity
        for r in rep:
            if r.block == b:
                n_in = r.shape[0]
                assert r.sparsity == np.floor(round(want[b] * n_in, 6)) / n_in


def test_linen_blocks_through_prune_blocks():
    class Block(nn.Module):
        @nn.compact
        def __call__(self, x):
            return x + nn.Dense(16, use_bias=False)(jax.nn.gelu(nn.Dense(32, use_bias=False)(x)))

    x = jax.random.normal(jax.random.key(0), (4, 8, 16))
    params = [Block().init(jax.random.key(i), x)["params"] for i in range(2)]
    fn = lambda p, h: Block().apply({"params": p}, h)
    new, rep = os_.prune_blocks(fn, params, x, os_.Wanda(n_of_m=(2, 4)), progress=False)
    assert [r.path for r in rep[:2]] == ["Dense_1/kernel", "Dense_0/kernel"]
    for p in new:
        k = np.asarray(p["Dense_1"]["kernel"]).reshape(4, 4, 32)  # (in groups of 4, out)
        assert np.all((k != 0).sum(1) == 2)
