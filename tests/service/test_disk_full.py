"""A full disk, for real: the service's home on a small tmpfs that the tests fill.

What must hold: a write refused for space is a 507 naming the disk (never a bare 500 or a reset),
a job stopped by a full disk fails naming it, the job worker outlives any failure, the job records
on disk end up saying what the API says, and /health/ready reports the condition.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI

from core.disk import MIB
from model.encoder import Encoder
from service.settings import Settings
from tests.service.test_model_free import serve as serve_with

pytestmark = pytest.mark.anyio
AUTH = {"Authorization": "Bearer k1"}
FINISHED = ("succeeded", "failed", "cancelled")


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs: small enough to fill in a moment, a real filesystem that says ENOSPC."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a small tmpfs needs root: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Allocate all but ``leave`` bytes of the disk's free space in one file."""
    filler = disk / "filler"
    size = shutil.disk_usage(disk).free - leave
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.posix_fallocate(fd, 0, max(size, 1))
    finally:
        os.close(fd)
    return filler


def settings_for(home: Path, data: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "home": home,
        "data_dir": data,
        "admin_keys": "k1",
        "demo": False,
        "redis_url": None,
        "min_free_bytes": 2 * MIB,
    }
    return Settings(**(values | overrides))


def serve(settings: Settings) -> AbstractAsyncContextManager[tuple[FastAPI, httpx.AsyncClient]]:
    """The app on the dummy encoder, with room for the longer test documents."""
    return serve_with(settings, Encoder.dummy(dim=32, max_length=64, batch_size=8))


