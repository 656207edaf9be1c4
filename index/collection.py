"""A collection: documents and their vectors in SQLite, searched through a FAISS index.

This module ties the parts together: the store (``index.store``, the source of truth), the
index choice (``index.index_choice``), the checkpoints the index is saved to and replayed
from (``index.checkpoint``) and filters (``index.filters``). A process killed at any moment leaves
a collection that opens consistent (index count == document count) and holds every committed
write; readers in other processes see the last committed version and pick up newer ones with
``refresh()``.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from uuid import uuid4

import faiss
import numpy as np

from core.clock import now_iso
from core.errors import InputError
from core.files import CLAIM, atomic_write_text, claim
from index.checkpoint import load_latest, replay, write_checkpoint
from index.cutting import CutOptions
from index.filters import Filter, filter_sql
from index.index_choice import (
    AUTO,
    MAX_TRAIN_POINTS,
    check_index_factory,
    effective_factory,
    kind_of_factory,
    kind_of_index,
    make_index,
    search_params,
)
from index.integrity import open_store, store_index_problem
from index.lexical import totals as lexical_totals
from index.manifest import MANIFEST as MANIFEST
from index.manifest import (
    CollectionExists,
    DamagedCollection,
    ModelMismatch,
    ModeUnavailable,
    check_name,
    collection_identity,
    read_manifest,
)
from index.manifest import CollectionManifest as CollectionManifest
from index.manifest import UnknownCollection as UnknownCollection
from index.passages import DocPassages, PassageOptions
from index.retrieval import DEFAULT_WEIGHT, Hit, Mode, Query, Searcher
from index.sources import LineError, SourceCheckpoint, SourceCommit, SourceLog
from index.store import DOCS, Document, Store, decode

log = logging.getLogger(__name__)
MAX_KNOWN_TERMS = 200_000  # document frequencies kept between searches of one version
MAX_STORED_ERRORS = 100  # malformed lines kept per ingest run of a source; the counts cover all


class Collection:
    """One open collection; a single writer per process, any number of reading processes."""

    def __init__(self, root: Path, manifest: CollectionManifest, readonly: bool) -> None:
        self.root = root
        self.manifest = manifest
        self.readonly = readonly
        self._store = open_store(root / DOCS, manifest.name, readonly)
        self._sources = SourceLog(self._store)
        self._lexical = (0, 0.0)  # (passages, mean terms) of the lexical index at ``_lexical_at``
        self._lexical_at = -1
        self._frequencies: dict[str, int] = {}  # document frequency by term, at ``_lexical_at``
        self._index: faiss.Index = make_index(effective_factory(manifest.index_factory, 0), manifest.dim)
        self._hidden: set[int] = set()  # rowids superseded in an index that cannot remove
        self._index_version = 0
        self.repaired: str | None = None  # why the vector index was rebuilt on open, if it was
        try:
            latest = load_latest(root, self._store.version())
        except RuntimeError as exc:  # FAISS cannot read the file: rebuilt from the store below
            log.warning("collection %s: unreadable vector index (%s)", manifest.name, exc)
            latest, self.repaired = None, "its vector index was unreadable"
        if latest is not None:
            self._index_version, self._index = latest
        self.refresh()
        self._verify()

    def _verify(self) -> None:
        """Rebuild the vector index from the store when it is not the store's index, and save the
        rebuilt one, so that no damage to the derived file ever hides documents."""
        problem = store_index_problem(self._store, self._index, self.manifest.dim, self._hidden)
        if problem is None and self.repaired is None:
            return
        self.repaired = problem or self.repaired
        log.warning("collection %s: %s; rebuilding it from the stored vectors", self.name, self.repaired)
        self.rebuild()
        try:
            write_checkpoint(self.root, self._index, self._index_version)
        except OSError as exc:  # rebuilt in memory all the same; the next open tries again
            log.warning("collection %s: the rebuilt index could not be saved: %s", self.name, exc)

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def create(
        cls,
        home_dir: Path,
        name: str,
        model_id: str,
        dim: int,
        index_factory: str | None = None,
        passages: PassageOptions | None = None,
        lexical: bool = True,
    ) -> Collection:
        """A new, empty collection: documents cut into passages (``passages``, default options),
        with a lexical index unless ``lexical`` is False."""
        root = Path(home_dir) / check_name(name)
        if (root / MANIFEST).is_file():
            raise CollectionExists(f"collection {name!r} already exists")
        factory = check_index_factory(index_factory or AUTO, dim)
        make_index(factory, dim)  # validate before writing anything
        # Made aside and renamed into place: of concurrent creates of one name, one rename wins.
        building = root.with_name(f".creating-{name}-{uuid4().hex}")
        building.mkdir(parents=True)
        held = claim(building)  # a start of the service meanwhile leaves it alone
        try:
            manifest = _initialise(building, name, model_id, dim, factory, passages, lexical)
            try:
                building.rename(root)
            except OSError:  # a folder of that name is there now, not empty
                raise CollectionExists(f"collection {name!r} already exists") from None
            (root / CLAIM).unlink(missing_ok=True)
        finally:
            os.close(held)
            shutil.rmtree(building, ignore_errors=True)
        try:
            return cls(root, manifest, readonly=False)
        except (OSError, sqlite3.Error, DamagedCollection):
            if collection_identity(home_dir, name) == manifest.identity:
                raise
            # Deleted (and perhaps made again) by another request before it could be opened.
            raise CollectionExists(
                f"collection {name!r} was deleted by another request as it was made"
            ) from None

    @classmethod
    def open(
        cls, home_dir: Path, name: str, model_id: str | None = None, readonly: bool = False
    ) -> Collection:
        """Open by name; ``model_id`` given means vectors from any other model are refused."""
        root = Path(home_dir) / check_name(name)
        path = root / MANIFEST
        if not path.is_file():
            raise UnknownCollection(f"unknown collection {name!r}")
        manifest = read_manifest(root, name)
        if manifest.name != name or manifest.dim < 1:
            raise DamagedCollection(name, "its manifest belongs to another collection")
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
    def cut_options(self) -> CutOptions:
        """How documents are prepared for this collection (passages, lexical terms)."""
        return CutOptions(self.manifest.passages, self.manifest.lexical)

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
            if self._store.lexical and self._lexical_at != target:  # BM25's N, once per version
                self._lexical, self._lexical_at = lexical_totals(db), target
                self._frequencies = {}
            if target == self._index_version:
                return target
            gone, rows = self._store.changes_since(db, self._index_version)
        replay(self._index, self._hidden, gone, rows)
        self._index_version = target
        count = self._store.vector_count()
        wanted = kind_of_factory(effective_factory(self.manifest.index_factory, count))
        if self._index.ntotal != count + len(self._hidden) or kind_of_index(self._index) != wanted:
            self.rebuild()  # drifted, or grown into another index type (auto, IVF now trainable)
        return target

    def rebuild(self) -> None:
        """Rebuild the index from the stored vectors: heals drift, drops hidden rows, trains IVF."""
        with self._store.read() as db:
            version = self._store.version(db)
            count = self._store.vector_count(db)
            index = make_index(effective_factory(self.manifest.index_factory, count), self.manifest.dim)
            if not index.is_trained:
                index.train(self._store.sample_vectors(db, min(count, MAX_TRAIN_POINTS)))
            for rows in self._store.vector_pages(50_000, db):
                ids = np.array([r[0] for r in rows], dtype=np.int64)
                index.add_with_ids(decode(r[1] for r in rows), ids)
        self._index, self._index_version, self._hidden = index, version, set()

    # ------------------------------------------------------------------ writes

    def _writable(self) -> None:
        if self.readonly:
            raise InputError(f"collection {self.name!r} is open read-only")

    def upsert(
        self,
        docs: Sequence[Document],
        vectors: np.ndarray,
        source: SourceCommit | None = None,
        passages: Sequence[DocPassages] | None = None,
    ) -> int:
        """Insert or replace documents by id in one transaction; returns the new version.

        ``passages[i]`` are document i's passages and lexical terms, and ``vectors`` holds one
        row per passage in order; without them each document is one passage (its whole text, one
        vector) with no lexical terms. The documents, passages, vectors and lexical terms of a
        document are replaced together. ``source`` records ingest progress (position, counts,
        malformed lines) in the same transaction, so a resumed ingest starts exactly after the
        last committed chunk and knows exactly what the lines before it held.
        """
        self._writable()
        rows = (
            [
                [(s.start, s.end, p.terms[j] if p.terms is not None else None) for j, s in enumerate(p.spans)]
                for p in passages
            ]
            if passages is not None
            else [[(0, len(d.text), None)] for d in docs]
        )
        if len(rows) != len(docs) or (self._store.layout == "documents" and any(len(r) != 1 for r in rows)):
            raise InputError("passages must be given for every document (one each in this collection)")
        total = sum(len(r) for r in rows)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (total, self.manifest.dim):
            raise InputError(f"expected vectors of shape ({total}, {self.manifest.dim}), got {vectors.shape}")
        with self._store.write() as (db, version):
            self._store.insert(db, docs, vectors, version, rows)
            if source is not None:
                self._sources.record_source(
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
        return self._sources.source_progress(source)

    def source_mark(self, source: str) -> str | None:
        """The content mark committed with the source's progress (None: none recorded)."""
        return self._sources.source_mark(source)

    def source_checkpoint(self, source: str, errors_after: int = 0) -> SourceCheckpoint:
        """The committed checkpoint of an ingest source, with its first stored malformed lines
        after line ``errors_after``; an empty one if never ingested."""
        found = self._sources.source_counts(source, errors_after, MAX_STORED_ERRORS)
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
        target = write_checkpoint(self.root, self._index, version)
        self.manifest.count = len(self)
        self.manifest.version = version
        atomic_write_text(self.root / MANIFEST, self.manifest.model_dump_json(indent=2) + "\n")
        # The snapshot holds no superseded row (a hiding index was rebuilt above), so older
        # tombstones are no longer needed to replay; a lagging reader rebuilds from the rows.
        self._store.drop_tombstones(version)
        return target

    # ------------------------------------------------------------------ reads

    def search(
        self,
        queries: np.ndarray | Sequence[Query],
        k: int = 10,
        flt: Filter | None = None,
        mode: Mode = "dense",
        weight: float = DEFAULT_WEIGHT,
        highlight: bool = False,
    ) -> list[list[Hit]]:
        """Top-k documents per query, each by its best passage: ``dense`` by inner product
        (cosine on normalised vectors), ``lexical`` by normalised BM25, ``hybrid`` by cosine +
        ``weight`` × lexical (index.retrieval). A matrix of query vectors searches dense."""
        if isinstance(queries, np.ndarray):
            queries = [Query(v) for v in np.atleast_2d(queries)]
        if k < 1:
            raise InputError("k must be at least 1")
        self.check_mode(mode)
        vectors = [np.ascontiguousarray(q.vector, dtype=np.float32) for q in queries if q.vector is not None]
        if any(v.shape != (self.manifest.dim,) for v in vectors) or (
            mode != "lexical" and len(vectors) < len(queries)
        ):
            raise InputError(f"each query needs a vector of dim {self.manifest.dim}")
        where = filter_sql(flt) if flt is not None and not flt.is_empty() else None
        allowed = self._store.matching(*where) if where is not None else None
        if allowed is not None and allowed.size == 0:
            return [[] for _ in queries]

        def dense(matrix: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
            matrix = np.ascontiguousarray(matrix, dtype=np.float32)
            n = max(1, min(n, self._index.ntotal))
            result: tuple[np.ndarray, np.ndarray] = self._index.search(
                matrix, n, params=self._search_params(allowed, n)
            )
            return result

        if len(self._frequencies) > MAX_KNOWN_TERMS:
            self._frequencies = {}
        searcher = Searcher(
            self._store, dense, int(self._index.ntotal), self._lexical, where, self._frequencies, highlight
        )
        return searcher.run(list(queries), k, mode, weight)

    def check_mode(self, mode: Mode) -> None:
        """Raise ModeUnavailable (409) for a mode this collection cannot serve, naming the fix."""
        if mode not in self.manifest.modes:
            raise ModeUnavailable(
                f"collection {self.name!r} has no lexical index, so it serves only dense search; "
                f"re-index it ('dapsearch index reindex {self.name} NEW') for {mode} search"
            )

    def _search_params(self, allowed: np.ndarray | None, n: int) -> faiss.SearchParameters | None:
        m = self.manifest
        return search_params(self._index, allowed, self._hidden, n, m.nprobe, m.ef_search)

    def get(self, doc_id: str) -> Document | None:
        return self._store.get(doc_id)

    def passage_spans(self, doc_id: str) -> list[tuple[int, int]]:
        """(start, end) of a document's passages, in order."""
        return self._store.passage_spans(doc_id)

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
        for rows in self._store.first_vectors(batch):
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
            "passages": self._store.vector_count(),
            "modes": list(self.manifest.modes),
            "passage_options": self.manifest.passages.model_dump() if self.manifest.passages else None,
            "languages": self._store.languages(),
        }


def _initialise(
    folder: Path,
    name: str,
    model_id: str,
    dim: int,
    factory: str,
    passages: PassageOptions | None,
    lexical: bool,
) -> CollectionManifest:
    """An empty collection's store and manifest, written into ``folder``."""
    Store.initialise(folder / DOCS, "passages", lexical)
    manifest = CollectionManifest(
        format_version=2,
        name=name,
        model_id=model_id,
        dim=dim,
        index_factory=factory,
        created=now_iso(),
        uuid=uuid4().hex,
        passages=passages or PassageOptions(),
        lexical=lexical,
    )
    atomic_write_text(folder / MANIFEST, manifest.model_dump_json(indent=2) + "\n")
    return manifest
