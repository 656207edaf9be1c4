"""The mined-pairs TSV: one row per pair, five fields, whatever the texts contain."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from index.pairs import write_pairs


def test_texts_with_tabs_and_line_breaks_stay_one_row_of_five_fields(tmp_path: Path) -> None:
    out = tmp_path / "pairs.tsv"
    texts = ["a\tb", "line one\nline two", "carriage\rreturn"]
    n = write_pairs(out, [(0, 1, 1.25), (2, 0, 1.0)], ["1", "2", "3"], ["x", "y", "z"], texts, texts)
    rows = [line.split("\t") for line in out.read_text(encoding="utf-8").splitlines()]
    assert n == 2 and len(rows) == 2 and all(len(r) == 5 for r in rows)
    assert rows[0] == ["1.250000", "1", "y", "a b", "line one line two"]
    assert rows[1] == ["1.000000", "3", "x", "carriage return", "a b"]


def test_a_failure_midway_leaves_no_partial_file(tmp_path: Path) -> None:
    out = tmp_path / "pairs.tsv"
    out.write_text("the previous result\n", encoding="utf-8")

    def pairs() -> Iterator[tuple[int, int, float]]:
        yield (0, 0, 1.0)
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError):
        write_pairs(out, pairs(), ["1"], ["1"], ["a"], ["b"])
    assert out.read_text(encoding="utf-8") == "the previous result\n"
    assert [p.name for p in tmp_path.iterdir()] == ["pairs.tsv"]
