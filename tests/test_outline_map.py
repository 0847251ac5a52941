"""The outline map (site/outline_map.md) cannot rot.

It must list every subtopic of the outline (seeds/001: parts 1-10, five each), its ten practice
exercises and the roadmap pages' runnable examples; every linked notebook cell must exist; a row of
a chapter not yet written must say so, and stop saying so once the chapter exists.
"""

from __future__ import annotations

import re

import nbformat
import pytest

from tools.build import ROOT
from tools.site import cell_links

MAP = ROOT / "site" / "outline_map.md"
NOT_WRITTEN = re.compile(r"chapter (\d\d), not yet written")

# The outline's table of contents (seeds/001_..., "Table of Contents"), copied here because the
# seeds live outside the repository: the map must have a row for each, under these numbers.
SUBTOPICS = {
    "1.1": "Sequence transduction", "1.2": "Parallel token processing", "1.3": "Context mixing",
    "1.4": "Position information", "1.5": "Stacked blocks",
    "2.1": "Queries, keys, values", "2.2": "Score matrix", "2.3": "Masking", "2.4": "Attention weights",
    "2.5": "Weighted values",
    "3.1": "Head splitting", "3.2": "Per-head dimension", "3.3": "Concatenation", "3.4": "Specialization",
    "3.5": "GQA and MQA bridge",
    "4.1": "Position-wise MLP", "4.2": "Expansion ratio", "4.3": "Activation", "4.4": "Parameter count",
    "4.5": "Token independence",
    "5.1": "Residual stream", "5.2": "Layer normalization", "5.3": "Pre-LN block", "5.4": "Post-LN block",
    "5.5": "RMSNorm",
    "6.1": "Encoder self-attention", "6.2": "Decoder causal self-attention", "6.3": "Cross-attention",
    "6.4": "Encoder-only", "6.5": "Decoder-only",
    "7.1": "Absolute positions", "7.2": "Sinusoidal positions", "7.3": "Relative bias", "7.4": "RoPE",
    "7.5": "Length behavior",
    "8.1": "Attention FLOPs", "8.2": "Attention score memory", "8.3": "MLP FLOPs", "8.4": "KV cache",
    "8.5": "FlashAttention bridge",
    "9.1": "Language-model loss", "9.2": "Masked LM loss", "9.3": "Teacher forcing", "9.4": "Attention masks",
    "9.5": "Weight tying",
    "10.1": "Shape checks", "10.2": "Mask tests", "10.3": "Attention entropy", "10.4": "Residual norms",
    "10.5": "Ablations",
}
PRACTICE = {
    "P1": "Compute scaled dot-product attention for tiny matrices.",
    "P2": "Build a causal mask and apply it to attention scores.",
    "P3": "Split model dimension into heads.",
    "P4": "Count parameters in Q, K, V, and output projections.",
    "P5": "Count MLP parameters and compare to attention parameters.",
    "P6": "Compute LayerNorm and RMSNorm for one vector.",
    "P7": "Compare Pre-LN and Post-LN block equations.",
    "P8": "Compute KV cache memory for a decoder.",
    "P9": "Identify encoder-only, decoder-only, and encoder-decoder masks.",
    "P10": "Write a transformer debugging checklist.",
}
EXAMPLES = ("S1", "S2", "S3", "S4")  # the causal allow/block loop, the MHA first loop, the token list, the budget


def parse_rows(text: str) -> dict[str, dict[str, str]]:
    """Table rows `| # | name | theory | exercises |` keyed by their number; a number used twice is an error."""
    rows: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("| ") else []
        if len(cells) != 4 or cells[0] in ("#", "---"):
            continue
        number, name, theory, exercises = cells
        assert number not in rows, f"row {number} appears twice in {MAP.name}"
        rows[number] = {"name": name, "theory": theory, "exercises": exercises}
    return rows


def entry_problems(number: str, row: dict[str, str], existing: set[str]) -> list[str]:
    """What is wrong with one row: no theory entry, or a not-yet-written chapter that exists."""
    problems = []
    for column in ("theory", "exercises"):
        text = row[column]
        links = cell_links(text)
        pending = NOT_WRITTEN.findall(text)
        if column == "theory" and not links and not pending:
            problems.append(f"{number} {row['name']}: no theory section linked and not marked not yet written")
        if column == "exercises" and not links and not pending and text != "—":
            problems.append(f"{number} {row['name']}: exercises column must link exercises, say 'chapter NN, not "
                            f"yet written', or be '—'")
        for chapter in pending:
            if any(name.startswith(chapter + "_") for name in existing):
                problems.append(f"{number} {row['name']}: chapter {chapter} exists now; replace 'chapter {chapter}, "
                                f"not yet written' in the {column} column by links to its cells")
    return problems


