"""The `## ` sections of docs/benchmarks.md that one writer replaces while keeping the others.

Owns finding a section by its heading, replacing (or appending) it, and the list of sections a
run of bench/bench.py keeps from the old file when it does not write them itself: the template
builds (bench/templates.py), the cluster overhead (bench/clusterbench.py, when this run did not
measure it), the placement simulator (written by hand from `bench/placement`'s output), the
code interpreter (bench/interpreter.py) and the telemetry overhead (bench/telemetrybench.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence, Tuple

# Sections bench.py keeps from the old file when its new text lacks them, in the order they
# are appended after its own sections. A heading matches when it starts with one of these.
CLUSTER_TITLE = "## Cluster overhead"
TEMPLATES_TITLE = "## Template builds"
PLACEMENT_TITLE = "## Placement simulator"
INTERPRETER_TITLE = "## Code interpreter"
TELEMETRY_TITLE = "## Telemetry overhead"
KEPT_TITLES = (CLUSTER_TITLE, TEMPLATES_TITLE, PLACEMENT_TITLE, INTERPRETER_TITLE, TELEMETRY_TITLE)


def span(doc: str, title: str) -> Optional[Tuple[int, int]]:
    """(start, end) character offsets of the section whose heading starts with `title`: from
    that heading to the next `## ` heading or the end; None when absent."""
    m = re.search(r"^" + re.escape(title) + r".*$", doc, flags=re.M)
    if m is None:
        return None
    nxt = re.search(r"^## ", doc[m.end():], flags=re.M)
    return m.start(), (m.end() + nxt.start()) if nxt else len(doc)


def replace(doc: str, title: str, section: str) -> str:
    """`doc` with its `title` section replaced by `section` (appended when absent)."""
    section = section.rstrip("\n") + "\n"
    found = span(doc, title)
    if found is None:
        return doc.rstrip("\n") + "\n\n" + section if doc.strip() else section
    start, end = found
    rest = doc[end:]
    return doc[:start] + section + ("\n" + rest if rest else "")


def keep(old_path: Path, new_doc: str, titles: Sequence[str] = KEPT_TITLES) -> str:
    """`new_doc` with every `titles` section that `old_path` has and `new_doc` lacks, so a run
    that does not measure them does not drop them."""
    try:
        old = old_path.read_text()
    except OSError:
        return new_doc
    for title in titles:
        if span(new_doc, title) is not None:
            continue
        found = span(old, title)
        if found is not None:
            new_doc = replace(new_doc, title, old[found[0]:found[1]])
    return new_doc
