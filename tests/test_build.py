"""Derived notebooks are what the build makes from their sources; notebooks ship clean or executed."""

from __future__ import annotations

import json
import subprocess
import sys

import nbformat
import pytest

from tools.build import CONTENT, ROOT, chapters, notebook_from_source

pytestmark = pytest.mark.slow


def test_no_derived_notebook_is_stale():
    """exercises/ is byte-for-byte what nbgrader generates now; solutions/ and notebooks/ match content/."""
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "build.py"), "--check"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("chapter", chapters())
def test_exercise_hides_solutions_and_hidden_tests(chapter):
    text = (ROOT / "exercises" / chapter / f"{chapter}.ipynb").read_text()
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "seed=5"):
        assert marker not in text
    nb = nbformat.read(str(ROOT / "exercises" / chapter / f"{chapter}.ipynb"), as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("chapter", chapters())
def test_every_exercise_has_statement_hint_answer_visible_and_hidden_test(chapter):
    nb = notebook_from_source(CONTENT / "solutions" / f"{chapter}.py", graded=True)
    cells = {c.id: c for c in nb.cells}
    answers = [cid for cid, c in cells.items() if c.metadata["nbgrader"]["solution"]]
    assert len(answers) >= 6
    for answer in answers:
        exercise = answer.removesuffix("-answer")
        statement = cells[exercise].source
        assert "*Difficulty*" in statement and "*Time*" in statement and "<details>" in statement, exercise
        if cells[answer].metadata["nbgrader"]["grade"]:  # a written answer, graded by hand: no test cells
            assert cells[answer].metadata["nbgrader"]["points"] > 0
            continue
        assert cells[f"{exercise}-test"].metadata["nbgrader"]["points"] > 0
        assert "### BEGIN HIDDEN TESTS" in cells[f"{exercise}-hidden"].source


@pytest.mark.parametrize("chapter", chapters())
def test_theory_notebook_is_executed_with_outputs(chapter):
    nb = nbformat.read(str(ROOT / "notebooks" / f"{chapter}.ipynb"), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code)
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in code for o in c.outputs), "no plots"
    assert any(c.source.startswith("# NBVAL_CHECK_OUTPUT") for c in code)
    errors = [o for c in code for o in c.outputs if o.get("output_type") == "error"]
    assert not errors


def test_executed_notebooks_record_the_helpers_they_import():
    """The record follows imports through helpers' own modules: chapter 00 imports helpers.overview,
    which imports helpers.blocks (a package: its modules too), which imports chapter 01-04's modules."""
    from tools.build import DEPENDS_KEY, dependency_record

    nb = nbformat.read(str(ROOT / "notebooks" / "00_overview.ipynb"), as_version=4)
    record = dependency_record(nb)
    assert {"helpers/__init__.py", "helpers/overview.py", "helpers/blocks/__init__.py", "helpers/blocks/decoder.py",
            "helpers/attention.py", "helpers/norms.py"} <= set(record["helpers"])
    assert "helpers/checks/core.py" not in record["helpers"]  # theory notebooks run no checks
    for chapter in chapters():
        executed = nbformat.read(str(ROOT / "notebooks" / f"{chapter}.ipynb"), as_version=4)
        assert executed.metadata[DEPENDS_KEY]["helpers"] == dependency_record(executed)["helpers"], chapter


def test_a_changed_helper_or_pin_makes_the_executed_notebook_stale():
    from tools.build import DEPENDS_KEY, _dependencies_changed, dependency_record

    nb = nbformat.read(str(ROOT / "notebooks" / "01_attention.ipynb"), as_version=4)
    nb.metadata[DEPENDS_KEY] = dependency_record(nb)
    assert _dependencies_changed(nb) is None
    nb.metadata[DEPENDS_KEY] = {**dependency_record(nb), "helpers_sha256": "0" * 64}
    assert "a helpers module it imports changed" in _dependencies_changed(nb)
    assert "helpers/attention.py" in _dependencies_changed(nb)
    nb.metadata[DEPENDS_KEY] = {**dependency_record(nb), "pins_sha256": "0" * 64}
    assert "pinned dependencies" in _dependencies_changed(nb)
    del nb.metadata[DEPENDS_KEY]
    assert "records no dependencies" in _dependencies_changed(nb)


