"""The rendered site (python tools/site.py): every chapter and exercise page, with its figures and working
links, math rendered offline, and not one line of a solution or hidden test in the output.

Needs the site extra (python -m pip install -e ".[site]"); skipped without it, except in CI, where
COURSE_REQUIRE_SITE=1 turns the skip into a failure.
"""

from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pytest

from tools.build import ROOT
from tools.site import exercise_chapters, theory_chapters

pytestmark = pytest.mark.slow  # one xdist group: the site is built once (conftest.py)

HAVE_SPHINX = all(importlib.util.find_spec(name) for name in ("sphinx", "myst_nb", "sphinx_book_theme"))
REQUIRED = os.environ.get("COURSE_REQUIRE_SITE") == "1"
SOLUTION = re.compile(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", re.S)
HIDDEN = re.compile(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", re.S)


class _Page(HTMLParser):
    """The text, the ids, the links (href/src) and the images of one HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.images: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        for name in ("href", "src"):
            if attrs.get(name):
                self.links.append(attrs[name])
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def site_text(html_dir: Path) -> str:
    """Everything the site serves, as text without whitespace: page text, notebooks' sources, scripts."""
    parts = []
    for path in sorted(html_dir.rglob("*")):
        if not path.is_file() or "mathjax" in path.parts:
            continue
        if path.suffix == ".html":
            page = parse(path)
            parts.append("".join(page.text))
            parts.append(html.unescape(path.read_text(encoding="utf-8")))  # attributes, scripts, comments too
        elif path.suffix == ".ipynb":
            nb = json.loads(path.read_text(encoding="utf-8"))
            parts += ["".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in nb["cells"]]
        elif path.suffix in (".js", ".txt", ".json", ".md", ".py", ".inv"):
            parts.append(path.read_text(encoding="utf-8", errors="replace"))
    return _squash("\n".join(parts))


def _public_text() -> str:
    """What the site may show: every theory and student exercise notebook (sources and outputs), the pages."""
    public = [page.read_text() for page in (ROOT / "site").glob("*.md")]
    for path in [*(ROOT / "notebooks").glob("*.ipynb"), *(ROOT / "exercises").glob("*/*.ipynb")]:
        nb = nbformat.read(str(path), as_version=4)
        public += [c.source for c in nb.cells]
        public += [json.dumps(o) for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    return _squash("\n".join(public))


def secret_lines(chapter: str, public_text: str | None = None) -> list[str]:
    """The lines of a chapter's answers and hidden tests that no notebook a learner gets also contains."""
    source = (ROOT / "content" / "solutions" / f"{chapter}.py").read_text()
    regions = SOLUTION.findall(source) + HIDDEN.findall(source)
    public_text = _public_text() if public_text is None else public_text
    lines = []
    for region in regions:
        for line in region.splitlines():
            code = line.strip().removeprefix("# ").strip()
            if len(_squash(code)) >= 16 and _squash(code) not in public_text:
                lines.append(code)
    return sorted(set(lines))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    if not HAVE_SPHINX:
        message = 'the site extra is not installed: python -m pip install -e ".[site]" builds and tests the site'
        if REQUIRED:
            pytest.fail(f"COURSE_REQUIRE_SITE=1 but {message}")
        pytest.skip(message)
    out = tmp_path_factory.mktemp("site")
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "site.py"), "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"python tools/site.py failed:\n{run.stdout}\n{run.stderr}"
    return out / "html"


def test_every_chapter_and_exercise_has_a_page_linked_from_the_index(site):
    index = parse(site / "index.html")
    assert theory_chapters() and exercise_chapters()
    for chapter in theory_chapters():
        assert (site / "notebooks" / f"{chapter}.html").is_file(), chapter
        assert f"notebooks/{chapter}.html" in index.links, f"index does not link chapter {chapter}"
    for chapter in exercise_chapters():
        assert (site / "exercises" / chapter / f"{chapter}.html").is_file(), chapter
        assert f"exercises/{chapter}/{chapter}.html" in index.links, f"index does not link exercises {chapter}"
    assert "outline_map.html" in index.links
    assert not (site / "solutions").exists() and not list(site.rglob("*solution*"))


@pytest.mark.parametrize("chapter", theory_chapters())
def test_chapter_page_has_its_figures_its_math_and_its_exercise_link(site, chapter):
    nb = nbformat.read(str(ROOT / "notebooks" / f"{chapter}.ipynb"), as_version=4)
    figures = sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
                  for out in cell.outputs)
    page_path = site / "notebooks" / f"{chapter}.html"
    page = parse(page_path)
    images = [src for src in page.images if src.startswith("../_images/")]
    assert len(images) == figures, f"{chapter}: {figures} figures in the notebook, {len(images)} on the page"
    for src in images:
        assert (page_path.parent / src).stat().st_size > 1000, src
    raw = page_path.read_text(encoding="utf-8")
    if "$" in "".join(c.source for c in nb.cells if c.cell_type == "markdown"):
        assert 'class="math' in raw, f"{chapter}: the notebook has math but the page has no math element"
        assert "_static/mathjax/tex-chtml.js" in raw, f"{chapter}: MathJax is not served from the site itself"
    text = "".join(page.text)
    assert "Run it yourself" in text and f"jupyter lab notebooks/{chapter}.ipynb" in text
    if chapter in exercise_chapters():
        assert f"../exercises/{chapter}/{chapter}.html" in page.links, f"{chapter}: no link to its exercises"


@pytest.mark.parametrize("chapter", exercise_chapters())
def test_exercise_page_offers_the_committed_notebook_and_says_how_to_run_it(site, chapter):
    page_path = site / "exercises" / chapter / f"{chapter}.html"
    page = parse(page_path)
    downloads = [link for link in page.links if "_downloads/" in link and link.endswith(f"/{chapter}.ipynb")]
    assert len(downloads) == 1, downloads
    served = (page_path.parent / downloads[0]).read_bytes()
    assert served == (ROOT / "exercises" / chapter / f"{chapter}.ipynb").read_bytes()
    assert f"jupyter lab exercises/{chapter}/{chapter}.ipynb" in "".join(page.text)


def test_no_internal_link_is_broken(site):
    # _static holds the theme's Jinja macro files (*.html), templates rather than pages
    pages = {path: parse(path) for path in site.rglob("*.html") if "_static" not in path.relative_to(site).parts}
    broken, checked = [], 0
    for path, page in pages.items():
        for link in page.links:
            parts = urlsplit(link)
            if parts.scheme or link.startswith("//"):
                continue
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            checked += 1
            if not target.exists():
                broken.append(f"{path.relative_to(site)}: {link} (no such file)")
            elif parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else parse(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{path.relative_to(site)}: {link} (no element with that id)")
    assert checked > 500
    assert not broken, "\n".join(broken[:30])


def test_the_outline_map_page_links_every_listed_cell(site):
    from tools.site import cell_links, label

    page = parse(site / "outline_map.html")
    links = cell_links((ROOT / "site" / "outline_map.md").read_text())
    hrefs = set(page.links)
    for _, kind, chapter, cell_id in links:
        folder = "notebooks" if kind == "theory" else f"exercises/{chapter}"
        anchor = label(kind, chapter, cell_id).lower().replace("_", "-")
        assert f"{folder}/{chapter}.html#{anchor}" in hrefs, (kind, chapter, cell_id)


def test_no_solution_or_hidden_test_reaches_the_site(site):
    text = site_text(site)
    assert "BEGINSOLUTION" not in text and "BEGINHIDDENTESTS" not in text
    checked, public = 0, _public_text()
    for chapter in exercise_chapters():
        lines = secret_lines(chapter, public)
        assert lines, f"{chapter}: found no answer or hidden-test line to look for"
        leaked = [line for line in lines if _squash(line) in text]
        assert not leaked, f"{chapter}: solution or hidden-test text on the site: {leaked[:5]}"
        checked += len(lines)
    assert checked > 100


def test_the_leak_search_finds_a_line_in_highlighted_html(tmp_path):
    """The search reads through syntax highlighting and HTML escapes, so a leak cannot hide in them."""
    line = secret_lines("01_attention")[0]
    tokens = re.findall(r"\w+|\s+|.", line)
    highlighted = "".join(f'<span class="n">{html.escape(token)}</span>' for token in tokens)
    (tmp_path / "page.html").write_text(f"<html><body><pre>{highlighted}</pre></body></html>")
    assert _squash(line) in site_text(tmp_path)
