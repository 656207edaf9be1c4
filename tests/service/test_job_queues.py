"""The job runner's queues: bounded, one per engine, and a Ray cluster that answers nothing.

A Ray job waits on its cluster; what must hold is that the wait is bounded, that a cancel and a
shutdown interrupt it, and that local jobs behind it never wait for it. The cluster address is a
real closed port, and Ray itself is imported and asked to connect.
"""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import anyio
import pytest

from model.encoder import Encoder
from service.collections import Collections
from service.jobs.models import IngestParams, QueueFull
from service.jobs.runner import JobRunner
from service.metrics import Metrics
from tests.service.test_model_free import _finished, _ingest_job, job_runner, serve, settings_for

pytestmark = pytest.mark.anyio


async def test_the_job_queue_is_bounded_with_a_429_that_says_when_to_retry(
    tmp_path: Path, encoder: Encoder
) -> None:
    settings = settings_for(tmp_path, max_queued_jobs=2)
    collections = Collections(settings.collections_dir, encoder.model_id)
    collections.create("news", encoder.dim)
    jobs = JobRunner(settings, encoder, collections, Metrics())  # not started: every job stays queued
    try:
        for i in range(2):
            await jobs.submit(_ingest_job(jobs, settings, "news", 1, f"q{i}"))
        with pytest.raises(QueueFull) as refused:
            await jobs.submit(_ingest_job(jobs, settings, "news", 1, "q2"))
        assert refused.value.status == 429 and refused.value.headers()["Retry-After"]
        assert "DAPSEARCH_MAX_QUEUED_JOBS" in str(refused.value)
        assert len(jobs.list_jobs()) == 2 and len(list(settings.jobs_dir.glob("*.json"))) == 2
        await jobs.cancel(jobs.list_jobs()[0].id)  # room again
        await jobs.submit(_ingest_job(jobs, settings, "news", 1, "q3"))
    finally:
        collections.close()


async def test_a_collection_removed_under_its_job_or_a_broken_uploads_folder_is_named(
    tmp_path: Path, encoder: Encoder
) -> None:
    settings = settings_for(tmp_path)
    async with job_runner(settings, encoder) as (jobs, collections):
        collections.create("brief", encoder.dim)
        job = _ingest_job(jobs, settings, "brief", 3, "brief")
        shutil.rmtree(settings.collections_dir / "brief")  # as an operator's rm -r would
        done = await _finished(jobs, (await jobs.submit(job)).id)
    assert done.state == "failed" and done.error is not None
    assert "'brief' was deleted" in done.error and str(tmp_path) not in done.error
    shutil.rmtree(settings.uploads_dir)
    settings.uploads_dir.write_text("not a folder")
    async with serve(settings, encoder) as (_, client):  # it still starts and serves
        assert (await client.post("/admin/collections", json={"name": "news2"})).status_code == 201
        r = await client.post(
            "/admin/collections/news2/documents",
            content=b'{"id": "a", "text": "b"}\n',
            headers={"Content-Type": "application/x-ndjson"},
        )
    assert r.status_code == 500, r.text
    message = r.json()["error"]["message"]
    assert "must be a folder is a file" in message and str(tmp_path) not in message


def closed_port() -> int:
    """A local port nothing listens on: connecting is refused, as for a cluster that is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _state(jobs: JobRunner, job_id: str, state: str, timeout: float = 30) -> None:
    with anyio.fail_after(timeout):
        while jobs.get(job_id).state != state:
            await anyio.sleep(0.02)


async def test_a_ray_job_waiting_for_its_cluster_blocks_no_local_job_and_stops_on_cancel(
    tmp_path: Path, encoder: Encoder
) -> None:
    address = f"127.0.0.1:{closed_port()}"
    settings = settings_for(tmp_path, ray_address=address, ray_connect_timeout_s=120)
    async with job_runner(settings, encoder) as (jobs, collections):
        collections.create("other", encoder.dim)  # "news" is the Ray job's, held while it runs
        waiting = _ingest_job(jobs, settings, "news", 3, "on-ray")
        assert isinstance(waiting.params, IngestParams)
        waiting.params.engine = "ray"
        await jobs.submit(waiting)
        await _state(jobs, waiting.id, "running")
        local = await jobs.submit(_ingest_job(jobs, settings, "other", 4, "local"))
        done = await _finished(jobs, local.id)
        assert done.state == "succeeded" and done.counts.documents == 4  # not behind the Ray job
        same = await jobs.submit(_ingest_job(jobs, settings, "news", 2, "same"))
        await anyio.sleep(0.5)
        assert jobs.get(same.id).counts.documents == 0  # it waits: the Ray job holds "news"
        assert jobs.get(waiting.id).state == "running"
        started = time.monotonic()
        await jobs.cancel(waiting.id)
        cancelled = await _finished(jobs, waiting.id)
        after = await _finished(jobs, same.id)
    assert cancelled.state == "cancelled" and time.monotonic() - started < 5
    assert after.state == "succeeded" and after.counts.documents == 2


async def test_shutdown_interrupts_the_wait_and_the_job_resumes_then_fails_naming_the_address(
    tmp_path: Path, encoder: Encoder
) -> None:
    address = f"127.0.0.1:{closed_port()}"
    settings = settings_for(tmp_path, ray_address=address, ray_connect_timeout_s=120)
    async with job_runner(settings, encoder) as (jobs, _):
        job = _ingest_job(jobs, settings, "news", 3, "on-ray")
        assert isinstance(job.params, IngestParams)
        job.params.engine = "ray"
        await jobs.submit(job)
        await _state(jobs, job.id, "running")
        started = time.monotonic()
    assert time.monotonic() - started < 5  # the stop did not wait for Ray
    short = settings.model_copy(update={"ray_connect_timeout_s": 1.0})
    async with job_runner(short, encoder) as (jobs, _):
        assert jobs.get(job.id).state in ("queued", "running")  # queued again, not failed by the stop
        failed = await _finished(jobs, job.id)
    assert failed.state == "failed" and failed.error is not None
    assert f"cannot reach the Ray cluster at {address} within 1 s" in failed.error
    assert "DAPSEARCH_RAY_ADDRESS" in failed.error


async def test_a_ray_job_for_an_unreachable_cluster_is_refused_at_submission(
    tmp_path: Path, encoder: Encoder
) -> None:
    address = f"127.0.0.1:{closed_port()}"
    async with serve(settings_for(tmp_path, ray_address=address), encoder) as (_, client):
        assert (await client.post("/admin/collections", json={"name": "news"})).status_code == 201
        r = await client.post(
            "/admin/collections/news/documents",
            params={"engine": "ray"},
            content=b'{"id": "a", "text": "b"}\n',
            headers={"Content-Type": "application/x-ndjson"},
        )
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["param"] == "engine" and address in error["message"], error
        r = await client.post("/admin/mine", json={"source": "news", "target": "news", "engine": "ray"})
        assert r.status_code == 503 and r.json()["error"]["param"] == "engine"
        assert (await client.get("/admin/jobs")).json()["jobs"] == []
        assert list(Path(tmp_path / "uploads").iterdir()) == []
