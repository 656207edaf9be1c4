"""The mined-pairs TSV file, written the same way by `dapsearch mine` and admin mining jobs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from core.files import atomic_writer


def tsv_field(text: str) -> str:
    """A text as one TSV field: tabs and line breaks would split it into columns or rows."""
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def write_pairs(
    out: Path,
    pairs: Iterable[tuple[int, int, float]],
    source_refs: Sequence[str],
    target_refs: Sequence[str],
    source_texts: Sequence[str],
    target_texts: Sequence[str],
) -> int:
    """score, source ref, target ref, source text, target text per pair (refs: line numbers or
    document ids); the file is written whole or not at all. Returns the number of rows."""
    rows = 0
    with atomic_writer(Path(out)) as fh:
        for s, t, value in pairs:
            fields = (source_refs[s], target_refs[t], source_texts[s], target_texts[t])
            fh.write(f"{value:.6f}\t" + "\t".join(tsv_field(f) for f in fields) + "\n")
            rows += 1
    return rows
