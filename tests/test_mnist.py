"""The MNIST loader: path from argument or environment, clear errors, no downloads."""

import numpy as np
import pytest

import jaxprune


def _write(path, n=5, **override):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, (n,), dtype=np.uint8),
        "x_test": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, (n,), dtype=np.uint8),
    }
    arrays.update(override)
    np.savez_compressed(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


def test_loads_scaled_nhwc(tmp_path):
    raw = _write(tmp_path / "m.npz")
    data = jaxprune.load_mnist(tmp_path / "m.npz")
    assert data.x_train.shape == (5, 28, 28, 1) and data.x_train.dtype == np.float32
    np.testing.assert_allclose(data.x_test[..., 0], raw["x_test"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(data.y_train, raw["y_train"])


def test_environment_variable_and_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("JAXPRUNE_MNIST", raising=False)
    with pytest.raises(FileNotFoundError, match="JAXPRUNE_MNIST"):
        jaxprune.load_mnist()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        jaxprune.load_mnist(tmp_path / "missing.npz")
    _write(tmp_path / "m.npz")
    monkeypatch.setenv("JAXPRUNE_MNIST", str(tmp_path / "m.npz"))
    assert jaxprune.load_mnist().y_test.shape == (5,)
    _write(tmp_path / "bad.npz", y_test=None)
    with pytest.raises(ValueError, match="y_test"):
        jaxprune.load_mnist(tmp_path / "bad.npz")
