"""The snapshot and restore jobs: a collection into an archive, an archive back into a collection.

Both run on the local worker with progress in bytes. A snapshot reads while ingest and search go
on; a restore holds the collection it writes, like an ingest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.disk import require_space
from core.errors import InputError
from index.restore import restore_snapshot
from index.snapshot import take_snapshot
from service.jobs.models import JobProgress, RestoreParams, SnapshotParams
from service.jobs.running import RunningJob, fraction
from service.settings import Settings


def folder_bytes(folder: Path) -> int:
    """What a collection's files take on disk (the room a snapshot of it needs, about)."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) if folder.is_dir() else 0


class _Bytes:
    """Progress in bytes, saved at most twice a second (the stop check is the job's own ``check``)."""

    def __init__(self, run: RunningJob, total: int) -> None:
        self.run, self.total, self.done = run, total, 0
        with run.lock:
            run.job.progress = JobProgress(bytes_total=total)
        run.save()

    def __call__(self, n: int) -> None:
        self.done += n
        with self.run.lock:
            self.run.job.progress.bytes_done = min(self.done, self.total)
            self.run.job.progress.fraction = fraction(self.done, self.total)
        self.run.save_soon()

    def finish(self) -> None:
        with self.run.lock:
            self.run.job.progress.bytes_done = self.total
            self.run.job.progress.fraction = 1.0


def run_snapshot(
    run: RunningJob, params: SnapshotParams, settings: Settings, model_sha256: str | None
) -> dict[str, Any]:
    name = params.snapshot_of
    folder = settings.collections_dir / name
    if not (folder / "manifest.json").is_file():
        raise InputError(f"collection {name!r} was deleted after this snapshot was asked for")
    size = folder_bytes(folder)
    require_space(settings.home, settings.min_free_bytes, "take this snapshot", need=2 * size)
    progress = _Bytes(run, 3 * size)  # the copy's hash and its archive, about
    path, header = take_snapshot(
        settings.collections_dir, name, settings.snapshots_dir / name, model_sha256, progress, run.check
    )
    progress.finish()
    return {
        "snapshot": path.name,
        "download": f"/admin/collections/{name}/snapshots/{path.name}",
        "bytes": path.stat().st_size,
        "version": header.version,
        "documents": header.documents,
        "passages": header.passages,
    }


def run_restore(run: RunningJob, params: RestoreParams, settings: Settings, model_id: str) -> dict[str, Any]:
    name = run.job.collection
    archive = Path(params.archive)
    if name is None:
        raise InputError("restore job without a collection")
    if not archive.is_file():
        raise InputError("the archive to restore is gone: it was removed after the job was submitted")
    size = archive.stat().st_size
    require_space(settings.home, settings.min_free_bytes, "restore this snapshot", need=size)
    progress = _Bytes(run, size)
    stats = restore_snapshot(
        archive, settings.collections_dir, name, model_id, params.overwrite, progress, run.check
    )
    progress.finish()
    with run.lock:
        run.job.counts.documents = int(stats["count"])
    return {
        "collection": name,
        "documents": stats["count"],
        "passages": stats["passages"],
        "version": stats["version"],
        "restored_from": params.source,
    }
