"""SIGKILL in the middle of a real `dapsearch index snapshot` and `restore`, at several moments.

What must hold after each kill: no archive that looks complete is anything but complete (its
sha256s all match), no collection that is visible is half restored, and what the killed process
left is removed (or, for a restore that was checked and only had its rename left, finished) by
the clean-up every start runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from index.collection import Collection
from index.restore import finish_interrupted, inspect_snapshot
from index.snapshot import SNAPSHOT_NAME, clean_snapshots
from index.store import Document
from model.artifact import read_manifest

N = 30_000
DIM = 384
DELAYS_S = (0.0, 0.05, 0.15, 0.3, 0.6)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A collection of the tiny model's id, large enough (about 90 MB) for a kill to land inside."""
    home = tmp_path_factory.mktemp("faults")
    vectors = np.random.default_rng(0).normal(size=(N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    docs = [Document(f"d{i}", f"document {i} " * 20, "en", {"i": i}) for i in range(N)]
    model_id = read_manifest(tiny_model_dir).id
    with Collection.create(home / "collections", "big", model_id, DIM, "Flat") as coll:
        for start in range(0, N, 5000):
            coll.upsert(docs[start : start + 5000], vectors[start : start + 5000])
        coll.checkpoint()
    return home


def cli(home: Path, model_dir: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DAPSEARCH_HOME": str(home), "DAPSEARCH_MODEL_DIR": str(model_dir)}
    command = [sys.executable, "-m", "cli", "index", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_once_started(proc: subprocess.Popen[bytes], folder: Path, prefix: str, delay: float) -> bool:
    """SIGKILL ``delay`` s after a staging folder ``prefix*`` appears in ``folder``; False if the
    command ended first."""
    deadline = time.monotonic() + 120

    def started() -> bool:
        return folder.is_dir() and any(p.name.startswith(prefix) for p in folder.glob(".*"))

    while not started():
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    time.sleep(delay)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def test_a_killed_snapshot_leaves_no_archive_that_looks_complete(home: Path, tiny_model_dir: Path) -> None:
    out = home / "snapshots" / "big"
    model_id = read_manifest(tiny_model_dir).id
    kills = 0
    for delay in DELAYS_S:
        proc = cli(home, tiny_model_dir, "snapshot", "big")
        kills += kill_once_started(proc, out, ".taking-", delay)
        for archive in (p for p in out.iterdir() if SNAPSHOT_NAME.fullmatch(p.name)):
            assert inspect_snapshot(archive, model_id).documents == N  # complete, or not there
            archive.unlink()
        clean_snapshots(home / "snapshots")
        assert list(out.iterdir()) == []  # nothing the killed process left stays
    assert kills >= 3, f"only {kills} of the kills landed inside a snapshot"
    proc = cli(home, tiny_model_dir, "snapshot", "big")
    assert proc.wait(timeout=300) == 0, proc.stderr.read() if proc.stderr else ""
    [archive] = list(out.iterdir())
    assert inspect_snapshot(archive, model_id).documents == N


def test_a_killed_restore_leaves_no_half_collection(home: Path, tiny_model_dir: Path) -> None:
    out = home / "snapshots" / "big"
    archives = [p for p in out.iterdir() if SNAPSHOT_NAME.fullmatch(p.name)] if out.is_dir() else []
    if not archives:
        proc = cli(home, tiny_model_dir, "snapshot", "big")
        assert proc.wait(timeout=300) == 0
        archives = [p for p in out.iterdir() if SNAPSHOT_NAME.fullmatch(p.name)]
    collections = home / "collections"
    kills = 0
    for i, delay in enumerate(DELAYS_S):
        name = f"back{i}"
        proc = cli(home, tiny_model_dir, "restore", str(archives[0]), "--name", name)
        kills += kill_once_started(proc, collections, ".restoring-", delay)
        finish_interrupted(collections)  # what the next start does
        assert not [p for p in collections.iterdir() if p.name.startswith(".")]
        if (collections / name).exists():  # finished: then whole
            with Collection.open(collections, name, readonly=True) as coll:
                assert len(coll) == N and coll.repaired is None
    assert kills >= 3, f"only {kills} of the kills landed inside a restore"
    proc = cli(home, tiny_model_dir, "restore", str(archives[0]), "--name", "whole")
    assert proc.wait(timeout=300) == 0, proc.stderr.read() if proc.stderr else ""
    with Collection.open(collections, "whole", readonly=True) as coll:
        assert len(coll) == N
