"""A full disk is the operator's to fix, not a bug in the service.

It surfaces in many shapes (``OSError`` ENOSPC or EDQUOT, SQLite's "database or disk is full",
FAISS's write error) and at any write. Each is recognised here, so the service answers 507 and a
job fails naming the disk, and never a bare 500 or a dead worker. Writes also keep a reserve free
(``DAPSEARCH_MIN_FREE_BYTES``), as search engines' flood-stage watermarks do: new work stops while
there is still room to record why, commit SQLite's journal and save the job files.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
from pathlib import Path

from core.errors import InputError, causes

MIB = 1 << 20
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_FULL_TEXTS = ("no space left on device", "database or disk is full", "disk quota exceeded")


class DiskFull(InputError):
    """Too little disk space for a write (507 Insufficient Storage)."""

    status = 507


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc``, or an exception it was raised from, is a full disk or quota."""
    for current in causes(exc):
        if isinstance(current, DiskFull):
            return True
        if isinstance(current, OSError) and current.errno in _FULL_ERRNOS:
            return True
        if (
            isinstance(current, sqlite3.Error)
            and getattr(current, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        ):
            return True
        if isinstance(current, (sqlite3.Error, RuntimeError, OSError)):
            text = str(current).lower()
            if any(t in text for t in _FULL_TEXTS):
                return True
    return False


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem holding ``path`` (its nearest existing ancestor)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def full_message(free: int, reserve: int, what: str) -> str:
    """Why a write is refused, in sizes and the setting, never a server path."""
    return (
        f"not enough disk space to {what}: {free / MIB:.1f} MiB free on the service's data volume, "
        f"and {reserve / MIB:.1f} MiB are kept free (DAPSEARCH_MIN_FREE_BYTES); free disk space and retry"
    )


def require_space(path: Path, reserve: int, what: str, need: int = 0) -> None:
    """Raise DiskFull unless ``need`` bytes fit on ``path``'s volume with ``reserve`` left over."""
    free = free_bytes(path)
    if free - need < reserve:
        raise DiskFull(full_message(free, reserve, what))


DISK_FULL_MESSAGE = "the disk holding the service's data is full; free disk space and retry"
