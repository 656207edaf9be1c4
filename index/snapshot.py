"""Collection snapshots: one archive that brings a collection back, here or on another machine.

A copy of a collection's folder taken while the server writes is not safe, and a FAISS file put
beside another database's rows corrupts silently. A snapshot is taken at one committed version
while ingest and search go on: SQLite's online backup API copies the database (lexical index
included) in one step, the vector index is brought to exactly that copy's version in a staging
folder, and the archive is written aside and renamed into place, so a snapshot that looks
complete is complete. Its manifest names the collection, the model, the counts, the version and
a sha256 of every member, so a restore can refuse what does not fit before it touches anything.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO
from uuid import uuid4

from pydantic import BaseModel, Field, ValidationError

from core.clock import now_iso
from core.errors import Conflict, InputError
from core.files import abandoned, claim, file_sha256
from index.checkpoint import checkpoints, fsync_dir
from index.collection import Collection
from index.manifest import MANIFEST, CollectionManifest, check_name, read_manifest
from index.store import DOCS

FORMAT = "dapsearch-collection-snapshot"
FORMAT_VERSION = 1
SUFFIX = ".snapshot.tar"
HEADER = "snapshot.json"
MEMBERS = ("collection.json", DOCS, "index.faiss")  # the archive's members after its header
SNAPSHOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}-v\d{1,19}-\d{8}T\d{6}Z\.snapshot\.tar")
CHUNK = 1 << 20

Progress = Callable[[int], None]  # bytes handled since the last call


class SnapshotMember(BaseModel):
    name: str
    bytes: int = Field(ge=0)
    sha256: str


class SnapshotManifest(BaseModel):
    """The archive's header: what it holds, checked by a restore before anything is written."""

    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    collection: str
    identity: str = Field(description="The snapshotted collection's identity (unique per creation).")
    model_id: str
    model_sha256: str | None = Field(default=None, description="The whole sha256 of the model's weights.")
    dim: int
    index_factory: str
    version: int = Field(description="The committed version the snapshot holds.")
    documents: int
    passages: int
    created: str
    members: list[SnapshotMember]


class SnapshotRefused(InputError):
    """An archive a restore will not use (400): not a snapshot, damaged, or of a newer format."""


class SnapshotModelMismatch(Conflict):
    """A snapshot of vectors from another model than the server's (409)."""


def snapshot_name(collection: str, version: int) -> str:
    stamp = now_iso().replace("-", "").replace(":", "")[:15] + "Z"
    return f"{collection}-v{version}-{stamp}{SUFFIX}"


def _copy_database(source: Path, target: Path) -> None:
    """SQLite's online backup in one step: one consistent version, with writers going on (WAL)."""
    src = sqlite3.connect(source, timeout=30)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst, pages=-1)
    finally:
        dst.close()
        src.close()


