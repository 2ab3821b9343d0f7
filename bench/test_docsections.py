"""Tests of bench/docsections.py: a rewrite of docs/benchmarks.md keeps the sections other
writers own. Run: `python -m pytest bench/test_docsections.py` (no server needed)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import docsections  # noqa: E402

OLD = """# Benchmarks

old table

## Targets (issue 6)

- old target

## Cluster overhead (issue 14)

old cluster numbers

## Template builds

old template numbers

## Placement simulator (issue 14)

hand-written placement numbers
"""

NEW = """# Benchmarks

new table

## Targets (issue 6)

- new target
"""


def test_keeps_every_foreign_section_in_order(tmp_path: Path) -> None:
    old = tmp_path / "benchmarks.md"
    old.write_text(OLD)
    doc = docsections.keep(old, NEW)
    assert "new table" in doc and "old table" not in doc
    assert "- new target" in doc and "- old target" not in doc
    kept = ["## Cluster overhead (issue 14)", "## Template builds", "## Placement simulator (issue 14)"]
    positions = [doc.index(t) for t in kept]
    assert positions == sorted(positions)
    assert "old cluster numbers" in doc
    assert "old template numbers" in doc
    assert doc.rstrip().endswith("hand-written placement numbers")


def test_a_section_of_the_new_text_wins(tmp_path: Path) -> None:
    old = tmp_path / "benchmarks.md"
    old.write_text(OLD)
    new = docsections.replace(NEW, docsections.CLUSTER_TITLE, "## Cluster overhead (issue 14)\n\nnew cluster numbers\n")
    doc = docsections.keep(old, new)
    assert "new cluster numbers" in doc and "old cluster numbers" not in doc
    assert doc.count("## Cluster overhead") == 1
    assert "hand-written placement numbers" in doc


def test_replace_in_the_middle_keeps_what_follows() -> None:
    doc = docsections.replace(OLD, docsections.TEMPLATES_TITLE, "## Template builds\n\nnew template numbers")
    assert "new template numbers" in doc and "old template numbers" not in doc
    assert doc.index("## Cluster overhead") < doc.index("## Template builds") < doc.index("## Placement simulator")
    assert "\n\n## Placement simulator" in doc


def test_no_old_file(tmp_path: Path) -> None:
    assert docsections.keep(tmp_path / "missing.md", NEW) == NEW


def test_the_checked_in_doc_keeps_its_placement_section(tmp_path: Path) -> None:
    real = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
    found = docsections.span(real.read_text(), docsections.PLACEMENT_TITLE)
    assert found is not None
    doc = docsections.keep(real, NEW)
    assert real.read_text()[found[0]:found[1]].strip() in doc
