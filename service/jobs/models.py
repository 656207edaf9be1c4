"""What a job is, as stored and as the API returns it: its parameters, state, progress and counts."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from core.clock import now_iso
from core.errors import Conflict, InputError, NotFound
from index.cluster import Engine
from index.ingest import Format
from index.mining import Score, Strategy

JobType = Literal["ingest", "mine", "snapshot", "restore"]
Lane = Literal["local", "ray", "snapshot"]
LANES: tuple[Lane, ...] = get_args(Lane)
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
STATES: tuple[JobState, ...] = get_args(JobState)
ACTIVE: frozenset[JobState] = frozenset({"queued", "running"})
FINISHED: frozenset[JobState] = frozenset({"succeeded", "failed", "cancelled"})
MAX_JOB_ERRORS = 100  # malformed lines kept in a job record; the count covers all of them


class IngestParams(BaseModel):
    """What an ingest job reads; ``start_*`` is the committed position when it first ran."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="The file read: an upload under <home>/uploads or a file in the data dir.")
    upload: bool = Field(description="The file is an upload owned by the job (deleted once it finishes).")
    format: Format
    strict: bool = False
    chunk_size: int = Field(default=256, ge=1)
    engine: Engine = Field(default="local", description="local (the server) or ray (DAPSEARCH_RAY_ADDRESS).")
    start_offset: int | None = Field(
        default=None, description="Resume bookkeeping: byte offset at first run."
    )
    start_line: int | None = Field(default=None, description="Resume bookkeeping: line number at first run.")
    start_documents: int = Field(default=0, description="Resume bookkeeping: source documents at first run.")
    start_errors: int = Field(
        default=0, description="Resume bookkeeping: source malformed lines at first run."
    )
    collection_identity: str | None = Field(
        default=None, description="The collection the job was submitted for (not one re-created since)."
    )


class MineParams(BaseModel):
    """A mining job between two collections: the body of ``POST /admin/mine`` and what is stored."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="The collection whose documents are the source side.")
    target: str = Field(description="The collection whose documents are the target side.")
    k: int = Field(default=4, ge=1, le=1000)
    score: Score = "ratio"
    strategy: Strategy = "max"
    threshold: float | None = Field(default=None, allow_inf_nan=False)
    engine: Engine = Field(
        default="local",
        description="local, or ray: the neighbour search on the Ray cluster (DAPSEARCH_RAY_ADDRESS).",
    )


class SnapshotParams(BaseModel):
    """A snapshot job: the collection is the job's ``collection``."""

    model_config = ConfigDict(extra="forbid")

    snapshot_of: str = Field(description="The collection the snapshot is taken of.")


class RestoreParams(BaseModel):
    """A restore job: an archive (an upload, or a snapshot kept by this server) into the job's
    ``collection``."""

    model_config = ConfigDict(extra="forbid")

    archive: str = Field(description="The archive read: an upload under <home>/uploads or a kept snapshot.")
    upload: bool = Field(description="The archive is an upload owned by the job (deleted once it finishes).")
    overwrite: bool = Field(default=False, description="Replace a collection of that name.")
    source: str | None = Field(default=None, description="The collection the archive was taken of.")


class ShardProgress(BaseModel):
    """An ingest on Ray: its shards (byte ranges of the file), as they are embedded and committed."""

    total: int = Field(description="Shards from where the job resumed to the end of the file.")
    embedded: int = 0
    reused: int = Field(default=0, description="Found written by an earlier run: not embedded again.")
    merged: int = Field(default=0, description="Committed to the collection, in file order.")
    retried: int = Field(default=0, description="Given to another actor after a worker was lost.")
    embed_seconds: float = Field(default=0.0, description="The actors' time on the shards embedded, summed.")


class JobProgress(BaseModel):
    docs: int = Field(default=0, description="Documents committed (ingest) or source rows searched (mine).")
    bytes_done: int = 0
    bytes_total: int | None = None
    fraction: float = 0.0
    shards: ShardProgress | None = Field(default=None, description="Ingest on Ray only.")
    passages: int = Field(
        default=0,
        description="Ingest: passages committed by this run of the job (long documents have several).",
    )


class JobCounts(BaseModel):
    documents: int = 0
    errors: int = 0


class JobLineError(BaseModel):
    line: int
    message: str


