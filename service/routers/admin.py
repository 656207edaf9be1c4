"""``/admin``: collections, bulk ingest and mining jobs, behind bearer keys.

Long work (embedding a file, mining two collections) never runs in a request: it becomes a job
(202 + ``Location``) that the JobRunner runs on its worker thread and that survives restarts.
Uploads are streamed to disk chunk by chunk, so a multi-gigabyte body never sits in memory.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from core.disk import require_space
from core.errors import InputError
from index.cluster import Engine, probe, ray_module
from index.index_choice import INDEX_PATTERN
from index.ingest import Format, detect_format
from index.manifest import (
    NAME_RE,
    CollectionExists,
    DamagedCollection,
    ModelMismatch,
    UnknownCollection,
    check_name,
)
from service.auth import AdminDep
from service.collections import Collections
from service.deps import CollectionsDep, EncoderDep, JobsDep, SettingsDep
from service.errors import APIError
from service.jobs.models import IngestParams, Job, JobState, MineParams, new_job_id
from service.jobs.runner import JobRunner
from service.settings import Settings
from service.uploads import json_body, receive_upload

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminDep])

# Upload media types and the ingest format each one means.
UPLOAD_TYPES: dict[str, Format] = {
    "application/x-ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/jsonlines": "jsonl",
    "text/tab-separated-values": "tsv",
}
# Generic types accepted when ``?format=`` says what the bytes are.
GENERIC_TYPES = frozenset({"", "application/octet-stream", "text/plain"})
MAX_CHUNK = 100_000
SUBMIT_PROBE_S = 3.0  # a Ray job's submission waits this long at most to reach the cluster


class CreateCollection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="1-64 letters, digits, '_', '-' or '.', starting with a letter or digit.",
        # Published for clients and schema-driven tools; the handler still checks it (fullmatch: a
        # final newline fails) and answers 400 naming the rule, as the CLI and the index do.
        json_schema_extra={"pattern": f"^{NAME_RE.pattern}$"},
    )
    index: str = Field(
        default="auto",
        description="auto, Flat, HNSW<M> or IVF<n>,<codec>.",
        json_schema_extra={"pattern": INDEX_PATTERN},
    )
    lexical: bool = Field(
        default=True, description="Keep a lexical (BM25) index of the passages: lexical and hybrid search."
    )


class CollectionList(BaseModel):
    collections: list[dict[str, Any]]


class IngestPath(BaseModel):
    """Ingest a file already on the server (inside the data directory)."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, description="Relative to the data directory, or absolute inside it.")
    format: Format | None = Field(default=None, description="jsonl or tsv; default from the file suffix.")
    strict: bool = Field(
        default=False, description="Fail at the first malformed line instead of skipping it."
    )
    chunk_size: int = Field(default=256, ge=1, le=MAX_CHUNK, description="Documents per committed chunk.")
    engine: Engine = Field(
        default="local",
        description="local, or ray: embedded by actors on the Ray cluster (DAPSEARCH_RAY_ADDRESS).",
    )


class JobResponse(BaseModel):
    job: Job


class JobList(BaseModel):
    jobs: list[Job]


async def _engine(engine: Engine, settings: Settings) -> None:
    """A Ray job on a server without Ray, or with a cluster address that answers nothing, is
    refused at submission, not failed (or left waiting) later."""
    if engine != "ray":
        return
    try:
        ray_module()
    except InputError as exc:
        raise APIError(400, f"{exc} on the server", "engine") from None
    check = partial(probe, settings.ray_address, min(SUBMIT_PROBE_S, settings.ray_connect_timeout_s))
    try:
        await anyio.to_thread.run_sync(check)
    except InputError as exc:
        raise APIError(exc.status, str(exc), "engine") from None


def _error(exc: InputError, param: str | None = None) -> APIError:
    """A domain error (its own status) naming the request field it is about."""
    return APIError(exc.status, str(exc), param or exc.param, headers=exc.headers())


def known(collections: Collections, name: str, param: str | None = None) -> None:
    """404 for a name that is no collection (invalid names included)."""
    if not NAME_RE.fullmatch(name) or not collections.exists(name):
        raise APIError(404, f"unknown collection {name!r}", param)


async def _stats(collections: Collections, name: str, param: str | None = None) -> dict[str, Any]:
    try:
        return await anyio.to_thread.run_sync(collections.stats, name)
    except InputError as exc:
        raise _error(exc, param) from exc


def idle(jobs: JobRunner, name: str) -> None:
    """409 while a job reads or writes the collection (deleting or replacing it would pull it away)."""
    active = jobs.active_for(name)
    if active:
        raise APIError(409, f"collection {name!r} has queued or running jobs: {', '.join(active)}")


def job_created(job: Job, response: Response, jobs: JobRunner) -> JobResponse:
    response.headers["Location"] = f"/admin/jobs/{job.id}"
    return JobResponse(job=jobs.public(job))


# ---------------------------------------------------------------------- collections


