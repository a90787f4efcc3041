"""A direct NumPy implementation of SparseGPT (Frantar & Alistarh, 2023), column by column.

Written from the paper's Algorithm 1 with the same conventions as
``jaxprune.oneshot.sparsegpt`` (exact pruned count per block, stable tie order), for the
equality test and the per-layer speed comparison in ``benchmarks/oneshot_smollm2.py``.
"""

from __future__ import annotations

import numpy as np


def _pruned_lowest(scores: np.ndarray, k: int) -> np.ndarray:
    """Keep mask pruning the ``k`` lowest entries of each row (ties: lower index first)."""
    order = np.argsort(scores, axis=-1, kind="stable")
    keep = np.ones(scores.shape, bool)
    np.put_along_axis(keep, order[..., :k], False, axis=-1)
    return keep


def sparsegpt_numpy(
    w, gram, sparsity=0.5, n_of_m=None, blocksize=128, percdamp=0.01, dtype=np.float64
):
    """SparseGPT on ``w`` of shape ``(out, in)``; returns ``(pruned, keep)``."""
    w = np.array(w, dtype)
    h = np.array(gram, dtype)
    rows, cols = w.shape
    dead = np.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h[np.diag_indices(cols)] += percdamp * np.mean(np.diag(h))
    hinv = np.linalg.inv(h)
    u = np.linalg.cholesky(hinv).T  # upper: hinv = u.T @ u
    keep = np.ones((rows, cols), bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2].copy()
        u1 = u[i1:i2, i1:i2]
        err1 = np.zeros_like(w1)
        if n_of_m is None:
            tmp = (w1 / np.diag(u1)[None, :]) ** 2
            k = int(np.floor(round(sparsity * tmp.size, 6)))
            keep1 = _pruned_lowest(tmp.reshape(-1), k).reshape(tmp.shape)
        else:
            keep1 = np.ones(w1.shape, bool)
        for i in range(i2 - i1):
            if n_of_m is not None and i % n_of_m[1] == 0:
                n, m = n_of_m
                tmp = (w1[:, i : i + m] / np.diag(u1)[None, i : i + m]) ** 2
                keep1[:, i : i + m] = _pruned_lowest(tmp, m - n)
            q = np.where(keep1[:, i], w1[:, i], 0)
            e = (w1[:, i] - q) / u1[i, i]
            w1[:, i:] -= np.outer(e, u1[i, i:])
            w1[:, i] = q
            err1[:, i] = e
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
        keep[:, i1:i2] = keep1
    return w, keep