EXERCISES = """# %% [markdown] id="intro"
# | # | exercise |
# |---|---|
# | 1 | `f(x)` |
# | 2 | two parts |

# %% [markdown] id="ex1"
# *Time* ~5 min · *Points*

# %% id="ex1-answer" kind="answer"
### BEGIN SOLUTION
f = abs
### END SOLUTION

# %% id="ex1-test" kind="test" points=1
assert f(-1) == 1

# %% id="ex1-hidden" kind="test" points=2
### BEGIN HIDDEN TESTS
assert f(-2) == 2
### END HIDDEN TESTS

# %% [markdown] id="ex2"
# *Points*

# %% [markdown] id="ex2a"
# *Points* (graded by your instructor)

# %% [markdown] id="ex2a-answer" kind="manual" points=3
# ### BEGIN SOLUTION
# yes
# ### END SOLUTION

# %% [markdown] id="ex2b"
# *Points*

# %% id="ex2b-test" kind="test" points=1
assert True
"""


def test_points_are_written_from_the_cell_headers(tmp_path):
    """The intro table's points column and each `*Points*` are the sums of the graded cells' `points=`."""
    source = tmp_path / "99_example.py"
    source.write_text(EXERCISES)
    cells = {cell.id: cell.source for cell in notebook_from_source(source, graded=True).cells}
    assert cells["intro"].splitlines() == ["| # | exercise | points |", "|---|---|---|", "| 1 | `f(x)` | 3 |",
                                           "| 2 | two parts | 4 |"]
    assert cells["ex1"] == "*Time* ~5 min · *Points* 3"
    assert cells["ex2"] == "*Points* 4 in two parts (3 + 1)"
    assert cells["ex2a"] == "*Points* 3 (graded by your instructor)"
    assert cells["ex2b"] == "*Points* 1"


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace("*Time* ~5 min · *Points*", "*Time* ~5 min · *Points* 3"), "writes a number after"),
    (lambda s: s.replace("| # | exercise |\n# |---|---|", "| # | exercise | points |\n# |---|---|---|"),
     "without a points column"),
    (lambda s: s.replace("# | 2 | two parts |", "# | 2 | two parts |\n# | 3 | none |"), "exercise '3'"),
    (lambda s: s.replace("# *Points*\n\n# %% id=\"ex2b-test\"", "# b\n\n# %% id=\"ex2b-test\""), "does not say"),
])
def test_points_written_by_hand_or_missing_are_refused(tmp_path, edit, message):
    from tools.build import BuildError

    source = tmp_path / "99_example.py"
    source.write_text(edit(EXERCISES))
    with pytest.raises(BuildError, match=message):
        notebook_from_source(source, graded=True)


MODULE = '''"""A module. é"""
import torch  # a comment


class Norm:
    """A class."""

    eps = "1e-5 # not a comment"

    def forward(self, x):
        """One line."""
        return x * 2  # doubled
'''


@pytest.mark.parametrize("edit, same", [
    (lambda m: m.replace("A module. é", "A module, reworded.\n\nWith a second paragraph."), True),
    (lambda m: m.replace("# doubled", "# twice x"), True),
    (lambda m: m.replace("    def forward", "    # a new comment line\n\n    def forward"), True),
    (lambda m: m.replace('"""One line."""', '"""One line,\n        now two."""'), True),
    (lambda m: m.replace("x * 2", "x * 3"), False),
    (lambda m: m.replace("1e-5 # not a comment", "1e-6 # not a comment"), False),  # a string, not a comment
    (lambda m: m.replace('    """A class."""\n', ""), True),
])
def test_the_stale_check_hashes_code_not_docstrings_or_comments(edit, same):
    """A docstring or comment fix in a helpers module re-executes no notebook; a code change does."""
    from tools.build import code_only

    assert (code_only(edit(MODULE)) == code_only(MODULE)) is same


