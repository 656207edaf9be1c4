"""The job runner: one worker thread running jobs in submission order, restart recovery, and
the ingest and mining runners. Why one thread: ingest saturates every core already, and the event
loop must never wait for a forward pass or an fsync."""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import anyio

from core.clock import now_iso
from core.errors import InputError
from index.cluster import Engine
from index.collection import Collection, collection_identity
from index.ingest import Format, ShardCounts, ingest, resume_point
from index.mining import mine
from index.pairs import write_pairs
from index.ray_ingest import ingest_on_ray
from index.ray_mining import RaySearch
from index.sources import SourceCheckpoint
from model.encoder import Encoder, TextEncoder
from service.collections import Collections
from service.jobs.models import (
    ACTIVE,
    FINISHED,
    STATES,
    IngestParams,
    Job,
    JobCounts,
    JobFinished,
    JobLineError,
    JobNotFound,
    JobProgress,
    JobState,
    MineParams,
    ShardProgress,
    new_job_id,
)
from service.jobs.store import JobStore
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("dapsearch.jobs")
# A job found "running" at start-up took the process down with it (a clean stop re-queues it).
# After this many such stops in a row without committing anything in between it is failed, not
# run again: a job that crashes the process would otherwise crash every restart.
MAX_CRASHES = 3
MAX_JOB_ERRORS = 100  # malformed lines kept in a job record; the count covers all of them
SAVE_EVERY_S = 0.5
ORPHAN_AGE_S = 3600  # uploads untouched this long, with no unfinished job, are removed at start


class _Interrupted(Exception):
    """Raised from a progress callback to stop a job between chunks (cancel or shutdown)."""


def _fraction(done: int, total: int | None) -> float:
    if not total:
        return 0.0
    return min(1.0, done / total)


def _first_run(params: IngestParams) -> SourceCheckpoint | None:
    """The source's checkpoint when the job first ran (None: it has not run yet)."""
    if params.start_offset is None or params.start_line is None:
        return None
    return SourceCheckpoint(
        params.start_offset, params.start_line, params.start_documents, params.start_errors
    )


def _line_errors(done: SourceCheckpoint) -> list[JobLineError]:
    return [JobLineError(line=e.line, message=e.reason) for e in done.error_lines[:MAX_JOB_ERRORS]]