class Job(BaseModel):
    """One admin job as stored in ``<home>/jobs/<id>.json`` and returned by the API."""

    id: str
    type: JobType
    state: JobState
    collection: str | None = Field(
        default=None, description="The collection an ingest or restore job writes, or a snapshot job reads."
    )
    params: IngestParams | MineParams | SnapshotParams | RestoreParams
    progress: JobProgress = Field(default_factory=JobProgress)
    counts: JobCounts = Field(default_factory=JobCounts)
    errors: list[JobLineError] = Field(default_factory=list, description="First malformed lines.")
    error: str | None = Field(default=None, description="Why the job failed.")
    cancel_requested: bool = False
    crashes: int = Field(default=0, description="Process stops while running, in a row, without progress.")
    crash_progress: int = Field(default=0, description="Committed progress when the last such stop was seen.")
    created: str
    started: str | None = None
    finished: str | None = None
    result: dict[str, Any] | None = None

    def lane(self) -> Lane:
        """Which worker runs it: Ray jobs wait on a cluster, never in the local queue; snapshots
        only read, and are taken while ingest goes on."""
        if isinstance(self.params, SnapshotParams):
            return "snapshot"
        return self.params.engine if isinstance(self.params, IngestParams | MineParams) else "local"

    def owned_upload(self) -> Path | None:
        """The uploaded file this job owns (deleted once it finishes)."""
        if isinstance(self.params, IngestParams) and self.params.upload:
            return Path(self.params.path)
        if isinstance(self.params, RestoreParams) and self.params.upload:
            return Path(self.params.archive)
        return None

    def writes(self) -> str | None:
        """The collection this job writes (two jobs never write one at once)."""
        return self.collection if isinstance(self.params, IngestParams | RestoreParams) else None

    def targets(self) -> set[str]:
        """Collections this job reads or writes (a collection with an active job cannot be deleted)."""
        if isinstance(self.params, MineParams):
            return {self.params.source, self.params.target}
        return {self.collection} if self.collection else set()


class JobNotFound(NotFound):
    """No job of that id (404)."""


class JobFinished(Conflict):
    """The job already ended (409 on cancel)."""


class QueueFull(InputError):
    """Too many jobs queued (429): a client retries later instead of piling work up unbounded."""

    status = 429

    def __init__(self, queued: int) -> None:
        super().__init__(
            f"{queued} jobs are queued already, the most this server takes (DAPSEARCH_MAX_QUEUED_JOBS); "
            "retry once some have run"
        )

    def headers(self) -> Mapping[str, str]:
        return {"Retry-After": "30"}


def new_job_id() -> str:
    """Time-ordered (sorts by submission) and unguessable enough to name files."""
    return f"{time.time_ns():016x}{secrets.token_hex(4)}"


# What new_job_id makes (nanoseconds in hex grow a digit after the year 2500): an id names files,
# so one read back from disk must be as strict as one made here.
JOB_ID = re.compile(r"[0-9a-f]{24,32}")


def is_job_id(value: str) -> bool:
    return JOB_ID.fullmatch(value) is not None


def new_job(
    type_: JobType,
    params: IngestParams | MineParams | SnapshotParams | RestoreParams,
    collection: str | None = None,
    job_id: str | None = None,
    bytes_total: int | None = None,
) -> Job:
    """A job not yet submitted (the runner queues it)."""
    return Job(
        id=job_id or new_job_id(),
        type=type_,
        state="queued",
        collection=collection,
        params=params,
        progress=JobProgress(bytes_total=bytes_total),
        created=now_iso(),
    )


def public_view(job: Job, data_dir: Path) -> Job:
    """The job as API clients see it: no server paths. An upload shows as "(upload)", a file of
    the data directory (``data_dir``, resolved) by its path inside it, anything else by its name."""
    out = job.model_copy(deep=True)
    if isinstance(out.params, IngestParams):
        path = Path(out.params.path)
        if out.params.upload:
            out.params.path = "(upload)"
        elif path.is_relative_to(data_dir):
            out.params.path = str(path.relative_to(data_dir))
        else:
            out.params.path = path.name
    if isinstance(out.params, RestoreParams):
        out.params.archive = "(upload)" if out.params.upload else Path(out.params.archive).name
    return out


def cannot_resume(job: Job) -> str | None:
    """Why a job found unfinished at start cannot run again (its input is gone), or None."""
    if isinstance(job.params, IngestParams) and not Path(job.params.path).is_file():
        what = "uploaded file" if job.params.upload else "input file"
        return f"cannot resume after restart: the {what} {Path(job.params.path).name} is gone"
    if isinstance(job.params, RestoreParams) and not Path(job.params.archive).is_file():
        return "cannot resume after restart: the archive to restore is gone"
    return None
