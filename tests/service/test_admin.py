"""The /admin API through the real app: bearer auth, collections, ingest and mining jobs, restarts.

Everything is real: the tiny ONNX model, SQLite + FAISS collections on disk, job files, the
worker thread. Restarts are real too: a second app is started on the same home directory.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from index.collection import Collection
from index.ingest import ingest
from model.encoder import Encoder
from service.app import create_app
from service.jobs.models import IngestParams, Job, JobProgress, new_job_id
from service.metrics import Metrics
from service.settings import Settings

pytestmark = pytest.mark.anyio

AUTH = {"Authorization": "Bearer k1"}
FINISHED = ("succeeded", "failed", "cancelled")


def settings_for(home: Path, model_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "home": home,
        "model_dir": model_dir,
        "backend": "onnx",
        "threads": 1,
        "admin_keys": "k1,k2",
        "demo": False,
        "redis_url": None,
    }
    return Settings(**(values | overrides))


@asynccontextmanager
async def serve(
    settings: Settings, headers: dict[str, str] | None = None
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app with its lifespan (model, collections, job worker) and a client bound to it."""
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=120, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers=AUTH if headers is None else headers
        ) as client:
            await wait_ready(client)
            yield app, client


async def wait_ready(client: httpx.AsyncClient) -> None:
    """The model loads in the background after startup; admin routes answer 503 until then."""
    deadline = time.monotonic() + 120
    while (r := await client.get("/health/ready")).status_code != 200:
        assert r.json()["status"] == "starting", r.text
        assert time.monotonic() < deadline, "service never became ready"
        await anyio.sleep(0.02)


def jsonl(n: int, prefix: str = "d", start: int = 0) -> bytes:
    lines = [
        json.dumps({"id": f"{prefix}{i}", "text": f"document number {i} about topic {i % 7}", "lang": "en"})
        for i in range(start, start + n)
    ]
    return ("\n".join(lines) + "\n").encode()


async def create(client: httpx.AsyncClient, name: str) -> None:
    r = await client.post("/admin/collections", json={"name": name})
    assert r.status_code == 201, r.text


