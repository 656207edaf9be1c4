"""The ingest job: a JSONL/TSV file into a collection, in committed chunks that a restart resumes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from core.errors import InputError
from index.collection import Collection
from index.ingest import IngestReport, ShardCounts, ingest, resume_point
from index.ray_ingest import ingest_on_ray
from index.sources import SourceCheckpoint
from model.encoder import Encoder, TextEncoder
from service.jobs.models import (
    MAX_JOB_ERRORS,
    IngestParams,
    JobCounts,
    JobLineError,
    JobProgress,
    ShardProgress,
)
from service.jobs.running import Interrupted, RunningJob, fraction
from service.settings import Settings


def _first_run(params: IngestParams) -> SourceCheckpoint | None:
    """The source's checkpoint when the job first ran (None: it has not run yet)."""
    if params.start_offset is None or params.start_line is None:
        return None
    return SourceCheckpoint(
        params.start_offset, params.start_line, params.start_documents, params.start_errors
    )


def _line_errors(done: SourceCheckpoint) -> list[JobLineError]:
    return [JobLineError(line=e.line, message=e.reason) for e in done.error_lines[:MAX_JOB_ERRORS]]


def _input(run: RunningJob, params: IngestParams, settings: Settings) -> tuple[Path, str]:
    """The file to read and the collection to write, checked again now that the job runs."""
    path = Path(params.path)
    if not params.upload and not settings.in_data_dir(path):
        raise InputError("path outside the data directory")  # it may be a symlink by now
    what = "uploaded file" if params.upload else f"input file {path.name}"
    if not path.exists():
        raise InputError(f"the {what} is gone: it was removed after the job was submitted")
    if not path.is_file():
        raise InputError(f"the {what} is no longer a regular file")
    name = run.job.collection
    if name is None:
        raise InputError("ingest job without a collection")
    return path, name


class IngestRun:
    """One run of an ingest job: where it resumes, its progress callbacks, its final counts."""

    def __init__(self, run: RunningJob, params: IngestParams, settings: Settings) -> None:
        self.run, self.params, self.settings = run, params, settings
        self.path, self.name = _input(run, params, settings)
        self.total = self.path.stat().st_size
        self.docs = 0

    def execute(self, encoder: TextEncoder, ray_model: Callable[[], Encoder]) -> dict[str, Any]:
        self.run.check()
        root = self.settings.collections_dir
        if not (root / self.name).is_dir():
            raise InputError(f"collection {self.name!r} was deleted after this job was submitted")
        with Collection.open(root, self.name, encoder.model_id) as coll:
            if self.params.collection_identity not in (None, coll.manifest.identity):
                raise InputError(
                    f"collection {self.name!r} was deleted after this job was submitted; the collection now "
                    "under that name is another one (submit the documents to it again)"
                )
            base = self._resume(coll)
            try:
                report = self._ingest(coll, encoder, ray_model)
            except (Interrupted, InputError):
                if not self.run.stopping() or self.run.cancelling():
                    self._final_counts(coll, base)
                raise
            coll.checkpoint()
            count = len(coll)
            done = resume_point(coll, self.path, base.line).since(base)
        return self._result(done, report, count)

    def _resume(self, coll: Collection) -> SourceCheckpoint:
        """Where this run starts; the record shows what earlier runs of the job committed."""
        params, run = self.params, self.run
        with run.lock:
            first = _first_run(params)
        resumed = resume_point(coll, self.path, first.line if first else 0)  # empty for a file replaced since
        base = resumed.baseline(first)
        with run.lock:
            params.start_offset, params.start_line = base.offset, base.line
            params.start_documents, params.start_errors = base.documents, base.errors
        done = resumed.since(base)
        self.docs = done.documents
        with run.lock:
            run.job.progress = JobProgress(
                docs=self.docs,
                bytes_done=resumed.offset,
                bytes_total=self.total,
                fraction=fraction(resumed.offset, self.total),
            )
            run.job.counts = JobCounts(documents=self.docs, errors=done.errors)
            run.job.errors = _line_errors(done)
        run.save()
        return base

    def _ingest(
        self, coll: Collection, encoder: TextEncoder, ray_model: Callable[[], Encoder]
    ) -> IngestReport:
        params = self.params
        if params.engine == "ray":
            return ingest_on_ray(
                coll,
                ray_model(),
                self.path,
                params.format,
                params.strict,
                replace(self.settings.ray(), interrupt=self.run.check),
                self._progress,
                self._shard_progress,
            )
        return ingest(
            coll, encoder, self.path, params.format, params.chunk_size, params.strict, self._progress
        )

    def _progress(self, n: int, reached: int, passages: int) -> None:
        run = self.run
        self.docs += n
        with run.lock:
            run.job.progress = JobProgress(
                docs=self.docs,
                bytes_done=reached,
                bytes_total=self.total,
                fraction=fraction(reached, self.total),
                shards=run.job.progress.shards,
                passages=run.job.progress.passages + passages,
            )
            run.job.counts.documents = self.docs
        run.save_soon()
        run.check()

    def _shard_progress(self, counts: ShardCounts) -> None:
        with self.run.lock:
            self.run.job.progress.shards = ShardProgress(**asdict(counts))
        self.run.save_soon()
        self.run.check()

    def _final_counts(self, coll: Collection, base: SourceCheckpoint) -> None:
        """Exact counts of a job that ends early: what its committed chunks covered."""
        done = resume_point(coll, self.path, base.line).since(base)
        job = self.run.job
        with self.run.lock:
            job.counts = JobCounts(documents=done.documents, errors=done.errors)
            job.errors = _line_errors(done)
            job.progress.docs = done.documents
            job.progress.bytes_done = done.offset
            job.progress.fraction = fraction(done.offset, job.progress.bytes_total)
        if not self.run.stopping():
            coll.checkpoint()

    def _result(self, done: SourceCheckpoint, report: IngestReport, count: int) -> dict[str, Any]:
        job = self.run.job
        with self.run.lock:
            job.counts = JobCounts(documents=done.documents, errors=done.errors)
            job.errors = _line_errors(done)
            job.progress = JobProgress(
                docs=done.documents,
                bytes_done=self.total,
                bytes_total=self.total,
                fraction=1.0,
                shards=None if report.shards is None else ShardProgress(**asdict(report.shards)),
                passages=job.progress.passages,
            )
        return {
            "documents": done.documents,
            "passages": report.passages,
            "collection_count": count,
            "version": report.version,
            "lines": report.lines,
        }
