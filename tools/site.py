"""Build the course's read-only site with Sphinx and myst-nb, offline, executing nothing.

    python -m pip install -e ".[site]"     # once: Sphinx, myst-nb, the book theme, MathJax for offline use
    python tools/site.py                   # -> build/site/html/index.html
    python tools/site.py --out DIR         # -> DIR/html/index.html

What goes in (staged into <out>/src, then built by `sphinx-build -W`, so a broken reference fails):
    notebooks/NN_topic.ipynb              -> notebooks/NN_topic.html            the committed executed outputs
    exercises/NN_topic/NN_topic.ipynb     -> exercises/NN_topic/NN_topic.html   the student version (no answers,
                                             no hidden tests), also offered as a download
The staged layout mirrors the repository's, so the notebooks' own relative links keep working.
    site/*.md, site/conf.py               -> the home page, the outline map
Never solutions/ or content/solutions/: tests/test_site.py proves that none of their answer or
hidden-test text reaches the output. Chapters are found by glob, so a new chapter joins by itself.

Each chapter page gets a note at the top saying how to run it locally and linking its exercises; each
exercise page a note on how to download and run it. Links of the outline map to notebook cells,
`[text](../notebooks/NN_topic.ipynb#cell-id)` and `[text](../exercises/NN_topic/NN_topic.ipynb#cell-id)`,
become Sphinx references to a target placed before that cell.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "site"
DEFAULT_OUT = ROOT / "build" / "site"
PRISTINE = "_downloads_src"  # unmodified exercise notebooks, offered as downloads, not pages (site/conf.py)

# A link from a site page to a cell of a theory or exercise notebook.
CELL_LINK = re.compile(r"\[([^\]]+)\]\(\.\./(?:notebooks/(\d\d_[a-z0-9_]+)\.ipynb"
                       r"|exercises/(\d\d_[a-z0-9_]+)/\3\.ipynb)#([A-Za-z0-9_-]+)\)")


def theory_chapters() -> list[str]:
    return sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def exercise_chapters() -> list[str]:
    return sorted(p.parent.name for p in (ROOT / "exercises").glob("[0-9][0-9]_*/[0-9][0-9]_*.ipynb")
                  if p.stem == p.parent.name)


def label(kind: str, chapter: str, cell_id: str) -> str:
    """The Sphinx target of a notebook cell: kind is "theory" or "exercise"."""
    return f"{kind}-{chapter}-{cell_id}"


def cell_links(text: str) -> list[tuple[str, str, str, str]]:
    """(text, kind, chapter, cell id) of every link to a notebook cell in a page's markdown."""
    return [(m.group(1), "theory" if m.group(2) else "exercise", m.group(2) or m.group(3), m.group(4))
            for m in CELL_LINK.finditer(text)]


def _to_refs(text: str) -> str:
    def ref(m: re.Match) -> str:
        kind = "theory" if m.group(2) else "exercise"
        return f"{{ref}}`{m.group(1)} <{label(kind, m.group(2) or m.group(3), m.group(4))}>`"
    return CELL_LINK.sub(ref, text)


def _note(text: str) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_markdown_cell(text)
    cell.id = "site-note"
    return cell


def _stage_notebook(source: Path, target: Path, note: str, kind: str, chapter: str, targets: set[str]) -> None:
    nb = nbformat.read(str(source), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.id in targets:
            cell.source = f"({label(kind, chapter, cell.id)})=\n{cell.source}"
    nb.cells.insert(1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0, _note(note))
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(target))


def stage(src: Path) -> dict[str, list[str]]:
    """Write the Sphinx source folder `src`; returns the chapters staged, per kind."""
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    pages = sorted(SITE.glob("*.md"))
    wanted: dict[tuple[str, str], set[str]] = {}
    for page in pages:
        for _, kind, chapter, cell_id in cell_links(page.read_text()):
            wanted.setdefault((kind, chapter), set()).add(cell_id)
        (src / page.name).write_text(_to_refs(page.read_text()))
    shutil.copy(SITE / "conf.py", src / "conf.py")

    theory, exercises = theory_chapters(), exercise_chapters()
    for chapter in theory:
        run = f"`jupyter lab notebooks/{chapter}.ipynb`"
        exercise = (f" Then the exercises: [{chapter} exercises](../exercises/{chapter}/{chapter}.ipynb) (read-only here), "
                    f"or open `exercises/{chapter}/{chapter}.ipynb` in JupyterLab.") if chapter in exercises else ""
        note = (f"> **Run it yourself.** This page is the notebook `notebooks/{chapter}.ipynb` with the outputs it "
                f"printed when it was last executed. To run it, install the course (README, *Install*), then "
                f"{run} from the repository root.{exercise}")
        _stage_notebook(ROOT / "notebooks" / f"{chapter}.ipynb", src / "notebooks" / f"{chapter}.ipynb", note,
                        "theory", chapter, wanted.get(("theory", chapter), set()))
    for chapter in exercises:
        theory_link = f"[the chapter's theory](../../notebooks/{chapter}.ipynb) and " if chapter in theory else ""
        note = (f"> **These are the exercises as a learner gets them**, shown read-only, without answers. To "
                f"solve them: {{download}}`download {chapter}.ipynb <../../{PRISTINE}/{chapter}.ipynb>` (or use "
                f"`exercises/{chapter}/{chapter}.ipynb` in a clone of the course), install the course (README, "
                f"*Install*), run `jupyter lab exercises/{chapter}/{chapter}.ipynb`, and work from the top: "
                f"each test cell prints a line starting with ✓ when your answer is right. Read "
                f"{theory_link}the README's *For learners* first.")
        _stage_notebook(ROOT / "exercises" / chapter / f"{chapter}.ipynb", src / "exercises" / chapter / f"{chapter}.ipynb",
                        note, "exercise", chapter, wanted.get(("exercise", chapter), set()))
        (src / PRISTINE).mkdir(exist_ok=True)  # the download: the committed file itself, byte for byte
        shutil.copy(ROOT / "exercises" / chapter / f"{chapter}.ipynb", src / PRISTINE / f"{chapter}.ipynb")
    missing = sorted(f"{kind} {chapter}" for kind, chapter in wanted
                     if chapter not in (theory if kind == "theory" else exercises))
    if missing:
        raise SystemExit(f"site pages link to notebooks that do not exist: {missing}")
    return {"theory": theory, "exercises": exercises}


def build(out: Path = DEFAULT_OUT, *, quiet: bool = True) -> Path:
    """Stage and build the site; returns the HTML folder. Fails on any Sphinx warning."""
    staged = stage(out / "src")
    html = out / "html"
    if html.exists():
        shutil.rmtree(html)
    command = [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-n", "-E",
               "-d", str(out / "doctrees"), str(out / "src"), str(html)]
    if quiet:
        command.insert(3, "-q")
    start = time.perf_counter()
    run = subprocess.run(command, cwd=ROOT)
    if run.returncode != 0:
        raise SystemExit(f"sphinx-build failed (exit {run.returncode}); its warnings are above")
    print(f"built {len(staged['theory'])} chapter pages and {len(staged['exercises'])} exercise pages in "
          f"{time.perf_counter() - start:.1f} s: {html / 'index.html'}")
    return html


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default build/site)")
    parser.add_argument("--verbose", action="store_true", help="show Sphinx's progress")
    args = parser.parse_args(argv)
    build(args.out.resolve(), quiet=not args.verbose)
    return 0


if __name__ == "__main__":
    sys.exit(main())
