"""The public surface: everything exported exists, is documented, and is importable flat."""

import inspect

import pytest

import jaxprune

NAMESPACES = [
    jaxprune,
    jaxprune.scores,
    jaxprune.select,
    jaxprune.schedules,
    jaxprune.distributions,
    jaxprune.importance,
    jaxprune.linen,
    jaxprune.nnx,
    jaxprune.oneshot,
]


def _public(module):
    return [(module.__name__, name, getattr(module, name)) for name in module.__all__]


@pytest.mark.parametrize("module", NAMESPACES, ids=lambda m: m.__name__)
def test_all_names_exist_and_are_sorted_unique(module):
    assert len(set(module.__all__)) == len(module.__all__)
    for name in module.__all__:
        assert hasattr(module, name), f"{module.__name__}.{name} is in __all__ but missing"


@pytest.mark.parametrize(
    "qualname, obj",
    [(f"{m}.{n}", o) for mod in NAMESPACES for m, n, o in _public(mod)],
)
def test_public_functions_are_documented(qualname, obj):
    if inspect.ismodule(obj) or not callable(obj):
        return
    doc = inspect.getdoc(obj)
    assert doc, f"{qualname} has no docstring"
    if inspect.isfunction(obj):
        params = [
            p
            for p in inspect.signature(obj).parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        if params:
            assert "Args:" in doc, f"{qualname} documents no Args"
        assert "Returns:" in doc, f"{qualname} documents no Returns"


def test_top_level_exports_the_design_card():
    for name in ("optax_sparsity", "masks", "apply_masks", "summary", "Granularity", "n_of_m"):
        assert name in jaxprune.__all__
    assert jaxprune.__version__


def test_changelog_top_section_is_the_package_version():
    import pathlib
    import re

    text = (pathlib.Path(__file__).parents[1] / "CHANGELOG.md").read_text()
    sections = re.findall(r"^## (\S+)", text, flags=re.M)
    assert sections, "CHANGELOG.md has no version section"
    assert sections[0] == jaxprune.__version__, (
        f"CHANGELOG.md's top section is {sections[0]!r}, the package version "
        f"{jaxprune.__version__!r}: new entries go under the version's section"
    )
