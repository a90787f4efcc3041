"""Checks that a built HTML site renders the pages that matter.

Usage: ``python docs/check_html.py [docs/_build/html]``. Fails (exit 1) unless the home page,
the top-level API page (with a documented function) and the notebook pages (each with
executed output cells) are there, and no page shows a Sphinx error or a notebook traceback.
"""

from __future__ import annotations

import html.parser
import pathlib
import sys


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.classes: list[str] = []
        self.ids: set[str] = set()
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.classes += (attrs.get("class") or "").split()
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        self._in_title = tag == "title"

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data


def _parse(path: pathlib.Path) -> tuple[_Page, str]:
    if not path.is_file():
        raise SystemExit(f"missing page: {path}")
    text = path.read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    return page, text


def main(root: str = "docs/_build/html") -> int:
    site = pathlib.Path(root)
    errors = []

    home, _ = _parse(site / "index.html")
    if "jaxprune" not in home.title:
        errors.append(f"home page title is {home.title!r}")

    api, _ = _parse(site / "api" / "jaxprune.html")
    for name in ("jaxprune.optax_sparsity", "jaxprune.shrink"):
        if name not in api.ids:
            errors.append(f"API page lacks an entry for {name}")

    nb, text = _parse(site / "notebooks" / "01_quickstart.html")
    if nb.classes.count("cell_output") < 1:
        errors.append("notebook page has no executed output cell")
    if "epoch  3" not in text or "compression" not in text:
        errors.append("notebook page lacks the training log or the summary")

    for notebook in sorted((site / "notebooks").glob("*.html")):
        page, _ = _parse(notebook)
        if "cell_output" not in page.classes:
            errors.append(f"{notebook.name} has no executed output cell")

    for page in site.rglob("*.html"):
        body = page.read_text(encoding="utf-8")
        if "Traceback (most recent call last)" in body or 'class="system-message"' in body:
            errors.append(f"{page.relative_to(site)} shows an error")

    for e in errors:
        print("check_html:", e, file=sys.stderr)
    if not errors:
        print(f"check_html: {site} ok")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