async def upload(client: httpx.AsyncClient, name: str, body: bytes, **params: Any) -> dict[str, Any]:
    r = await client.post(
        f"/admin/collections/{name}/documents",
        content=body,
        params=params,
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert r.status_code == 202, r.text
    job: dict[str, Any] = r.json()["job"]
    assert r.headers["Location"] == f"/admin/jobs/{job['id']}"
    return job


async def wait_for(
    client: httpx.AsyncClient, job_id: str, states: tuple[str, ...] = FINISHED, timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = await client.get(f"/admin/jobs/{job_id}")
        assert r.status_code == 200, r.text
        job: dict[str, Any] = r.json()["job"]
        if job["state"] in states:
            return job
        assert time.monotonic() < deadline, f"job stuck: {job}"
        await anyio.sleep(0.02)


async def wait_started(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    """Until the job has committed at least one chunk (and is still running)."""
    deadline = time.monotonic() + 60
    while True:
        job: dict[str, Any] = (await client.get(f"/admin/jobs/{job_id}")).json()["job"]
        if job["state"] != "queued" and job["progress"]["docs"] > 0:
            return job
        assert time.monotonic() < deadline, f"job never started: {job}"
        await anyio.sleep(0.005)


def count(settings: Settings, name: str) -> int:
    with Collection.open(settings.collections_dir, name, readonly=True) as coll:
        return len(coll)


def gauge(app: FastAPI, state: str) -> float | None:
    metrics: Metrics = app.state.metrics
    return metrics.registry.get_sample_value("dapsearch_jobs", {"state": state})


# ---------------------------------------------------------------------- auth


async def test_auth_keys(tmp_path: Path, tiny_model_dir: Path) -> None:
    async with serve(settings_for(tmp_path / "home", tiny_model_dir), headers={}) as (_, client):
        r = await client.get("/admin/collections")
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert r.json()["error"]["type"] == "unauthorized"
        for malformed in ("Basic azE6azE=", "Bearer", "Bearer ", "k1", "Bearer k1 k2"):
            r = await client.get("/admin/collections", headers={"Authorization": malformed})
            assert r.status_code == 401, malformed
            assert "WWW-Authenticate" in r.headers
        r = await client.get("/admin/collections", headers={"Authorization": "Bearer k3"})
        assert r.status_code == 403 and r.json()["error"]["type"] == "forbidden"
        assert "WWW-Authenticate" not in r.headers
        for key in ("k1", "k2"):
            r = await client.get("/admin/collections", headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200 and r.json() == {"collections": []}
        r = await client.get("/admin/collections", headers={"Authorization": "bearer  k2 "})
        assert r.status_code == 200  # scheme is case-insensitive, surrounding spaces ignored
        # Every admin route is guarded, not just the listing.
        r = await client.post("/admin/collections", json={"name": "x"})
        assert r.status_code == 401
        r = await client.get("/admin/jobs/whatever")
        assert r.status_code == 401
        # The key is checked before the body: nothing about the body reaches an unauthenticated
        # client (no 422 for bad JSON or fields, no 413 for size, no 404 for a collection).
        as_json = {"Content-Type": "application/json"}
        bodies = [
            ("/admin/collections", b"{not json"),
            ("/admin/collections", json.dumps({"name": 3, "extra": 1}).encode()),
            ("/admin/collections", b"x" * (5 * 2**20)),
            ("/admin/collections/nope/documents", json.dumps({"path": "../../etc/passwd"}).encode()),
            ("/admin/mine", b"{}"),
        ]
        for path, content in bodies:
            for auth, status in (({}, 401), ({"Authorization": "Bearer wrong"}, 403)):
                r = await client.post(path, content=content, headers={**as_json, **auth})
                assert r.status_code == status, (path, auth, r.status_code, r.text[:200])


async def test_admin_disabled_without_keys(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = settings_for(tmp_path / "home", tiny_model_dir, admin_keys="")
    async with serve(settings) as (_, client):
        r = await client.get("/admin/collections")
        assert r.status_code == 503
        assert "DAPSEARCH_ADMIN_KEYS" in r.json()["error"]["message"]


async def test_admin_open_mode(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = settings_for(tmp_path / "home", tiny_model_dir, admin_keys="", admin_open=True)
    async with serve(settings, headers={}) as (_, client):
        assert (await client.get("/admin/collections")).status_code == 200
        assert (await client.post("/admin/collections", json={"name": "open"})).status_code == 201


# ---------------------------------------------------------------------- collections


async def test_collections_create_list_get_delete(tmp_path: Path, tiny_model_dir: Path) -> None:
    async with serve(settings_for(tmp_path / "home", tiny_model_dir)) as (app, client):
        r = await client.post("/admin/collections", json={"name": "news", "index": "auto"})
        assert r.status_code == 201, r.text
        stats = r.json()
        assert stats["name"] == "news" and stats["count"] == 0
        encoder = app.state.runtime.encoder
        assert stats["dim"] == encoder.dim and stats["model_id"] == encoder.model_id

        r = await client.post("/admin/collections", json={"name": "news"})
        assert r.status_code == 409 and r.json()["error"]["param"] == "name"
        for bad in (
            {"name": "../etc"},
            {"name": ""},
            {"name": "ok", "index": "bogus"},
            {"name": "x", "index": "HNSW0"},
            {"name": "x\n"},
        ):
            r = await client.post("/admin/collections", json=bad)
            assert r.status_code == 400, (bad, r.text)
            assert r.json()["error"]["type"] == "invalid_request"
        for invalid in ({}, {"name": 3}, {"name": "x", "extra": 1}):
            r = await client.post("/admin/collections", json=invalid)
            assert r.status_code == 422, (invalid, r.text)
        r = await client.post(
            "/admin/collections", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 422

        await create(client, "blogs")
        r = await client.get("/admin/collections")
        assert [c["name"] for c in r.json()["collections"]] == ["blogs", "news"]
        assert all(c["compatible"] and c["count"] == 0 for c in r.json()["collections"])

        assert (await client.get("/admin/collections/news")).json()["name"] == "news"
        r = await client.get("/admin/collections/nope")
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
        r = await client.post("/search", json={"collection": "nope", "query": "x"})
        assert r.status_code == 404 and str(tmp_path) not in r.text and "collections" not in r.text
        assert (await client.get("/admin/collections/..%2F..%2Fetc")).status_code == 404

        r = await client.delete("/admin/collections/news")
        assert r.status_code == 204 and r.content == b""
        assert (await client.get("/admin/collections/news")).status_code == 404
        assert (await client.delete("/admin/collections/news")).status_code == 404
        assert [c["name"] for c in (await client.get("/admin/collections")).json()["collections"]] == [
            "blogs"
        ]


@pytest.mark.parametrize("redis_url", [None, "redis://127.0.0.1:6379/14"], ids=["memory", "redis"])
async def test_a_deleted_collection_is_never_served_again(
    tmp_path: Path, tiny_model_dir: Path, redis_url: str | None
) -> None:
    """Delete c1, create c1 again: its versions start again, and neither the result cache (in
    memory or in Redis) nor a read replica's open handle may answer with the deleted text."""
    home = tmp_path / "home"
    writer_settings = settings_for(home, tiny_model_dir, redis_url=redis_url)
    replica_settings = settings_for(home, tiny_model_dir, redis_url=redis_url, admin_keys="")
    query = {"collection": "c1", "query": "what was written", "k": 5}

    async def fill(client: httpx.AsyncClient, doc_id: str, text: str) -> None:
        await create(client, "c1")
        line = json.dumps({"id": doc_id, "text": text}) + "\n"
        job = await upload(client, "c1", line.encode())
        assert (await wait_for(client, job["id"]))["state"] == "succeeded"

    async def served(client: httpx.AsyncClient) -> list[str]:
        r = await client.post("/search", json=query)
        assert r.status_code == 200, r.text
        return [hit["id"] for hit in r.json()["results"][0]]

    async with serve(writer_settings) as (_, writer), serve(replica_settings) as (_, replica):
        await fill(writer, "old-1", "the text that is deleted")
        for client in (writer, replica, writer, replica):  # the second round comes from the cache
            assert await served(client) == ["old-1"]
        assert (await writer.delete("/admin/collections/c1")).status_code == 204
        await fill(writer, "new-1", "the text of the collection made again")
        for client in (writer, replica, writer, replica):
            assert await served(client) == ["new-1"]


async def test_a_job_queued_for_a_deleted_collection_never_fills_its_successor(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    settings = settings_for(tmp_path / "home", tiny_model_dir)
    async with serve(settings) as (_, client):
        await create(client, "big")
        blocker = await upload(client, "big", jsonl(4000), chunk_size=2)  # keeps the worker busy
        await wait_started(client, blocker["id"])
        await create(client, "c1")
        queued = await upload(client, "c1", jsonl(3, "q"))
        assert (await client.delete("/admin/collections/c1")).status_code == 409  # a job is queued
        # ...but an operator can remove its folder and `dapsearch index create` it again meanwhile.
        shutil.rmtree(settings.collections_dir / "c1")
        env = {**os.environ, "DAPSEARCH_HOME": str(settings.home), "DAPSEARCH_MODEL_DIR": str(tiny_model_dir)}
        done = subprocess.run(
            [sys.executable, "-m", "cli", "index", "create", "c1"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        await client.post(f"/admin/jobs/{blocker['id']}/cancel")
        job = await wait_for(client, queued["id"])
        assert job["state"] == "failed" and "deleted after this job was submitted" in job["error"], job
        assert (await client.get("/admin/collections/c1")).json()["count"] == 0


async def test_every_filter_the_schema_admits_answers_200_or_422(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    settings = settings_for(tmp_path / "home", tiny_model_dir)
    async with serve(settings) as (_, client):
        await create(client, "c")
        lines = [
            {"id": "a", "text": "first", "lang": "en", "metadata": {"n": 1, "tag": "x", "ok": True}},
            {"id": "b", "text": "second", "lang": "de", "metadata": {"n": 2, "tag": "y", "none": None}},
            {"id": "c", "text": "third", "metadata": {"n": 3}},
        ]
        body = "".join(json.dumps(line) + "\n" for line in lines).encode()
        assert (await wait_for(client, (await upload(client, "c", body))["id"]))["state"] == "succeeded"
        # A row stored before metadata was checked (NaN is not JSON): it must not break filters.
        with sqlite3.connect(settings.collections_dir / "c" / "docs.sqlite") as db:
            db.execute("UPDATE docs SET metadata = '{\"n\": NaN}' WHERE id = 'c'")

        async def ids(flt: dict[str, Any]) -> list[str]:
            r = await client.post("/search", json={"collection": "c", "query": "q", "k": 10, "filter": flt})
            assert r.status_code == 200, (flt, r.text)
            return sorted(hit["id"] for hit in r.json()["results"][0])

        assert await ids({}) == ["a", "b", "c"]  # the NaN row itself can be returned
        assert await ids({"metadata": {"n": 2}}) == ["b"]
        assert await ids({"metadata": {"tag": "x", "ok": True}}) == ["a"]
        assert await ids({"metadata": {"none": None}}) == ["b"]
        assert await ids({"lang": "de", "metadata": {"n": 2.0}}) == ["b"]
        assert await ids({"metadata": {"n": 2**63 - 1, "k.with.dots": "v"}}) == []
        refused = [
            {"metadata": {"n": 2**63}},
            {"metadata": {"n": -(2**63) - 1}},
            {"metadata": {"k\u0000": 1}},
            {"metadata": {"line\nbreak": 1}},
            {"metadata": {'say "x"': 1}},
            {"metadata": {"back\\slash": 1}},
            {"metadata": {"": 1}},
            {"metadata": {"k" * 129: 1}},
            {"metadata": {"k": "v" * 1025}},
            {"metadata": {f"k{i}": i for i in range(33)}},
            {"metadata": {"k": [1, 2]}},
            {"metadata": {"k": {"nested": 1}}},
            {"lang": "x" * 65},
        ]
        for flt in refused:
            r = await client.post("/search", json={"collection": "c", "query": "q", "filter": flt})
            assert r.status_code == 422, (str(flt)[:80], r.text)
            assert r.json()["error"]["param"].startswith("filter"), r.text
        for raw in ('{"k": NaN}', '{"k": Infinity}', '{"\\ud800": 1}', '{"k": "\\udc00"}'):
            content = '{"collection": "c", "query": "q", "filter": {"metadata": ' + raw + "}}"
            r = await client.post("/search", content=content, headers={"Content-Type": "application/json"})
            assert r.status_code == 422, (raw, r.text)


# ---------------------------------------------------------------------- ingest
# ---------------------------------------------------------------------- ingest


async def test_jsonl_upload_ingests_and_reports_malformed_lines(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = settings_for(tmp_path / "home", tiny_model_dir)
    lines = jsonl(50).decode().splitlines()
    lines.insert(2, "{broken json")  # line 3
    lines.insert(9, json.dumps({"id": "x", "text": ""}))  # line 10
    body = ("\n".join(lines) + "\n").encode()
    async with serve(settings) as (app, client):
        await create(client, "docs")
        job = await upload(client, "docs", body, chunk_size=8)
        assert (
            job["type"] == "ingest" and job["collection"] == "docs" and job["state"] in ("queued", "running")
        )
        assert job["params"]["chunk_size"] == 8 and job["params"]["format"] == "jsonl"
        assert job["params"]["path"] == "(upload)"
        job = await wait_for(client, job["id"])
        assert job["state"] == "succeeded", job
        assert job["counts"] == {"documents": 50, "errors": 2}
        assert [e["line"] for e in job["errors"]] == [3, 10]
        assert "invalid JSON" in job["errors"][0]["message"] and "text" in job["errors"][1]["message"]
        assert job["progress"]["fraction"] == 1.0
        assert job["progress"]["bytes_done"] == job["progress"]["bytes_total"] == len(body)
        assert job["started"] and job["finished"] and job["error"] is None
        assert job["result"]["documents"] == 50

        # The service's own read handle sees the job's commits.
        stats = (await client.get("/admin/collections/docs")).json()
        assert stats["count"] == 50 and stats["index_vectors"] == 50
        assert gauge(app, "succeeded") == 1.0 and gauge(app, "running") == 0.0
        # The job embedded through the shared batcher, at bulk priority.
        bulk = app.state.metrics.registry.get_sample_value("dapsearch_bulk_embedded_texts_total")
        assert bulk == 50

    # Persisted as a job file; the consumed upload is gone.
    stored = Job.model_validate_json((settings.jobs_dir / f"{job['id']}.json").read_text())
    assert stored.state == "succeeded" and stored.counts.documents == 50
    assert list(settings.uploads_dir.iterdir()) == []
    with Collection.open(settings.collections_dir, "docs", readonly=True) as coll:
        assert len(coll) == 50
        ids, _, vectors = coll.vectors()
        hits = coll.search(vectors[[5, 17]], k=1)
        assert [h[0].id for h in hits] == [ids[5], ids[17]]
        doc = coll.get("d42")
        assert doc is not None and doc.text == "document number 42 about topic 0" and doc.lang == "en"


async def test_tsv_upload(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = settings_for(tmp_path / "home", tiny_model_dir)
    rows = ["id\ttext\tlang\tmetadata"] + [f"t{i}\tZeile {i}\tde\t" + json.dumps({"n": i}) for i in range(20)]
    rows.append("only-one-column")
    body = ("\n".join(rows) + "\n").encode()
    async with serve(settings) as (_, client):
        await create(client, "tsv")
        r = await client.post(
            "/admin/collections/tsv/documents?chunk_size=6",
            content=body,
            headers={"Content-Type": "text/tab-separated-values; charset=utf-8"},
        )
        assert r.status_code == 202, r.text
        job = await wait_for(client, r.json()["job"]["id"])
        assert job["state"] == "succeeded", job
        assert job["params"]["format"] == "tsv"
        assert job["counts"] == {"documents": 20, "errors": 1} and job["errors"][0]["line"] == 22
    with Collection.open(settings.collections_dir, "tsv", readonly=True) as coll:
        assert len(coll) == 20
        doc = coll.get("t3")
        assert doc is not None and doc.lang == "de" and doc.metadata == {"n": 3}


async def test_upload_refusals(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = settings_for(tmp_path / "home", tiny_model_dir, max_upload_bytes=2048)
    big = jsonl(100)
    assert len(big) > 2048
    async with serve(settings) as (_, client):
        await create(client, "c")
        r = await client.post(
            "/admin/collections/nope/documents", content=b"x", headers={"Content-Type": "application/jsonl"}
        )
        assert r.status_code == 404

        # Declared too large: refused before reading.
        r = await client.post(
            "/admin/collections/c/documents", content=big, headers={"Content-Type": "application/jsonl"}
        )
        assert r.status_code == 413 and r.json()["error"]["type"] == "too_large"

        # Streamed without a length: refused once the limit is passed, the partial file removed.
        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(big), 500):
                yield big[start : start + 500]

        r = await client.post(
            "/admin/collections/c/documents",
            content=chunks(),
            headers={"Content-Type": "application/x-ndjson"},
        )
        assert r.status_code == 413, r.text
        assert list(settings.uploads_dir.iterdir()) == []

        r = await client.post(
            "/admin/collections/c/documents", content=b"", headers={"Content-Type": "application/x-ndjson"}
        )
        assert r.status_code == 400 and "empty" in r.json()["error"]["message"]
        r = await client.post(
            "/admin/collections/c/documents", content=b"a\tb\n", headers={"Content-Type": "text/csv"}
        )
        assert r.status_code == 415
        r = await client.post(
            "/admin/collections/c/documents?format=tsv",
            content=b"{}\n",
            headers={"Content-Type": "application/jsonl"},
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "format"
        for query in ("chunk_size=0", "chunk_size=abc", "format=csv", "strict=maybe"):
            r = await client.post(
                f"/admin/collections/c/documents?{query}",
                content=b"x",
                headers={"Content-Type": "application/jsonl"},
            )
            assert r.status_code == 422, (query, r.text)
        assert list(settings.uploads_dir.iterdir()) == []
        assert (await client.get("/admin/jobs")).json() == {"jobs": []}

        # A generic type is fine when ?format= says what it is.
        r = await client.post(
            "/admin/collections/c/documents?format=jsonl",
            content=jsonl(5),
            headers={"Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 202
        assert (await wait_for(client, r.json()["job"]["id"]))["counts"]["documents"] == 5


async def test_strict_ingest_fails_at_the_first_malformed_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = settings_for(tmp_path / "home", tiny_model_dir)
    body = jsonl(10) + b"not json\n" + jsonl(5, start=10)
    async with serve(settings) as (_, client):
        await create(client, "c")
        job = await wait_for(client, (await upload(client, "c", body, strict="true", chunk_size=4))["id"])
        assert job["state"] == "failed" and ":11: invalid JSON" in job["error"]
        assert job["counts"]["documents"] == 8  # two chunks of 4 committed before line 11's chunk
    assert count(settings, "c") == 8


async def test_server_side_paths_stay_inside_the_data_dir(tmp_path: Path, tiny_model_dir: Path) -> None:
    home = tmp_path / "home"
    settings = settings_for(home, tiny_model_dir)
    data = settings.resolved_data_dir
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "a.jsonl").write_bytes(jsonl(12, "a"))
    (data / "b.tsv").write_bytes(b"".join(f"b{i}\ttext {i}\n".encode() for i in range(7)))
    (data / "c.data").write_bytes(jsonl(3, "c"))
    outside = home / "outside.jsonl"
    outside.write_bytes(jsonl(3, "o"))
    (data / "link.jsonl").symlink_to(outside)
    (data / "dirlink").symlink_to(home)

    async def post(body: dict[str, Any]) -> httpx.Response:
        return await client.post("/admin/collections/c/documents", json=body)

    async with serve(settings) as (_, client):
        await create(client, "c")
        r = await post({"path": "sub/a.jsonl", "chunk_size": 5})
        assert r.status_code == 202, r.text
        assert r.json()["job"]["params"]["upload"] is False
        assert r.json()["job"]["params"]["path"] == "sub/a.jsonl"  # inside the data dir, not absolute
        first = await wait_for(client, r.json()["job"]["id"])
        assert first["state"] == "succeeded" and first["counts"]["documents"] == 12
        (data / "sub" / "a.jsonl").write_bytes(jsonl(12, "n"))  # replaced: same size, other documents
        r = await post({"path": "sub/a.jsonl", "chunk_size": 5})
        replaced = await wait_for(client, r.json()["job"]["id"])
        assert replaced["state"] == "succeeded" and replaced["counts"]["documents"] == 12, replaced
        assert (await client.get("/admin/collections/c")).json()["count"] == 24
        r = await post({"path": str(data / "b.tsv")})  # absolute, inside
        assert r.status_code == 202, r.text
        assert (await wait_for(client, r.json()["job"]["id"]))["counts"]["documents"] == 7
        r = await post({"path": "c.data", "format": "jsonl"})
        assert r.status_code == 202, r.text
        assert (await wait_for(client, r.json()["job"]["id"]))["counts"]["documents"] == 3

        for escape in (
            "../outside.jsonl",
            "sub/../../outside.jsonl",
            str(outside),
            "link.jsonl",
            "dirlink/outside.jsonl",
            "/etc/passwd",
        ):
            r = await post({"path": escape})
            assert r.status_code == 403, (escape, r.text)
            assert r.json()["error"] == {
                "type": "forbidden",
                "message": "path outside the data directory",
                "param": "path",
            }
        r = await post({"path": "sub/missing.jsonl"})
        assert r.status_code == 404 and r.json()["error"]["param"] == "path"
        r = await post({"path": "c.data"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "format"
        for invalid in (
            {},
            {"path": ""},
            {"path": "a", "strict": "maybe"},
            {"path": "a", "chunk_size": 0},
            {"path": "a", "x": 1},
        ):
            r = await post(invalid)
            assert r.status_code == 422, (invalid, r.text)
        for unusable in (
            "sub/a.jsonl\x00x",
            "x" * 300 + ".jsonl",
            "sub/" + "y" * 5000,
            "/".join(["z"] * 3000),
        ):
            r = await post({"path": unusable})
            assert r.status_code == 400 and r.json()["error"]["param"] == "path", (unusable[:20], r.text)
            assert str(home) not in r.text and "Errno" not in r.text
        # The data-dir file stays: only uploads are consumed.
        assert (data / "sub" / "a.jsonl").is_file()
    assert count(settings, "c") == 34  # 12 + 12 (the replaced file) + 7 + 3


# ---------------------------------------------------------------------- cancel, restart


async def test_cancel_running_ingest(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = settings_for(tmp_path / "home", tiny_model_dir)
    total = 4000
    async with serve(settings) as (app, client):
        await create(client, "big")
        job = await upload(client, "big", jsonl(total), chunk_size=2)
        await wait_started(client, job["id"])
        assert gauge(app, "running") == 1.0

        # A collection with a running job cannot be deleted.
        r = await client.delete("/admin/collections/big")
        assert r.status_code == 409 and job["id"] in r.json()["error"]["message"]

        r = await client.post(f"/admin/jobs/{job['id']}/cancel")
        assert r.status_code == 200, r.text
        assert r.json()["job"]["cancel_requested"] is True
        job = await wait_for(client, job["id"])
        assert job["state"] == "cancelled", job
        assert 0 < job["counts"]["documents"] < total
        assert job["progress"]["fraction"] < 1.0
        assert (await client.post(f"/admin/jobs/{job['id']}/cancel")).status_code == 409
        assert gauge(app, "cancelled") == 1.0 and gauge(app, "running") == 0.0
        assert (await client.get("/admin/collections/big")).json()["count"] == job["counts"]["documents"]

        # A queued job is cancelled at once: it never runs.
        blocker = await upload(client, "big", jsonl(total, "q"), chunk_size=2)
        queued = await upload(client, "big", jsonl(5, "z"))
        r = await client.post(f"/admin/jobs/{queued['id']}/cancel")
        assert r.json()["job"]["state"] == "cancelled"
        await client.post(f"/admin/jobs/{blocker['id']}/cancel")
        await wait_for(client, blocker["id"])
        assert (await client.delete("/admin/collections/big")).status_code == 204
    assert list(settings.uploads_dir.iterdir()) == []


async def test_shutdown_mid_ingest_resumes_on_restart(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = settings_for(tmp_path / "home", tiny_model_dir)
    total = 4000
    async with serve(settings) as (_, client):
        await create(client, "big")
        job_id = (await upload(client, "big", jsonl(total) + b"oops\n", chunk_size=2))["id"]
        await wait_started(client, job_id)
    stored = Job.model_validate_json((settings.jobs_dir / f"{job_id}.json").read_text())
    assert stored.state == "queued"  # stopped with the service, not lost
    assert 0 < count(settings, "big") < total

    async with serve(settings) as (app, client):
        job = await wait_for(client, job_id)
        assert job["state"] == "succeeded", job
        assert job["counts"] == {"documents": total, "errors": 1} and job["errors"][0]["line"] == total + 1
        assert job["progress"]["fraction"] == 1.0
        assert (await client.get("/admin/collections/big")).json()["count"] == total
        assert gauge(app, "succeeded") == 1.0
    with Collection.open(settings.collections_dir, "big", readonly=True) as coll:
        ids, _, _ = coll.vectors()
        assert sorted(ids) == sorted(f"d{i}" for i in range(total))  # each document exactly once


async def test_crashed_jobs_resume_or_fail_with_a_reason(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Job files left 'running' by a killed process: resumed from the last commit, or failed."""
    settings = settings_for(tmp_path / "home", tiny_model_dir)
    encoder = Encoder.load(tiny_model_dir, backend="onnx", threads=1)
    body = jsonl(3) + b"{bad\n" + jsonl(57, start=3)
    upload_path = settings.uploads_dir / "crashed.jsonl"
    upload_path.parent.mkdir(parents=True)
    upload_path.write_bytes(body)

    class Killed(Exception):
        pass

    chunks = 0

    def die_after_two_chunks(_docs: int, _offset: int, _passages: int) -> None:
        nonlocal chunks
        chunks += 1
        if chunks == 2:
            raise Killed

    with Collection.create(settings.collections_dir, "c", encoder.model_id, encoder.dim) as coll:
        with pytest.raises(Killed):
            ingest(coll, encoder, upload_path, "jsonl", 10, progress=die_after_two_chunks)
        assert len(coll) == 20

    def crashed(path: Path) -> Job:
        params = IngestParams(
            path=str(path), upload=True, format="jsonl", chunk_size=10, start_offset=0, start_line=0
        )
        job = Job(
            id=new_job_id(),
            type="ingest",
            state="running",
            collection="c",
            params=params,
            progress=JobProgress(docs=10, bytes_done=100, bytes_total=len(body)),
            created="2024-01-01T00:00:00+00:00",
            started="2024-01-01T00:00:01+00:00",
        )
        settings.jobs_dir.mkdir(parents=True, exist_ok=True)
        (settings.jobs_dir / f"{job.id}.json").write_text(job.model_dump_json())
        return job

    resumable = crashed(upload_path)
    vanished = crashed(settings.uploads_dir / "gone.jsonl")
    orphan = settings.uploads_dir / ".orphan.jsonl.part"
    orphan.write_bytes(b"half an upload, cut off by the crash")
    os.utime(orphan, (time.time() - 7200, time.time() - 7200))
    receiving = settings.uploads_dir / ".other-process.jsonl.part"
    receiving.write_bytes(b"an upload another process is receiving now")

    async with serve(settings) as (app, client):
        job = await wait_for(client, resumable.id)
        assert job["state"] == "succeeded", job
        assert job["counts"] == {"documents": 60, "errors": 1}  # exact, though 20 were done before the crash
        assert [e["line"] for e in job["errors"]] == [4]
        assert job["started"] == "2024-01-01T00:00:01+00:00"
        lost = (await client.get(f"/admin/jobs/{vanished.id}")).json()["job"]
        assert lost["state"] == "failed" and "gone" in lost["error"] and "gone.jsonl" in lost["error"]
        r = await client.get("/admin/jobs", params={"state": "failed"})
        assert [j["id"] for j in r.json()["jobs"]] == [vanished.id]
        assert gauge(app, "failed") == 1.0
    assert count(settings, "c") == 60
    # The consumed upload and the old orphan are removed; a file being written now is not.
    assert list(settings.uploads_dir.iterdir()) == [receiving]


async def test_job_files_whose_id_is_not_their_own_are_not_loaded(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """A job id read from disk names the job's files, so it is checked as strictly as a new one: a
    path (``../../x``), or another file's id, is skipped at start, not run and written back."""
    settings = settings_for(tmp_path / "home", tiny_model_dir)
    upload_path = settings.uploads_dir / "ok.jsonl"
    upload_path.parent.mkdir(parents=True)
    upload_path.write_bytes(jsonl(5))
    encoder = Encoder.load(tiny_model_dir, backend="onnx", threads=1)
    Collection.create(settings.collections_dir, "c", encoder.model_id, encoder.dim).close()
    settings.jobs_dir.mkdir(parents=True)
    params = IngestParams(
        path=str(upload_path), upload=True, format="jsonl", chunk_size=10, start_offset=0, start_line=0
    )
    good = Job(
        id=new_job_id(), type="ingest", state="queued", collection="c", params=params,
        created="2024-01-01T00:00:00+00:00",
    )  # fmt: skip
    (settings.jobs_dir / f"{good.id}.json").write_text(good.model_dump_json())
    escape = good.model_copy(update={"id": "../../escaped"})
    (settings.jobs_dir / "escape.json").write_text(escape.model_dump_json())
    other = good.model_copy(update={"id": new_job_id()})
    (settings.jobs_dir / "0123456789abcdef01234567.json").write_text(other.model_dump_json())

    async with serve(settings) as (_app, client):
        assert (await wait_for(client, good.id))["state"] == "succeeded"
        listed = [j["id"] for j in (await client.get("/admin/jobs")).json()["jobs"]]
        assert listed == [good.id]
    assert not (settings.jobs_dir / "../../escaped.json").resolve().exists()
    assert sorted(p.name for p in settings.jobs_dir.iterdir()) == sorted(
        [f"{good.id}.json", "escape.json", "0123456789abcdef01234567.json"]
    )


# ---------------------------------------------------------------------- mining, jobs


async def test_mine_job_and_pairs_download(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = settings_for(tmp_path / "home", tiny_model_dir)
    n = 30
    async with serve(settings) as (_, client):
        for name, prefix in (("src", "s"), ("tgt", "t")):
            await create(client, name)
            job = await wait_for(client, (await upload(client, name, jsonl(n, prefix)))["id"])
            assert job["state"] == "succeeded"
        await create(client, "empty")

        r = await client.post("/admin/mine", json={"source": "src", "target": "tgt", "score": "absolute"})
        assert r.status_code == 202, r.text
        assert r.headers["Location"] == f"/admin/jobs/{r.json()['job']['id']}"
        job = await wait_for(client, r.json()["job"]["id"])
        assert job["state"] == "succeeded", job
        assert job["type"] == "mine" and job["progress"]["fraction"] == 1.0
        assert job["params"] == {
            "source": "src",
            "target": "tgt",
            "k": 4,
            "score": "absolute",
            "strategy": "max",
            "threshold": None,
            "engine": "local",
        }
        pairs = job["result"]["pairs"]
        assert pairs == n and job["result"]["download"] == f"/admin/jobs/{job['id']}/pairs"
        assert str(tmp_path) not in json.dumps(job)  # no server path in what clients see

        r = await client.get(f"/admin/jobs/{job['id']}/pairs")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/tab-separated-values")
        rows = [line.split("\t") for line in r.text.splitlines()]
        assert len(rows) == pairs and all(len(row) == 5 for row in rows)
        scores = [float(row[0]) for row in rows]
        assert scores == sorted(scores, reverse=True)
        # Both sides hold the same texts: each source finds its own copy (cosine 1) on the other side.
        assert all(row[1][1:] == row[2][1:] and row[3] == row[4] for row in rows)
        assert all(s == pytest.approx(1.0, abs=1e-4) for s in scores)

        r = await client.post("/admin/mine", json={"source": "src", "target": "empty"})
        failed = await wait_for(client, r.json()["job"]["id"])
        assert failed["state"] == "failed" and "empty" in failed["error"]
        assert (await client.get(f"/admin/jobs/{failed['id']}/pairs")).status_code == 409

        r = await client.post("/admin/mine", json={"source": "src", "target": "nope"})
        assert r.status_code == 404 and r.json()["error"]["param"] == "target"
        for bad in (
            {"source": "src", "target": "tgt", "k": 0},
            {"source": "src", "target": "tgt", "score": "cos"},
            {"source": "src"},
            {"source": "src", "target": "tgt", "strategy": "all"},
        ):
            assert (await client.post("/admin/mine", json=bad)).status_code == 422, bad
        r = await client.post(
            "/admin/mine",
            content=b'{"source": "src", "target": "tgt", "threshold": NaN}',
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 422

        ingest_id = (await client.get("/admin/jobs", params={"state": "succeeded"})).json()["jobs"][0]["id"]
        assert (await client.get(f"/admin/jobs/{ingest_id}/pairs")).status_code == 404


async def test_job_listing_and_unknown_jobs(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = settings_for(tmp_path / "home", tiny_model_dir)
    async with serve(settings) as (_, client):
        await create(client, "c")
        ids = [(await upload(client, "c", jsonl(3, f"p{i}-")))["id"] for i in range(3)]
        for job_id in ids:
            await wait_for(client, job_id)
        listed = (await client.get("/admin/jobs")).json()["jobs"]
        assert [j["id"] for j in listed] == ids  # submission order
        assert len((await client.get("/admin/jobs?state=succeeded")).json()["jobs"]) == 3
        assert (await client.get("/admin/jobs?state=running")).json()["jobs"] == []
        assert (await client.get("/admin/jobs?state=bogus")).status_code == 422
        for method, path in (
            ("GET", "/admin/jobs/nope"),
            ("POST", "/admin/jobs/nope/cancel"),
            ("GET", "/admin/jobs/nope/pairs"),
        ):
            r = await client.request(method, path)
            assert r.status_code == 404 and r.json()["error"]["type"] == "not_found", path
    assert sorted(p.stem for p in settings.jobs_dir.glob("*.json")) == sorted(ids)
    assert count(settings, "c") == 9
