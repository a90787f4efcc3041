"""Executes each notebook top to bottom with small settings."""

import os
import pathlib

import nbclient  # in the test extra: a missing one must fail, not skip
import nbformat
import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"

# Strings each notebook's outputs must contain.
EXPECTED = {
    "01_quickstart.ipynb": ["epoch  3", "compression"],
    "02_structured_shrinking.ipynb": ["new widths:", "MACs", "speed-up"],
    # On a tiny random model (JAXPRUNE_NB_TINY=1): the code path, not the numbers.
    "03_oneshot_llm.ipynb": ["dense: perplexity", "Wanda 50%: perplexity", "overall: 50.00%"],
    "08_llama_structure.ipynb": [
        "declared groups found in the jaxpr: 4 of 4",
        "new widths:",
        "after 5 distillation steps",
        "prefill speed-up",
    ],
    "04_sparse_training.ipynb": [
        "RigL: test accuracy",
        "the same at every step: True",
        "active kernel weights",
    ],
    "05_magnitude_gradual_dns.ipynb": ["Han: test accuracy", "DNS: test accuracy", "AGP target"],
    "06_learned_sparsity.ipynb": ["after sparsity training", "L0 (NNX)", "params before"],
    "07_data_driven_criteria.ipynb": ["ThiNet conv1", "before FT", "NISP"],
}


def test_every_notebook_is_tested():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs(name, monkeypatch):
    monkeypatch.setenv("JAXPRUNE_NB_EPOCHS", "3")
    monkeypatch.setenv("JAXPRUNE_NB_SPARSITY", "0.8")
    monkeypatch.delenv("JAXPRUNE_MNIST", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("JAXPRUNE_NB_TINY", "1")
    # The kernel is another process: make it import this checkout's jaxprune, not an installed one.
    path = [str(NOTEBOOKS.parent), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in path if p))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    outputs = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    for expected in EXPECTED[name]:
        assert expected in outputs
