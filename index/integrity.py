"""Whether what a collection opened is one whole: its database readable, its vector index the
index of that database.

The FAISS file is derived state, so a mismatch is repaired, not reported: the index is rebuilt
from the stored vectors (the source of truth). A file garbled, truncated, replaced by an empty
index of the right dimension or by another collection's index would otherwise answer searches
with hits missing and nothing said. What cannot be rebuilt (the database, the manifest) makes the
collection damaged, by name, while the others keep serving.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np

from index.manifest import MANIFEST, DamagedCollection, UnknownCollection
from index.store import Store

# What SQLite and FAISS raise when a file goes away, is damaged or cannot be read.
STORAGE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, OSError, RuntimeError)
SAMPLED_VECTORS = 8  # stored vectors compared with the index's copy: catches another collection's index
MIN_COSINE = 0.9  # lossy codecs (PQ, SQ) keep a vector's direction within this


def is_damage(exc: BaseException) -> bool:
    """SQLite's word for a file that is no database or a corrupt one (not a busy or full one)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    text = str(exc).lower()
    return not isinstance(exc, sqlite3.OperationalError) or "malformed" in text or "not a database" in text


def index_problem(
    index: faiss.Index, dim: int, stored: np.ndarray, hidden: set[int], sample: dict[int, np.ndarray]
) -> str | None:
    """Why ``index`` is not the index of the store (None: it is).

    ``stored`` holds the store's vector ids, sorted; ``hidden`` the ids an HNSW index keeps but
    skips; ``sample`` some stored vectors by id, to compare with the index's own copies.
    """
    if index.d != dim:
        return f"its vector index has dimension {index.d}, the collection {dim}"
    if not hasattr(index, "id_map"):
        return "its vector index is not one this service writes"
    ids = faiss.vector_to_array(index.id_map)
    if len(ids) != len(stored) + len(hidden):
        return f"its vector index holds {len(ids) - len(hidden)} vectors, its database {len(stored)}"
    live = ids if not hidden else ids[~np.isin(ids, np.fromiter(hidden, dtype=np.int64))]
    if not np.array_equal(np.sort(live), stored):
        return "its vector index holds other vector ids than its database"
    for rid, vector in sample.items():
        try:
            copy = index.reconstruct(int(rid))
        except RuntimeError:  # an index kind that cannot give vectors back: the ids must do
            return None
        norms = float(np.linalg.norm(copy) * np.linalg.norm(vector))
        if norms == 0 or float(copy @ vector) / norms < MIN_COSINE:
            return "its vector index holds other vectors than its database"
    return None


def store_index_problem(store: Store, index: faiss.Index, dim: int, hidden: set[int]) -> str | None:
    """``index_problem`` of ``index`` against what ``store`` holds (its ids and a sample of vectors)."""
    with store.read() as db:
        stored = store.vector_ids(db)
    picks = stored[:: max(1, len(stored) // SAMPLED_VECTORS)][:SAMPLED_VECTORS]
    sample = store.vectors_of([int(i) for i in picks]) if len(picks) else {}
    return index_problem(index, dim, stored, hidden, sample)


def open_store(path: Path, name: str, readonly: bool) -> Store:
    """The collection's database; DamagedCollection if SQLite cannot read it as one."""
    store: Store | None = None
    try:
        store = Store(path, readonly)
        store.version()
        return store
    except sqlite3.DatabaseError as exc:
        if store is not None:
            store.close()
        if not is_damage(exc):
            raise
        raise DamagedCollection(name, "its database is unreadable") from exc


@contextmanager
def vanishing(home_dir: Path, name: str) -> Iterator[None]:
    """A collection deleted while it is opened or read fails in SQLite or FAISS half-way: that is
    an unknown collection (404). One still there whose database reads as corrupt is damaged."""
    try:
        yield
    except STORAGE_ERRORS as exc:
        if (Path(home_dir) / name / MANIFEST).is_file():
            if is_damage(exc):  # corrupt under a handle already open: named, not a bare 500
                raise DamagedCollection(name, "its database is unreadable") from exc
            raise
        raise UnknownCollection(f"unknown collection {name!r}") from exc
