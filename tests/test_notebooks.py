"""Executes the notebooks top to bottom with small settings."""

import os
import pathlib

import nbclient  # in the test extra: a missing one must fail, not skip
import nbformat
import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"


@pytest.mark.parametrize("name", ["01_quickstart.ipynb"])
def test_notebook_runs(name, monkeypatch):
    monkeypatch.setenv("JAXPRUNE_NB_EPOCHS", "3")
    monkeypatch.setenv("JAXPRUNE_NB_SPARSITY", "0.8")
    monkeypatch.delenv("JAXPRUNE_MNIST", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    outputs = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "epoch  3" in outputs
    assert "compression" in outputs
    assert os.environ["JAXPRUNE_NB_EPOCHS"] == "3"


def test_oneshot_notebook_runs_on_a_tiny_model(monkeypatch):
    monkeypatch.setenv("JAXPRUNE_NB_TINY", "1")
    nb = nbformat.read(NOTEBOOKS / "03_oneshot_llm.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    outputs = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "dense: perplexity" in outputs and "Wanda 50%: perplexity" in outputs
    assert "overall: 50.00%" in outputs
