"""The service's collection registry under deletes: a vanished collection is a 404, never a 500."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np

from index.collection import Collection, UnknownCollection
from index.store import Document
from service.collections import Collections

DIM = 8


def _fill(root: Path, name: str, n: int) -> None:
    rng = np.random.default_rng(n)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with Collection.create(root, name, "m@1", DIM) as coll:
        coll.upsert([Document(f"d{i}", f"text {i}") for i in range(n)], vectors)
        coll.checkpoint()


def test_searches_while_the_collection_is_deleted_and_made_again(tmp_path: Path) -> None:
    """Readers race a deleter (rename away, remove, create again, as Collections.delete and other
    processes do): every search answers or says the collection is unknown."""
    _fill(tmp_path, "c", 50)
    registry = Collections(tmp_path, "m@1")
    query = np.ones((1, DIM), dtype=np.float32) / np.sqrt(DIM)
    unexpected: list[BaseException] = []
    answered = unknown = 0
    stop = threading.Event()

    def search() -> None:
        nonlocal answered, unknown
        while not stop.is_set():
            try:
                registry.search("c", query, 3, None)
                answered += 1
            except UnknownCollection:
                unknown += 1
            except BaseException as exc:  # anything else would be a 500
                unexpected.append(exc)
                return

    readers = [threading.Thread(target=search) for _ in range(3)]
    for reader in readers:
        reader.start()
    try:
        for round_ in range(40):
            doomed = tmp_path / f".deleted-c-{round_}"
            (tmp_path / "c").rename(doomed)
            shutil.rmtree(doomed)
            _fill(tmp_path, "c", 50 + round_)
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    assert not unexpected, repr(unexpected[:3])
    assert answered > 0
    _, _, hits = registry.search("c", query, 1000, None)
    assert len(hits[0]) == 50 + 39  # the last collection made, not a stale handle
    registry.close()
