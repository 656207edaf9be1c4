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
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from uuid import uuid4

import faiss
import numpy as np
from pydantic import BaseModel, Field

from core.clock import now_iso
from core.errors import Conflict, InputError, NotFound
from core.files import atomic_write_text
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
from index.lexical import totals as lexical_totals
from index.passages import DocPassages, PassageOptions
from index.retrieval import DEFAULT_WEIGHT, MODES, Hit, Mode, Query, Searcher
from index.snapshot import load_latest, replay, write_snapshot
from index.sources import LineError, SourceCheckpoint, SourceCommit, SourceLog
from index.store import DOCS, Document, Store, decode

MANIFEST = "manifest.json"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # always fullmatch: "$" allows a final \n
MAX_KNOWN_TERMS = 200_000  # document frequencies kept between searches of one version
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
    passages: PassageOptions | None = Field(
        default=None, description="How documents are cut into passages; None: one vector per document"
    )
    lexical: bool = Field(default=False, description="Keeps a lexical (BM25) index of its passages")

    @property
    def modes(self) -> tuple[Mode, ...]:
        """The search modes it can serve: a collection made before passages serves dense only."""
        return MODES if self.lexical else ("dense",)

    @property
    def identity(self) -> str:
        """What caches and read handles key on: never repeated by a collection re-created under the
        same name (versions start again at 0). Collections made before uuids: name and creation time."""
        if self.uuid is not None:
            return self.uuid
        return hashlib.sha256(f"{self.name}\0{self.created}".encode()).hexdigest()[:32]


class UnknownCollection(NotFound):
    """No collection of that name (a service answers 404)."""


class CollectionExists(Conflict):
    """Creating a collection under a name already taken (409)."""


class ModeUnavailable(Conflict):
    """A search mode the collection cannot serve (409): one made before lexical indexes."""


class ModelMismatch(Conflict):
    """The collection's vectors come from another model than the caller's (409): never mix them."""


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
        self._sources = SourceLog(self._store)
        self._lexical = (0, 0.0)  # (passages, mean terms) of the lexical index at ``_lexical_at``
        self._lexical_at = -1
        self._frequencies: dict[str, int] = {}  # document frequency by term, at ``_lexical_at``
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
        root = Path(home_dir) / _check_name(name)
        if (root / MANIFEST).is_file():
            raise CollectionExists(f"collection {name!r} already exists")
        factory = check_index_factory(index_factory or AUTO, dim)
        make_index(factory, dim)  # validate before writing anything
        # Made aside and renamed into place: of concurrent creates of one name, one rename wins.
        building = root.with_name(f".creating-{name}-{uuid4().hex}")
        building.mkdir(parents=True)
        try:
            manifest = _initialise(building, name, model_id, dim, factory, passages, lexical)
            try:
                building.rename(root)
            except OSError:  # a folder of that name is there now, not empty
                raise CollectionExists(f"collection {name!r} already exists") from None
        finally:
            shutil.rmtree(building, ignore_errors=True)
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
        target = write_snapshot(self.root, self._index, version)
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
