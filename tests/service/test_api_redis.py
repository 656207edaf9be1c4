"""The service with the real Redis as its cache: shared entries, and no 5xx when Redis stalls or dies."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest
import redis

from model.encoder import Encoder
from service.settings import Settings
from tests.service.conftest import started

pytestmark = [pytest.mark.anyio, pytest.mark.real_model]
DB = 14


@pytest.fixture(scope="module")
def admin() -> Iterator[redis.Redis]:
    r = redis.Redis(host="127.0.0.1", port=6379, db=DB)
    r.ping()  # the real Redis is part of the test environment: fail, never skip
    r.flushdb()
    yield r
    r.flushdb()
    r.close()


@pytest.fixture(scope="module")
async def client(
    real_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        home=tmp_path_factory.mktemp("redis-home"),
        model_dir=real_model_dir,
        redis_url=f"redis://127.0.0.1:6379/{DB}",
        redis_timeout_ms=100,
        demo=False,
    )
    async with started(settings) as (_, c):
        yield c


async def test_embeddings_are_shared_through_redis(
    client: httpx.AsyncClient, admin: redis.Redis, real_encoders: dict[str, Encoder]
) -> None:
    enc = real_encoders["served"]
    assert (await client.get("/health/ready")).json()["cache"] == {
        "backend": "redis",
        "ok": True,
        "detail": None,
    }
    body = {"texts": ["Redis teilt diesen Vektor."], "kind": "passage"}
    first = (await client.post("/embed", json=body)).json()
    keys = [k.decode() for k in admin.scan_iter(match=f"dapsearch:v1:emb:{enc.model_id}:passage:*")]
    ttl = admin.ttl(keys[0])
    assert isinstance(ttl, int)
    assert len(keys) == 1 and 0 < ttl <= 7 * 24 * 3600
    second = (await client.post("/embed", json=body)).json()
    assert second == first
    np.testing.assert_allclose(first["embeddings"][0], enc.embed(body["texts"], "passage")[0], atol=1e-6)


async def test_paused_redis_is_bypassed_without_errors(
    client: httpx.AsyncClient, admin: redis.Redis, real_encoders: dict[str, Encoder]
) -> None:
    enc = real_encoders["served"]
    texts = ["Während Redis pausiert, antwortet der Dienst trotzdem.", "still served"]
    admin.client_pause(1500, all=True)
    started_at = time.monotonic()
    try:
        r = await client.post("/embed", json={"texts": texts})
        ready = await client.get("/health/ready")
    finally:
        elapsed = time.monotonic() - started_at
    assert r.status_code == 200, r.text
    assert elapsed < 1.4, f"a paused Redis delayed the request by {elapsed:.2f}s"
    got = np.array(r.json()["embeddings"], dtype=np.float32)
    assert (got * enc.embed(texts, "query")).sum(axis=1).min() > 0.99
    assert ready.status_code == 200 and ready.json()["status"] == "degraded"
    await anyio.sleep(1.6)  # pause over; the cache recovers by itself
    for _ in range(50):
        if (await client.get("/health/ready")).json()["status"] == "ready":
            break
        await anyio.sleep(0.1)
    assert (await client.get("/health/ready")).json()["status"] == "ready"
    again = await client.post("/embed", json={"texts": ["after the pause"]})
    assert again.status_code == 200
    assert any(admin.scan_iter(match="dapsearch:v1:emb:*")), "writes resume after recovery"


async def test_dead_redis_degrades_but_serves(real_model_dir: Path, tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path, model_dir=real_model_dir, redis_url="redis://127.0.0.1:1/0", demo=False
    )
    async with started(settings) as (_, c):
        ready = (await c.get("/health/ready")).json()
        assert ready["status"] == "degraded" and ready["cache"]["ok"] is False
        for _ in range(3):
            r = await c.post("/embed", json={"texts": ["no cache today"]})
            assert r.status_code == 200 and len(r.json()["embeddings"][0]) == 384
        metrics = (await c.get("/metrics")).text
        assert "dapsearch_cache_errors_total" in metrics
