"""The service around the model, on the dummy backend: no model directory, seconds in all.

The Batcher, the Embedder and the job runner are built directly here; the app is started with
``create_app(settings, Encoder.dummy())``. What needs real vectors (ranking, parity, truncation
at the real tokenizer) stays in the real-model tests.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from core.clock import now_iso
from model.artifact import Manifest
from model.encoder import Encoder, Kind, TextTokenizer, Tokenized
from service.app import create_app
from service.batcher import Batcher, Overloaded
from service.cache import MemoryCache
from service.collections import Collections
from service.embedding import Embedder
from service.jobs.models import IngestParams, Job, JobProgress, new_job_id
from service.jobs.runner import JobRunner
from service.metrics import Metrics
from service.settings import Settings

pytestmark = pytest.mark.anyio
AUTH = {"Authorization": "Bearer k1"}


def settings_for(home: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"home": home, "admin_keys": "k1", "demo": False, "redis_url": None}
    return Settings(**(values | overrides))


def test_the_dummy_encoder_is_deterministic_and_batch_invariant(encoder: Encoder) -> None:
    texts = [f"text {i}" for i in range(9)]
    together = encoder.embed(texts)
    alone = np.stack([encoder.embed([t])[0] for t in texts])
    assert np.array_equal(together, alone)
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-6)
    assert abs(float(together[0] @ together[1])) < 0.9  # different texts, unrelated vectors
    assert encoder.encode(["x" * 100]).truncated == [0]  # 100 bytes > 16 tokens
    assert encoder.backend.name == "dummy" and encoder.model_id.startswith("dummy-32@")


# ---------------------------------------------------------------------------------- Batcher


class CountingEncoder(Encoder):
    """The dummy encoder, recording the size of every forward pass and able to hold one."""

    def __init__(self, base: Encoder) -> None:
        super().__init__(base.manifest, base.tokenizer, base.backend, base.batch_size)
        self.calls: list[list[str]] = []
        self.hold = anyio.Event()  # set from the test: the held pass may go on
        self.holding = False

    def encode(self, texts: Any, kind: Any = "query", *args: Any, **kwargs: Any) -> Any:
        self.calls.append(list(texts))
        if self.holding:
            while not self.hold.is_set():
                time.sleep(0.001)
        return super().encode(texts, kind, *args, **kwargs)


@asynccontextmanager
async def running(batcher: Batcher) -> AsyncIterator[Batcher]:
    batcher.start()
    try:
        yield batcher
    finally:
        await batcher.stop()


async def test_the_batcher_coalesces_concurrent_requests_and_keeps_their_order(encoder: Encoder) -> None:
    counting = CountingEncoder(encoder)
    counting.holding = True
    async with running(Batcher(counting, Metrics(), max_batch=8, max_wait_s=0.05)) as batcher:
        first = asyncio.ensure_future(batcher.embed(["a"], "query"))
        while not counting.calls:
            await asyncio.sleep(0.001)  # the first pass holds the engine
        rest = [asyncio.ensure_future(batcher.embed([f"t{i}", f"u{i}"], "query")) for i in range(3)]
        await asyncio.sleep(0.01)
        counting.hold.set()
        results = await asyncio.gather(first, *rest)
    assert counting.calls[1] == ["t0", "u0", "t1", "u1", "t2", "u2"]  # one pass for the three
    for i, result in enumerate(results[1:]):
        assert np.array_equal(result.vectors, encoder.embed([f"t{i}", f"u{i}"]))


async def test_online_requests_go_before_bulk_and_a_full_queue_is_429(encoder: Encoder) -> None:
    counting = CountingEncoder(encoder)
    counting.holding = True
    async with running(Batcher(counting, Metrics(), max_batch=4, max_queue=4, bulk_batch=2)) as batcher:
        warm = asyncio.ensure_future(batcher.embed(["hold"], "query"))
        while not counting.calls:
            await asyncio.sleep(0.001)
        bulk = asyncio.ensure_future(batcher.embed([f"b{i}" for i in range(6)], "passage", priority="bulk"))
        online = asyncio.ensure_future(batcher.embed(["o1", "o2", "o3"], "query"))
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded) as refused:
            await batcher.embed(["o4", "o5"], "query")  # 3 queued + 2 > 4
        assert refused.value.status == 429 and int(refused.value.headers()["Retry-After"]) >= 1
        counting.hold.set()
        await asyncio.gather(warm, bulk, online)
    assert counting.calls[1] == ["o1", "o2", "o3"]
    assert all(len(call) <= 4 for call in counting.calls)


async def test_a_batch_is_bounded_in_tokens_as_well_as_in_texts() -> None:
    """With ids known, a batch stops at max_batch_tokens (a text over it runs alone); requests
    behind a long one still come in their turn, and every text comes back in its place."""
    wide = Encoder.dummy(dim=32, max_length=64, batch_size=8)
    counting = CountingEncoder(wide)
    counting.holding = True
    long_texts = ["x" * 20] * 5 + ["y" * 60]  # the dummy's tokens are bytes: 20 each, then 60
    short = ["ab", "cd"]
    async with running(Batcher(counting, Metrics(), max_batch=8, max_batch_tokens=40)) as batcher:
        try:
            warm = asyncio.ensure_future(batcher.embed(["hold"], "query"))
            while not counting.calls:
                await asyncio.sleep(0.001)
            ids = wide.tokenizer.tokenize(long_texts, "query")
            big = asyncio.ensure_future(batcher.embed(long_texts, "query", tokenized=ids))
            small = asyncio.ensure_future(
                batcher.embed(short, "query", tokenized=wide.tokenizer.tokenize(short, "query"))
            )
            await asyncio.sleep(0.01)
        finally:
            counting.hold.set()
        results = await asyncio.gather(warm, big, small)
    # Two long texts fill the budget; the short request comes next with the one long text that
    # still fits beside it, then the rest; the 60-token text runs alone.
    assert counting.calls[1:] == [long_texts[:2], short + long_texts[2:3], long_texts[3:5], long_texts[5:]]
    assert results[1].lengths == [20] * 5 + [60]
    assert np.array_equal(results[1].vectors, wide.embed(long_texts))
    assert np.array_equal(results[2].vectors, wide.embed(short))


async def test_stop_cancels_what_is_still_queued(encoder: Encoder) -> None:
    counting = CountingEncoder(encoder)
    counting.holding = True
    batcher = Batcher(counting, Metrics(), max_batch=1)
    batcher.start()
    first = asyncio.ensure_future(batcher.embed(["one"], "query"))
    while not counting.calls:
        await asyncio.sleep(0.001)
    queued = asyncio.ensure_future(batcher.embed(["two"], "query"))
    await asyncio.sleep(0.01)
    counting.hold.set()
    await batcher.stop()
    await asyncio.wait([queued], timeout=5)
    assert queued.cancelled() and batcher.queued == 0
    first.cancel()  # the pass in flight when the batcher stopped


# --------------------------------------------------------------------------------- Embedder


async def test_the_embedder_fills_the_cache_and_answers_from_it(encoder: Encoder) -> None:
    counting = CountingEncoder(encoder)
    metrics = Metrics()
    cache = MemoryCache(100)
    async with running(Batcher(counting, metrics)) as batcher:
        embedder = Embedder(batcher, cache, metrics)
        first = await embedder.embed(["a", "b", "a", "x" * 100], "query")
        assert counting.calls == [["a", "b", "x" * 100]]  # a repeated text is embedded once
        again = await embedder.embed(["x" * 100, "a"], "query")
        assert len(counting.calls) == 1  # all from the cache
        other_kind = await embedder.embed(["a"], "passage")
    assert len(counting.calls) == 2 and len(cache) == 4
    assert np.array_equal(first.vectors[0], first.vectors[2])
    assert np.array_equal(again.vectors[1], first.vectors[0])
    assert first.truncated == [3] and again.truncated == [0]  # cut texts stay reported from the cache
    assert first.lengths[3] == 16 and again.lengths == [16, first.lengths[0]]
    assert other_kind.vectors.shape == (1, 32)


# ------------------------------------------------------------------------------ job runner


def _ingest_job(jobs: JobRunner, settings: Settings, name: str, n: int, label: str) -> Job:
    """A job of ``n`` documents from ``<label>.jsonl``, under a fresh job id."""
    path = settings.resolved_data_dir / f"{label}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": f"{label}-{i}", "text": f"t {i}"}) + "\n" for i in range(n)))
    return jobs.ingest_job(new_job_id(), name, path, "jsonl", upload=False, chunk_size=2)


@asynccontextmanager
async def job_runner(settings: Settings, encoder: Encoder) -> AsyncIterator[tuple[JobRunner, Collections]]:
    collections = Collections(settings.collections_dir, encoder.model_id)
    if not collections.exists("news"):
        collections.create("news", encoder.dim)
    jobs = JobRunner(settings, encoder, collections, Metrics())
    await jobs.start()
    try:
        yield jobs, collections
    finally:
        await jobs.stop()
        collections.close()


async def _finished(jobs: JobRunner, job_id: str) -> Job:
    with anyio.fail_after(30):
        while (job := jobs.get(job_id)).state in ("queued", "running"):
            await anyio.sleep(0.01)
    return job


async def test_the_job_runner_runs_jobs_in_order_and_cancels_a_queued_one(
    tmp_path: Path, encoder: Encoder
) -> None:
    settings = settings_for(tmp_path)
    async with job_runner(settings, encoder) as (jobs, _):
        submitted = [await jobs.submit(_ingest_job(jobs, settings, "news", 5, f"job{i}")) for i in range(3)]
        cancelled = await jobs.cancel(submitted[2].id)
        done = [await _finished(jobs, job.id) for job in submitted]
    assert cancelled.state in ("cancelled", "running") and done[2].state == "cancelled"
    assert [job.state for job in done[:2]] == ["succeeded", "succeeded"]
    assert done[0].finished is not None and done[1].started is not None
    assert done[0].finished <= done[1].started  # one at a time, in submission order
    assert [job.counts.documents for job in done[:2]] == [5, 5]


async def test_a_job_found_running_at_start_is_queued_again_and_resumes(
    tmp_path: Path, encoder: Encoder
) -> None:
    settings = settings_for(tmp_path)
    async with job_runner(settings, encoder) as (jobs, _):
        job = _ingest_job(jobs, settings, "news", 7, "crashed")
    # As a process that died in the middle of the job leaves it: "running" on disk.
    job.state, job.started = "running", now_iso()
    settings.jobs_dir.mkdir(parents=True, exist_ok=True)
    (settings.jobs_dir / f"{job.id}.json").write_text(job.model_dump_json())
    async with job_runner(settings, encoder) as (jobs, _):
        done = await _finished(jobs, job.id)
    assert done.state == "succeeded" and done.counts.documents == 7 and done.crashes == 1


async def test_a_failed_job_says_why_without_server_paths(tmp_path: Path, encoder: Encoder) -> None:
    settings = settings_for(tmp_path)
    async with job_runner(settings, encoder) as (jobs, _):
        job = _ingest_job(jobs, settings, "news", 3, "gone")
        Path(job.params.path if isinstance(job.params, IngestParams) else "").unlink()
        job.progress = JobProgress()
        done = await _finished(jobs, (await jobs.submit(job)).id)
    assert done.state == "failed" and done.error is not None
    assert "gone.jsonl" in done.error and str(tmp_path) not in done.error


# ------------------------------------------------------------------------------------- API


@asynccontextmanager
async def serve(settings: Settings, encoder: Encoder) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(settings, encoder)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=AUTH) as client:
            with anyio.fail_after(30):
                while (await client.get("/health/ready")).status_code != 200:
                    await anyio.sleep(0.01)
            yield app, client


async def test_the_api_embeds_ingests_and_searches_without_a_model(tmp_path: Path, encoder: Encoder) -> None:
    settings = settings_for(tmp_path)
    async with serve(settings, encoder) as (app, client):
        assert app.state.runtime.encoder is encoder
        info = (await client.get("/info")).json()
        assert info["model"] == encoder.model_id and info["backend"] == "dummy"
        r = await client.post("/embed", json={"texts": ["hello", "hello"], "kind": "query"})
        assert r.status_code == 200, r.text
        vectors = r.json()["embeddings"]
        assert vectors[0] == vectors[1] and np.allclose(vectors[0], encoder.embed(["hello"])[0], atol=1e-6)

        assert (await client.post("/admin/collections", json={"name": "news"})).status_code == 201
        body = "".join(
            json.dumps({"id": f"d{i}", "text": f"document {i}", "lang": "en"}) + "\n" for i in range(20)
        )
        r = await client.post(
            "/admin/collections/news/documents",
            content=body + "{broken\n",
            headers={"Content-Type": "application/x-ndjson"},
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["job"]["id"]
        with anyio.fail_after(30):
            while (job := (await client.get(f"/admin/jobs/{job_id}")).json()["job"])["state"] != "succeeded":
                assert job["state"] in ("queued", "running"), job
                await anyio.sleep(0.01)
        assert job["counts"] == {"documents": 20, "errors": 1} and job["errors"][0]["line"] == 21
        assert job["result"]["passages"] == 20  # one passage each: short documents

        # No prefixes on the dummy: a document's own text, as a query, is its exact vector.
        r = await client.post(
            "/search", json={"collection": "news", "query": "document 7", "k": 3, "mode": "dense"}
        )
        assert r.status_code == 200, r.text
        hit = r.json()["results"][0][0]
        assert hit["id"] == "d7" and hit["score"] == pytest.approx(1.0, abs=1e-5)
        r = await client.post("/search", json={"collection": "nope", "query": "x"})
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"


class CountingTokenizer(TextTokenizer):
    """The dummy's tokenizer, counting how many times each text is tokenised."""

    def __init__(self, manifest: Manifest) -> None:
        super().__init__(None, manifest)
        self.seen: Counter[str] = Counter()

    def tokenize(self, texts: Sequence[str], kind: Kind) -> Tokenized:
        self.seen.update(texts)
        return super().tokenize(texts, kind)


