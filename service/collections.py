"""The service's view of the collections on disk: one read handle per collection, kept current.

Why a registry: opening a collection loads its FAISS index (seconds at a million vectors), so the
service opens each once and reuses it. Writers (admin ingest jobs, the CLI in another process)
commit through their own handles; before each search the read handle applies what they committed
(``Collection.refresh``), so searches always see the latest committed version and never a partial
one. A handle shares one SQLite connection, so calls on the same collection are serialised by a
lock; different collections search in parallel.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import Conflict
from index.collection import Collection
from index.filters import Filter
from index.index_choice import use_search_threads
from index.integrity import STORAGE_ERRORS, vanishing
from index.manifest import (
    MANIFEST,
    DamagedCollection,
    UnknownCollection,
    collection_identity,
    drop_collection,
    list_collections,
)
from index.passages import PassageOptions
from index.retrieval import DEFAULT_WEIGHT, Hit, Mode, Query

# What a delete or re-create racing an open or a refresh can make SQLite or FAISS raise.
LOOK_AGAIN: tuple[type[Exception], ...] = (DamagedCollection, *STORAGE_ERRORS)


class Collections:
    def __init__(self, root: Path, model_id: str, search_threads: int = 1) -> None:
        self.root = Path(root)
        self.model_id = model_id
        self.search_threads = search_threads
        self._handles: dict[str, Collection] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._registry_lock = threading.Lock()
        self._seen: dict[str, tuple[int, int]] = {}  # name -> (inode, mtime) of the manifest checked
        self._damaged: dict[str, str] = {}  # name -> what is wrong, as last found on opening it

    def _replaced(self, name: str, handle: Collection) -> bool:
        """The handle's collection was deleted, or deleted and created again under the same name
        (by this or another process): its manifest is gone or carries another identity."""
        path = handle.root / MANIFEST
        try:
            info = path.stat()
        except OSError:
            return True
        stamp = (info.st_ino, info.st_mtime_ns)
        if self._seen.get(name) == stamp:
            return False
        current = collection_identity(self.root, name)
        if current is None:
            return True
        self._seen[name] = stamp
        return current != handle.manifest.identity

    def names(self) -> list[str]:
        return list_collections(self.root)

    def exists(self, name: str) -> bool:
        return name in self.names()

    @contextmanager
    def reading(self, name: str) -> Iterator[Collection]:
        """The current read handle of ``name``, refreshed to the last committed version and held
        under the collection's lock. Raises UnknownCollection, ModelMismatch or DamagedCollection."""
        handle, lock = self._refreshed(name)
        try:
            yield handle
        finally:
            lock.release()

    def _refreshed(self, name: str) -> tuple[Collection, threading.Lock]:
        """The handle, refreshed, with its lock held. A delete or re-create racing the open or the
        refresh can look like damage or an I/O error (SQLite reads a file as it goes away): it is
        looked at once more, and what is there then (nothing, a new collection) is the answer."""
        for attempt in range(2):
            handle, lock = None, None
            try:
                handle, lock = self._handle(name)
                lock.acquire()
                with vanishing(self.root, name):
                    handle.refresh()
                return handle, lock
            except LOOK_AGAIN as exc:
                if lock is not None:
                    lock.release()
                if attempt:
                    if isinstance(exc, DamagedCollection):
                        self._damaged[name] = exc.what
                    raise
                self.forget(name)
            except BaseException:
                if lock is not None:
                    lock.release()
                raise
        raise AssertionError("unreachable")

    def _handle(self, name: str) -> tuple[Collection, threading.Lock]:
        """The registry's handle of ``name`` (opened when there is none, or it was replaced)."""
        stale: tuple[Collection, threading.Lock] | None = None
        with self._registry_lock:
            handle = self._handles.get(name)
            if handle is not None and self._replaced(name, handle):
                # Deleted, or re-created, on disk (perhaps by another process). Closed below under
                # its own lock: another thread may be searching it right now.
                stale = (self._handles.pop(name), self._locks.pop(name))
                self._seen.pop(name, None)
                handle = None
            if handle is None:
                with vanishing(self.root, name):
                    handle = Collection.open(self.root, name, self.model_id, readonly=True)
                self._damaged.pop(name, None)  # damage is recorded by _refreshed, on its last look
                self._handles[name] = handle
                self._locks[name] = threading.Lock()
            lock = self._locks[name]
        if stale is not None:
            old, old_lock = stale
            with old_lock:
                old.close()
        return handle, lock

    def damaged(self) -> dict[str, str]:
        """Collections found damaged when last opened (name -> what), of those still on disk.

        Found as they are opened (a search, the listing, a job), never by opening every collection
        at start: one that aborts the process when opened, or a very large one, must not stop or
        slow every start."""
        present = set(self.names())
        return {name: what for name, what in sorted(self._damaged.items()) if name in present}

    def search(
        self,
        name: str,
        queries: Sequence[Query] | np.ndarray,
        k: int,
        flt: Filter | None,
        mode: Mode = "dense",
        weight: float = DEFAULT_WEIGHT,
        highlight: bool = False,
    ) -> tuple[str, int, list[list[Hit]]]:
        """(identity and version searched, hits per query)."""
        use_search_threads(self.search_threads)  # per thread, so set on each call
        with self.reading(name) as coll:
            return coll.manifest.identity, coll.version, coll.search(queries, k, flt, mode, weight, highlight)

    def describe(self, name: str, mode: Mode | None) -> tuple[str, int, Mode]:
        """(identity, committed version, the search mode to run): ``mode`` None is the best the
        collection serves (hybrid with a lexical index); a mode it cannot serve raises 409."""
        with self.reading(name) as coll:
            modes = coll.manifest.modes
            chosen: Mode = mode or ("hybrid" if "hybrid" in modes else "dense")
            if chosen not in modes:
                coll.check_mode(chosen)
            return coll.manifest.identity, coll.version, chosen

    def version(self, name: str) -> tuple[str, int]:
        """The collection's identity (unique per creation) and its committed version."""
        with self.reading(name) as coll:
            return coll.manifest.identity, coll.version

    def stats(self, name: str) -> dict[str, Any]:
        with self.reading(name) as coll:
            return dict(coll.stats())

    def create(
        self,
        name: str,
        dim: int,
        index_factory: str | None = None,
        passages: PassageOptions | None = None,
        lexical: bool = True,
    ) -> dict[str, Any]:
        """Create an empty collection bound to the serving model; returns its stats."""
        Collection.create(self.root, name, self.model_id, dim, index_factory, passages, lexical).close()
        try:
            return self.stats(name)
        except UnknownCollection:  # created, then deleted by a concurrent request
            raise Conflict(f"collection {name!r} was deleted by another request as it was made") from None

    def delete(self, name: str) -> None:
        """Remove a collection and its files. Raises UnknownCollection."""
        self.forget(name)
        drop_collection(self.root, name)

    def forget(self, name: str) -> None:
        """Close the cached handle of ``name`` (after it was deleted or rebuilt)."""
        with self._registry_lock:
            handle = self._handles.pop(name, None)
            lock = self._locks.pop(name, None)
            self._seen.pop(name, None)
        if handle is not None:
            if lock is not None:
                with lock:
                    handle.close()
            else:
                handle.close()

    def open_names(self) -> Sequence[str]:
        with self._registry_lock:
            return sorted(self._handles)

    def close(self) -> None:
        for name in self.open_names():
            self.forget(name)
