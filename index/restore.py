"""Bringing a snapshot back as a collection, all or nothing.

Every member is checked against the archive's sha256s, and the archive against the server (its
model, its format, the name asked for), before anything becomes visible. The collection is
unpacked into a hidden staging folder, opened and checked there (counts, version, the index
against the store), and only then renamed into place. A process killed at any point leaves a
hidden folder that the next start removes, or, when it was complete and only the rename was
left, finishes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from uuid import uuid4

from core.errors import InputError
from core.files import CLAIM, abandoned, claim
from index.checkpoint import fsync_dir
from index.collection import Collection
from index.manifest import MANIFEST, CollectionExists, DamagedCollection, check_name, read_manifest
from index.snapshot import (
    CHUNK,
    Progress,
    SnapshotManifest,
    SnapshotModelMismatch,
    SnapshotRefused,
    open_archive,
    read_header,
)
from index.store import DOCS

log = logging.getLogger(__name__)
READY_MARK = ".restored"  # in a staging folder: complete and checked, only the rename is left
STAGING_PREFIXES = (".restoring-", ".creating-", ".deleted-")


def _check_model(header: SnapshotManifest, model_id: str, model_sha256: str | None) -> None:
    same_sha = None in (header.model_sha256, model_sha256) or header.model_sha256 == model_sha256
    if header.model_id != model_id or not same_sha:
        raise SnapshotModelMismatch(
            f"the snapshot holds vectors of model {header.model_id}; this server embeds with {model_id} "
            "(restore it on a server with that model, or re-index the documents)"
        )


def _verified(
    tar: tarfile.TarFile,
    header: SnapshotManifest,
    members: dict[str, tarfile.TarInfo],
    sink: Callable[[str], IO[bytes] | None],
    progress: Progress | None,
    check: Callable[[], None] | None = None,
) -> None:
    """Stream every member, checking it against its sha256, into ``sink(name)`` (None: read only)."""
    for member in header.members:
        if check is not None:
            check()
        digest = hashlib.sha256()
        source = tar.extractfile(members[member.name])
        if source is None:
            raise SnapshotRefused(f"the snapshot is damaged: member {member.name} cannot be read")
        out = sink(member.name)
        try:
            while block := source.read(CHUNK):
                digest.update(block)
                if out is not None:
                    out.write(block)
                if progress is not None:
                    progress(len(block))
        except (tarfile.TarError, EOFError):
            raise SnapshotRefused(f"the snapshot is damaged: member {member.name} is cut short") from None
        finally:
            if out is not None:
                out.close()
        if digest.hexdigest() != member.sha256:
            raise SnapshotRefused(f"the snapshot is damaged: member {member.name} does not match its sha256")


def inspect_snapshot(
    path: Path, model_id: str, model_sha256: str | None = None, progress: Progress | None = None
) -> SnapshotManifest:
    """The archive's header once every member matches its sha256 and the model is the server's."""
    with open_archive(path) as tar:
        header, members = read_header(tar)
        _check_model(header, model_id, model_sha256)
        _verified(tar, header, members, lambda _: None, progress)
    return header


def restore_snapshot(
    path: Path,
    home_dir: Path,
    name: str,
    model_id: str,
    overwrite: bool = False,
    progress: Progress | None = None,
    check: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Restore the archive at ``path`` as collection ``name``; returns the restored collection's stats.

    The restored collection is a new one (a new identity) that holds the snapshot's documents,
    passages, vectors and lexical index at the snapshot's version. ``overwrite`` replaces a
    collection of that name; without it, a name in use is refused.
    """
    home_dir = Path(home_dir)
    check_name(name)
    if (home_dir / name / MANIFEST).is_file() and not overwrite:
        raise CollectionExists(f"collection {name!r} already exists; restore with overwrite to replace it")
    staging = home_dir / f".restoring-{uuid4().hex}"
    staging.mkdir(parents=True)
    held = claim(staging)  # a start meanwhile (another process) leaves it alone
    try:
        header = _unpack(path, staging, model_id, progress, check)
        stats = _checked(staging, name, header)
        (staging / READY_MARK).write_text(name, encoding="utf-8")
        fsync_dir(staging)
        if check is not None:
            check()
        _place(staging, home_dir / name, overwrite)
    finally:
        os.close(held)
        shutil.rmtree(staging, ignore_errors=True)
    return stats


def _unpack(
    path: Path, staging: Path, model_id: str, progress: Progress | None, check: Callable[[], None] | None
) -> SnapshotManifest:
    with open_archive(path) as tar:
        header, members = read_header(tar)
        _check_model(header, model_id, None)
        files = {"collection.json": MANIFEST, DOCS: DOCS, "index.faiss": f"index.{header.version}.faiss"}
        _verified(tar, header, members, lambda name: (staging / files[name]).open("wb"), progress, check)
    return header


def _checked(staging: Path, name: str, header: SnapshotManifest) -> dict[str, Any]:
    """Rename the staged collection to ``name`` (a new identity), open it, and check it holds what
    the header says; the open itself checks the index against the store."""
    manifest = read_manifest(staging, header.collection)
    manifest.name, manifest.uuid = name, uuid4().hex
    (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    try:
        with Collection(staging, manifest, readonly=False) as coll:
            stats = dict(coll.stats())
    except DamagedCollection as exc:
        raise SnapshotRefused(f"the snapshot is damaged: {exc.what}") from None
    found = (stats["version"], stats["count"], stats["passages"])
    if found != (header.version, header.documents, header.passages):
        raise SnapshotRefused(
            f"the snapshot is damaged: it holds version {found[0]} with {found[1]} documents and {found[2]} "
            f"passages, its manifest says version {header.version}, {header.documents} and {header.passages}"
        )
    return stats


def _place(staging: Path, target: Path, overwrite: bool) -> None:
    """Rename the checked collection into place (over an existing one only with ``overwrite``)."""
    old: Path | None = None
    if target.exists():
        if not overwrite:
            raise CollectionExists(f"collection {target.name!r} already exists; restore with overwrite")
        old = target.with_name(f".deleted-{target.name}-{uuid4().hex}")
        target.rename(old)
    try:
        staging.rename(target)
    except OSError:
        if old is not None and not target.exists():
            old.rename(target)  # put the replaced collection back
        raise CollectionExists(f"collection {target.name!r} was created meanwhile") from None
    (target / READY_MARK).unlink(missing_ok=True)
    (target / CLAIM).unlink(missing_ok=True)
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def finish_interrupted(home_dir: Path) -> list[str]:
    """At start: remove what a killed create, delete or restore left, and finish a restore that
    was complete and checked when it was killed. Returns the collections restored here."""
    home_dir = Path(home_dir)
    if not home_dir.is_dir():
        return []
    finished = []
    for folder in sorted(home_dir.iterdir()):
        if not folder.is_dir() or not folder.name.startswith(STAGING_PREFIXES) or not abandoned(folder):
            continue
        mark = folder / READY_MARK
        name = mark.read_text(encoding="utf-8").strip() if mark.is_file() else ""
        try:
            if name and not (home_dir / check_name(name)).exists():
                _place(folder, home_dir / name, overwrite=False)
                finished.append(name)
                log.info("finished restoring collection %s", name)
                continue
        except (InputError, OSError) as exc:
            log.warning("could not finish the restore in %s: %s", folder.name, exc)
        shutil.rmtree(folder, ignore_errors=True)
    for leftover in (*home_dir.glob(f"*/{READY_MARK}"), *home_dir.glob(f"*/{CLAIM}")):
        if not leftover.parent.name.startswith("."):
            leftover.unlink(missing_ok=True)
    return finished
