"""The architecture page's facts, checked on every run (docs/guides/architecture.md).

Each test reads the source with :mod:`ast` (nothing is imported or executed), so a failure
names the file, the line and the rule it breaks.
"""

from __future__ import annotations

import ast
import json
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SRC = ROOT / "jaxprune" / "_src"
MAX_FUNCTION_LINES = 120


def _py_files(*dirs: str) -> list[pathlib.Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py") if "_build" not in p.parts)


def _tree(path: pathlib.Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _rel(path: pathlib.Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _src_imports(path: pathlib.Path) -> list[tuple[int, str, list[str]]]:
    """``(line, module, imported names)`` for every ``jaxprune`` import of a file."""
    out = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "jaxprune":
                out.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "jaxprune":
                    out.append((node.lineno, a.name, []))
    return out


def _src_module(name: str) -> str | None:
    """``"trace"`` for ``"jaxprune._src.trace"``; ``None`` for other modules."""
    parts = name.split(".")
    return parts[2] if parts[:2] == ["jaxprune", "_src"] and len(parts) > 2 else None


def test_no_function_longer_than_the_limit():
    long = []
    for path in _py_files("jaxprune", "examples", "benchmarks"):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{_rel(path)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_no_module_imports_another_modules_private_names():
    bad = []
    for path in sorted(SRC.glob("*.py")):
        tree = _tree(path)
        aliases = {}  # local name -> _src module it stands for
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                for a in node.names:
                    if node.module == "jaxprune._src":
                        aliases[a.asname or a.name] = a.name
                    elif _src_module(node.module) and a.name.startswith("_"):
                        bad.append(f"{_rel(path)}:{node.lineno} imports {node.module}.{a.name}")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                mod = aliases[node.value.id]
                bad.append(f"{_rel(path)}:{node.lineno} uses {mod}.{node.attr}")
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


def _notebook_sources() -> list[tuple[str, str]]:
    out = []
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        out.append((_rel(nb), "\n".join("".join(c["source"]) for c in cells)))
    return out


# Modules with no public names: their examples document the contributor API of `_src`.
INTERNAL_ONLY = {"interpret"}


def test_private_package_is_not_used_outside_the_library():
    """Examples, benchmarks, notebooks, docs and docstrings use public names only."""
    pattern = re.compile(r"jaxprune\._src|from jaxprune import _src")
    texts = [(_rel(p), p.read_text()) for p in _py_files("examples", "benchmarks")]
    texts += _notebook_sources()
    texts += [(_rel(p), p.read_text()) for p in sorted((ROOT / "docs").rglob("*.md"))]
    texts += [("README.md", (ROOT / "README.md").read_text())]
    for path in _py_files("jaxprune"):  # docstring examples inside the library
        if path.stem in INTERNAL_ONLY:
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.Module):
                doc = ast.get_docstring(node) or ""
                code = [ln for ln in doc.splitlines() if ln.lstrip().startswith((">>>", "..."))]
                if code:
                    texts.append((f"{_rel(path)} docstring example", "\n".join(code)))
    bad = [name for name, text in texts if pattern.search(text)]
    assert not bad, "uses jaxprune._src outside the library:\n" + "\n".join(bad)


def test_no_references_to_files_outside_the_repository():
    pattern = re.compile(r"\b(DESIGN|METHODS|STYLE|JAX-NOTES)\.md\b")
    files = _py_files("jaxprune", "examples", "benchmarks", "tests")
    files += [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]
    files += [*sorted((ROOT / "benchmarks").glob("*.md")), *sorted((ROOT / "notebooks").glob("*"))]
    files += [ROOT / "CHANGELOG.md"]
    files = [f for f in files if f.is_file()]
    bad = []
    for path in files:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) and path.name != "test_architecture.py":
                bad.append(f"{_rel(path)}:{i}")
    assert not bad, "references to design notes that are not in the repository:\n" + "\n".join(bad)


def _flax_modules() -> dict[str, int]:
    found = {}
    for path in sorted(SRC.glob("*.py")):
        for node in ast.walk(_tree(path)):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            if any(n.split(".")[0] == "flax" for n in names):
                found.setdefault(path.stem, node.lineno)
    return found


# The flax-facing layer: module name -> why it needs flax. Everything else is pure JAX/optax.
FLAX_FACING = re.compile(r"(_linen|_nnx|_flax)$")


def test_flax_is_imported_only_by_the_flax_facing_modules():
    bad = [f"{m} (line {ln})" for m, ln in _flax_modules().items() if not FLAX_FACING.search(m)]
    assert not bad, "flax imported outside *_linen.py, *_nnx.py, *_flax.py:\n" + "\n".join(bad)


@pytest.mark.parametrize("path", sorted(SRC.glob("*.py")), ids=lambda p: p.stem)
def test_private_modules_import_only_jaxprune_src(path):
    """`_src` never imports the public facade (that would make cycles easy)."""
    bad = [
        f"line {ln}: {mod}"
        for ln, mod, _ in _src_imports(path)
        if not (mod == "jaxprune._src" or mod.startswith("jaxprune._src."))
    ]
    assert not bad, f"{_rel(path)} imports the public package: {bad}"


def _import_graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(SRC.glob("*.py")):
        deps = set()
        for _, mod, names in _src_imports(path):
            if mod == "jaxprune._src":
                deps.update(names)
            elif _src_module(mod):
                deps.add(_src_module(mod))
        graph[path.stem] = deps - {path.stem}
    return graph


def test_import_graph_has_no_cycles():
    graph = _import_graph()
    state: dict[str, int] = {}

    def visit(node, stack):
        if state.get(node) == 1:
            raise AssertionError("import cycle: " + " -> ".join([*stack, node]))
        if state.get(node) == 2:
            return
        state[node] = 1
        for d in sorted(graph.get(node, ())):
            visit(d, [*stack, node])
        state[node] = 2

    for node in sorted(graph):
        visit(node, [])


def test_flax_facing_modules_are_not_imported_by_the_core():
    graph = _import_graph()
    bad = [
        f"{m} imports {d}"
        for m, deps in graph.items()
        if not FLAX_FACING.search(m)
        for d in deps
        if FLAX_FACING.search(d)
    ]
    assert not bad, "the flax-free core imports flax-facing modules:\n" + "\n".join(bad)


# The layers of docs/guides/architecture.md. A module imports only modules of its own layer or
# of the layers above it (a lower number); a new module must be placed here.
LAYERS = {
    0: "base mnist granularity groups labels",  # core data: types, None rule, paths, groups
    1: "scores select select_groups distributions schedules stats gates_math criteria nisp "
    "masking report oneshot",  # pure math: scores, selection, allocation, statistics
    2: "interpret trace flops fold shrink patterns llama gate_folding",  # jaxprs, structure
    3: "regularizers sparsity fixed sparse_training",  # optax transformations
    4: "oneshot_driver",  # drivers that run a model
    5: "taps taps_linen taps_nnx taps_flax gates_linen gates_nnx shrink_linen shrink_nnx "
    "oneshot_nnx",  # the flax-facing layer
}
LAYER_OF = {m: n for n, names in LAYERS.items() for m in names.split()}


def test_every_module_has_a_layer():
    modules = {p.stem for p in SRC.glob("*.py")} - {"__init__"}
    assert modules - set(LAYER_OF) == set(), "modules missing from LAYERS"
    assert set(LAYER_OF) - modules == set(), "LAYERS names modules that do not exist"


def test_modules_import_only_their_own_layer_or_above():
    bad = [
        f"{m} (layer {LAYER_OF[m]}) imports {d} (layer {LAYER_OF[d]})"
        for m, deps in _import_graph().items()
        if m in LAYER_OF
        for d in sorted(deps)
        if d in LAYER_OF and LAYER_OF[d] > LAYER_OF[m]
    ]
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


# Test files that are not named after a `_src` module: each tests across modules, by theme.
# Every other `tests/test_X.py` holds the tests of `jaxprune/_src/X.py` (and only of it).
CROSS_CUTTING_TESTS = {
    "test_api",  # the public namespace: `__all__`, docstrings, the design card
    "test_architecture",  # this file: the facts of docs/guides/architecture.md
    "test_demo",  # the public `jaxprune.demo` script
    "test_flax_integration",  # training Linen and NNX models end to end with pruning
    "test_llm_example",  # the one-shot LLM example in examples/llm
    "test_misuse",  # the catalogue of refused inputs, one rule per test
    "test_notebooks",  # every notebook in notebooks/ runs
    "test_sharding_checkpoint",  # masks on sharded params, Orbax checkpoints and resume
}


def test_every_test_file_is_named_after_a_module_or_is_cross_cutting():
    """`tests/test_X.py` tests `jaxprune/_src/X.py`; a stale name or a module without one fails."""
    modules = {p.stem for p in SRC.glob("*.py")} - {"__init__"}
    files = {p.stem for p in (ROOT / "tests").glob("test_*.py")}
    bad = sorted(f for f in files - CROSS_CUTTING_TESTS if f.removeprefix("test_") not in modules)
    assert not bad, (
        "test files named after no module of jaxprune/_src (rename them, or add them to "
        "CROSS_CUTTING_TESTS):\n" + "\n".join(f"tests/{f}.py" for f in bad)
    )
    assert CROSS_CUTTING_TESTS <= files, f"no such test files: {CROSS_CUTTING_TESTS - files}"
    shadow = sorted(f for f in CROSS_CUTTING_TESTS if f.removeprefix("test_") in modules)
    assert not shadow, f"cross-cutting files named after a module: {shadow}"
    untested = sorted(m for m in modules if f"test_{m}" not in files)
    assert not untested, f"modules of jaxprune/_src without their tests/test_X.py: {untested}"


def test_one_jaxpr_walker():
    """Only the walker iterates over a jaxpr's equations; analyses subclass it."""
    bad = []
    for path in sorted(SRC.glob("*.py")):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Attribute) and node.attr == "eqns" and path.stem != "interpret":
                bad.append(f"{_rel(path)}:{node.lineno}")
    assert not bad, "jaxpr equations walked outside interpret.py:\n" + "\n".join(bad)