class JobRunner:
    """Owns the job files, the queue and the worker thread; the admin router calls it."""

    def __init__(
        self,
        settings: Settings,
        encoder: TextEncoder,
        collections: Collections,
        metrics: Metrics,
        model: Encoder | None = None,
    ) -> None:
        """``encoder`` embeds local jobs (the service's batcher); ``model`` is the encoder itself,
        which Ray actors are made from (default: ``encoder``, when it is one)."""
        self.settings = settings
        self.encoder = encoder
        if model is None and isinstance(encoder, Encoder):
            model = encoder
        self.model = model
        self.collections = collections
        self.metrics = metrics
        self.store = JobStore(settings.jobs_dir)
        self.uploads = settings.uploads_dir
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()  # guards _jobs; never held during file I/O
        self._io_lock = threading.Lock()  # orders job file writes
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_save: dict[str, float] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load every job file, re-queue unfinished jobs (or fail those that cannot resume), run."""
        await anyio.to_thread.run_sync(self._recover)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._worker, name="dapsearch-jobs", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop the running job at its next chunk (it stays queued for the next start), then join."""
        self._stopping.set()
        self._queue.put(None)
        thread = self._thread
        if thread is not None:
            await anyio.to_thread.run_sync(thread.join)
        self._thread = None

    def _recover(self) -> None:
        self.uploads.mkdir(parents=True, exist_ok=True)
        loaded = self.store.load_all()
        self._queue = queue.Queue()
        with self._lock:
            self._jobs = {job.id: job for job in loaded}
        for job in loaded:
            if job.state not in ACTIVE:
                continue
            if job.cancel_requested:
                self._finish(job.id, "cancelled")  # the cancel was under way when the service stopped
                continue
            if job.state == "running":  # the process died while running it
                done = job.progress.docs + job.progress.bytes_done
                job.crashes = job.crashes + 1 if done <= job.crash_progress else 1
                job.crash_progress = done
                if job.crashes >= MAX_CRASHES:
                    crashed = (
                        f"the service stopped {job.crashes} times in a row while running this job, "
                        "with nothing committed in between; it is not run again"
                    )
                    self._finish(job.id, "failed", error=crashed)
                    log.error("job %s failed: %s", job.id, crashed)
                    continue
            reason = self._cannot_resume(job)
            if reason is not None:
                self._finish(job.id, "failed", error=reason)
                log.warning("job %s cannot resume: %s", job.id, reason)
                continue
            with self._lock:
                job.state = "queued"
            self._save(job.id)
            self._queue.put(job.id)
            log.info("job %s (%s) queued again after restart", job.id, job.type)
        self._remove_orphan_uploads()
        self._update_metrics()

    def _cannot_resume(self, job: Job) -> str | None:
        if isinstance(job.params, IngestParams) and not Path(job.params.path).is_file():
            what = "uploaded file" if job.params.upload else "input file"
            return f"cannot resume after restart: the {what} {Path(job.params.path).name} is gone"
        return None

    def _remove_orphan_uploads(self) -> None:
        """Uploads cut off by a crash, or left by jobs that ended, only take disk space."""
        with self._lock:
            keep = {
                Path(j.params.path).name
                for j in self._jobs.values()
                if isinstance(j.params, IngestParams) and j.params.upload and j.state in ACTIVE
            }
        # Recent files are spared: another process on this home may be receiving an upload now.
        cutoff = time.time() - ORPHAN_AGE_S
        for path in self.uploads.iterdir():
            if path.is_file() and path.name not in keep and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ API for the router

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise JobNotFound(f"unknown job {job_id!r}")
            return job.model_copy(deep=True)

    def list_jobs(self, state: JobState | None = None) -> list[Job]:
        with self._lock:
            jobs = [j.model_copy(deep=True) for j in self._jobs.values() if state is None or j.state == state]
        return sorted(jobs, key=lambda j: (j.created, j.id))

    def active_for(self, collection: str) -> list[str]:
        """Ids of queued or running jobs that read or write ``collection``."""
        with self._lock:
            return [j.id for j in self._jobs.values() if j.state in ACTIVE and collection in j.targets()]

    def pairs_path(self, job_id: str) -> Path:
        return self.store.pairs_path(job_id)

    def public(self, job: Job) -> Job:
        """The job as API clients see it: no server paths. An upload shows as "(upload)", a file
        of the data directory by its path inside it."""
        out = job.model_copy(deep=True)
        if isinstance(out.params, IngestParams):
            path = Path(out.params.path)
            if out.params.upload:
                out.params.path = "(upload)"
            elif path.is_relative_to(self.settings.resolved_data_dir.resolve()):
                out.params.path = str(path.relative_to(self.settings.resolved_data_dir.resolve()))
            else:
                out.params.path = path.name
        return out

    async def submit(self, job: Job) -> Job:
        """Persist a new job (state queued) and queue it; returns it as stored."""
        return await anyio.to_thread.run_sync(self._submit, job)

    def _submit(self, job: Job) -> Job:
        job.state = "queued"
        with self._lock:
            if job.id in self._jobs:
                raise InputError(f"job {job.id} already exists")
            self._jobs[job.id] = job
        self._save(job.id)
        self._queue.put(job.id)
        self._update_metrics()
        return self.get(job.id)

    def ingest_job(
        self,
        job_id: str,
        collection: str,
        path: Path,
        fmt: Format,
        upload: bool,
        strict: bool = False,
        chunk_size: int = 256,
        engine: Engine = "local",
    ) -> Job:
        """A new ingest job (not yet submitted)."""
        params = IngestParams(
            path=str(path),
            upload=upload,
            format=fmt,
            strict=strict,
            chunk_size=chunk_size,
            engine=engine,
            collection_identity=collection_identity(self.settings.collections_dir, collection),
        )
        size = path.stat().st_size if path.is_file() else None
        return Job(
            id=job_id,
            type="ingest",
            state="queued",
            collection=collection,
            params=params,
            progress=JobProgress(bytes_total=size),
            created=now_iso(),
        )

    def mine_job(self, params: MineParams) -> Job:
        return Job(id=new_job_id(), type="mine", state="queued", params=params, created=now_iso())

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued job now, or ask a running one to stop after its current chunk."""
        return await anyio.to_thread.run_sync(self._cancel, job_id)

    def _cancel(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise JobNotFound(f"unknown job {job_id!r}")
            if job.state in FINISHED:
                raise JobFinished(f"job {job_id} already {job.state}")
            job.cancel_requested = True
            queued = job.state == "queued"
        if queued:
            self._finish(job_id, "cancelled")
        else:
            self._save(job_id)
        return self.get(job_id)

    # ------------------------------------------------------------------ persistence

    def _save(self, job_id: str) -> None:
        with self._io_lock:
            with self._lock:
                job = self._jobs[job_id]
                text = job.model_dump_json(indent=2) + "\n"
            self.store.save(job_id, text)
            self._last_save[job_id] = time.monotonic()

    def _save_throttled(self, job_id: str) -> None:
        if time.monotonic() - self._last_save.get(job_id, 0.0) >= SAVE_EVERY_S:
            self._save(job_id)

    def _update_metrics(self) -> None:
        with self._lock:
            counts = dict.fromkeys(STATES, 0)
            for job in self._jobs.values():
                counts[job.state] += 1
        for state, n in counts.items():
            self.metrics.jobs.labels(state=state).set(n)

    def _finish(
        self, job_id: str, state: JobState, error: str | None = None, result: dict[str, Any] | None = None
    ) -> None:
        with self._lock:
            job = self._jobs[job_id]
            job.state = state
            job.finished = now_iso()
            if error is not None:
                job.error = error
            if result is not None:
                job.result = result
            params = job.params
        self._save(job_id)
        self._update_metrics()
        if isinstance(params, IngestParams) and params.upload:
            Path(params.path).unlink(missing_ok=True)

    # ------------------------------------------------------------------ worker

    def _worker(self) -> None:
        while not self._stopping.is_set():
            job_id = self._queue.get()
            if job_id is None or self._stopping.is_set():
                break
            with self._lock:
                job = self._jobs.get(job_id)
                if job is None or job.state != "queued":
                    continue  # cancelled while queued
                job.state = "running"
                job.started = job.started or now_iso()
            self._save(job_id)
            self._update_metrics()
            self._run(job_id)

    def _run(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs[job_id]
            params = job.params
        try:
            if isinstance(params, IngestParams):
                self._run_ingest(job_id, params)
            else:
                self._run_mine(job_id, params)
        except _Interrupted:
            if self._stopping.is_set() and not self._cancelling(job_id):
                with self._lock:
                    job.state = "queued"  # resumes on the next start
                self._save(job_id)
                self._update_metrics()
                log.info("job %s stopped for shutdown; it resumes on the next start", job_id)
            else:
                self._finish(job_id, "cancelled")
        except InputError as exc:
            self._finish(job_id, "failed", error=str(exc))
        except Exception:
            log.exception("job %s failed", job_id)
            # Library messages carry server paths and internals: the log has them, the job a summary.
            self._finish(job_id, "failed", error="an internal error stopped the job; the service log has it")

    def _cancelling(self, job_id: str) -> bool:
        with self._lock:
            return self._jobs[job_id].cancel_requested

    def _check(self, job_id: str) -> None:
        """Called between chunks: a cancel or a shutdown stops the job here."""
        if self._stopping.is_set() or self._cancelling(job_id):
            raise _Interrupted

    def _run_ingest(self, job_id: str, params: IngestParams) -> None:
        path = Path(params.path)
        if not params.upload and not self.settings.in_data_dir(path):
            raise InputError("path outside the data directory")  # it may be a symlink by now
        if not path.is_file():
            raise InputError(f"input file {path.name} is gone")
        with self._lock:
            name = self._jobs[job_id].collection
        if name is None:
            raise InputError("ingest job without a collection")
        total = path.stat().st_size
        self._check(job_id)
        with Collection.open(self.settings.collections_dir, name, self.encoder.model_id) as coll:
            if params.collection_identity not in (None, coll.manifest.identity):
                raise InputError(
                    f"collection {name!r} was deleted after this job was submitted; the collection now "
                    "under that name is another one (submit the documents to it again)"
                )
            with self._lock:
                first = _first_run(params)
            resumed = resume_point(coll, path, first.line if first else 0)  # empty for a file replaced since
            base = resumed.baseline(first)
            with self._lock:
                params.start_offset, params.start_line = base.offset, base.line
                params.start_documents, params.start_errors = base.documents, base.errors
            # What earlier runs of this job committed (none unless it was interrupted by a restart).
            done = resumed.since(base)
            docs = done.documents
            with self._lock:
                job = self._jobs[job_id]
                job.progress = JobProgress(
                    docs=docs,
                    bytes_done=resumed.offset,
                    bytes_total=total,
                    fraction=_fraction(resumed.offset, total),
                )
                job.counts = JobCounts(documents=docs, errors=done.errors)
                job.errors = _line_errors(done)
            self._save(job_id)

            def progress(n: int, reached: int, passages: int) -> None:
                nonlocal docs
                docs += n
                with self._lock:
                    job.progress = JobProgress(
                        docs=docs,
                        bytes_done=reached,
                        bytes_total=total,
                        fraction=_fraction(reached, total),
                        shards=job.progress.shards,
                        passages=job.progress.passages + passages,
                    )
                    job.counts.documents = docs
                self._save_throttled(job_id)
                self._check(job_id)

            def shard_progress(counts: ShardCounts) -> None:
                with self._lock:
                    job.progress.shards = ShardProgress(**asdict(counts))
                self._save_throttled(job_id)
                self._check(job_id)

            try:
                if params.engine == "ray":
                    options = self.settings.ray()
                    report = ingest_on_ray(
                        coll,
                        self._ray_model(),
                        path,
                        params.format,
                        params.strict,
                        options,
                        progress,
                        shard_progress,
                    )
                else:
                    report = ingest(
                        coll, self.encoder, path, params.format, params.chunk_size, params.strict, progress
                    )
            except (_Interrupted, InputError):
                if not self._stopping.is_set() or self._cancelling(job_id):
                    self._final_counts(job_id, coll, path, base)
                raise
            coll.checkpoint()
            count = len(coll)
            done = resume_point(coll, path, base.line).since(base)
        with self._lock:
            job.counts = JobCounts(documents=done.documents, errors=done.errors)
            job.errors = _line_errors(done)
            job.progress = JobProgress(
                docs=done.documents,
                bytes_done=total,
                bytes_total=total,
                fraction=1.0,
                shards=None if report.shards is None else ShardProgress(**asdict(report.shards)),
                passages=job.progress.passages,
            )
        result = {
            "documents": done.documents,
            "passages": report.passages,
            "collection_count": count,
            "version": report.version,
            "lines": report.lines,
        }
        self._finish(job_id, "succeeded", result=result)

    def _ray_model(self) -> Encoder:
        if self.model is None:
            raise InputError("this server cannot run jobs on Ray: it has no model directory to ship")
        return self.model

    def _final_counts(self, job_id: str, coll: Collection, path: Path, base: SourceCheckpoint) -> None:
        """Exact counts of a job that ends early: what its committed chunks covered."""
        done = resume_point(coll, path, base.line).since(base)
        with self._lock:
            job = self._jobs[job_id]
            job.counts = JobCounts(documents=done.documents, errors=done.errors)
            job.errors = _line_errors(done)
            job.progress.docs = done.documents
            job.progress.bytes_done = done.offset
            job.progress.fraction = _fraction(done.offset, job.progress.bytes_total)
        if not self._stopping.is_set():
            coll.checkpoint()

    def _run_mine(self, job_id: str, params: MineParams) -> None:
        root, model = self.settings.collections_dir, self.encoder.model_id
        with Collection.open(root, params.source, model, readonly=True) as src:
            src_ids, src_texts, src_vecs = src.vectors()
        self._check(job_id)
        with Collection.open(root, params.target, model, readonly=True) as tgt:
            tgt_ids, tgt_texts, tgt_vecs = tgt.vectors()
        for name, ids in ((params.source, src_ids), (params.target, tgt_ids)):
            if not ids:
                raise InputError(f"collection {name!r} is empty; mining needs documents on both sides")
        total = len(src_ids)
        rows = 0
        with self._lock:
            job = self._jobs[job_id]
            job.progress = JobProgress(docs=0, fraction=0.0)
        self._save(job_id)

        def progress(n: int) -> None:
            nonlocal rows
            rows += n
            with self._lock:
                job.progress = JobProgress(docs=rows, fraction=_fraction(rows, total))
            self._save_throttled(job_id)
            self._check(job_id)

        search = RaySearch(self.settings.ray()) if params.engine == "ray" else None
        mined = mine(
            src_vecs,
            tgt_vecs,
            params.k,
            params.score,
            params.strategy,
            params.threshold,
            progress=progress,
            search=search,
        )
        self._check(job_id)
        out = self.pairs_path(job_id)
        write_pairs(out, mined.pairs, src_ids, tgt_ids, src_texts, tgt_texts)
        with self._lock:
            job.progress = JobProgress(docs=total, fraction=1.0)
        result = {
            "pairs": len(mined),
            "download": f"/admin/jobs/{job_id}/pairs",
            "source_documents": total,
            "target_documents": len(tgt_ids),
            "k": mined.k,
            "score": mined.score,
            "strategy": mined.strategy,
            "threshold": mined.threshold,
        }
        self._finish(job_id, "succeeded", result=result)