async def test_each_text_is_tokenised_once_on_its_way_to_the_engine(tmp_path: Path) -> None:
    """A request's texts are tokenised to charge its token budget, and those ids go on to the
    engine; a job's texts are tokenised on the job's thread, not again on the engine's."""
    plain = Encoder.dummy(dim=32, max_length=16, batch_size=4)
    counting = CountingTokenizer(plain.manifest)
    encoder = Encoder(plain.manifest, counting, plain.backend, plain.batch_size)
    async with serve(settings_for(tmp_path), encoder) as (_, client):
        counting.seen.clear()  # the warm-up
        texts = [f"text {i}" for i in range(10)] + ["y" * 40, "text 3"]  # one cut at 16, one twice
        r = await client.post("/embed", json={"texts": texts, "kind": "passage"})
        assert r.status_code == 200, r.text
        assert r.json()["truncated"] == [10]
        assert counting.seen == Counter(texts)
        assert np.allclose(r.json()["embeddings"], plain.embed(texts, "passage"), atol=1e-6)

        counting.seen.clear()
        assert (await client.post("/admin/collections", json={"name": "news"})).status_code == 201
        docs = [{"id": f"d{i}", "text": f"document {i}", "lang": "en"} for i in range(12)]
        body = "".join(json.dumps(doc) + "\n" for doc in docs)
        r = await client.post(
            "/admin/collections/news/documents",
            content=body,
            headers={"Content-Type": "application/x-ndjson"},
        )
        assert r.status_code == 202, r.text
        await _done(client, r.json()["job"]["id"])
        assert {f"document {i}" for i in range(12)} <= set(counting.seen)
        assert all(counting.seen[f"document {i}"] == 1 for i in range(12)), counting.seen