def _cell_ids(path) -> dict[str, str]:
    return {cell.id: cell.cell_type for cell in nbformat.read(str(path), as_version=4).cells}


@pytest.fixture(scope="module")
def rows() -> dict[str, dict[str, str]]:
    return parse_rows(MAP.read_text())


def _existing_chapters() -> set[str]:
    return {p.stem for p in (ROOT / "content" / "notebooks").glob("[0-9][0-9]_*.py")} | \
        {p.stem for p in (ROOT / "content" / "solutions").glob("[0-9][0-9]_*.py")}


def test_every_subtopic_practice_exercise_and_example_has_one_row(rows):
    expected = list(SUBTOPICS) + list(PRACTICE) + list(EXAMPLES)
    assert len(SUBTOPICS) == 50 and len(PRACTICE) == 10
    missing = [n for n in expected if n not in rows]
    extra = [n for n in rows if n not in expected]
    assert not missing, f"{MAP.name} has no row for {missing}"
    assert not extra, f"{MAP.name} has rows the outline does not: {extra}"
    for number, name in {**SUBTOPICS, **PRACTICE}.items():
        assert rows[number]["name"] == name, f"row {number} is named {rows[number]['name']!r}, outline: {name!r}"


def test_every_row_has_an_entry_and_pending_chapters_are_really_pending(rows):
    existing = _existing_chapters()
    problems = [p for number, row in rows.items() for p in entry_problems(number, row, existing)]
    assert not problems, "\n".join(problems)


def test_every_linked_cell_exists_and_is_markdown():
    links = cell_links(MAP.read_text())
    assert len(links) > 60
    cache: dict[str, dict[str, str]] = {}
    problems = []
    for text, kind, chapter, cell_id in links:
        path = ROOT / ("notebooks" if kind == "theory" else f"exercises/{chapter}") / f"{chapter}.ipynb"
        if not path.exists():
            problems.append(f"{text}: {path.relative_to(ROOT)} does not exist")
            continue
        ids = cache.setdefault(str(path), _cell_ids(path))
        if cell_id not in ids:
            problems.append(f"{text}: {path.relative_to(ROOT)} has no cell {cell_id!r}")
        elif ids[cell_id] != "markdown":
            problems.append(f"{text}: cell {cell_id!r} of {path.relative_to(ROOT)} is not a markdown cell")
    assert not problems, "\n".join(problems)


def test_exercise_links_point_at_exercise_headings():
    for text, kind, _chapter, cell_id in cell_links(MAP.read_text()):
        if kind == "exercise":
            assert re.fullmatch(r"ex\d+[a-z]?", cell_id), f"{text}: {cell_id!r} is not an exercise heading id"


def test_the_checks_can_fail(tmp_path):
    """A deleted cell id, a lost row and a stale 'not yet written' are each reported."""
    row = {"name": "Masking", "theory": "[x](../notebooks/01_attention.ipynb#no-such-cell)", "exercises": "—"}
    assert cell_links(row["theory"]) == [("x", "theory", "01_attention", "no-such-cell")]
    assert "no-such-cell" not in _cell_ids(ROOT / "notebooks" / "01_attention.ipynb")
    pending = {"name": "Shape checks", "theory": "chapter 09, not yet written",
               "exercises": "chapter 09, not yet written"}
    assert entry_problems("10.1", pending, {"09_diagnostics"})  # chapter 09 exists: fill the row in
    assert not entry_problems("10.1", pending, {"08_training"})
    assert entry_problems("2.3", {"name": "Masking", "theory": "", "exercises": "—"}, set())
    text = MAP.read_text()
    lost = "\n".join(line for line in text.splitlines() if not line.startswith("| 2.3 |"))
    assert "2.3" not in parse_rows(lost)


def test_coverage_count(rows):
    """The number the closing note reports: subtopics whose chapter is written and linked."""
    covered = [n for n in SUBTOPICS if cell_links(rows[n]["theory"])]
    pending = [n for n in SUBTOPICS if NOT_WRITTEN.search(rows[n]["theory"])]
    assert len(covered) + len(pending) == 50
    print(f"outline map: {len(covered)}/50 subtopics covered, {len(pending)} pending ({', '.join(pending)})")