@router.get("/collections", response_model=CollectionList)
async def list_collections(collections: CollectionsDep) -> CollectionList:
    """Every collection with its stats; one made with another model is listed as not compatible,
    a damaged one with ``damaged`` and what is wrong."""

    def gather() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for name in collections.names():
            try:
                out.append({**collections.stats(name), "compatible": True})
            except ModelMismatch as exc:
                out.append({"name": name, "compatible": False, "error": str(exc)})
            except UnknownCollection:
                continue  # deleted meanwhile
            except DamagedCollection as exc:  # one damaged collection never hides the others
                out.append({"name": name, "compatible": True, "damaged": True, "error": str(exc)})
        return out

    return CollectionList(collections=await anyio.to_thread.run_sync(gather))


# OpenAPI links: what a client (and a stateful fuzzer) can do next with a new collection, beyond
# the path-parameter links tools infer: search it, mine it (the name goes in the body), snapshot it.
_CREATED_LINKS = {
    "SearchCollection": {
        "operationId": "search",
        "requestBody": {"collection": "$response.body#/name", "query": "what is in it?", "k": 3},
        "description": "Search the new collection.",
    },
    "MineCollection": {
        "operationId": "start_mining_job",
        "requestBody": {"source": "$response.body#/name", "target": "$response.body#/name"},
        "description": "Mine the collection against itself (an admin job).",
    },
    "SnapshotCollection": {
        "operationId": "take_snapshot",
        "parameters": {"path.name": "$response.body#/name"},
        "description": "Take a snapshot of the new collection (an admin job).",
    },
    "ListSnapshots": {
        "operationId": "list_snapshots",
        "parameters": {"path.name": "$response.body#/name"},
        "description": "The snapshots kept of the collection.",
    },
}


@router.post("/collections", status_code=201, responses={201: {"links": _CREATED_LINKS}})
async def create_collection(
    body: CreateCollection, collections: CollectionsDep, encoder: EncoderDep, settings: SettingsDep
) -> dict[str, Any]:
    check_name(body.name, "name")  # 400 naming the rule and the field
    require_space(settings.home, settings.min_free_bytes, "create a collection")
    try:
        create = partial(
            collections.create, body.name, encoder.dim, body.index, settings.passage_options(), body.lexical
        )
        return await anyio.to_thread.run_sync(create)
    except CollectionExists as exc:
        raise APIError(409, str(exc), "name") from exc
    except InputError as exc:  # a bad index string (400), or a name deleted as it was made (409)
        raise APIError(exc.status, str(exc), "index" if exc.status == 400 else "name") from exc


@router.get("/collections/{name}")
async def get_collection(name: str, collections: CollectionsDep) -> dict[str, Any]:
    known(collections, name)
    return await _stats(collections, name)


@router.delete("/collections/{name}", status_code=204, response_class=Response)
async def delete_collection(name: str, collections: CollectionsDep, jobs: JobsDep) -> Response:
    known(collections, name)
    idle(jobs, name)
    try:
        await anyio.to_thread.run_sync(collections.delete, name)
    except InputError as exc:
        raise _error(exc) from exc
    return Response(status_code=204)


# ---------------------------------------------------------------------- ingest


_DOCUMENTS_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": IngestPath.model_json_schema()},
            "application/x-ndjson": {"schema": {"type": "string", "format": "binary"}},
            "application/jsonl": {"schema": {"type": "string", "format": "binary"}},
            "text/tab-separated-values": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post(
    "/collections/{name}/documents",
    status_code=202,
    response_model=JobResponse,
    openapi_extra=_DOCUMENTS_BODY,
)
async def add_documents(
    name: str,
    request: Request,
    response: Response,
    settings: SettingsDep,
    collections: CollectionsDep,
    jobs: JobsDep,
    fmt: Annotated[Format | None, Query(alias="format", description="Upload format (jsonl or tsv).")] = None,
    strict: Annotated[bool, Query(description="Fail at the first malformed line.")] = False,
    chunk_size: Annotated[int, Query(ge=1, le=MAX_CHUNK, description="Documents per committed chunk.")] = 256,
    engine: Annotated[
        Engine, Query(description="local, or ray: embedded on the Ray cluster (DAPSEARCH_RAY_ADDRESS).")
    ] = "local",
) -> JobResponse:
    """Queue an ingest job: the request body is the file (JSONL/TSV), or JSON naming a server-side file."""
    known(collections, name)
    await _engine(engine, settings)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "application/json":
        job = await _path_job(name, request, settings, jobs)
    else:
        upload_fmt = _upload_format(media, fmt)
        job = await _upload_job(name, request, settings, jobs, upload_fmt, strict, chunk_size, engine)
    try:
        return job_created(await jobs.submit(job), response, jobs)
    except BaseException:
        if isinstance(job.params, IngestParams) and job.params.upload:
            Path(job.params.path).unlink(missing_ok=True)  # a refused job leaves no upload behind
        raise


