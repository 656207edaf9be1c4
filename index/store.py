"""The SQLite half of a collection: documents with their vectors, the version counter, the
tombstones that let an index replay deletions, and the committed progress of ingest sources.

SQLite is the source of truth: every write happens in one transaction that bumps the version,
and readers in other processes see the last committed version (WAL snapshots). Databases made
by earlier versions are brought up to this schema in place when opened for writing.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.clock import now_iso

DOCS = "docs.sqlite"
_SOURCE_TABLES = """
CREATE TABLE IF NOT EXISTS source_marks (source TEXT PRIMARY KEY, mark TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS source_errors (
    source TEXT NOT NULL, line INTEGER NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (source, line)
);
"""
# Columns added to ``sources`` since its first version, added in place to older databases.
_SOURCE_COLUMNS = {
    "documents": "INTEGER NOT NULL DEFAULT 0",
    "errors": "INTEGER NOT NULL DEFAULT 0",
}
_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS docs (
    rid INTEGER PRIMARY KEY AUTOINCREMENT,  -- the FAISS id; never reused, so replays are exact
    id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    lang TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    vector BLOB NOT NULL,
    version INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS docs_version ON docs(version);
CREATE INDEX IF NOT EXISTS docs_lang ON docs(lang);
CREATE TABLE IF NOT EXISTS tombstones (rid INTEGER PRIMARY KEY, version INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS tombstones_version ON tombstones(version);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sources (
    source TEXT PRIMARY KEY, offset INTEGER NOT NULL, line INTEGER NOT NULL, updated TEXT NOT NULL,
    documents INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0
);
"""
    + _SOURCE_TABLES
)
_DOC_COLUMNS = "id, text, lang, metadata"
_IN_BATCH = 500  # ids per IN (...) query, well below SQLite's variable limit


@dataclass
class Document:
    id: str
    text: str
    lang: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def decode(blobs: Iterable[bytes]) -> np.ndarray:
    """Stored float32 vector blobs back into one (n, dim) matrix."""
    data = list(blobs)
    return np.frombuffer(b"".join(data), dtype=np.float32).reshape(len(data), -1)


def _document(row: Sequence[Any]) -> Document:
    """A document from (id, text, lang, metadata) columns."""
    return Document(row[0], row[1], row[2], json.loads(row[3]))


