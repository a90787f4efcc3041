"""Loading MNIST for the demo, the notebooks and the benchmarks. Never downloads anything.

The file is a NumPy ``.npz`` with the keys ``x_train`` (60000, 28, 28) uint8, ``y_train``,
``x_test`` and ``y_test`` (the layout Keras' ``mnist.npz`` uses). Its path comes from the
caller (``--data``) or the ``JAXPRUNE_MNIST`` environment variable.
"""

from __future__ import annotations

import os
import zipfile
from typing import NamedTuple

import numpy as np

ENV_VAR = "JAXPRUNE_MNIST"
KEYS = ("x_train", "y_train", "x_test", "y_test")
WHERE = (
    "The file Keras uses is at "
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz "
    "(keras.datasets.mnist.load_data() saves it as ~/.keras/datasets/mnist.npz)."
)


class MNIST(NamedTuple):
    """Images as float32 in ``[0, 1]`` with shape ``(n, 28, 28, 1)``, labels as int32."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def resolve_path(path: str | os.PathLike | None = None) -> str:
    """Returns the MNIST path from ``path`` or ``$JAXPRUNE_MNIST``, or raises with a hint.

    Args:
      path: An explicit path, or ``None`` to read the environment variable.

    Returns:
      The path as a string.

    Raises:
      FileNotFoundError: If no path is given or the file does not exist; the message says how
        to provide it.
    """
    path = path if path is not None else os.environ.get(ENV_VAR)
    hint = (
        "Provide the full MNIST as an .npz with keys x_train, y_train, x_test, y_test "
        f"(the Keras mnist.npz layout): pass --data PATH or set {ENV_VAR}=PATH. {WHERE}"
    )
    if not path:
        raise FileNotFoundError(f"No MNIST file given. {hint}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MNIST file {os.fspath(path)!r} does not exist. {hint}")
    return os.fspath(path)


def load_mnist(path: str | os.PathLike | None = None) -> MNIST:
    """Loads MNIST from an ``.npz`` file, scaled to ``[0, 1]`` and shaped NHWC.

    Args:
      path: Path of the ``.npz``; ``None`` reads ``$JAXPRUNE_MNIST``.

    Returns:
      An :class:`MNIST` tuple of NumPy arrays.

    Raises:
      FileNotFoundError: If the file cannot be found (with instructions).
      ValueError: If the file lacks one of the expected keys or has the wrong shapes.
    """
    path = resolve_path(path)
    with open(path, "rb") as f:
        try:
            data = np.load(f)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # not an .npz file
            raise ValueError(f"{path!r} is not an MNIST .npz file ({e}). {WHERE}") from e
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError(f"{path!r} is a single .npy array, not an MNIST .npz file. {WHERE}")
        missing = [k for k in KEYS if k not in data]
        if missing:
            raise ValueError(f"{path!r} lacks the keys {missing}; expected {list(KEYS)}. {WHERE}")
        arrays = {k: data[k] for k in KEYS}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (x.shape[0],):
            raise ValueError(
                f"{path!r}: x_{split} must be (n, 28, 28) with n labels, got {x.shape} and "
                f"{y.shape}."
            )
    return MNIST(
        *(
            (arrays[k].astype(np.float32) / 255.0)[..., None]
            if k.startswith("x")
            else arrays[k].astype(np.int32)
            for k in KEYS
        )
    )
