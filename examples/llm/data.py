"""The fixed calibration / evaluation split of ``pydoc_data.topics`` (shipped with CPython).

The text is the module's topics joined in sorted-key order with blank lines. Its token
stream is cut at 60%: calibration sequences come from the first part, evaluation sequences
from the second, so the two never overlap.

* calibration: ``num`` windows of ``seq_len`` tokens starting at evenly spaced offsets of the
  first part (deterministic, no random seed);
* evaluation: consecutive non-overlapping windows of ``seq_len`` tokens from the start of the
  second part.
"""

from __future__ import annotations

import numpy as np

SPLIT = 0.6


def text() -> str:
    """The English text of ``pydoc_data.topics`` (about 465,000 characters)."""
    from pydoc_data import topics

    return "\n\n".join(topics.topics[k] for k in sorted(topics.topics))


def token_stream(tokenizer) -> np.ndarray:
    """All tokens of :func:`text` as int32."""
    return np.asarray(tokenizer.encode(text()).ids, np.int32)


def _check(num: int, seq_len: int, available: int, part: str) -> None:
    if num < 1 or seq_len < 2:
        raise ValueError(f"need num >= 1 and seq_len >= 2, got num={num}, seq_len={seq_len}")
    if num * seq_len > available:
        raise ValueError(
            f"{num} {part} sequences of {seq_len} tokens need {num * seq_len} tokens; "
            f"the {part} part has {available}"
        )


def calibration(tokens: np.ndarray, num: int = 128, seq_len: int = 256) -> np.ndarray:
    """``(num, seq_len)`` calibration windows from the first 60% of ``tokens``."""
    part = tokens[: int(len(tokens) * SPLIT)]
    _check(num, seq_len, len(part), "calibration")
    starts = np.linspace(0, len(part) - seq_len, num).astype(np.int64)
    return np.stack([part[s : s + seq_len] for s in starts])


def evaluation(tokens: np.ndarray, num: int = 64, seq_len: int = 256) -> np.ndarray:
    """``(num, seq_len)`` consecutive evaluation windows from the last 40% of ``tokens``."""
    part = tokens[int(len(tokens) * SPLIT) :]
    _check(num, seq_len, len(part), "evaluation")
    return part[: num * seq_len].reshape(num, seq_len)


def random_windows(
    tokens: np.ndarray, num: int, seq_len: int, rng: np.random.Generator
) -> np.ndarray:
    """``(num, seq_len)`` windows at random offsets of the calibration part (first 60%).

    For training on the calibration text (e.g. distillation); never touches evaluation tokens.
    """
    part = tokens[: int(len(tokens) * SPLIT)]
    _check(1, seq_len, len(part), "calibration")
    starts = rng.integers(0, len(part) - seq_len + 1, size=num)
    return np.stack([part[s : s + seq_len] for s in starts])