def _figure_notebook(after: str | None) -> nbformat.NotebookNode:
    """A code cell with a PNG output, followed by a markdown cell `after` (or by nothing)."""
    nb = nbformat.v4.new_notebook()
    plot = nbformat.v4.new_code_cell("plt.plot([1, 2]); plt.show()", id="the-plot")
    plot.outputs = [nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"})]
    text = nbformat.v4.new_code_cell("print(1)", id="text-only")
    text.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    nb.cells = [text, plot] + ([nbformat.v4.new_markdown_cell(after, id="after")] if after is not None else [])
    return nb


@pytest.mark.parametrize("after", [None, "Reading the figure: the curve rises.", "## Next section",
                                   "The curve rises. *What to see:* at the end is too late."])
def test_a_figure_without_a_caption_is_named_with_its_cell_and_the_fix(after):
    from tools.build import CAPTION, caption_problems

    problems = caption_problems(_figure_notebook(after), "notebooks/99_demo.ipynb")
    assert len(problems) == 1
    assert "notebooks/99_demo.ipynb" in problems[0] and "the-plot" in problems[0] and CAPTION in problems[0]
    assert "text-only" not in problems[0]


def test_a_figure_followed_by_its_caption_passes():
    from tools.build import caption_problems

    assert caption_problems(_figure_notebook("*What to see:* the curve rises."), "nb") == []


@pytest.mark.parametrize("chapter", chapters())
def test_every_figure_in_a_theory_notebook_has_a_caption(chapter):
    from tools.build import caption_problems

    nb = nbformat.read(str(ROOT / "notebooks" / f"{chapter}.ipynb"), as_version=4)
    assert caption_problems(nb, chapter) == []


def test_the_build_refuses_an_uncaptioned_figure(tmp_path, monkeypatch):
    """build() executes a theory notebook, then refuses to write it when a figure has no caption."""
    import tools.build as build_module

    (tmp_path / "content" / "notebooks").mkdir(parents=True)
    (tmp_path / "content" / "solutions").mkdir()
    (tmp_path / "notebooks").mkdir()  # the kernel runs there
    source = tmp_path / "content" / "notebooks" / "99_demo.py"
    source.write_text('# %% id="the-plot"\nfrom IPython.display import Image, display\n'
                      'display(Image(data=bytes.fromhex("89504e470d0a1a0a")))\n')
    monkeypatch.setattr(build_module, "CONTENT", tmp_path / "content")
    monkeypatch.setattr(build_module, "ROOT", tmp_path)
    monkeypatch.setattr(build_module, "dependency_record", lambda nb: {})
    with pytest.raises(build_module.BuildError, match="the-plot"):
        build_module.build("99_demo", only="theory")
    assert not (tmp_path / "notebooks" / "99_demo.ipynb").exists()
    source.write_text(source.read_text() + '\n# %% [markdown] id="caption"\n# *What to see:* one tiny image.\n')
    build_module.build("99_demo", only="theory")
    assert (tmp_path / "notebooks" / "99_demo.ipynb").exists()


def test_notebooks_carry_the_kernels_language_info():
    """JupyterLab marks a notebook unsaved as soon as its kernel's language_info differs from the file's
    (it writes the kernel's in): every derived notebook carries what ipykernel reports, for the course's
    Python version, so a learner's freshly opened notebook is not "unsaved" before any edit."""
    from tools.build import COURSE_PYTHON, KERNELSPEC, LANGUAGE_INFO

    # ipykernel's value read in a child process: importing ipykernel here puts ipykernel.zmqshell in
    # this worker's sys.modules, and tqdm.auto (the training loop's progress bar) then takes every later
    # test in the worker for a notebook and draws a widget instead of writing to the terminal.
    reported = subprocess.run([sys.executable, "-c", "import json; from ipykernel.ipkernel import IPythonKernel; "
                               "print(json.dumps(IPythonKernel.language_info))"],
                              capture_output=True, text=True, check=True, timeout=120).stdout
    assert LANGUAGE_INFO == {**json.loads(reported), "version": COURSE_PYTHON}
    paths = [*ROOT.glob("notebooks/[0-9][0-9]_*.ipynb"), *ROOT.glob("solutions/*/*.ipynb"),
             *ROOT.glob("exercises/*/*.ipynb")]
    assert len(paths) >= 30
    for path in paths:
        metadata = nbformat.read(str(path), as_version=4).metadata
        assert metadata["language_info"] == LANGUAGE_INFO, path
        assert metadata["kernelspec"] == KERNELSPEC, path