def _stage(home_dir: Path, name: str, staging: Path) -> tuple[CollectionManifest, dict[str, int]]:
    """A copy of the collection at one committed version in ``staging``, its index checkpointed
    at exactly that version. Returns its manifest and counts."""
    root = home_dir / check_name(name)
    manifest = read_manifest(root, name)
    _copy_database(root / DOCS, staging / DOCS)
    (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    for _, path in reversed(checkpoints(root)):  # the newest the copy can replay from
        try:
            shutil.copyfile(path, staging / path.name)
            break
        except FileNotFoundError:  # replaced by a newer checkpoint meanwhile: try the next
            continue
    with Collection(staging, manifest, readonly=False) as copy:
        copy.checkpoint()  # replays to the copy's version, checks, writes index.<version>.faiss
        stats = copy.stats()
        counts = {"version": int(stats["version"]), "documents": int(stats["count"])}
        counts["passages"] = int(stats["passages"])
    for _, older in checkpoints(staging)[:-1]:
        older.unlink()
    return read_manifest(staging, name), counts


def take_snapshot(
    home_dir: Path,
    name: str,
    out_dir: Path,
    model_sha256: str | None = None,
    progress: Progress | None = None,
    check: Callable[[], None] | None = None,
) -> tuple[Path, SnapshotManifest]:
    """Write a snapshot of collection ``name`` into ``out_dir``; returns its path and header.

    ``check`` is called between the steps (it raises to stop: a cancel, a full disk).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / f".taking-{uuid4().hex}"
    staging.mkdir()
    held = claim(staging)
    try:
        manifest, counts = _stage(Path(home_dir), name, staging)
        if check is not None:
            check()
        [(_, index_file)] = checkpoints(staging)
        files = {"collection.json": staging / MANIFEST, DOCS: staging / DOCS, "index.faiss": index_file}
        members = [
            SnapshotMember(name=member, bytes=path.stat().st_size, sha256=file_sha256(path, progress))
            for member, path in files.items()
        ]
        header = SnapshotManifest(
            collection=name,
            identity=manifest.identity,
            model_id=manifest.model_id,
            model_sha256=model_sha256,
            dim=manifest.dim,
            index_factory=manifest.index_factory,
            created=now_iso(),
            members=members,
            **counts,
        )
        if check is not None:
            check()
        target = out_dir / snapshot_name(name, header.version)
        _write_archive(target, staging.name, header, files, progress)
        return target, header
    finally:
        os.close(held)
        shutil.rmtree(staging, ignore_errors=True)


def _write_archive(
    target: Path, owner: str, header: SnapshotManifest, files: dict[str, Path], progress: Progress | None
) -> None:
    """The tar, written aside, fsynced and renamed: a killed snapshot leaves only a hidden temp
    file, named after its staging folder ``owner`` so a later clean-up knows whose it is."""
    tmp = target.with_name(f"{owner}.{target.name}.tmp")
    try:
        with tmp.open("wb") as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                data = header.model_dump_json(indent=2).encode("utf-8")
                info = tarfile.TarInfo(HEADER)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, _BytesReader(data))
                for member, path in files.items():
                    info = tar.gettarinfo(str(path), arcname=member)
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    with path.open("rb") as fh:
                        tar.addfile(info, _Counting(fh, progress))
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data, self._at = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._at + size
        out, self._at = self._data[self._at : end], min(end, len(self._data))
        return out


class _Counting:
    """A file read into the archive, counted for progress."""

    def __init__(self, fh: IO[bytes], progress: Progress | None) -> None:
        self._fh, self._progress = fh, progress

    def read(self, size: int = -1) -> bytes:
        block = self._fh.read(size)
        if self._progress is not None and block:
            self._progress(len(block))
        return block


def open_archive(path: Path) -> tarfile.TarFile:
    """A snapshot archive opened for reading; SnapshotRefused if it is no tar at all."""
    try:
        return tarfile.open(path, mode="r:")
    except (tarfile.TarError, OSError, EOFError):
        raise SnapshotRefused("not a dapsearch snapshot: the file is not a tar archive") from None


def read_header(tar: tarfile.TarFile) -> tuple[SnapshotManifest, dict[str, tarfile.TarInfo]]:
    """The archive's header and its members, refused unless they are exactly what it declares."""
    try:
        entries = tar.getmembers()
    except (tarfile.TarError, EOFError):
        raise SnapshotRefused("the snapshot is damaged: the archive is cut short") from None
    if not entries or entries[0].name != HEADER or not entries[0].isfile():
        raise SnapshotRefused(f"not a dapsearch snapshot: the archive does not start with {HEADER}")
    raw = tar.extractfile(entries[0])
    try:
        data = raw.read(1 << 20) if raw is not None else b""
        probe = SnapshotManifest.model_validate_json(data) if b'"format_version"' in data else None
    except ValidationError:
        probe = None
    if probe is None:
        raise SnapshotRefused(f"not a dapsearch snapshot: {HEADER} is not a snapshot manifest")
    if probe.format != FORMAT:
        raise SnapshotRefused(f"not a dapsearch snapshot (format {probe.format[:60]!r})")
    if probe.format_version > FORMAT_VERSION:
        raise SnapshotRefused(
            f"the snapshot has format version {probe.format_version}, newer than this dapsearch reads "
            f"({FORMAT_VERSION}); restore it with a newer dapsearch"
        )
    members = {e.name: e for e in entries[1:]}
    declared = {m.name: m for m in probe.members}
    if set(members) != set(MEMBERS) or set(declared) != set(MEMBERS) or len(entries) != len(MEMBERS) + 1:
        raise SnapshotRefused(f"the snapshot is damaged: it must hold exactly {', '.join(MEMBERS)}")
    for name, entry in members.items():
        if not entry.isfile() or entry.size != declared[name].bytes:
            raise SnapshotRefused(
                f"the snapshot is damaged: member {name} is not the file its manifest lists"
            )
    return probe, members


def clean_snapshots(snapshots_dir: Path) -> None:
    """At start: remove what killed snapshots left (staging folders, temp archives) in every
    collection's snapshot folder, except what a live process is still writing."""
    if not snapshots_dir.is_dir():
        return
    for folder in snapshots_dir.iterdir():
        if not folder.is_dir():
            continue
        for staging in folder.glob(".taking-*"):
            if staging.is_dir() and abandoned(staging):
                shutil.rmtree(staging, ignore_errors=True)
        for tmp in folder.glob(".taking-*.tmp"):
            owner = folder / ("." + tmp.name.split(".")[1])  # its staging folder, gone once abandoned
            if not owner.is_dir():
                tmp.unlink(missing_ok=True)
