"""Snapshots and restore on real SQLite, FAISS and tar files: what a restore refuses, and that
what it brings back searches exactly as the original did."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from core.errors import InputError
from index.collection import Collection
from index.manifest import CollectionExists
from index.restore import finish_interrupted, inspect_snapshot, restore_snapshot
from index.snapshot import HEADER, SNAPSHOT_NAME, SnapshotModelMismatch, SnapshotRefused, take_snapshot
from index.store import Document
from tests.index.test_collection import DIM, docs, unit

MODEL = "model@1"


def stocked(home: Path, name: str = "c", n: int = 150, factory: str = "Flat") -> np.ndarray:
    vectors = unit(np.random.default_rng(0), n)
    with Collection.create(home, name, MODEL, DIM, factory) as coll:
        coll.upsert(docs(n), vectors)
        coll.checkpoint()
        coll.upsert([Document("late", "written after the checkpoint", "en")], vectors[:1])  # replayed
    return vectors


def hits(home: Path, name: str, queries: np.ndarray) -> list[list[tuple[str, float]]]:
    with Collection.open(home, name, readonly=True) as coll:
        return [[(h.id, h.score) for h in row] for row in coll.search(queries, k=5)]


@pytest.mark.parametrize("factory", ["Flat", "HNSW32"])
def test_a_restored_collection_searches_exactly_as_the_original(tmp_path: Path, factory: str) -> None:
    home = tmp_path / "collections"
    vectors = stocked(home, factory=factory)
    archive, header = take_snapshot(home, "c", tmp_path / "snapshots" / "c", model_sha256="ab" * 32)
    assert SNAPSHOT_NAME.fullmatch(archive.name) and header.documents == 151 and header.passages == 151
    assert [m.name for m in header.members] == ["collection.json", "docs.sqlite", "index.faiss"]
    assert inspect_snapshot(archive, MODEL) == header
    stats = restore_snapshot(archive, home, "copy", MODEL)
    assert stats["count"] == 151 and stats["version"] == header.version and stats["name"] == "copy"
    assert hits(home, "copy", vectors[:20]) == hits(home, "c", vectors[:20])
    with Collection.open(home, "copy") as copy, Collection.open(home, "c") as original:
        assert copy.manifest.identity != original.manifest.identity  # a new collection
        assert copy.repaired is None  # the archived index was the store's
        assert copy.get("late") == original.get("late")  # written after the original's checkpoint
    assert list((tmp_path / "snapshots" / "c").iterdir()) == [archive]  # no staging left behind


def test_a_restore_refuses_a_name_in_use_another_model_and_damage(tmp_path: Path) -> None:
    home = tmp_path / "collections"
    stocked(home)
    archive, header = take_snapshot(home, "c", tmp_path / "snaps")
    with pytest.raises(CollectionExists):
        restore_snapshot(archive, home, "c", MODEL)
    with pytest.raises(SnapshotModelMismatch) as other:
        restore_snapshot(archive, home, "c2", "other-model@2")
    assert other.value.status == 409 and "other-model@2" in str(other.value)
    # One byte of the database changed: its sha256 no longer matches.
    data = bytearray(archive.read_bytes())
    at = data.find(b"SQLite format 3") + 4096 + 100
    data[at] ^= 0xFF
    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(bytes(data))
    for attempt in (
        lambda: inspect_snapshot(damaged, MODEL),
        lambda: restore_snapshot(damaged, home, "d", MODEL),
    ):
        with pytest.raises(SnapshotRefused, match=r"member docs\.sqlite does not match its sha256"):
            attempt()
    assert not (home / "d").exists() and not [p for p in home.iterdir() if p.name.startswith(".")]
    # Overwrite replaces the collection with the snapshot's documents.
    with Collection.open(home, "c") as coll:
        coll.upsert([Document("extra", "after the snapshot", "en")], unit(np.random.default_rng(5), 1))
    stats = restore_snapshot(archive, home, "c", MODEL, overwrite=True)
    assert stats["count"] == header.documents


def _rewrite_header(archive: Path, out: Path, **changes: object) -> None:
    with tarfile.open(archive) as src, tarfile.open(out, "w") as dst:
        for entry in src.getmembers():
            data = src.extractfile(entry).read()  # type: ignore[union-attr]
            if entry.name == HEADER:
                header = json.loads(data) | changes
                data = json.dumps(header).encode()
                entry.size = len(data)
            dst.addfile(entry, io.BytesIO(data))


def test_a_restore_refuses_a_newer_format_and_what_is_no_snapshot(tmp_path: Path) -> None:
    home = tmp_path / "collections"
    stocked(home)
    archive, _ = take_snapshot(home, "c", tmp_path / "snaps")
    newer = tmp_path / "newer.tar"
    _rewrite_header(archive, newer, format_version=99)
    with pytest.raises(SnapshotRefused, match="format version 99, newer than this dapsearch reads"):
        inspect_snapshot(newer, MODEL)
    lying = tmp_path / "lying.tar"
    _rewrite_header(archive, lying, documents=7)  # the sha256s match, the counts do not
    with pytest.raises(SnapshotRefused, match="its manifest says version"):
        restore_snapshot(lying, home, "l", MODEL)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(archive.read_bytes()[:1500])  # the header block whole, the rest cut off
    with pytest.raises(SnapshotRefused, match="the archive is cut short"):
        inspect_snapshot(cut, MODEL)
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(SnapshotRefused, match="not a tar archive"):
        inspect_snapshot(junk, MODEL)
    plain = tmp_path / "plain.tar"
    with tarfile.open(plain, "w") as tar:
        tar.add(archive, arcname="../../etc/passwd")
    with pytest.raises(SnapshotRefused, match=r"does not start with snapshot\.json"):
        restore_snapshot(plain, home, "p", MODEL)
    assert sorted(p.name for p in home.iterdir()) == ["c"]
    assert all(isinstance(e, InputError) for e in (SnapshotRefused("x"), SnapshotModelMismatch("x")))


def test_the_next_start_finishes_a_checked_restore_and_removes_a_partial_one(tmp_path: Path) -> None:
    home = tmp_path / "collections"
    stocked(home)
    # As a killed restore leaves them: one complete and checked, one cut off.
    complete, partial = home / ".restoring-aaa", home / ".restoring-bbb"
    complete.mkdir()
    for path in (home / "c").iterdir():
        (complete / path.name).write_bytes(path.read_bytes())
    (complete / ".restored").write_text("back", encoding="utf-8")
    partial.mkdir()
    (partial / "docs.sqlite").write_bytes(b"half")
    assert finish_interrupted(home) == ["back"]
    assert sorted(p.name for p in home.iterdir()) == ["back", "c"]
    assert not (home / "back" / ".restored").exists()
