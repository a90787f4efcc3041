"""The demo command end to end, with tiny settings, on the shipped MNIST subset."""

import numpy as np
import pytest

from jaxprune import demo


@pytest.mark.standard_dtypes
def test_demo_prunes_to_han_densities(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("JAXPRUNE_MNIST", raising=False)
    png = tmp_path / "demo.png"
    result = demo.main(
        ["--dense-epochs", "2", "--rounds", "2", "--retrain-epochs", "1", "--plot", str(png)]
    )
    out = capsys.readouterr().out
    rows = result.stats.by_path()
    # Exact per-layer counts: Han's 8% / 9% / 26% of each kernel, biases dense.
    assert rows["Dense_0/kernel"].nonzero == round(0.08 * 235200)
    assert rows["Dense_1/kernel"].nonzero == round(0.09 * 30000)
    assert rows["Dense_2/kernel"].nonzero == round(0.26 * 1000)
    assert result.stats.nonzero == 22186 and result.stats.size == 266610
    assert "compression 12.0x" in out and "Dense_0/kernel" in out
    assert len(result.history) == 2 and result.history[0]["sparsity"] < 0.92
    assert result.dense_accuracy > 0.8 and result.accuracy > 0.8
    # Pruned weights are exact zeros in the returned params.
    k = np.asarray(result.params["Dense_0"]["kernel"])
    assert np.count_nonzero(k) == rows["Dense_0/kernel"].nonzero
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "no plot" in out
    else:
        assert png.stat().st_size > 1000


def test_missing_data_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data PATH or set JAXPRUNE_MNIST"):
        demo.main(["--data", str(tmp_path / "nope.npz"), "--plot", ""])


def test_fit_steps_loop_matches_scan_and_rejects_unknown_loops():
    """``loop="steps"`` (a jitted step per batch) trains what ``"scan"`` trains.

    Up to float32 summation order: XLA fuses the loop body and the lone step differently.
    """
    import jax
    import optax

    full = demo.load_subset()
    data = full._replace(x_train=full.x_train[:512], y_train=full.y_train[:512])
    model = demo.LeNet5(widths=(4, 6, 16))
    params = model.init(jax.random.key(0), data.x_train[:1])["params"]
    tx = optax.sgd(0.05, momentum=0.9)
    out = {
        loop: demo.fit(model, params, data, tx, 2, batch_size=64, loop=loop)[0]
        for loop in ("scan", "steps")
    }
    moved = jax.tree.map(
        lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(), out["scan"], params
    )
    assert min(jax.tree.leaves(moved)) > 0  # it trained
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-4),
        out["scan"],
        out["steps"],
    )
    with pytest.raises(ValueError, match="loop must be 'scan' or 'steps', got 'python'"):
        demo.fit(model, params, data, tx, 1, loop="python")