class Store:
    """One connection to a collection's database; every statement on it goes through here."""

    def __init__(self, path: Path, readonly: bool) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=30000")
        if not readonly:
            _migrate(self._db)

    @staticmethod
    def initialise(path: Path) -> None:
        """Create an empty database (before the manifest makes the collection visible)."""
        with sqlite3.connect(path) as db:
            # WAL before the manifest makes the collection visible: switching the journal mode
            # later takes a lock that readers opening it at the same moment would contend for.
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('version', '0')")

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """One consistent read snapshot across several statements."""
        self._db.execute("BEGIN")
        try:
            yield self._db
        finally:
            self._db.execute("COMMIT")

    @contextmanager
    def write(self) -> Iterator[tuple[sqlite3.Connection, int]]:
        """One write transaction at the next version, committed on leaving."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            version = self.version(db) + 1
            yield db, version
            db.execute("UPDATE meta SET value = ? WHERE key = 'version'", (str(version),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ documents

    def version(self, db: sqlite3.Connection | None = None) -> int:
        """The last committed version (inside ``db``'s transaction when given)."""
        row = (db or self._db).execute("SELECT value FROM meta WHERE key='version'").fetchone()
        return int(row[0])

    def count(self, db: sqlite3.Connection | None = None) -> int:
        return int((db or self._db).execute("SELECT COUNT(*) FROM docs").fetchone()[0])

    @staticmethod
    def insert(db: sqlite3.Connection, docs: Sequence[Document], vectors: np.ndarray, version: int) -> None:
        """Insert or replace documents by id inside a write; the last of an id in ``docs`` wins."""
        seen: dict[str, int] = {}
        for i, doc in enumerate(docs):
            seen[doc.id] = i
        keep = sorted(seen.values())
        Store.tombstone(db, [docs[i].id for i in keep], version)
        db.executemany(
            "INSERT INTO docs (id, text, lang, metadata, vector, version) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (
                    docs[i].id,
                    docs[i].text,
                    docs[i].lang,
                    json.dumps(docs[i].metadata, ensure_ascii=False, sort_keys=True, allow_nan=False),
                    vectors[i].tobytes(),
                    version,
                )
                for i in keep
            ],
        )

    @staticmethod
    def tombstone(db: sqlite3.Connection, ids: Sequence[str], version: int) -> int:
        """Delete the rows of ``ids`` inside a write and remember their FAISS ids for replay."""
        old = [int(row[0]) for row in _in_batches(db, "SELECT rid FROM docs WHERE id IN ({})", ids)]
        if old:
            db.executemany("INSERT OR REPLACE INTO tombstones VALUES (?, ?)", [(r, version) for r in old])
            db.executemany("DELETE FROM docs WHERE rid = ?", [(r,) for r in old])
        return len(old)

    def drop_tombstones(self, through: int) -> None:
        """Tombstones a snapshot at version ``through`` already reflects are no longer needed."""
        self._db.execute("DELETE FROM tombstones WHERE version <= ?", (through,))

    @staticmethod
    def changes_since(db: sqlite3.Connection, version: int) -> tuple[list[int], list[tuple[int, bytes]]]:
        """(row ids removed, (row id, vector) written) after ``version``, for an index to replay."""
        gone = [int(r[0]) for r in db.execute("SELECT rid FROM tombstones WHERE version > ?", (version,))]
        rows = db.execute("SELECT rid, vector FROM docs WHERE version > ?", (version,)).fetchall()
        return gone, rows

    @staticmethod
    def sample_vectors(db: sqlite3.Connection, n: int) -> np.ndarray:
        """``n`` stored vectors at random (to train an index)."""
        return decode(r[0] for r in db.execute("SELECT vector FROM docs ORDER BY random() LIMIT ?", (n,)))

    def pages(
        self, columns: str, after: int = -1, batch: int = 10_000, db: sqlite3.Connection | None = None
    ) -> Iterator[list[Any]]:
        """Rows (row id first, then ``columns``) in insertion order after row id ``after``, a page
        at a time: memory stays bounded and each page is a short statement, so writers never
        wait on a long scan (inside ``db``'s transaction, when given, all pages see one snapshot)."""
        conn = db or self._db
        last = after
        while True:
            rows = conn.execute(
                f"SELECT rid, {columns} FROM docs WHERE rid > ? ORDER BY rid LIMIT ?", (last, batch)
            ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield rows

    def scan(self, after: int = -1, batch: int = 10_000) -> Iterator[tuple[int, Document]]:
        """(position, document) in insertion order from just after ``after``."""
        for rows in self.pages(_DOC_COLUMNS, after, batch):
            for row in rows:
                yield int(row[0]), _document(row[1:])

    def count_through(self, position: int) -> int:
        """How many documents ``scan`` yields up to and including ``position``."""
        return int(self._db.execute("SELECT count(*) FROM docs WHERE rid <= ?", (position,)).fetchone()[0])

    def fetch(self, rowids: Iterable[int]) -> dict[int, Document]:
        """Documents by row id (the ids a FAISS search returns)."""
        sql = f"SELECT rid, {_DOC_COLUMNS} FROM docs WHERE rid IN ({{}})"
        return {int(row[0]): _document(row[1:]) for row in _in_batches(self._db, sql, list(rowids))}

    def get(self, doc_id: str) -> Document | None:
        row = self._db.execute(f"SELECT {_DOC_COLUMNS} FROM docs WHERE id = ?", (doc_id,)).fetchone()
        return _document(row) if row else None

    def matching(self, where: str, args: Sequence[Any]) -> np.ndarray:
        """Row ids of the documents a WHERE condition admits."""
        rows = self._db.execute("SELECT rid FROM docs WHERE " + where, list(args))
        return np.array([r[0] for r in rows], dtype=np.int64)

    def languages(self) -> dict[str, int]:
        return dict(
            self._db.execute("SELECT COALESCE(lang, ''), COUNT(*) FROM docs GROUP BY lang").fetchall()
        )

    # ------------------------------------------------------------------ ingest sources

    def source_progress(self, source: str) -> tuple[int, int]:
        """(byte offset, line) committed for an ingest source; (0, 0) if never ingested."""
        row = self._db.execute("SELECT offset, line FROM sources WHERE source = ?", (source,)).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def source_mark(self, source: str) -> str | None:
        """The content mark committed with the source's progress (None: none recorded)."""
        if not _has_table(self._db, "source_marks"):
            return None
        row = self._db.execute("SELECT mark FROM source_marks WHERE source = ?", (source,)).fetchone()
        return str(row[0]) if row else None

    def source_counts(
        self, source: str, errors_after: int, limit: int
    ) -> tuple[tuple[int, int, int, int], list[tuple[int, str]]] | None:
        """((offset, line, documents, errors), first ``limit`` malformed (line, reason) after line
        ``errors_after``) committed for a source, in one snapshot; None if never ingested."""
        with self.read() as db:
            counted = _has_column(db, "sources", "documents")  # a read-only handle on an older database
            columns = "offset, line, documents, errors" if counted else "offset, line, 0, 0"
            row = db.execute(f"SELECT {columns} FROM sources WHERE source = ?", (source,)).fetchone()
            if row is None:
                return None
            lines: list[tuple[int, str]] = []
            if _has_table(db, "source_errors"):
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


def _in_batches(db: sqlite3.Connection, sql: str, values: Sequence[Any]) -> Iterator[Any]:
    """Rows of ``sql`` (one ``IN ({})`` placeholder) over ``values``, a few hundred at a time."""
    for start in range(0, len(values), _IN_BATCH):
        chunk = values[start : start + _IN_BATCH]
        yield from db.execute(sql.format(",".join("?" * len(chunk))), chunk)


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    row = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return row.fetchone() is not None


def _has_column(db: sqlite3.Connection, table: str, column: str) -> bool:
    return any(row[1] == column for row in db.execute(f"PRAGMA table_info({table})"))


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a database made by an earlier version up to this schema, in place: the source
    tables and columns added since are created empty (counts of older progress start at 0)."""
    missing = [name for name in _SOURCE_COLUMNS if not _has_column(db, "sources", name)]
    if not missing and _has_table(db, "source_marks") and _has_table(db, "source_errors"):
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        for name, kind in _SOURCE_COLUMNS.items():  # again inside the lock: another writer may have
            if not _has_column(db, "sources", name):
                db.execute(f"ALTER TABLE sources ADD COLUMN {name} {kind}")
        for statement in _SOURCE_TABLES.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