def documents(path: Path, n: int, size: int = 2000) -> Path:
    """``n`` JSONL documents of about ``size`` bytes: their rows and passages take disk space."""
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            words = " ".join(f"w{i}x{j}" for j in range(size // 8))
            fh.write(json.dumps({"id": f"d{i}", "text": words}) + "\n")
    return path


async def ingest(client: httpx.AsyncClient, name: str, path: str) -> dict[str, Any]:
    r = await client.post(f"/admin/collections/{name}/documents", json={"path": path, "chunk_size": 16})
    assert r.status_code == 202, r.text
    job_id = r.json()["job"]["id"]
    with anyio.fail_after(60):
        while True:
            job: dict[str, Any] = (await client.get(f"/admin/jobs/{job_id}")).json()["job"]
            if job["state"] in FINISHED:
                return job
            await anyio.sleep(0.02)


def assert_names_the_disk(body: dict[str, Any], disk: Path) -> None:
    error = body["error"]
    assert error["type"] == "insufficient_storage", body
    assert "disk" in error["message"] and str(disk) not in error["message"], body


async def test_writes_refused_for_space_are_507_and_ready_says_why(disk: Path, tmp_path: Path) -> None:
    settings = settings_for(disk / "home", tmp_path / "data")
    async with serve(settings) as (_, client):
        assert (await client.post("/admin/collections", json={"name": "a"})).status_code == 201
        filler = fill(disk, leave=1 * MIB)
        r = await client.post("/admin/collections", json={"name": "b"})
        assert r.status_code == 507, r.text
        assert_names_the_disk(r.json(), disk)
        assert "MiB free" in r.json()["error"]["message"]
        # An upload whose declared length cannot fit is refused before a byte is stored.
        r = await client.post(
            "/admin/collections/a/documents",
            content=b'{"id": "x", "text": "y"}\n',
            headers={"Content-Type": "application/x-ndjson"},
        )
        assert r.status_code == 507, r.text
        assert_names_the_disk(r.json(), disk)
        ready = (await client.get("/health/ready")).json()
        assert ready["status"] == "degraded" and ready["disk"]["ok"] is False, ready
        assert "DAPSEARCH_MIN_FREE_BYTES" in ready["detail"]
        assert ready["jobs"]["worker"] == "running"
        filler.unlink()
        assert (await client.post("/admin/collections", json={"name": "b"})).status_code == 201
        assert (await client.get("/health/ready")).json()["status"] == "ready"


async def test_an_upload_of_unknown_length_that_fills_the_disk_is_507_and_leaves_nothing(
    disk: Path, tmp_path: Path
) -> None:
    settings = settings_for(disk / "home", tmp_path / "data")
    async with serve(settings) as (_, client):
        assert (await client.post("/admin/collections", json={"name": "a"})).status_code == 201
        free = shutil.disk_usage(disk).free

        async def body() -> AsyncIterator[bytes]:
            line = b'{"id": "x", "text": "' + b"y" * 1000 + b'"}\n'
            for _ in range(30 * 1024):  # 30 MiB, more than the whole disk, no Content-Length
                yield line

        r = await client.post(
            "/admin/collections/a/documents", content=body(), headers={"Content-Type": "application/x-ndjson"}
        )
        assert r.status_code == 507, r.text
        assert_names_the_disk(r.json(), disk)
        assert list((settings.uploads_dir).iterdir()) == []  # the partial upload is gone
        assert shutil.disk_usage(disk).free >= free - 64 * 1024
        assert (await client.get("/admin/jobs")).json()["jobs"] == []


async def test_the_reserve_stops_an_ingest_with_its_commits_counted(disk: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    documents(data / "big.jsonl", 3000)  # about 6 MB of text, more than the room above the reserve
    settings = settings_for(disk / "home", data, min_free_bytes=8 * MIB)
    async with serve(settings) as (_, client):
        assert (await client.post("/admin/collections", json={"name": "a"})).status_code == 201
        fill(disk, leave=10 * MIB)
        job = await ingest(client, "a", "big.jsonl")
        assert job["state"] == "failed", job
        assert "not enough disk space to go on with the job" in job["error"], job
        assert 0 < job["counts"]["documents"] < 3000, job
        stats = (await client.get("/admin/collections/a")).json()
        assert stats["count"] == job["counts"]["documents"]  # what was committed, counted exactly
        stored = json.loads((settings.jobs_dir / f"{job['id']}.json").read_text(encoding="utf-8"))
        assert stored["state"] == "failed" and stored["error"] == job["error"]


async def test_the_worker_survives_a_full_disk_and_its_records_catch_up(disk: Path, tmp_path: Path) -> None:
    """No reserve: SQLite itself hits ENOSPC, and so does the failed job's own record."""
    data = tmp_path / "data"
    data.mkdir()
    documents(data / "big.jsonl", 3000)
    documents(data / "small.jsonl", 5, size=40)
    settings = settings_for(disk / "home", data, min_free_bytes=0)
    async with serve(settings) as (app, client):
        assert (await client.post("/admin/collections", json={"name": "a"})).status_code == 201
        filler = fill(disk, leave=256 * 1024)
        job = await ingest(client, "a", "big.jsonl")
        assert job["state"] == "failed", job
        assert job["error"].startswith("the job stopped: the disk holding the service's data is full"), job
        ready = (await client.get("/health/ready")).json()
        assert ready["jobs"]["worker"] == "running", ready
        filler.unlink()
        # The worker runs the next job, and the failed job's record reaches the disk.
        second = await ingest(client, "a", "small.jsonl")
        assert second["state"] == "succeeded", second
        assert second["counts"]["documents"] == 5
        for one in (job, second):
            stored = json.loads((settings.jobs_dir / f"{one['id']}.json").read_text(encoding="utf-8"))
            assert stored["state"] == one["state"], stored
        assert app.state.runtime.jobs.health()["unsaved"] == 0
    # After a restart the API says what it said before: no failed job runs again.
    async with serve(settings) as (_, client):
        again = (await client.get(f"/admin/jobs/{job['id']}")).json()["job"]
        assert again["state"] == "failed" and again["error"] == job["error"]
        assert (await client.get("/admin/collections/a")).json()["count"] >= 5
