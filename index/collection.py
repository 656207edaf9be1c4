"""A collection: documents and their vectors in SQLite, searched through a FAISS index.

SQLite is the source of truth: every document row keeps its text, language, metadata and
vector, and every write happens in one transaction that bumps a version counter. The FAISS
index is derived state, checkpointed to ``index.<version>.faiss`` (temporary file, fsync,
rename) and brought up to date on open by replaying the rows written after that version.
So a process killed at any moment leaves a collection that opens consistent (index count ==
document count) and holds every committed write; readers in other processes see the last
committed version (SQLite WAL snapshots) and pick up newer ones with ``refresh()``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import faiss
import numpy as np
from pydantic import BaseModel, Field

from core.clock import now_iso
from core.errors import Conflict, InputError, NotFound
from core.files import atomic_write_text

MANIFEST = "manifest.json"
DOCS = "docs.sqlite"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # always fullmatch: "$" allows a final \n
_SNAPSHOT_RE = re.compile(r"index\.(\d+)\.faiss")

MAX_STORED_ERRORS = 100  # malformed lines kept per ingest run of a source; the counts cover all
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


class CollectionManifest(BaseModel):
    """What a collection was made with; ``count``/``version`` are as of the last checkpoint."""

    format_version: int = 1
    name: str
    model_id: str
    dim: int
    metric: str = "inner_product"
    index_factory: str = Field(description="'auto' or the FAISS factory string inside IDMap2")
    created: str
    nprobe: int = Field(default=32, ge=1, description="IVF lists probed per query")
    ef_search: int = Field(default=128, ge=1, description="HNSW candidate list size per query")
    count: int = 0
    version: int = 0
    uuid: str | None = Field(default=None, description="Unique per creation, never reused by a name")

    @property
    def identity(self) -> str:
        """What caches and read handles key on: never repeated by a collection re-created under the
        same name (versions start again at 0). Collections made before uuids: name and creation time."""
        if self.uuid is not None:
            return self.uuid
        return hashlib.sha256(f"{self.name}\0{self.created}".encode()).hexdigest()[:32]


@dataclass
class Document:
    id: str
    text: str
    lang: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


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


class UnknownCollection(NotFound):
    """No collection of that name (a service answers 404)."""


class CollectionExists(Conflict):
    """Creating a collection under a name already taken (409)."""


class ModelMismatch(Conflict):
    """The collection's vectors come from another model than the caller's (409): never mix them."""


@dataclass
class Hit:
    id: str
    score: float
    text: str
    lang: str | None
    metadata: dict[str, Any]


@dataclass
class Filter:
    """Exact-match filters; hits still number k when k matching documents exist."""

    lang: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return self.lang is None and not self.metadata


AUTO = "auto"
AUTO_HNSW_AT = 200_000  # documents; below this exact search answers in a few milliseconds
AUTO_LARGE = "HNSW32"
TRAIN_POINTS_PER_LIST = 39  # FAISS's own minimum for k-means training
MAX_TRAIN_POINTS = 256_000
# The index strings a collection accepts, checked in full before FAISS sees them: FAISS accepts
# strings it then cannot run (HNSW0 aborts the process on the first add), so its parser is not
# the check. HNSW<M>[,Flat|,SQfp16] with 4 <= M <= 128; IVF<n>,<codec> with 1 <= n <= 65536 and codec Flat,
# SQ8, SQfp16 or PQ<m>[x<bits>] (m divides the dimension, 4 <= bits <= 8).
_HNSW_SYNTAX = r"HNSW(?P<m>[1-9][0-9]{0,3})(?:,(?:Flat|SQfp16))?"  # SQ8 would need training
_IVF_SYNTAX = (
    r"IVF(?P<lists>[1-9][0-9]{0,5}),(?:Flat|SQ8|SQfp16|PQ(?P<pq>[1-9][0-9]{0,3})(?:x(?P<bits>[0-9]{1,2}))?)"
)
_HNSW_GRAMMAR = re.compile(_HNSW_SYNTAX)
_IVF_GRAMMAR = re.compile(_IVF_SYNTAX)
# The same syntax as a JSON-schema pattern (anchored, no Python-only named groups), published in the
# OpenAPI document so that clients and schema-driven tools see it; the ranges are checked on use.
INDEX_PATTERN = "^(?:{}|{}|{}|{})$".format(
    AUTO, "Flat", *(re.sub(r"\(\?P<\w+>", "(", syntax) for syntax in (_HNSW_SYNTAX, _IVF_SYNTAX))
)
HNSW_M = (4, 128)
IVF_LISTS = (1, 65_536)
PQ_BITS = (4, 8)
INDEX_HELP = (
    "auto, Flat, HNSW<M> (M 4-128, optionally ,SQfp16) or IVF<lists>,<codec> "
    "(lists 1-65536; codec Flat, SQ8, SQfp16 or PQ<m>[x<bits>], m dividing the dimension)"
)


def check_index_factory(factory: str, dim: int) -> str:
    """The factory string if a collection of dimension ``dim`` can build, fill and search it."""
    if factory in (AUTO, "Flat"):
        return factory
    hnsw, ivf = _HNSW_GRAMMAR.fullmatch(factory), _IVF_GRAMMAR.fullmatch(factory)
    if hnsw is not None and HNSW_M[0] <= int(hnsw["m"]) <= HNSW_M[1]:
        return factory
    if ivf is not None and IVF_LISTS[0] <= int(ivf["lists"]) <= IVF_LISTS[1]:
        if ivf["pq"] is None:
            return factory
        bits = int(ivf["bits"] or 8)
        if dim % int(ivf["pq"]) == 0 and PQ_BITS[0] <= bits <= PQ_BITS[1]:
            return factory
    raise InputError(f"index {factory[:80]!r} is not one a collection can use; use {INDEX_HELP}")


def effective_factory(factory: str, count: int) -> str:
    """The index to build for ``count`` documents.

    ``auto`` is exact (Flat) while small and HNSW once large. An IVF index needs enough points
    to train its coarse quantizer, so until then the collection searches exactly.
    """
    if factory == AUTO:
        return "Flat" if count < AUTO_HNSW_AT else AUTO_LARGE
    match = _IVF_GRAMMAR.fullmatch(factory)
    if match is not None:
        needed = TRAIN_POINTS_PER_LIST * int(match["lists"])
        if match["pq"] is not None:  # and the product quantizer's 2^bits centroids per sub-vector
            needed = max(needed, TRAIN_POINTS_PER_LIST * 2 ** int(match["bits"] or 8))
        if count < needed:
            return "Flat"
    return factory


def _kind_of_factory(factory: str) -> str:
    return "HNSW" if "HNSW" in factory else "IVF" if factory.startswith("IVF") else "Flat"


def _kind_of_index(index: Any) -> str:
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexHNSW):
        return "HNSW"
    return "IVF" if isinstance(inner, faiss.IndexIVF) else "Flat"


def _check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise InputError(
            f"invalid collection name {name!r}: 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def _make_index(factory: str, dim: int) -> faiss.Index:
    factory = AUTO_LARGE if factory == AUTO else factory
    try:
        index = faiss.index_factory(dim, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:  # FAISS's message names its C++ sources: not for the user
        raise InputError(f"index {factory[:80]!r} is not one a collection can use; use {INDEX_HELP}") from exc
    return index


class Collection:
    """One open collection; a single writer per process, any number of reading processes."""

    def __init__(self, root: Path, manifest: CollectionManifest, readonly: bool) -> None:
        self.root = root
        self.manifest = manifest
        self.readonly = readonly
        self._db = sqlite3.connect(root / DOCS, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=30000")
        if not readonly:
            _migrate(self._db)
        self._index: faiss.Index = _make_index(effective_factory(manifest.index_factory, 0), manifest.dim)
        self._hidden: set[int] = set()  # rowids superseded in an index that cannot remove
        self._index_version = 0
        self._load_snapshot()
        self.refresh()

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def create(
        cls, home_dir: Path, name: str, model_id: str, dim: int, index_factory: str | None = None
    ) -> Collection:
        root = Path(home_dir) / _check_name(name)
        if (root / MANIFEST).is_file():
            raise CollectionExists(f"collection {name!r} already exists")
        factory = check_index_factory(index_factory or AUTO, dim)
        _make_index(factory, dim)  # validate before writing anything
        root.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(root / DOCS) as db:
            # WAL before the manifest makes the collection visible: switching the journal mode
            # later takes a lock that readers opening it at the same moment would contend for.
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('version', '0')")
        manifest = CollectionManifest(
            name=name, model_id=model_id, dim=dim, index_factory=factory, created=now_iso(), uuid=uuid4().hex
        )
        atomic_write_text(root / MANIFEST, manifest.model_dump_json(indent=2) + "\n")
        return cls(root, manifest, readonly=False)

    @classmethod
    def open(
        cls, home_dir: Path, name: str, model_id: str | None = None, readonly: bool = False
    ) -> Collection:
        """Open by name; ``model_id`` given means vectors from any other model are refused."""
        root = Path(home_dir) / _check_name(name)
        path = root / MANIFEST
        if not path.is_file():
            raise UnknownCollection(f"unknown collection {name!r}")
        manifest = CollectionManifest.model_validate_json(path.read_text(encoding="utf-8"))
        if model_id is not None and manifest.model_id != model_id:
            raise ModelMismatch(
                f"collection {name!r} holds vectors of model {manifest.model_id}, not {model_id}; "
                "re-index it with 'dapsearch index reindex' to use this model"
            )
        return cls(root, manifest, readonly)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ state

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def _removable(self) -> bool:
        return _kind_of_index(self._index) != "HNSW"

    @property
    def version(self) -> int:
        """The committed version this process's index reflects."""
        return self._index_version

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM docs").fetchone()[0])

    def _db_version(self) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key='version'").fetchone()[0])

    def _snapshots(self) -> list[tuple[int, Path]]:
        found = []
        for path in self.root.iterdir():
            match = _SNAPSHOT_RE.fullmatch(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found)

    def _load_snapshot(self) -> None:
        db_version = self._db_version()
        usable = [(v, p) for v, p in self._snapshots() if v <= db_version]
        if usable:
            version, path = usable[-1]
            self._index = faiss.read_index(str(path))
            self._index_version = version

    def refresh(self) -> int:
        """Apply writes committed since this index's version (by this or another process)."""
        with self._read() as db:
            target = int(db.execute("SELECT value FROM meta WHERE key='version'").fetchone()[0])
            if target == self._index_version:
                return target
            since = self._index_version
            gone = [int(r[0]) for r in db.execute("SELECT rid FROM tombstones WHERE version > ?", (since,))]
            rows = db.execute("SELECT rid, vector FROM docs WHERE version > ?", (since,)).fetchall()
        self._remove(gone)
        if rows:
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            self._index.add_with_ids(_decode(r[1] for r in rows), ids)
        self._index_version = target
        count = len(self)
        wanted = _kind_of_factory(effective_factory(self.manifest.index_factory, count))
        if self._index.ntotal != count + len(self._hidden) or _kind_of_index(self._index) != wanted:
            self.rebuild()  # drifted, or grown into another index type (auto, IVF now trainable)
        return target

    def _remove(self, rowids: Sequence[int]) -> None:
        if not rowids:
            return
        if self._removable:
            self._index.remove_ids(np.asarray(rowids, dtype=np.int64))
        else:
            present = faiss.vector_to_array(self._index.id_map) if self._index.ntotal else np.array([])
            self._hidden.update(int(r) for r in np.intersect1d(np.asarray(rowids, dtype=np.int64), present))

    def rebuild(self) -> None:
        """Rebuild the index from the stored vectors: heals drift, drops hidden rows, trains IVF."""
        with self._read() as db:
            version = int(db.execute("SELECT value FROM meta WHERE key='version'").fetchone()[0])
            count = int(db.execute("SELECT COUNT(*) FROM docs").fetchone()[0])
            index = _make_index(effective_factory(self.manifest.index_factory, count), self.manifest.dim)
            if not index.is_trained:
                n = min(count, MAX_TRAIN_POINTS)
                sample = db.execute("SELECT vector FROM docs ORDER BY random() LIMIT ?", (n,)).fetchall()
                index.train(_decode(r[0] for r in sample))
            cursor = db.execute("SELECT rid, vector FROM docs ORDER BY rid")
            while True:
                rows = cursor.fetchmany(50_000)
                if not rows:
                    break
                ids = np.array([r[0] for r in rows], dtype=np.int64)
                index.add_with_ids(_decode(r[1] for r in rows), ids)
        self._index, self._index_version, self._hidden = index, version, set()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One consistent read snapshot across several statements."""
        self._db.execute("BEGIN")
        try:
            yield self._db
        finally:
            self._db.execute("COMMIT")

    # ------------------------------------------------------------------ writes

    def _writable(self) -> None:
        if self.readonly:
            raise InputError(f"collection {self.name!r} is open read-only")

    def upsert(
        self, docs: Sequence[Document], vectors: np.ndarray, source: SourceCommit | None = None
    ) -> int:
        """Insert or replace documents by id in one transaction; returns the new version.

        ``source`` records ingest progress (position, counts, malformed lines) in the same
        transaction, so a resumed ingest starts exactly after the last committed chunk and knows
        exactly what the lines before it held.
        """
        self._writable()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(docs), self.manifest.dim):
            raise InputError(
                f"expected vectors of shape ({len(docs)}, {self.manifest.dim}), got {vectors.shape}"
            )
        seen: dict[str, int] = {}
        for i, doc in enumerate(docs):
            seen[doc.id] = i  # the last occurrence of an id in one batch wins
        keep = sorted(seen.values())
        with self._write() as (db, version):
            self._tombstone(db, [docs[i].id for i in keep], version)
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
            if source is not None:
                _commit_source(db, source)
        return version

    def delete(self, ids: Iterable[str]) -> int:
        """Delete documents by external id; returns how many existed."""
        self._writable()
        with self._write() as (db, version):
            removed = self._tombstone(db, list(ids), version)
        return removed

    @contextmanager
    def _write(self) -> Iterator[tuple[sqlite3.Connection, int]]:
        """One write transaction at the next version; the index catches up once it commits."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            version = int(db.execute("SELECT value FROM meta WHERE key='version'").fetchone()[0]) + 1
            yield db, version
            db.execute("UPDATE meta SET value = ? WHERE key = 'version'", (str(version),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.refresh()

    @staticmethod
    def _tombstone(db: sqlite3.Connection, ids: Sequence[str], version: int) -> int:
        """Delete the rows of ``ids`` and remember their FAISS ids for replay."""
        old = _select_rowids(db, ids)
        if old:
            db.executemany("INSERT OR REPLACE INTO tombstones VALUES (?, ?)", [(r, version) for r in old])
            db.executemany("DELETE FROM docs WHERE rid = ?", [(r,) for r in old])
        return len(old)

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

    def source_checkpoint(self, source: str, errors_after: int = 0) -> SourceCheckpoint:
        """The committed checkpoint of an ingest source, with its first stored malformed lines
        after line ``errors_after``; an empty one if never ingested."""
        with self._read() as db:
            counted = _has_column(db, "sources", "documents")  # a read-only handle on an older database
            columns = "offset, line, documents, errors" if counted else "offset, line, 0, 0"
            row = db.execute(f"SELECT {columns} FROM sources WHERE source = ?", (source,)).fetchone()
            if row is None:
                return SourceCheckpoint()
            lines: tuple[LineError, ...] = ()
            if _has_table(db, "source_errors"):
                found = db.execute(
                    "SELECT line, reason FROM source_errors WHERE source = ? AND line > ? AND line <= ? "
                    "ORDER BY line LIMIT ?",
                    (source, errors_after, int(row[1]), MAX_STORED_ERRORS),
                )
                lines = tuple(LineError(int(line), str(reason)) for line, reason in found)
        return SourceCheckpoint(int(row[0]), int(row[1]), int(row[2]), int(row[3]), lines)

    def checkpoint(self) -> Path:
        """Write the index snapshot for the current version; older snapshots are removed after."""
        self._writable()
        self.refresh()
        if self._hidden:
            self.rebuild()
        version = self._index_version
        target = self.root / f"index.{version}.faiss"
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".index.", suffix=".tmp")
        os.close(fd)
        try:
            faiss.write_index(self._index, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.root)
        self.manifest.count = len(self)
        self.manifest.version = version
        atomic_write_text(self.root / MANIFEST, self.manifest.model_dump_json(indent=2) + "\n")
        for v, path in self._snapshots():
            if v < version:
                path.unlink(missing_ok=True)
        # The snapshot holds no superseded row (a hiding index was rebuilt above), so older
        # tombstones are no longer needed to replay; a lagging reader rebuilds from the rows.
        self._db.execute("DELETE FROM tombstones WHERE version <= ?", (version,))
        return target

    # ------------------------------------------------------------------ reads

    def search(self, queries: np.ndarray, k: int = 10, flt: Filter | None = None) -> list[list[Hit]]:
        """Top-k documents per query by inner product (cosine on normalised vectors)."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.manifest.dim:
            raise InputError(f"query vectors have dim {queries.shape[1]}, collection has {self.manifest.dim}")
        if k < 1:
            raise InputError("k must be at least 1")
        if self._index.ntotal == 0:
            return [[] for _ in range(len(queries))]
        allowed = self._allowed(flt) if flt is not None and not flt.is_empty() else None
        if allowed is not None and allowed.size == 0:
            return [[] for _ in range(len(queries))]
        params = self._params(allowed, k)
        kk = min(k, self._index.ntotal)
        scores, rowids = self._index.search(queries, kk, params=params)
        rows = self._fetch({int(r) for r in rowids.ravel() if r >= 0})
        out: list[list[Hit]] = []
        for q_scores, q_ids in zip(scores, rowids, strict=True):
            hits = []
            for score, rowid in zip(q_scores, q_ids, strict=True):
                doc = rows.get(int(rowid))
                if rowid >= 0 and doc is not None:
                    hits.append(Hit(doc.id, float(score), doc.text, doc.lang, doc.metadata))
            out.append(hits[:k])
        return out

    def _allowed(self, flt: Filter) -> np.ndarray:
        clauses: list[str] = []
        args: list[Any] = []
        if flt.lang is not None:
            clauses.append("lang = ?")
            args.append(flt.lang)
        for key, value in flt.metadata.items():
            if not key or '"' in key or "\\" in key:
                raise InputError(f"invalid metadata filter key {key!r}")
            if value is not None and not isinstance(value, str | int | float):
                raise InputError(f"metadata filter {key!r} must be a string, number, boolean or null")
            # CASE: rows whose metadata is not valid JSON (stored before it was checked) never match
            # instead of making SQLite fail the whole query.
            if value is None:
                clauses.append("CASE WHEN json_valid(metadata) THEN json_type(metadata, ?) END = 'null'")
                args.append(f'$."{key}"')
                continue
            clauses.append("CASE WHEN json_valid(metadata) THEN json_extract(metadata, ?) END = ?")
            args += [f'$."{key}"', int(value) if isinstance(value, bool) else value]
        sql = "SELECT rid FROM docs WHERE " + " AND ".join(clauses)
        return np.array([r[0] for r in self._db.execute(sql, args)], dtype=np.int64)

    def _params(self, allowed: np.ndarray | None, k: int) -> faiss.SearchParameters | None:
        keep: list[Any] = []
        if allowed is not None:
            keep.append(faiss.IDSelectorBatch(allowed))
        if self._hidden:
            keep.append(faiss.IDSelectorBatch(np.fromiter(self._hidden, dtype=np.int64)))
            keep.append(faiss.IDSelectorNot(keep[-1]))
        sel = None
        if allowed is not None and self._hidden:
            sel = faiss.IDSelectorAnd(keep[0], keep[-1])
            keep.append(sel)
        elif keep:
            sel = keep[-1]
        kind = _kind_of_index(self._index)
        if sel is None and kind == "Flat":
            return None
        params: Any
        if kind == "HNSW":  # the default efSearch (16) loses recall at k=10, more so past rejected nodes
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(self.manifest.ef_search, 4 * k)
        elif kind == "IVF":
            params = faiss.SearchParametersIVF()
            params.nprobe = self.manifest.nprobe
        else:
            params = faiss.SearchParameters()
        if sel is not None:
            params.sel = sel
        params._dapsearch_keep = keep  # selectors must outlive the search call
        return params

    def _fetch(self, rowids: set[int]) -> dict[int, Document]:
        out: dict[int, Document] = {}
        ids = list(rowids)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT rid, id, text, lang, metadata FROM docs WHERE rid IN ({marks})"
            for rowid, doc_id, text, lang, meta in self._db.execute(sql, chunk):
                out[int(rowid)] = Document(doc_id, text, lang, json.loads(meta))
        return out

    def get(self, doc_id: str) -> Document | None:
        row = self._db.execute("SELECT id, text, lang, metadata FROM docs WHERE id = ?", (doc_id,)).fetchone()
        return Document(row[0], row[1], row[2], json.loads(row[3])) if row else None

    def documents(self, batch: int = 10_000) -> Iterator[Document]:
        """Every stored document, in insertion order, streamed."""
        for _, doc in self.scan(batch=batch):
            yield doc

    def scan(self, after: int = -1, batch: int = 10_000) -> Iterator[tuple[int, Document]]:
        """(position, document) in insertion order from just after ``after``: a position is a
        stable cursor (re-indexing records it to resume where it stopped)."""
        last = after
        while True:
            rows = self._db.execute(
                "SELECT rid, id, text, lang, metadata FROM docs WHERE rid > ? ORDER BY rid LIMIT ?",
                (last, batch),
            ).fetchall()
            if not rows:
                return
            for rowid, doc_id, text, lang, meta in rows:
                last = rowid
                yield rowid, Document(doc_id, text, lang, json.loads(meta))

    def count_through(self, position: int) -> int:
        """How many documents ``scan`` yields up to and including ``position``."""
        return int(self._db.execute("SELECT count(*) FROM docs WHERE rid <= ?", (position,)).fetchone()[0])

    def vectors(self, batch: int = 10_000) -> tuple[list[str], list[str], np.ndarray]:
        """(ids, texts, stored vectors) of every document in insertion order, for mining."""
        ids: list[str] = []
        texts: list[str] = []
        chunks: list[np.ndarray] = []
        last = -1
        while True:
            rows = self._db.execute(
                "SELECT rid, id, text, vector FROM docs WHERE rid > ? ORDER BY rid LIMIT ?", (last, batch)
            ).fetchall()
            if not rows:
                break
            last = rows[-1][0]
            ids += [r[1] for r in rows]
            texts += [r[2] for r in rows]
            chunks.append(_decode(r[3] for r in rows))
        empty = np.zeros((0, self.manifest.dim), dtype=np.float32)
        return ids, texts, np.concatenate(chunks) if chunks else empty

    def stats(self) -> Mapping[str, Any]:
        langs = dict(
            self._db.execute("SELECT COALESCE(lang, ''), COUNT(*) FROM docs GROUP BY lang").fetchall()
        )
        return {
            "name": self.name,
            "model_id": self.manifest.model_id,
            "dim": self.manifest.dim,
            "index_factory": self.manifest.index_factory,
            "index_type": _kind_of_index(self._index),
            "count": len(self),
            "version": self._db_version(),
            "index_vectors": int(self._index.ntotal) - len(self._hidden),
            "languages": langs,
        }


def _decode(blobs: Iterable[bytes]) -> np.ndarray:
    """Stored float32 vector blobs back into one (n, dim) matrix."""
    data = list(blobs)
    return np.frombuffer(b"".join(data), dtype=np.float32).reshape(len(data), -1)


def _select_rowids(db: sqlite3.Connection, ids: Sequence[str]) -> list[int]:
    out: list[int] = []
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        out += [int(r[0]) for r in db.execute(f"SELECT rid FROM docs WHERE id IN ({marks})", chunk)]
    return out


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
        for name in _SOURCE_COLUMNS:  # again inside the lock: another writer may have migrated
            if not _has_column(db, "sources", name):
                db.execute(f"ALTER TABLE sources ADD COLUMN {name} {_SOURCE_COLUMNS[name]}")
        for statement in _SOURCE_TABLES.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _commit_source(db: sqlite3.Connection, commit: SourceCommit) -> None:
    """Record an ingest source's progress inside the caller's write transaction."""
    key = commit.source
    if commit.restart:
        db.execute("DELETE FROM source_errors WHERE source = ?", (key,))
    db.execute(
        "INSERT OR REPLACE INTO sources (source, offset, line, updated, documents, errors) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (key, commit.offset, commit.line, now_iso(), commit.documents, commit.errors),
    )
    if commit.mark is not None:
        db.execute("INSERT OR REPLACE INTO source_marks VALUES (?, ?)", (key, commit.mark))
    else:  # progress without a mark: an older mark no longer applies
        db.execute("DELETE FROM source_marks WHERE source = ?", (key,))
    db.executemany(
        "INSERT OR REPLACE INTO source_errors VALUES (?, ?, ?)",
        [(key, e.line, e.reason) for e in commit.error_lines],
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def collection_identity(home_dir: Path, name: str) -> str | None:
    """The identity of the collection now under ``name`` (None: there is none)."""
    path = Path(home_dir) / _check_name(name) / MANIFEST
    try:
        return CollectionManifest.model_validate_json(path.read_text(encoding="utf-8")).identity
    except (OSError, ValueError):
        return None


def list_collections(home_dir: Path) -> list[str]:
    root = Path(home_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and (p / MANIFEST).is_file())
