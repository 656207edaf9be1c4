"""``/admin/collections/{name}/snapshots`` and ``/restore``: back up a collection, bring one back.

Taking and restoring are jobs (202 + ``Location``) with progress in bytes. A restore is checked
when it is asked for (the archive's format, model, every member's sha256, the name), so what it
would refuse is a 4xx at once, not a failed job later. Snapshots are kept under
``<home>/snapshots/<collection>/`` and outlive the collection they were taken of.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from core.disk import require_space
from core.errors import InputError
from index.manifest import MANIFEST, NAME_RE, check_name
from index.restore import inspect_snapshot
from index.snapshot import SNAPSHOT_NAME, SnapshotRefused, open_archive, read_header
from service.auth import AdminDep
from service.deps import CollectionsDep, EncoderDep, JobsDep, SettingsDep
from service.errors import APIError
from service.jobs.models import RestoreParams, SnapshotParams, new_job, new_job_id
from service.jobs.runner import JobRunner
from service.jobs.snapshots import folder_bytes
from service.routers.admin import JobResponse, idle, job_created, known
from service.settings import Settings
from service.uploads import json_body, receive_upload

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminDep])
ARCHIVE_TYPES = frozenset({"application/x-tar", "application/octet-stream"})


class SnapshotInfo(BaseModel):
    name: str = Field(description="The archive's file name; download it by this name.")
    collection: str
    version: int
    documents: int
    passages: int
    model_id: str
    created: str
    bytes: int


class SnapshotList(BaseModel):
    snapshots: list[SnapshotInfo]


class RestoreFrom(BaseModel):
    """Restore from a snapshot this server keeps (an archive upload is the other way)."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="The collection the snapshot was taken of.")
    snapshot: str = Field(description="The snapshot's name, as the snapshot list gives it.")
    overwrite: bool = Field(
        default=False, description="Replace the collection of that name, if there is one."
    )


def _folder(settings: Settings, collection: str) -> Path:
    if not NAME_RE.fullmatch(collection):
        raise APIError(404, f"no snapshots of {collection!r}")
    return settings.snapshots_dir / collection


def _archive(settings: Settings, collection: str, snapshot: str, param: str | None = None) -> Path:
    """A kept snapshot's path: 404 for a name that is not one (no path ever leaves the folder)."""
    path = _folder(settings, collection) / snapshot
    if not SNAPSHOT_NAME.fullmatch(snapshot) or not path.is_file():
        raise APIError(404, f"no snapshot {snapshot!r} of collection {collection!r}", param)
    return path


def _describe(path: Path) -> SnapshotInfo | None:
    try:
        with open_archive(path) as tar:
            header, _ = read_header(tar)
    except SnapshotRefused:
        return None  # a damaged archive is not listed as a snapshot
    return SnapshotInfo(
        name=path.name,
        collection=header.collection,
        version=header.version,
        documents=header.documents,
        passages=header.passages,
        model_id=header.model_id,
        created=header.created,
        bytes=path.stat().st_size,
    )


@router.post(
    "/collections/{name}/snapshots", status_code=202, response_model=JobResponse, operation_id="take_snapshot"
)
async def take_snapshot(
    name: str, response: Response, settings: SettingsDep, collections: CollectionsDep, jobs: JobsDep
) -> JobResponse:
    """Queue a snapshot of the collection at its current committed version (ingest may go on)."""
    known(collections, name)
    size = await anyio.to_thread.run_sync(folder_bytes, settings.collections_dir / name)
    require_space(settings.home, settings.min_free_bytes, "take this snapshot", need=2 * size)
    job = new_job("snapshot", SnapshotParams(snapshot_of=name), name)
    return job_created(await jobs.submit(job), response, jobs)


@router.get("/collections/{name}/snapshots", response_model=SnapshotList, operation_id="list_snapshots")
async def list_snapshots(name: str, settings: SettingsDep, collections: CollectionsDep) -> SnapshotList:
    """The snapshots kept of a collection, newest first; also of one deleted since."""
    folder = _folder(settings, name)
    if not folder.is_dir():
        known(collections, name)
        return SnapshotList(snapshots=[])

    def gather() -> list[SnapshotInfo]:
        found = (_describe(p) for p in folder.iterdir() if SNAPSHOT_NAME.fullmatch(p.name))
        return sorted((s for s in found if s is not None), key=lambda s: (s.created, s.name), reverse=True)

    return SnapshotList(snapshots=await anyio.to_thread.run_sync(gather))


@router.get(
    "/collections/{name}/snapshots/{snapshot}",
    response_class=FileResponse,
    responses={200: {"content": {"application/x-tar": {}}}},
)
async def download_snapshot(name: str, snapshot: str, settings: SettingsDep) -> FileResponse:
    return FileResponse(_archive(settings, name, snapshot), media_type="application/x-tar", filename=snapshot)


@router.delete("/collections/{name}/snapshots/{snapshot}", status_code=204, response_class=Response)
async def delete_snapshot(name: str, snapshot: str, settings: SettingsDep) -> Response:
    _archive(settings, name, snapshot).unlink(missing_ok=True)
    return Response(status_code=204)


_RESTORE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": RestoreFrom.model_json_schema()},
            "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post(
    "/collections/{name}/restore",
    status_code=202,
    response_model=JobResponse,
    openapi_extra=_RESTORE_BODY,
    operation_id="restore_collection",
)
async def restore(
    name: str,
    request: Request,
    response: Response,
    settings: SettingsDep,
    encoder: EncoderDep,
    jobs: JobsDep,
    overwrite: Annotated[bool, Query(description="Upload: replace the collection of that name.")] = False,
) -> JobResponse:
    """Queue a restore into collection ``name``: the body is an archive (application/x-tar), or
    JSON naming a snapshot this server keeps. Refused at once (4xx, naming why) for an archive
    that is not a snapshot, is damaged, is of a newer format or of another model, or for a name
    in use without ``overwrite``."""
    check_name(name)  # 400 naming the rule
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    upload = media != "application/json"
    if upload:
        if media not in ARCHIVE_TYPES:
            raise APIError(
                415, f"unsupported Content-Type {media or '(none)'!r}: send application/x-tar or JSON"
            )
        archive = await receive_upload(
            request, settings, f"{new_job_id()}.tar", "empty body: send the archive"
        )
        source = None
    else:
        body = await json_body(request, settings, RestoreFrom)
        archive, overwrite, source = (
            _archive(settings, body.source, body.snapshot, "snapshot"),
            body.overwrite,
            body.source,
        )
    try:
        await _check(archive, name, overwrite, (encoder.model_id, encoder.manifest.weights_sha256), jobs)
        params = RestoreParams(archive=str(archive), upload=upload, overwrite=overwrite, source=source)
        job = new_job("restore", params, name, bytes_total=archive.stat().st_size)
        return job_created(await jobs.submit(job), response, jobs)
    except BaseException:
        if upload:
            archive.unlink(missing_ok=True)  # a refused restore keeps no upload
        raise


async def _check(
    archive: Path, name: str, overwrite: bool, model: tuple[str, str | None], jobs: JobRunner
) -> None:
    """What the restore would refuse, refused now: a busy or taken name, then the archive itself."""
    idle(jobs, name)
    if not overwrite and (jobs.settings.collections_dir / name / MANIFEST).is_file():
        raise APIError(409, f"collection {name!r} already exists; restore with overwrite to replace it")
    try:
        await anyio.to_thread.run_sync(partial(inspect_snapshot, archive, *model))
    except InputError as exc:
        raise APIError(exc.status, str(exc)) from exc
