"""Files that appear complete or not at all, whatever crashes in between."""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, BinaryIO, TextIO, TypeVar


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over the target."""
    with atomic_writer(path) as fh:
        fh.write(text)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_binary_writer(path) as fh:
        fh.write(data)


@contextmanager
def atomic_writer(path: Path) -> Iterator[TextIO]:
    """A text file that appears at ``path`` complete (temp file, fsync, rename) or not at all."""
    with _atomic(path, lambda fd: os.fdopen(fd, "w", encoding="utf-8", newline="\n")) as fh:
        yield fh


@contextmanager
def atomic_binary_writer(path: Path) -> Iterator[BinaryIO]:
    """``atomic_writer`` for bytes."""
    with _atomic(path, lambda fd: os.fdopen(fd, "wb")) as fh:
        yield fh


F = TypeVar("F", bound=IO[Any])


@contextmanager
def _atomic(path: Path, open_fd: Callable[[int], F]) -> Iterator[F]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        fh = open_fd(fd)
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """The sha256 of a file, read a MiB at a time (``progress`` gets the bytes read)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
            if progress is not None:
                progress(len(block))
    return digest.hexdigest()


CLAIM = ".claim"


def claim(folder: Path) -> int:
    """Mark ``folder`` as being worked on by this process (an exclusive lock on a file in it,
    which the kernel drops when the process dies, SIGKILL included). Returns the descriptor to
    close when done."""
    fd = os.open(folder / CLAIM, os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def abandoned(folder: Path) -> bool:
    """Whether no live process has ``claim``ed ``folder``: it is safe to clean up or finish."""
    try:
        fd = os.open(folder / CLAIM, os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True
