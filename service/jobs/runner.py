"""The job runner: a worker thread per lane (local, ray, snapshot), each running its jobs in
submission order, and restart recovery. Why one thread for local jobs: ingest saturates every
core already, and the event loop must never wait for a forward pass or an fsync. Ray jobs have
their own, since they wait on a cluster: a slow or unreachable one never holds up the local
queue; snapshots too, since they are taken while ingest goes on. Two jobs never write one
collection at once."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio

from core.clock import now_iso
from core.disk import DiskFull, is_disk_full, require_space
from core.errors import InputError
from core.failures import INTERNAL, describe
from index.cluster import Engine
from index.ingest import Format
from index.manifest import collection_identity
from model.encoder import Encoder, TextEncoder
from service.collections import Collections
from service.jobs.ingest import IngestRun
from service.jobs.mining import run_mine
from service.jobs.models import (
    ACTIVE,
    FINISHED,
    LANES,
    STATES,
    IngestParams,
    Job,
    JobFinished,
    JobNotFound,
    JobState,
    Lane,
    MineParams,
    QueueFull,
    RestoreParams,
    SnapshotParams,
    cannot_resume,
    new_job,
    public_view,
)
from service.jobs.running import Interrupted, RunningJob
from service.jobs.snapshots import run_restore, run_snapshot
from service.jobs.store import JobStore, remove_orphan_uploads
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("dapsearch.jobs")
# A job found "running" at start-up took the process down with it (a clean stop re-queues it).
# After this many such stops in a row without committing anything in between it is failed, not
# run again: a job that crashes the process would otherwise crash every restart.
MAX_CRASHES = 3
SAVE_EVERY_S = 0.5
RETRY_SAVE_S = 2.0  # a job record the disk refused is written again this often
STOP_GRACE_S = 20.0  # how long a stop waits for the Ray worker to reach a point where it can stop
ORPHAN_AGE_S = 3600  # uploads untouched this long, with no unfinished job, are removed at start


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
        self._queues: dict[Lane, queue.Queue[str | None]] = {lane: queue.Queue() for lane in LANES}
        self._stopping = threading.Event()
        self._threads: dict[Lane, threading.Thread] = {}
        self._writing: dict[str, threading.Lock] = {}  # collection -> held by the job writing it
        self._last_save: dict[str, float] = {}
        self._unsaved: set[str] = set()  # records the disk refused; written again until it takes them

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load every job file, re-queue unfinished jobs (or fail those that cannot resume), run."""
        await anyio.to_thread.run_sync(self._recover)
        self._stopping.clear()
        for lane in LANES:
            name = "dapsearch-jobs" if lane == "local" else f"dapsearch-jobs-{lane}"
            thread = threading.Thread(target=self._worker, args=(lane,), name=name, daemon=True)
            self._threads[lane] = thread
            thread.start()

    async def stop(self) -> None:
        """Stop the running job at its next chunk (it stays queued for the next start), then join."""
        self._stopping.set()
        for q in self._queues.values():
            q.put(None)
        for lane, thread in self._threads.items():
            # A local job stops at its next chunk; a Ray job may sit in Ray's own connect, which
            # nothing interrupts: shutdown waits a bounded time for it.
            await anyio.to_thread.run_sync(thread.join, None if lane != "ray" else STOP_GRACE_S)
            if thread.is_alive():  # inside a call that cannot be interrupted: it dies with the process
                log.warning("the %s job worker did not stop within %.0f s; leaving it", lane, STOP_GRACE_S)
        self._threads = {}
        await anyio.to_thread.run_sync(self._save_unsaved)

    def health(self) -> dict[str, Any]:
        """For /health/ready: a dead worker or records the disk refused are not ready."""
        with self._lock:
            queued = sum(1 for j in self._jobs.values() if j.state == "queued")
            running = sum(1 for j in self._jobs.values() if j.state == "running")
            unsaved = len(self._unsaved)
        alive = bool(self._threads) and all(t.is_alive() for t in self._threads.values())
        return {
            "worker": "running" if alive else "stopped",
            "queued": queued,
            "running": running,
            "unsaved": unsaved,
        }

    def _recover(self) -> None:
        try:
            self.uploads.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # the service still serves; uploads answer with the cause
            log.error("the uploads folder is not usable: %s", exc)
        loaded = self.store.load_all()
        self._queues = {lane: queue.Queue() for lane in LANES}
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
            reason = cannot_resume(job)
            if reason is not None:
                self._finish(job.id, "failed", error=reason)
                log.warning("job %s cannot resume: %s", job.id, reason)
                continue
            with self._lock:
                job.state = "queued"
            self._save(job.id)
            self._queues[job.lane()].put(job.id)
            log.info("job %s (%s) queued again after restart", job.id, job.type)
        self._remove_orphan_uploads()
        self._update_metrics()

    def _remove_orphan_uploads(self) -> None:
        """Uploads cut off by a crash, or left by jobs that ended, only take disk space."""
        with self._lock:
            owned = (j.owned_upload() for j in self._jobs.values() if j.state in ACTIVE)
            keep = {path.name for path in owned if path is not None}
        remove_orphan_uploads(self.uploads, keep, ORPHAN_AGE_S)

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
        """The job as API clients see it: no server paths."""
        return public_view(job, self.settings.resolved_data_dir.resolve())

    async def submit(self, job: Job) -> Job:
        """Persist a new job (state queued) and queue it; returns it as stored."""
        return await anyio.to_thread.run_sync(self._submit, job)

    def _submit(self, job: Job) -> Job:
        job.state = "queued"
        require_space(self.settings.home, self.settings.min_free_bytes, f"queue an {job.type} job")
        with self._lock:
            if job.id in self._jobs:
                raise InputError(f"job {job.id} already exists")
            queued = sum(1 for j in self._jobs.values() if j.state == "queued")
            if queued >= self.settings.max_queued_jobs:
                raise QueueFull(queued)
            self._jobs[job.id] = job
        try:
            self._save(job.id, strict=True)  # a job is accepted only once its record is on disk
        except OSError as exc:
            with self._lock:
                del self._jobs[job.id]
            if is_disk_full(exc):
                raise DiskFull(f"the job could not be recorded: {describe(exc)}") from exc
            raise
        self._queues[job.lane()].put(job.id)
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
        identity = collection_identity(self.settings.collections_dir, collection)
        params = IngestParams(
            path=str(path),
            upload=upload,
            format=fmt,
            strict=strict,
            chunk_size=chunk_size,
            engine=engine,
            collection_identity=identity,
        )
        size = path.stat().st_size if path.is_file() else None
        return new_job("ingest", params, collection, job_id, size)

    def mine_job(self, params: MineParams) -> Job:
        return new_job("mine", params)

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

    def _save(self, job_id: str, strict: bool = False) -> None:
        """Write the job's record. A refused write (a full disk) is kept for a retry, not raised:
        the worker must go on, and the record catches up once the disk takes it."""
        with self._io_lock:
            with self._lock:
                job = self._jobs[job_id]
                text = job.model_dump_json(indent=2) + "\n"
            try:
                self.store.save(job_id, text)
            except OSError as exc:
                if strict:
                    raise
                self._unsaved.add(job_id)
                log.error(
                    "job %s: its record could not be saved (%s); retrying", job_id, describe(exc) or exc
                )
                return
            self._unsaved.discard(job_id)
            self._last_save[job_id] = time.monotonic()

    def _save_unsaved(self) -> None:
        for job_id in sorted(self._unsaved):
            self._save(job_id)

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
            upload = job.owned_upload()
        self._save(job_id)
        self._update_metrics()
        if upload is not None:
            upload.unlink(missing_ok=True)

    # ------------------------------------------------------------------ worker

    def _worker(self, lane: Lane) -> None:
        """Runs jobs until stopped, whatever a job raises: one job never stops the ones behind it."""
        jobs = self._queues[lane]
        while not self._stopping.is_set():
            if self._unsaved:
                self._save_unsaved()
            try:
                job_id = jobs.get(timeout=RETRY_SAVE_S if self._unsaved else None)
            except queue.Empty:
                continue
            if job_id is None or self._stopping.is_set():
                break
            try:
                self._start(job_id)
            except Exception:
                log.exception("job %s: the worker caught an error outside the job", job_id)

    def _start(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state != "queued":
                return  # cancelled while queued
            job.state = "running"
            job.started = job.started or now_iso()
        self._save(job_id)
        self._update_metrics()
        self._run(job_id)

    def _run(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs[job_id]
        run = RunningJob(
            job=job,
            lock=self._lock,
            save=lambda: self._save(job_id),
            save_soon=lambda: self._save_throttled(job_id),
            check=lambda: self._check(job_id),
            stopping=self._stopping.is_set,
            cancelling=lambda: self._cancelling(job_id),
        )
        try:
            with self._writer(run):
                result = self._execute(run)
        except Interrupted:
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
        except Exception as exc:
            # Library messages carry server paths and internals: the log has them, the job a cause
            # an operator can act on (a full disk, a removed folder) or a summary.
            log.exception("job %s failed", job_id)
            self._finish(job_id, "failed", error=f"the job stopped: {describe(exc) or INTERNAL}")
        else:
            self._finish(job_id, "succeeded", result=result)

    @contextmanager
    def _writer(self, run: RunningJob) -> Iterator[None]:
        """Hold the collection a job writes, waiting (cancellable) while another job writes it."""
        name = run.job.writes()
        if name is None:
            yield
            return
        with self._lock:
            lock = self._writing.setdefault(name, threading.Lock())
        while not lock.acquire(timeout=0.25):
            run.check()
        try:
            yield
        finally:
            lock.release()

    def _execute(self, run: RunningJob) -> dict[str, Any]:
        params = run.job.params
        if isinstance(params, IngestParams):
            return IngestRun(run, params, self.settings).execute(self.encoder, self._ray_model)
        if isinstance(params, SnapshotParams):
            sha = self.model.manifest.weights_sha256 if self.model is not None else None
            return run_snapshot(run, params, self.settings, sha)
        if isinstance(params, RestoreParams):
            result = run_restore(run, params, self.settings, self.encoder.model_id)
            self.collections.forget(result["collection"])  # the service reads the restored one now
            return result
        return run_mine(run, params, self.settings, self.encoder.model_id, self.pairs_path(run.id))

    def _cancelling(self, job_id: str) -> bool:
        with self._lock:
            return self._jobs[job_id].cancel_requested

    def _check(self, job_id: str) -> None:
        """Called between chunks: a cancel or a shutdown stops the job here, and so does a disk
        down to its reserve (what is committed stays; the reserve keeps room to record why)."""
        if self._stopping.is_set() or self._cancelling(job_id):
            raise Interrupted
        require_space(self.settings.home, self.settings.min_free_bytes, "go on with the job")

    def _ray_model(self) -> Encoder:
        if self.model is None:
            raise InputError("this server cannot run jobs on Ray: it has no model directory to ship")
        return self.model
