"""Ingest checkpoints: counts and malformed lines committed with each chunk's position."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from index.collection import MAX_STORED_ERRORS, Collection
from index.ingest import committed, ingest, resume_point, source_key
from index.sources import LineError, SourceCheckpoint
from model.encoder import Encoder


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Encoder:
    return Encoder.load(tiny_model_dir, backend="onnx-int8")


class Stop(Exception):
    pass


def _stop_after(chunks: int) -> Callable[[int, int, int], None]:
    seen = 0

    def progress(_docs: int, _offset: int, _passages: int) -> None:
        nonlocal seen
        seen += 1
        if seen == chunks:
            raise Stop

    return progress


def _lines(prefix: str, n: int, bad_every: int = 0) -> list[str]:
    out = []
    for i in range(n):
        if bad_every and i % bad_every == bad_every - 1:
            out.append(f"{{broken {prefix}{i}")
        else:
            out.append(json.dumps({"id": f"{prefix}{i}", "text": f"{prefix} text {i}"}))
    return out


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def test_counts_and_error_lines_are_committed_with_the_position(tmp_path: Path, tiny: Encoder) -> None:
    src = tmp_path / "docs.jsonl"
    lines = _lines("a", 30, bad_every=4)  # lines 4, 8, ... are malformed
    _write(src, lines)
    home = tmp_path / "collections"
    with Collection.create(home, "c", tiny.model_id, tiny.dim) as coll:
        with pytest.raises(Stop):
            ingest(coll, tiny, src, chunk_size=5, progress=_stop_after(2))
        stored = len(coll)
    with Collection.open(home, "c", tiny.model_id) as coll:
        point = resume_point(coll, src)
        assert point.documents == stored == 10
        prefix = lines[: point.line]
        assert point.offset == sum(len(line) + 1 for line in prefix)
        bad = [i + 1 for i, line in enumerate(prefix) if line.startswith("{broken")]
        assert point.errors == len(bad) and [e.line for e in point.error_lines] == bad
        assert all("invalid JSON" in e.reason for e in point.error_lines)
        report = ingest(coll, tiny, src, chunk_size=5)
        assert report.resumed == point
        assert report.documents == 30 - 7 - 10 and report.error_count == 7 - len(bad)
        total = report.committed
        assert (total.documents, total.errors, total.line) == (23, 7, 30)
        assert [e.line for e in total.error_lines] == [line for line in range(4, 31, 4) if line > point.line]
        assert [e.line for e in committed(coll, src).error_lines] == list(range(4, 31, 4))
        assert total.since(point).documents == report.documents


def test_malformed_lines_after_the_last_document_are_committed(tmp_path: Path, tiny: Encoder) -> None:
    src = tmp_path / "docs.jsonl"
    _write(src, [*_lines("a", 3), "oops", "{"])
    with Collection.create(tmp_path / "collections", "c", tiny.model_id, tiny.dim) as coll:
        report = ingest(coll, tiny, src, chunk_size=3)
        assert (report.committed.documents, report.committed.errors, report.committed.line) == (3, 2, 5)
        assert [e.line for e in resume_point(coll, src).error_lines] == [4, 5]
        again = ingest(coll, tiny, src)
        assert again.documents == 0 and again.error_count == 0 and again.committed.errors == 2


def test_stored_error_lines_are_capped_the_count_is_not(tmp_path: Path, tiny: Encoder) -> None:
    src = tmp_path / "docs.tsv"
    _write(src, [f"bad line {i}" for i in range(MAX_STORED_ERRORS + 50)] + ["1\tone"])
    with Collection.create(tmp_path / "collections", "c", tiny.model_id, tiny.dim) as coll:
        report = ingest(coll, tiny, src)
        assert report.committed.errors == MAX_STORED_ERRORS + 50 and report.committed.documents == 1
        lines = [e.line for e in report.committed.error_lines]
        assert lines == list(range(1, MAX_STORED_ERRORS + 1))


def test_a_replaced_file_starts_over_with_counts_reset(tmp_path: Path, tiny: Encoder) -> None:
    src = tmp_path / "docs.jsonl"
    _write(src, _lines("a", 12, bad_every=3))
    with Collection.create(tmp_path / "collections", "c", tiny.model_id, tiny.dim) as coll:
        first = ingest(coll, tiny, src, chunk_size=4)
        assert (first.committed.documents, first.committed.errors) == (8, 4)
        _write(src, _lines("b", 12, bad_every=6))  # same length, other content
        assert resume_point(coll, src) == SourceCheckpoint()
        report = ingest(coll, tiny, src, chunk_size=4)
        assert report.resumed_from_line == 0 and report.documents == 10
        total = report.committed
        assert (total.documents, total.errors) == (10, 2)
        assert [e.line for e in total.error_lines] == [6, 12]
        assert total.since(first.committed) == total  # the earlier checkpoint is not a prefix
        assert total.baseline(first.committed) == total


def test_a_replaced_file_not_yet_committed_reads_as_a_fresh_start(tmp_path: Path, tiny: Encoder) -> None:
    src = tmp_path / "docs.jsonl"
    _write(src, _lines("a", 8, bad_every=2))
    with Collection.create(tmp_path / "collections", "c", tiny.model_id, tiny.dim) as coll:
        ingest(coll, tiny, src)
        _write(src, _lines("b", 20))
        with pytest.raises(Stop):
            ingest(coll, tiny, src, chunk_size=5, progress=_stop_after(1))
        point = resume_point(coll, src)
        assert (point.documents, point.errors, point.error_lines) == (5, 0, ())


def _downgrade(db_path: Path) -> None:
    """The schema of the version before counts: sources without counts, no error lines."""
    with sqlite3.connect(db_path) as db:
        db.executescript(
            """
            CREATE TABLE sources_old (
                source TEXT PRIMARY KEY, offset INTEGER NOT NULL, line INTEGER NOT NULL,
                updated TEXT NOT NULL
            );
            INSERT INTO sources_old SELECT source, offset, line, updated FROM sources;
            DROP TABLE sources;
            ALTER TABLE sources_old RENAME TO sources;
            DROP TABLE source_errors;
            """
        )


def test_an_older_database_migrates_in_place_and_resumes(tmp_path: Path, tiny: Encoder) -> None:
    src = tmp_path / "docs.jsonl"
    lines = _lines("a", 10, bad_every=5)
    _write(src, lines)
    home = tmp_path / "collections"
    with Collection.create(home, "c", tiny.model_id, tiny.dim) as coll:
        ingest(coll, tiny, src, chunk_size=4)
    _downgrade(home / "c" / "docs.sqlite")
    with Collection.open(home, "c", tiny.model_id, readonly=True) as reader:  # reads, never migrates
        point = reader.source_checkpoint(source_key(src))
        assert (point.line, point.documents, point.errors) == (10, 0, 0)
    with sqlite3.connect(home / "c" / "docs.sqlite") as db:
        assert "documents" not in {row[1] for row in db.execute("PRAGMA table_info(sources)")}
    _write(src, [*lines, *_lines("b", 6, bad_every=3)])
    with Collection.open(home, "c", tiny.model_id) as coll:
        assert resume_point(coll, src).line == 10
        report = ingest(coll, tiny, src, chunk_size=4)
        assert report.resumed_from_line == 10 and report.documents == 4 and report.error_count == 2
        # Counts start at the upgrade: what the older version committed was never counted.
        total = report.committed
        assert (total.documents, total.errors) == (4, 2)
        assert [e.line for e in total.error_lines] == [13, 16]
        assert len(coll) == 12
    with sqlite3.connect(home / "c" / "docs.sqlite") as db:
        assert {"documents", "errors"} <= {row[1] for row in db.execute("PRAGMA table_info(sources)")}


def test_since_and_baseline() -> None:
    first = SourceCheckpoint(100, 10, 8, 2, (LineError(3, "x"), LineError(7, "y")))
    later = SourceCheckpoint(300, 30, 25, 4, (LineError(3, "x"), LineError(7, "y"), LineError(20, "z")))
    assert later.baseline(first) == first and later.baseline(None) == later
    done = later.since(first)
    assert (done.documents, done.errors, done.error_lines) == (17, 2, (LineError(20, "z"),))
    restarted = SourceCheckpoint(50, 5, 4, 0)
    assert restarted.baseline(first) == restarted and restarted.since(first) == restarted