async def _done(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    with anyio.fail_after(120):
        while (job := (await client.get(f"/admin/jobs/{job_id}")).json()["job"])["state"] != "succeeded":
            assert job["state"] in ("queued", "running"), job
            await anyio.sleep(0.05)
    return dict(job)


@pytest.mark.usefixtures("local_ray")
async def test_admin_ingest_and_mining_jobs_run_on_ray_with_shard_progress(
    tmp_path: Path, encoder: Encoder
) -> None:
    settings = settings_for(tmp_path, ray_shard_bytes=1024, ray_actors=2)
    async with serve(settings, encoder) as (_, client):
        for name in ("src", "ray"):
            assert (await client.post("/admin/collections", json={"name": name})).status_code == 201
        body = "".join(json.dumps({"id": f"d{i}", "text": f"document {i}"}) + "\n" for i in range(200))
        jobs = {}
        for name, engine in (("src", "local"), ("ray", "ray")):
            r = await client.post(
                f"/admin/collections/{name}/documents?engine={engine}",
                content=body + "{broken\n",
                headers={"Content-Type": "application/x-ndjson"},
            )
            assert r.status_code == 202, r.text
            assert r.json()["job"]["params"]["engine"] == engine
            jobs[name] = await _done(client, r.json()["job"]["id"])
        on_ray = jobs["ray"]
        assert on_ray["counts"] == jobs["src"]["counts"] == {"documents": 200, "errors": 1}
        assert on_ray["errors"] == jobs["src"]["errors"]
        shards = on_ray["progress"]["shards"]
        assert shards["total"] > 5 and shards["merged"] == shards["embedded"] == shards["total"]
        assert jobs["src"]["progress"]["shards"] is None

        mined = {}
        for engine in ("local", "ray"):
            r = await client.post("/admin/mine", json={"source": "src", "target": "ray", "engine": engine})
            assert r.status_code == 202, r.text
            job = await _done(client, r.json()["job"]["id"])
            mined[engine] = (await client.get(f"/admin/jobs/{job['id']}/pairs")).text
        rows = {
            e: sorted((line.split("\t") for line in text.splitlines()), key=lambda r: r[1:])
            for e, text in mined.items()
        }
        assert len(rows["ray"]) == len(rows["local"]) >= 200  # the same pairs, scores to float rounding
        assert [r[1:] for r in rows["ray"]] == [r[1:] for r in rows["local"]]
        assert [float(r[0]) for r in rows["ray"]] == pytest.approx(
            [float(r[0]) for r in rows["local"]], abs=1e-5
        )
        r = await client.post("/admin/mine", json={"source": "src", "target": "ray", "engine": "spark"})
        assert r.status_code == 422 and "engine" in r.text


async def test_a_ray_job_on_a_server_without_ray_is_refused_at_submission(
    tmp_path: Path, encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serve(settings_for(tmp_path), encoder) as (_, client):
        assert (await client.post("/admin/collections", json={"name": "news"})).status_code == 201
        monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
        r = await client.post(
            "/admin/collections/news/documents?engine=ray",
            content=json.dumps({"id": "a", "text": "b"}) + "\n",
            headers={"Content-Type": "application/x-ndjson"},
        )
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == "engine" and "pip install 'dapsearch[ray]'" in error["message"]
        r = await client.post("/admin/mine", json={"source": "news", "target": "news", "engine": "ray"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "engine"
        assert (await client.get("/admin/jobs")).json()["jobs"] == []  # nothing queued
