"""Sphinx helpers for jaxprune's API reference.

* ``namespaces()`` lists the public namespaces from ``jaxprune.__all__`` itself, so a new
  submodule gets an API page without editing the docs.
* ``.. jaxprune-api:: MODULE [NAMES...]`` renders a summary table and the autodoc entry of
  each name (all of ``MODULE.__all__`` when no names are given).
* At the end of reading, every public name of every namespace must have been documented as
  a Python object; a missing one is a warning, which ``-W`` turns into an error.
"""

from __future__ import annotations

import importlib
import inspect
import pathlib
import types

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

logger = logging.getLogger(__name__)


def namespaces() -> list[str]:
    """``jaxprune`` and every submodule that ``jaxprune.__all__`` exports."""
    jaxprune = importlib.import_module("jaxprune")
    subs = sorted(
        f"jaxprune.{name}"
        for name in jaxprune.__all__
        if isinstance(getattr(jaxprune, name), types.ModuleType)
    )
    return ["jaxprune", *subs]


def public_names(module: str) -> list[str]:
    """The names of ``module.__all__`` that are not themselves modules."""
    mod = importlib.import_module(module)
    return [n for n in mod.__all__ if not isinstance(getattr(mod, n), types.ModuleType)]


def _directive_for(obj) -> str:
    if inspect.isclass(obj):
        return "autoclass"
    if callable(obj):
        return "autofunction"
    return "autodata"


class JaxpruneApi(SphinxDirective):
    required_arguments = 1
    optional_arguments = 1000
    has_content = False

    def run(self):
        module = self.arguments[0]
        names = self.arguments[1:] or public_names(module)
        mod = importlib.import_module(module)
        lines = [f".. currentmodule:: {module}", "", ".. autosummary::", ""]
        lines += [f"   {n}" for n in names]
        lines.append("")
        for n in names:
            obj = getattr(mod, n)
            kind = _directive_for(obj)
            if kind == "autodata":
                # A constant (e.g. a granularity): its value, not its class's docstring.
                lines += [f".. py:data:: {n}", "", f"   ``{module}.{n} = {obj!r}``", ""]
                continue
            lines.append(f".. {kind}:: {n}")
            if inspect.isclass(obj):
                lines.append("   :members:")
            lines.append("")
        node = nodes.container()
        nested_parse_with_titles(self.state, StringList(lines, source=module), node)
        return node.children


def _write_namespace_pages(app) -> None:
    """One page per namespace under ``api/``, unless a hand-written page exists."""
    api = pathlib.Path(app.srcdir) / "api"
    for ns in namespaces():
        page = api / f"{ns}.rst"
        generated = api / "_generated" / f"{ns}.rst"
        if page.exists():
            continue
        generated.parent.mkdir(exist_ok=True)
        mod = importlib.import_module(ns)
        title = f"``{ns}``"
        text = "\n".join(
            [
                title,
                "=" * len(title),
                "",
                f".. automodule:: {ns}",
                "",
                f".. jaxprune-api:: {ns}",
                "",
            ]
        )
        if not generated.exists() or generated.read_text() != text:
            generated.write_text(text)
        del mod


def _check_coverage(app, env) -> None:
    documented = set(env.get_domain("py").objects)
    missing = [
        f"{ns}.{n}"
        for ns in namespaces()
        for n in public_names(ns)
        if f"{ns}.{n}" not in documented
    ]
    if missing:
        logger.warning("public names without an API entry: %s", ", ".join(missing), type="jaxprune")


def setup(app):
    app.add_directive("jaxprune-api", JaxpruneApi)
    app.connect("builder-inited", _write_namespace_pages)
    app.connect("env-check-consistency", _check_coverage)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
