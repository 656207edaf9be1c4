"""The committed progress of ingest sources: where each input file stands, its counts and its
first malformed lines, written in the same transaction as the documents they describe."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from core.clock import now_iso
from index.store import Store, has_column, has_table


@dataclass(frozen=True)
class LineError:
    """A malformed input line, by its 1-based number."""

    line: int
    reason: str


@dataclass(frozen=True)
class SourceCheckpoint:
    """What is committed for one ingest source: where to resume, and what the lines before held.

    ``documents`` and ``errors`` count every line up to ``line`` since the source last started
    from its beginning (a collection made before counts were kept counts from its upgrade);
    ``error_lines`` are the first stored malformed lines after a given line.
    """

    offset: int = 0
    line: int = 0
    documents: int = 0
    errors: int = 0
    error_lines: tuple[LineError, ...] = ()

    def continues(self, start: SourceCheckpoint) -> bool:
        """Whether this was reached from ``start`` by ingesting on; not if the file was replaced
        and the source started over since."""
        return (
            start.offset <= self.offset and start.documents <= self.documents and start.errors <= self.errors
        )

    def baseline(self, first: SourceCheckpoint | None) -> SourceCheckpoint:
        """Where counts spanning several runs start: ``first`` (the first run's checkpoint) while
        this continues it, else this one (never counted before, or started over)."""
        return first if first is not None and self.continues(first) else self

    def since(self, start: SourceCheckpoint) -> SourceCheckpoint:
        """The counts and error lines committed after ``start`` (everything if started over)."""
        base = start if self.continues(start) else SourceCheckpoint()
        return SourceCheckpoint(
            offset=self.offset,
            line=self.line,
            documents=self.documents - base.documents,
            errors=self.errors - base.errors,
            error_lines=tuple(e for e in self.error_lines if e.line > base.line),
        )


@dataclass(frozen=True)
class SourceCommit:
    """An ingest source's position after a chunk, committed in the chunk's own transaction.

    ``mark`` fingerprints the file up to ``offset`` (a replaced file is not resumed); ``documents``
    and ``errors`` are cumulative for the source; ``error_lines`` are malformed lines to keep;
    ``restart`` drops what an earlier file under the same key left.
    """

    source: str
    offset: int
    line: int
    mark: str | None = None
    documents: int = 0
    errors: int = 0
    error_lines: Sequence[LineError] = ()
    restart: bool = False


class SourceLog:
    """Reads and writes the ``sources`` tables of one store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def source_progress(self, source: str) -> tuple[int, int]:
        """(byte offset, line) committed for an ingest source; (0, 0) if never ingested."""
        row = (
            self._store.connection()
            .execute("SELECT offset, line FROM sources WHERE source = ?", (source,))
            .fetchone()
        )
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def source_mark(self, source: str) -> str | None:
        """The content mark committed with the source's progress (None: none recorded)."""
        if not has_table(self._store.connection(), "source_marks"):
            return None
        row = (
            self._store.connection()
            .execute("SELECT mark FROM source_marks WHERE source = ?", (source,))
            .fetchone()
        )
        return str(row[0]) if row else None

    def source_counts(
        self, source: str, errors_after: int, limit: int
    ) -> tuple[tuple[int, int, int, int], list[tuple[int, str]]] | None:
        """((offset, line, documents, errors), first ``limit`` malformed (line, reason) after line
        ``errors_after``) committed for a source, in one snapshot; None if never ingested."""
        with self._store.read() as db:
            counted = has_column(db, "sources", "documents")  # a read-only handle on an older database
            columns = "offset, line, documents, errors" if counted else "offset, line, 0, 0"
            row = db.execute(f"SELECT {columns} FROM sources WHERE source = ?", (source,)).fetchone()
            if row is None:
                return None
            lines: list[tuple[int, str]] = []
            if has_table(db, "source_errors"):
                found = db.execute(
                    "SELECT line, reason FROM source_errors WHERE source = ? AND line > ? AND line <= ? "
                    "ORDER BY line LIMIT ?",
                    (source, errors_after, int(row[1]), limit),
                )
                lines = [(int(line), str(reason)) for line, reason in found]
        return (int(row[0]), int(row[1]), int(row[2]), int(row[3])), lines

    @staticmethod
    def record_source(
        db: sqlite3.Connection,
        source: str,
        position: tuple[int, int],
        counts: tuple[int, int],
        mark: str | None,
        error_lines: Iterable[tuple[int, str]],
        restart: bool,
    ) -> None:
        """Record an ingest source's (offset, line), cumulative (documents, errors), content mark
        and new malformed lines inside a write; ``restart`` first drops an earlier file's lines."""
        if restart:
            db.execute("DELETE FROM source_errors WHERE source = ?", (source,))
        db.execute(
            "INSERT OR REPLACE INTO sources (source, offset, line, updated, documents, errors) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (source, *position, now_iso(), *counts),
        )
        if mark is not None:
            db.execute("INSERT OR REPLACE INTO source_marks VALUES (?, ?)", (source, mark))
        else:  # progress without a mark: an older mark no longer applies
            db.execute("DELETE FROM source_marks WHERE source = ?", (source,))
        db.executemany(
            "INSERT OR REPLACE INTO source_errors VALUES (?, ?, ?)",
            [(source, line, reason) for line, reason in error_lines],
        )
