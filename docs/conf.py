"""Sphinx configuration for jaxprune's documentation (offline: no intersphinx)."""

import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "_ext"))

import jaxprune  # noqa: E402

project = "jaxprune"
author = "The jaxprune authors"
copyright = "The jaxprune authors"
release = jaxprune.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_nb",
    "jaxprune_api",
]

exclude_patterns = ["_build", "**.ipynb_checkpoints", "api/_generated/README.md"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

autosummary_generate = False
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_default_options = {"undoc-members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
add_module_names = False
nitpicky = False

myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3

# Notebooks run at build time with small CPU settings; "cache" reruns only changed ones.
nb_execution_mode = os.environ.get("JAXPRUNE_NB_EXECUTION", "cache")
nb_execution_timeout = 300
nb_execution_raise_on_error = True
nb_execution_cache_path = str(pathlib.Path(__file__).resolve().parent / "_build" / "jupyter_cache")
os.environ.setdefault("JAXPRUNE_NB_EPOCHS", "3")
os.environ.setdefault("JAXPRUNE_NB_SPARSITY", "0.8")
os.environ.setdefault("MPLBACKEND", "Agg")
# The notebook kernels are other processes: they import this checkout's jaxprune too.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
)

html_theme = "sphinx_book_theme"
html_title = f"jaxprune {release}"
html_theme_options = {"show_toc_level": 2}
html_static_path = []

# The notebooks live in ``notebooks/`` at the repository root (tested there by
# tests/test_notebooks.py); the build executes copies of them under ``docs/notebooks/``.
_NB_SRC = ROOT / "notebooks"
_NB_DST = pathlib.Path(__file__).resolve().parent / "notebooks"
_NB_DST.mkdir(exist_ok=True)
# The LLM notebooks need the `llm` extra (a 93 MB checkpoint) and minutes of CPU: they are
# tested on a tiny random model by tests/test_notebooks.py and not executed in the docs build
# (a tiny random model's perplexities would read as results).
_NOT_IN_DOCS = {"03_oneshot_llm.ipynb", "08_llama_structure.ipynb"}
for _nb in sorted(_NB_SRC.glob("*.ipynb")):
    if _nb.name in _NOT_IN_DOCS:
        continue
    _target = _NB_DST / _nb.name
    if not _target.exists() or _target.read_bytes() != _nb.read_bytes():
        _target.write_bytes(_nb.read_bytes())
