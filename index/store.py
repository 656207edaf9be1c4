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
from typing import Any, Literal

import numpy as np

from core.errors import InputError
from index import lexical
from index.metadata import MAX_METADATA_DEPTH, metadata_depth, servable

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
_COMMON = """
CREATE TABLE IF NOT EXISTS tombstones (rid INTEGER PRIMARY KEY, version INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS tombstones_version ON tombstones(version);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sources (
    source TEXT PRIMARY KEY, offset INTEGER NOT NULL, line INTEGER NOT NULL, updated TEXT NOT NULL,
    documents INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0
);
"""
# The first layout: one vector per document, the document's row id is its FAISS id. Collections
# made before passages keep it (and are served, dense only) until re-indexed.
_DOCUMENTS_LAYOUT = (
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
"""
    + _COMMON
    + _SOURCE_TABLES
)
# Passages: a document has one or more passages, each with its vector; the passage's row id is
# its FAISS id (and the row id of its lexical terms); tombstones hold passage ids.
_PASSAGES_LAYOUT = (
    """
CREATE TABLE IF NOT EXISTS docs (
    rid INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    lang TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    lang_detected INTEGER NOT NULL DEFAULT 0,
    version INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS docs_lang ON docs(lang);
CREATE TABLE IF NOT EXISTS passages (
    pid INTEGER PRIMARY KEY AUTOINCREMENT,  -- the FAISS id; never reused, so replays are exact
    doc INTEGER NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    vector BLOB NOT NULL,
    version INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS passages_doc ON passages(doc);
CREATE INDEX IF NOT EXISTS passages_version ON passages(version);
"""
    + _COMMON
    + _SOURCE_TABLES
)
_IN_BATCH = 500  # ids per IN (...) query, well below SQLite's variable limit
Layout = Literal["documents", "passages"]


@dataclass
class Document:
    id: str
    text: str
    lang: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    lang_detected: bool = False  # ``lang`` was detected from the text, not given


def decode(blobs: Iterable[bytes]) -> np.ndarray:
    """Stored float32 vector blobs back into one (n, dim) matrix."""
    data = list(blobs)
    return np.frombuffer(b"".join(data), dtype=np.float32).reshape(len(data), -1)


def _document(row: Sequence[Any]) -> Document:
    """A document from (id, text, lang, metadata, lang_detected) columns."""
    return Document(row[0], row[1], row[2], servable(row[3]), bool(row[4]))


def _metadata(doc: Document) -> str:
    if metadata_depth(doc.metadata) > MAX_METADATA_DEPTH:
        raise InputError(f"document {doc.id!r}: metadata nested more than {MAX_METADATA_DEPTH} levels deep")
    return json.dumps(doc.metadata, ensure_ascii=False, sort_keys=True, allow_nan=False)


class Store:
    """One connection to a collection's database; every statement on it goes through here.

    ``layout`` says where vectors live: in ``docs`` (one per document, the first layout) or in
    ``passages`` (one per passage); the FAISS ids are those rows' ids either way.
    """

    def __init__(self, path: Path, readonly: bool) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=30000")
        if not readonly:
            _migrate(self._db)
        self.layout: Layout = "passages" if has_table(self._db, "passages") else "documents"
        self.lexical = has_table(self._db, lexical.TABLE)
        if self.layout == "passages":
            self._vectors, self._vid = "passages", "pid"
            self._doc_columns = "id, text, lang, metadata, lang_detected"
        else:
            self._vectors, self._vid = "docs", "rid"
            self._doc_columns = "id, text, lang, metadata, 0"

    @staticmethod
    def initialise(path: Path, layout: Layout = "passages", lexical_index: bool = True) -> None:
        """Create an empty database (before the manifest makes the collection visible)."""
        with sqlite3.connect(path) as db:
            # WAL before the manifest makes the collection visible: switching the journal mode
            # later takes a lock that readers opening it at the same moment would contend for.
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_PASSAGES_LAYOUT if layout == "passages" else _DOCUMENTS_LAYOUT)
            if layout == "passages" and lexical_index:
                db.executescript(lexical.SCHEMA)
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

    def vector_count(self, db: sqlite3.Connection | None = None) -> int:
        """Stored vectors: passages, or documents in the first layout."""
        return int((db or self._db).execute(f"SELECT COUNT(*) FROM {self._vectors}").fetchone()[0])

    def insert(
        self,
        db: sqlite3.Connection,
        docs: Sequence[Document],
        vectors: np.ndarray,
        version: int,
        passages: Sequence[Sequence[tuple[int, int, Sequence[int] | None]]],
    ) -> None:
        """Insert or replace documents by id inside a write; the last of an id in ``docs`` wins.
        ``passages[i]`` are document i's (start, end, lexical terms or None), whose vectors are
        the next rows of ``vectors`` (in the first layout: one passage, one vector, per document)."""
        first = np.cumsum([0] + [len(p) for p in passages])
        seen: dict[str, int] = {}
        for i, doc in enumerate(docs):
            seen[doc.id] = i
        keep = sorted(seen.values())
        self.tombstone(db, [docs[i].id for i in keep], version)
        if self.layout == "documents":
            db.executemany(
                "INSERT INTO docs (id, text, lang, metadata, vector, version) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        docs[i].id,
                        docs[i].text,
                        docs[i].lang,
                        _metadata(docs[i]),
                        vectors[first[i]].tobytes(),
                        version,
                    )
                    for i in keep
                ],
            )
            return
        terms: list[tuple[int, Sequence[int]]] = []
        for i in keep:
            doc = docs[i]
            rid = db.execute(
                "INSERT INTO docs (id, text, lang, metadata, lang_detected, version) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (doc.id, doc.text, doc.lang, _metadata(doc), int(doc.lang_detected), version),
            ).lastrowid
            for j, (start, end, words) in enumerate(passages[i]):
                pid = db.execute(
                    "INSERT INTO passages (doc, start, end, vector, version) VALUES (?, ?, ?, ?, ?)",
                    (rid, start, end, vectors[first[i] + j].tobytes(), version),
                ).lastrowid
                if words is not None and self.lexical:
                    terms.append((int(pid or 0), words))
        if terms:
            lexical.add(db, terms)

    def tombstone(self, db: sqlite3.Connection, ids: Sequence[str], version: int) -> int:
        """Delete the documents of ``ids`` (with their passages and lexical terms) inside a write
        and remember their FAISS ids for replay; returns how many documents existed."""
        rids = [int(row[0]) for row in in_batches(db, "SELECT rid FROM docs WHERE id IN ({})", ids)]
        if not rids:
            return 0
        if self.layout == "passages":
            sql = "SELECT pid FROM passages WHERE doc IN ({})"
            gone = [int(row[0]) for row in in_batches(db, sql, rids)]
            db.executemany("DELETE FROM passages WHERE pid = ?", [(p,) for p in gone])
            if self.lexical:
                lexical.remove(db, gone)
        else:
            gone = rids
        db.executemany("INSERT OR REPLACE INTO tombstones VALUES (?, ?)", [(r, version) for r in gone])
        db.executemany("DELETE FROM docs WHERE rid = ?", [(r,) for r in rids])
        return len(rids)

    def drop_tombstones(self, through: int) -> None:
        """Tombstones a snapshot at version ``through`` already reflects are no longer needed."""
        self._db.execute("DELETE FROM tombstones WHERE version <= ?", (through,))

    def changes_since(
        self, db: sqlite3.Connection, version: int
    ) -> tuple[list[int], list[tuple[int, bytes]]]:
        """(FAISS ids removed, (FAISS id, vector) written) after ``version``, for an index to replay."""
        gone = [int(r[0]) for r in db.execute("SELECT rid FROM tombstones WHERE version > ?", (version,))]
        sql = f"SELECT {self._vid}, vector FROM {self._vectors} WHERE version > ?"
        return gone, db.execute(sql, (version,)).fetchall()

    def sample_vectors(self, db: sqlite3.Connection, n: int) -> np.ndarray:
        """``n`` stored vectors at random (to train an index)."""
        sql = f"SELECT vector FROM {self._vectors} ORDER BY random() LIMIT ?"
        return decode(r[0] for r in db.execute(sql, (n,)))

    def vector_pages(self, batch: int, db: sqlite3.Connection) -> Iterator[list[Any]]:
        """(FAISS id, vector) rows, a page at a time, inside ``db``'s snapshot."""
        return self.pages("vector", batch=batch, db=db, table=self._vectors, key=self._vid)

    def vector_ids(self, db: sqlite3.Connection | None = None) -> np.ndarray:
        """Every stored vector's FAISS id, sorted (what the index must hold)."""
        sql = f"SELECT {self._vid} FROM {self._vectors} ORDER BY {self._vid}"
        return np.fromiter((r[0] for r in (db or self._db).execute(sql)), dtype=np.int64)

    def vectors_of(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """Stored vectors by FAISS id."""
        sql = f"SELECT {self._vid}, vector FROM {self._vectors} WHERE {self._vid} IN ({{}})"
        rows = list(in_batches(self._db, sql, list(ids)))
        return {int(r[0]): v for r, v in zip(rows, decode(r[1] for r in rows), strict=True)}

    def pages(
        self,
        columns: str,
        after: int = -1,
        batch: int = 10_000,
        db: sqlite3.Connection | None = None,
        table: str = "docs",
        key: str = "rid",
    ) -> Iterator[list[Any]]:
        """Rows (row id first, then ``columns``) in insertion order after row id ``after``, a page
        at a time: memory stays bounded and each page is a short statement, so writers never
        wait on a long scan (inside ``db``'s transaction, when given, all pages see one snapshot)."""
        conn = db or self._db
        last = after
        while True:
            rows = conn.execute(
                f"SELECT {key}, {columns} FROM {table} WHERE {key} > ? ORDER BY {key} LIMIT ?", (last, batch)
            ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield rows

    def first_vectors(self, batch: int) -> Iterator[list[Any]]:
        """(row id, id, text, the vector of its first passage) of every document, paged: a
        document's one vector where one is wanted (mining sentences, each one passage)."""
        if self.layout == "documents":
            yield from self.pages("id, text, vector", batch=batch)
            return
        first = "(SELECT vector FROM passages WHERE doc = docs.rid ORDER BY pid LIMIT 1)"
        yield from self.pages(f"id, text, {first}", batch=batch)

    def scan(self, after: int = -1, batch: int = 10_000) -> Iterator[tuple[int, Document]]:
        """(position, document) in insertion order from just after ``after``."""
        for rows in self.pages(self._doc_columns, after, batch):
            for row in rows:
                yield int(row[0]), _document(row[1:])

    def count_through(self, position: int) -> int:
        """How many documents ``scan`` yields up to and including ``position``."""
        return int(self._db.execute("SELECT count(*) FROM docs WHERE rid <= ?", (position,)).fetchone()[0])

    def passage_places(self, ids: Iterable[int]) -> dict[int, tuple[int, int, int]]:
        """(document row id, start, end) of passages by FAISS id (the first layout: whole texts):
        enough to rank documents by their best passage before reading any document."""
        if self.layout == "passages":
            sql = "SELECT pid, doc, start, end FROM passages WHERE pid IN ({})"
        else:
            sql = "SELECT rid, rid, 0, length(text) FROM docs WHERE rid IN ({})"
        return {int(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in in_batches(self._db, sql, list(ids))}

    def documents_by_rid(self, rids: Iterable[int]) -> dict[int, Document]:
        sql = f"SELECT rid, {self._doc_columns} FROM docs WHERE rid IN ({{}})"
        return {int(r[0]): _document(r[1:]) for r in in_batches(self._db, sql, list(rids))}

    def get(self, doc_id: str) -> Document | None:
        row = self._db.execute(f"SELECT {self._doc_columns} FROM docs WHERE id = ?", (doc_id,)).fetchone()
        return _document(row) if row else None

    def passage_spans(self, doc_id: str) -> list[tuple[int, int]]:
        """(start, end) of a document's passages in order (empty: no such document)."""
        if self.layout == "documents":
            row = self._db.execute("SELECT length(text) FROM docs WHERE id = ?", (doc_id,)).fetchone()
            return [(0, int(row[0]))] if row else []
        sql = (
            "SELECT p.start, p.end FROM passages p JOIN docs d ON d.rid = p.doc WHERE d.id = ? ORDER BY p.pid"
        )
        return [(int(a), int(b)) for a, b in self._db.execute(sql, (doc_id,))]

    def matching_sql(self, where: str) -> str:
        """A query of the FAISS ids of the documents a WHERE condition on ``docs`` admits."""
        if self.layout == "passages":
            return f"SELECT p.pid FROM passages p JOIN docs d ON d.rid = p.doc WHERE {where}"
        return f"SELECT rid FROM docs WHERE {where}"

    def matching(self, where: str, args: Sequence[Any]) -> np.ndarray:
        """FAISS ids of the documents a WHERE condition admits."""
        rows = self._db.execute(self.matching_sql(where), list(args))
        return np.array([r[0] for r in rows], dtype=np.int64)

    def connection(self) -> sqlite3.Connection:
        """The connection, for the lexical channel's statements (index.lexical)."""
        return self._db

    def languages(self) -> dict[str, int]:
        return dict(
            self._db.execute("SELECT COALESCE(lang, ''), COUNT(*) FROM docs GROUP BY lang").fetchall()
        )


def in_batches(db: sqlite3.Connection, sql: str, values: Sequence[Any]) -> Iterator[Any]:
    """Rows of ``sql`` (one ``IN ({})`` placeholder) over ``values``, a few hundred at a time."""
    for start in range(0, len(values), _IN_BATCH):
        chunk = values[start : start + _IN_BATCH]
        yield from db.execute(sql.format(",".join("?" * len(chunk))), chunk)


def has_table(db: sqlite3.Connection, name: str) -> bool:
    row = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return row.fetchone() is not None


def has_column(db: sqlite3.Connection, table: str, column: str) -> bool:
    return any(row[1] == column for row in db.execute(f"PRAGMA table_info({table})"))


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a database made by an earlier version up to this schema, in place: the source
    tables and columns added since are created empty (counts of older progress start at 0)."""
    missing = [name for name in _SOURCE_COLUMNS if not has_column(db, "sources", name)]
    if not missing and has_table(db, "source_marks") and has_table(db, "source_errors"):
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        for name, kind in _SOURCE_COLUMNS.items():  # again inside the lock: another writer may have
            if not has_column(db, "sources", name):
                db.execute(f"ALTER TABLE sources ADD COLUMN {name} {kind}")
        for statement in _SOURCE_TABLES.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
