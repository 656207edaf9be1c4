"""Damaged collection files, for real: FAISS files garbled, emptied or swapped, databases and
manifests overwritten. The vector index is rebuilt from the store; the store's damage is named."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pytest

from index.checkpoint import checkpoints
from index.collection import Collection
from index.index_choice import make_index
from index.manifest import DamagedCollection
from tests.index.test_collection import DIM, docs, unit

N = 120


def stocked(home: Path, name: str, factory: str, seed: int) -> np.ndarray:
    """A collection of N documents, checkpointed; returns its vectors."""
    vectors = unit(np.random.default_rng(seed), N)
    with Collection.create(home, name, "model@1", DIM, factory) as coll:
        coll.upsert(docs(N), vectors)
        coll.checkpoint()
    return vectors


def the_snapshot(home: Path, name: str) -> Path:
    [(_, path)] = checkpoints(home / name)
    return path


def _garble(path: Path, _other: Path) -> None:
    path.write_bytes(b"\x00garbage" * 64)


def _empty(path: Path, _other: Path) -> None:
    faiss.write_index(make_index("Flat", DIM), str(path))  # right dimension, no vectors


def _truncate(path: Path, _other: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _swap(path: Path, other: Path) -> None:
    path.write_bytes(the_snapshot(other.parent, other.name).read_bytes())  # same ids, other vectors


@pytest.mark.parametrize("factory", ["Flat", "HNSW32"])
@pytest.mark.parametrize("damage", [_garble, _empty, _truncate, _swap], ids=lambda f: f.__name__[1:])
def test_a_damaged_vector_index_is_rebuilt_from_the_store(
    tmp_path: Path, factory: str, damage: Callable[[Path, Path], None]
) -> None:
    vectors = stocked(tmp_path, "c", factory, seed=0)
    stocked(tmp_path, "other", factory, seed=1)
    damage(the_snapshot(tmp_path, "c"), tmp_path / "other")
    for readonly in (True, False):
        with Collection.open(tmp_path, "c", readonly=readonly) as coll:
            assert readonly is False or coll.repaired is not None  # the first open finds it
            hits = coll.search(vectors[:10], k=1)
            assert [row[0].id for row in hits] == [f"d{i}" for i in range(10)]
            assert coll.stats()["index_vectors"] == N
    # The rebuilt index was saved: a third open has nothing to repair.
    with Collection.open(tmp_path, "c", readonly=True) as coll:
        assert coll.repaired is None
        assert faiss.read_index(str(the_snapshot(tmp_path, "c"))).ntotal == N


def test_a_sound_collection_opens_without_a_repair(tmp_path: Path) -> None:
    stocked(tmp_path, "c", "Flat", seed=0)
    with Collection.open(tmp_path, "c") as coll:
        assert coll.repaired is None


@pytest.mark.parametrize(
    ("file", "what"),
    [("docs.sqlite", "its database is unreadable"), ("manifest.json", "its manifest is unreadable")],
)
def test_a_damaged_database_or_manifest_names_the_collection(tmp_path: Path, file: str, what: str) -> None:
    stocked(tmp_path, "c", "Flat", seed=0)
    for path in (tmp_path / "c").glob("docs.sqlite-*"):
        path.unlink()  # a checkpointed WAL: the database file is all there is
    (tmp_path / "c" / file).write_bytes(b"\x13garbled\xff" * 100)
    with pytest.raises(DamagedCollection) as raised:
        Collection.open(tmp_path, "c", readonly=True)
    assert raised.value.status == 503 and raised.value.name == "c"
    assert str(raised.value).startswith(f"collection 'c' is damaged: {what}")
    assert str(tmp_path) not in str(raised.value)
