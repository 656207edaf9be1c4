"""FAISS index checkpoints, and replaying the commits made after one.

The index is derived state: it is checkpointed to ``index.<version>.faiss`` (temporary file,
fsync, rename) and, on open or refresh, brought up to date by replaying the rows written and
removed after that version. So a process killed at any moment leaves a collection that opens
consistent and holds every committed write.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np

from index.index_choice import kind_of_index
from index.store import decode

_CHECKPOINT_RE = re.compile(r"index\.(\d+)\.faiss")


def checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(version, path) of every checkpoint in ``root``, oldest first."""
    found = []
    for path in root.iterdir():
        match = _CHECKPOINT_RE.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def load_latest(root: Path, up_to: int) -> tuple[int, faiss.Index] | None:
    """The newest checkpoint at or below version ``up_to`` (a newer one belongs to a write this
    database never committed); None if there is none."""
    usable = [(v, p) for v, p in checkpoints(root) if v <= up_to]
    if not usable:
        return None
    version, path = usable[-1]
    return version, faiss.read_index(str(path))


def write_checkpoint(root: Path, index: faiss.Index, version: int) -> Path:
    """Write the checkpoint of ``version`` durably, then remove the older ones."""
    target = root / f"index.{version}.faiss"
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".index.", suffix=".tmp")
    os.close(fd)
    try:
        faiss.write_index(index, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(root)
    for v, path in checkpoints(root):
        if v < version:
            path.unlink(missing_ok=True)
    return target


def replay(
    index: faiss.Index, hidden: set[int], gone: Sequence[int], rows: Sequence[tuple[int, bytes]]
) -> None:
    """Apply later commits to ``index``: remove ``gone`` row ids, add (row id, vector) ``rows``.

    An index that cannot remove (HNSW) keeps the rows and adds them to ``hidden``, which searches
    exclude until a rebuild drops them.
    """
    if gone:
        if kind_of_index(index) != "HNSW":
            index.remove_ids(np.asarray(gone, dtype=np.int64))
        else:
            present = faiss.vector_to_array(index.id_map) if index.ntotal else np.array([])
            hidden.update(int(r) for r in np.intersect1d(np.asarray(gone, dtype=np.int64), present))
    if rows:
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        index.add_with_ids(decode(r[1] for r in rows), ids)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
