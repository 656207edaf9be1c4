"""A collection: documents and their vectors in SQLite, searched through a FAISS index.

This module ties the parts together: the store (``index.store``, the source of truth), the
index choice (``index.index_choice``), the snapshots the index is checkpointed to and replayed
from (``index.snapshot``) and filters (``index.filters``). A process killed at any moment leaves
a collection that opens consistent (index count == document count) and holds every committed
write; readers in other processes see the last committed version and pick up newer ones with
``refresh()``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import faiss
import numpy as np
from pydantic import BaseModel, Field

from core.clock import now_iso
from core.errors import Conflict, InputError, NotFound
from core.files import atomic_write_text
from index.filters import Filter, filter_sql
from index.index_choice import (
    AUTO,
    MAX_TRAIN_POINTS,
    check_index_factory,
    effective_factory,
    kind_of_factory,
    kind_of_index,
    make_index,
)
from index.snapshot import load_latest, replay, write_snapshot
from index.store import DOCS, Document, Store, decode

MANIFEST = "manifest.json"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # always fullmatch: "$" allows a final \n
MAX_STORED_ERRORS = 100  # malformed lines kept per ingest run of a source; the counts cover all


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


def _check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise InputError(
            f"invalid collection name {name!r}: 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


class Collection:
    """One open collection; a single writer per process, any number of reading processes."""

    def __init__(self, root: Path, manifest: CollectionManifest, readonly: bool) -> None:
        self.root = root
        self.manifest = manifest
        self.readonly = readonly
        self._store = Store(root / DOCS, readonly)
        self._index: faiss.Index = make_index(effective_factory(manifest.index_factory, 0), manifest.dim)
        self._hidden: set[int] = set()  # rowids superseded in an index that cannot remove
        self._index_version = 0
        latest = load_latest(root, self._store.version())
        if latest is not None:
            self._index_version, self._index = latest
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
        make_index(factory, dim)  # validate before writing anything
        root.mkdir(parents=True, exist_ok=True)
        Store.initialise(root / DOCS)
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
        self._store.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ state

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        """The committed version this process's index reflects."""
        return self._index_version

    def __len__(self) -> int:
        return self._store.count()

    def refresh(self) -> int:
        """Apply writes committed since this index's version (by this or another process)."""
        with self._store.read() as db:
            target = self._store.version(db)
            if target == self._index_version:
                return target
            gone, rows = self._store.changes_since(db, self._index_version)
        replay(self._index, self._hidden, gone, rows)
        self._index_version = target
        count = len(self)
        wanted = kind_of_factory(effective_factory(self.manifest.index_factory, count))
        if self._index.ntotal != count + len(self._hidden) or kind_of_index(self._index) != wanted:
            self.rebuild()  # drifted, or grown into another index type (auto, IVF now trainable)
        return target

    def rebuild(self) -> None:
        """Rebuild the index from the stored vectors: heals drift, drops hidden rows, trains IVF."""
        with self._store.read() as db:
            version = self._store.version(db)
            count = self._store.count(db)
            index = make_index(effective_factory(self.manifest.index_factory, count), self.manifest.dim)
            if not index.is_trained:
                index.train(self._store.sample_vectors(db, min(count, MAX_TRAIN_POINTS)))
            for rows in self._store.pages("vector", batch=50_000, db=db):
                ids = np.array([r[0] for r in rows], dtype=np.int64)
                index.add_with_ids(decode(r[1] for r in rows), ids)
        self._index, self._index_version, self._hidden = index, version, set()

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
        with self._store.write() as (db, version):
            self._store.insert(db, docs, vectors, version)
            if source is not None:
                self._store.record_source(
                    db,
                    source.source,
                    (source.offset, source.line),
                    (source.documents, source.errors),
                    source.mark,
                    [(e.line, e.reason) for e in source.error_lines],
                    source.restart,
                )
        self.refresh()
        return version

    def delete(self, ids: Iterable[str]) -> int:
        """Delete documents by external id; returns how many existed."""
        self._writable()
        with self._store.write() as (db, version):
            removed = self._store.tombstone(db, list(ids), version)
        self.refresh()
        return removed

    def source_progress(self, source: str) -> tuple[int, int]:
        """(byte offset, line) committed for an ingest source; (0, 0) if never ingested."""
        return self._store.source_progress(source)

    def source_mark(self, source: str) -> str | None:
        """The content mark committed with the source's progress (None: none recorded)."""
        return self._store.source_mark(source)

    def source_checkpoint(self, source: str, errors_after: int = 0) -> SourceCheckpoint:
        """The committed checkpoint of an ingest source, with its first stored malformed lines
        after line ``errors_after``; an empty one if never ingested."""
        found = self._store.source_counts(source, errors_after, MAX_STORED_ERRORS)
        if found is None:
            return SourceCheckpoint()
        (offset, line, documents, errors), lines = found
        return SourceCheckpoint(offset, line, documents, errors, tuple(LineError(n, r) for n, r in lines))

    def checkpoint(self) -> Path:
        """Write the index snapshot for the current version; older snapshots are removed after."""
        self._writable()
        self.refresh()
        if self._hidden:
            self.rebuild()
        version = self._index_version
        target = write_snapshot(self.root, self._index, version)
        self.manifest.count = len(self)
        self.manifest.version = version
        atomic_write_text(self.root / MANIFEST, self.manifest.model_dump_json(indent=2) + "\n")
        # The snapshot holds no superseded row (a hiding index was rebuilt above), so older
        # tombstones are no longer needed to replay; a lagging reader rebuilds from the rows.
        self._store.drop_tombstones(version)
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
        allowed = self._store.matching(*filter_sql(flt)) if flt is not None and not flt.is_empty() else None
        if allowed is not None and allowed.size == 0:
            return [[] for _ in range(len(queries))]
        params = self._params(allowed, k)
        kk = min(k, self._index.ntotal)
        scores, rowids = self._index.search(queries, kk, params=params)
        rows = self._store.fetch({int(r) for r in rowids.ravel() if r >= 0})
        out: list[list[Hit]] = []
        for q_scores, q_ids in zip(scores, rowids, strict=True):
            hits = []
            for score, rowid in zip(q_scores, q_ids, strict=True):
                doc = rows.get(int(rowid))
                if rowid >= 0 and doc is not None:
                    hits.append(Hit(doc.id, float(score), doc.text, doc.lang, doc.metadata))
            out.append(hits[:k])
        return out

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
        kind = kind_of_index(self._index)
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

    def get(self, doc_id: str) -> Document | None:
        return self._store.get(doc_id)

    def documents(self, batch: int = 10_000) -> Iterator[Document]:
        """Every stored document, in insertion order, streamed."""
        for _, doc in self.scan(batch=batch):
            yield doc

    def scan(self, after: int = -1, batch: int = 10_000) -> Iterator[tuple[int, Document]]:
        """(position, document) in insertion order from just after ``after``: a position is a
        stable cursor (re-indexing records it to resume where it stopped)."""
        return self._store.scan(after, batch)

    def count_through(self, position: int) -> int:
        """How many documents ``scan`` yields up to and including ``position``."""
        return self._store.count_through(position)

    def vectors(self, batch: int = 10_000) -> tuple[list[str], list[str], np.ndarray]:
        """(ids, texts, stored vectors) of every document in insertion order, for mining."""
        ids: list[str] = []
        texts: list[str] = []
        chunks: list[np.ndarray] = []
        for rows in self._store.pages("id, text, vector", batch=batch):
            ids += [r[1] for r in rows]
            texts += [r[2] for r in rows]
            chunks.append(decode(r[3] for r in rows))
        empty = np.zeros((0, self.manifest.dim), dtype=np.float32)
        return ids, texts, np.concatenate(chunks) if chunks else empty

    def stats(self) -> Mapping[str, Any]:
        return {
            "name": self.name,
            "model_id": self.manifest.model_id,
            "dim": self.manifest.dim,
            "index_factory": self.manifest.index_factory,
            "index_type": kind_of_index(self._index),
            "count": len(self),
            "version": self._store.version(),
            "index_vectors": int(self._index.ntotal) - len(self._hidden),
            "languages": self._store.languages(),
        }


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