def _upload_format(media: str, fmt: Format | None) -> Format:
    if media in UPLOAD_TYPES:
        implied = UPLOAD_TYPES[media]
        if fmt is not None and fmt != implied:
            raise APIError(400, f"format={fmt} contradicts Content-Type {media}", "format")
        return implied
    if media in GENERIC_TYPES and fmt is not None:
        return fmt
    raise APIError(
        415,
        f"unsupported Content-Type {media or '(none)'!r}: send application/x-ndjson, application/jsonl or "
        "text/tab-separated-values (or ?format= with application/octet-stream), or application/json "
        "naming a server-side file",
        type_="unsupported_media_type",
    )


async def _upload_job(
    name: str,
    request: Request,
    settings: SettingsDep,
    jobs: JobRunner,
    fmt: Format,
    strict: bool,
    chunk_size: int,
    engine: Engine,
) -> Job:
    """The body streamed to ``<home>/uploads/<job id>.<fmt>`` (service.uploads), as an ingest job."""
    job_id = new_job_id()
    final = await receive_upload(
        request, settings, f"{job_id}.{fmt}", "empty body: send the documents as JSONL or TSV"
    )
    return jobs.ingest_job(
        job_id, name, final, fmt, upload=True, strict=strict, chunk_size=chunk_size, engine=engine
    )


async def _path_job(name: str, request: Request, settings: SettingsDep, jobs: JobRunner) -> Job:
    """A job reading a file that must resolve (symlinks followed) inside the data directory."""
    body = await json_body(request, settings, IngestPath)
    data_dir = settings.resolved_data_dir.resolve()
    given = Path(body.path)
    try:
        resolved = (given if given.is_absolute() else data_dir / given).resolve()
        if not settings.in_data_dir(resolved):
            raise APIError(403, "path outside the data directory", "path")
        if not resolved.is_file():
            raise APIError(404, f"file not found: {body.path}", "path")
    except (OSError, RuntimeError, ValueError) as exc:  # too long, a loop, a NUL byte...
        reason = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else "not a usable path"
        raise APIError(400, f"invalid path {body.path[:200]!r}: {reason.lower()}", "path") from exc
    try:
        fmt = detect_format(resolved, body.format)
    except InputError as exc:
        raise APIError(400, str(exc).replace("--format", "format"), "format") from exc
    await _engine(body.engine, settings)
    return jobs.ingest_job(
        new_job_id(),
        name,
        resolved,
        fmt,
        upload=False,
        strict=body.strict,
        chunk_size=body.chunk_size,
        engine=body.engine,
    )


# ---------------------------------------------------------------------- mining


@router.post("/mine", status_code=202, response_model=JobResponse, operation_id="start_mining_job")
async def mine_job(
    body: MineParams, response: Response, collections: CollectionsDep, jobs: JobsDep, settings: SettingsDep
) -> JobResponse:
    """Queue bitext mining between two collections' stored vectors; pairs come as a TSV file."""
    await _engine(body.engine, settings)
    for param, name in (("source", body.source), ("target", body.target)):
        known(collections, name, param)
        await _stats(collections, name, param)  # 409 when made with another model
    job = jobs.mine_job(body)
    return job_created(await jobs.submit(job), response, jobs)


# ---------------------------------------------------------------------- jobs


@router.get("/jobs", response_model=JobList)
async def list_jobs(jobs: JobsDep, state: Annotated[JobState | None, Query()] = None) -> JobList:
    return JobList(jobs=[jobs.public(job) for job in jobs.list_jobs(state)])


def _get(jobs: JobRunner, job_id: str) -> Job:
    return jobs.get(job_id)  # JobNotFound is a 404


@router.get("/jobs/{job_id}", response_model=JobResponse)
async def get_job(job_id: str, jobs: JobsDep) -> JobResponse:
    return JobResponse(job=jobs.public(_get(jobs, job_id)))


@router.post("/jobs/{job_id}/cancel", response_model=JobResponse)
async def cancel_job(job_id: str, jobs: JobsDep) -> JobResponse:
    """A queued job is cancelled at once; a running one stops after its current chunk."""
    try:
        return JobResponse(job=jobs.public(await jobs.cancel(job_id)))
    except InputError as exc:
        raise _error(exc) from exc


@router.get(
    "/jobs/{job_id}/pairs",
    response_class=FileResponse,
    responses={200: {"content": {"text/tab-separated-values": {}}}},
)
async def job_pairs(job_id: str, jobs: JobsDep) -> FileResponse:
    """score, source id, target id, source text, target text; one pair a line, best first."""
    job = _get(jobs, job_id)
    if job.type != "mine":
        raise APIError(404, f"job {job_id} is an {job.type} job: it has no pairs")
    if job.state != "succeeded":
        raise APIError(409, f"job {job_id} is {job.state}: pairs exist once it has succeeded")
    path = jobs.pairs_path(job_id)
    if not path.is_file():
        raise APIError(404, f"the pairs file of job {job_id} is gone")
    return FileResponse(
        path, media_type="text/tab-separated-values; charset=utf-8", filename=f"{job_id}.pairs.tsv"
    )
