"""service/cache.py: the in-process LRU, and a real Redis (round trip, TTL, outage, pause, back-off).

The Redis tests use the server on 127.0.0.1:6379, database 15, under a unique key prefix per test
that is deleted afterwards. Timing asserts are loose correctness bounds (a call must come back within
a small multiple of its timeout), not benchmarks.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from redis.asyncio import Redis

from service.cache import Cache, MemoryCache, RedisCache, create_cache
from service.metrics import Metrics
from service.settings import Settings

REDIS_URL = "redis://127.0.0.1:6379/15"
DEAD_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connection refused
TIMEOUT_S = 0.1
SLOW_S = 1.0  # "returned within a small multiple of the timeout"

T = TypeVar("T")


def _redis_running() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


needs_redis = pytest.mark.usefixtures("redis_up")


@pytest.fixture
def redis_up() -> None:
    """The real Redis is part of the test environment (.ci/run starts it): fail, never skip."""
    assert _redis_running(), (
        "no Redis on 127.0.0.1:6379 (redis-server --daemonize yes --port 6379 --save '' --appendonly no)"
    )


pytestmark = pytest.mark.anyio


@pytest.fixture
def prefix() -> str:
    return f"dapsearch:test:{uuid.uuid4().hex}:"


@pytest.fixture
async def admin(prefix: str) -> AsyncIterator[Redis]:
    """A separate client on one already-open connection (it must still work around CLIENT PAUSE)."""
    client = Redis.from_url(REDIS_URL, single_connection_client=True)
    await client.client_id()  # opens the connection now
    yield client
    keys = [key async for key in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
def cache_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO, logger="dapsearch.cache")
    yield caplog


def _errors(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("dapsearch_cache_errors_total")
    return 0.0 if value is None else value


def _records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "dapsearch.cache" and r.levelno == level]


async def _timed(call: Awaitable[T]) -> tuple[T, float]:
    start = time.monotonic()
    result = await call
    return result, time.monotonic() - start


def _count_connections(cache: RedisCache, monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """Spy on the client's pool: every command and pipeline takes a connection from it first."""
    pool = cache._client.connection_pool
    original: Callable[..., Awaitable[Any]] = pool.get_connection
    calls = 0

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return await original(*args, **kwargs)

    monkeypatch.setattr(pool, "get_connection", counting)
    return lambda: calls


async def _wait_out_backoff(cache: RedisCache) -> None:
    while cache.in_backoff():
        await asyncio.sleep(0.01)


# --- in-process LRU


async def test_memory_lru_evicts_least_recently_used() -> None:
    cache: Cache = MemoryCache(3)
    assert cache.name == "memory"
    await cache.set_many({"a": b"A", "b": b"B", "c": b"C"})
    assert await cache.get("a") == b"A"  # a hit makes "a" most recently used, so "b" goes next
    await cache.set("d", b"D")
    assert await cache.get_many(["a", "b", "c", "d"]) == [b"A", None, b"C", b"D"]
    await cache.set("c", b"C2")  # a fill keeps the stored value but refreshes recency: "a" is oldest
    await cache.set("e", b"E")
    assert await cache.get_many(["a", "c", "d", "e"]) == [None, b"C", b"D", b"E"]
    assert isinstance(cache, MemoryCache)
    assert len(cache) == 3


async def test_memory_bound_holds_within_one_batch() -> None:
    cache = MemoryCache(2)
    await cache.set_many({f"k{i}": bytes([i]) for i in range(5)})
    assert len(cache) == 2
    assert await cache.get_many([f"k{i}" for i in range(5)]) == [None, None, None, b"\x03", b"\x04"]


async def test_memory_bound_in_bytes_evicts_big_entries_and_refuses_oversized_ones() -> None:
    """Both bounds hold: a few big values push out the oldest entries, a value over the byte
    bound is not kept, and the count of bytes stays exact."""
    cache = MemoryCache(100, max_bytes=1000)
    await cache.set_many({"a": b"A" * 399, "b": b"B" * 399})
    await cache.set("c", b"C" * 399)  # 1,200 bytes: "a" goes
    assert await cache.get_many(["a", "b", "c"]) == [None, b"B" * 399, b"C" * 399]
    await cache.set("huge", b"H" * 2000)
    assert await cache.get("huge") is None and len(cache) == 2
    for i in range(50):
        await cache.set(f"k{i:02d}", b"v" * 10)
    # 50 entries of 13 bytes: "b", then "c" (400 bytes each) make room, oldest first.
    assert len(cache) == 50 and await cache.get_many(["b", "c"]) == [None, None]
    assert (await cache.status()).detail == "50/100 items, 650/1000 bytes"
    assert MemoryCache(10, max_bytes=0).name == "off"


async def test_memory_get_many_keeps_order_duplicates_and_misses() -> None:
    cache = MemoryCache(10)
    await cache.set_many({"a": b"A", "b": b""})
    assert await cache.get_many(["a", "x", "a", "b", "x"]) == [b"A", None, b"A", b"", None]
    assert await cache.get_many([]) == []
    status = await cache.status()
    assert (status.backend, status.ok) == ("memory", True)


async def test_memory_zero_items_stores_nothing() -> None:
    cache = MemoryCache(0)
    assert cache.name == "off"
    await cache.set_many({"a": b"A"})
    await cache.set("b", b"B")
    assert await cache.get_many(["a", "b"]) == [None, None]
    assert len(cache) == 0
    assert (await cache.status()).ok
    with pytest.raises(ValueError):
        MemoryCache(-1)


# --- Redis, healthy


@needs_redis
async def test_redis_round_trip_and_ttl(admin: Redis, prefix: str) -> None:
    metrics = Metrics()
    cache = RedisCache(REDIS_URL, TIMEOUT_S, 60, metrics)
    try:
        values = {
            prefix + "binary": bytes(range(256)) * 8,
            prefix + "empty": b"",
            prefix + "text": "vecteur, вектор, 向量".encode(),
        }
        await cache.set_many(values)
        keys = [prefix + "text", prefix + "missing", prefix + "binary", prefix + "text", prefix + "empty"]
        assert await cache.get_many(keys) == [
            values[prefix + "text"],
            None,
            values[prefix + "binary"],
            values[prefix + "text"],
            b"",
        ]
        await cache.set(prefix + "single", b"one")
        assert await cache.get(prefix + "single") == b"one"
        await cache.set_many({prefix + "single": b"two", prefix + "text": b"other"})  # never replaces
        assert await cache.get_many([prefix + "single", prefix + "text"]) == [b"one", values[prefix + "text"]]
        for key in [*values, prefix + "single"]:
            assert 50 <= await admin.ttl(key) <= 60, key  # every key expires
        assert await cache.get_many([]) == []
        await cache.set_many({})
        status = await cache.status()
        assert (status.backend, status.ok, status.detail) == ("redis", True, None)
        assert _errors(metrics) == 0
    finally:
        await cache.close()


# --- Redis, unreachable or hung


async def test_redis_unreachable_fails_open_then_backs_off(
    monkeypatch: pytest.MonkeyPatch, cache_log: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    cache = RedisCache(DEAD_URL, TIMEOUT_S, 60, metrics, backoff_start_s=5.0)
    connections = _count_connections(cache, monkeypatch)
    try:
        got, elapsed = await _timed(cache.get_many(["a", "b", "a"]))
        assert got == [None, None, None]
        assert elapsed < SLOW_S
        assert _errors(metrics) == 1
        assert connections() == 1
        assert cache.in_backoff()
        assert cache.backoff_s == 5.0

        # Inside the window: immediate misses, dropped writes, no connection attempted, no new errors.
        for _ in range(3):
            got, elapsed = await _timed(cache.get_many(["a", "b"]))
            assert got == [None, None]
            assert elapsed < 0.05
            _, elapsed = await _timed(cache.set_many({"a": b"A"}))
            assert elapsed < 0.05
        assert await cache.get("a") is None
        await cache.set("a", b"A")
        assert connections() == 1
        assert _errors(metrics) == 1

        # Health bypasses the window and says why it is degraded.
        status, elapsed = await _timed(cache.status())
        assert (status.backend, status.ok) == ("redis", False)
        assert status.detail is not None
        assert status.detail.startswith("unreachable") and "bypassed" in status.detail
        assert "127.0.0.1" not in status.detail and "Errno" not in status.detail  # public: no address
        assert elapsed < SLOW_S
        assert connections() == 2

        assert len(_records(cache_log, logging.WARNING)) == 1  # one warning per outage
    finally:
        await cache.close()


async def test_redis_backoff_doubles_up_to_cap(cache_log: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    cache = RedisCache(DEAD_URL, TIMEOUT_S, 60, metrics, backoff_start_s=0.01, backoff_max_s=0.04)
    try:
        windows = []
        for _ in range(5):
            await _wait_out_backoff(cache)
            assert await cache.get_many(["a"]) == [None]
            windows.append(cache.backoff_s)
        assert windows == [0.01, 0.02, 0.04, 0.04, 0.04]
        assert _errors(metrics) == 5
        assert len(_records(cache_log, logging.WARNING)) == 1
    finally:
        await cache.close()


async def test_redis_that_never_answers_is_bounded_by_the_timeout() -> None:
    """A listener that accepts TCP but never replies: connect works, the handshake or MGET must time out."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(16)
        port = black_hole.getsockname()[1]
        metrics = Metrics()
        cache = RedisCache(f"redis://127.0.0.1:{port}/0", TIMEOUT_S, 60, metrics, backoff_start_s=0.01)
        try:
            got, elapsed = await _timed(cache.get_many(["a", "b"]))
            assert got == [None, None]
            assert elapsed < SLOW_S
            await _wait_out_backoff(cache)
            _, elapsed = await _timed(cache.set_many({"a": b"A"}))
            assert elapsed < SLOW_S
            status, elapsed = await _timed(cache.status())
            assert not status.ok
            assert elapsed < SLOW_S
            assert _errors(metrics) == 2
        finally:
            await cache.close()


# --- Redis, paused and recovering


@needs_redis
async def test_redis_paused_bypasses_then_recovers(
    admin: Redis, prefix: str, cache_log: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    cache = RedisCache(REDIS_URL, TIMEOUT_S, 60, metrics, backoff_start_s=0.1)
    try:
        await cache.set_many({prefix + "before": b"1"})  # the pool now holds an open connection
        assert await cache.get_many([prefix + "before"]) == [b"1"]

        await admin.client_pause(1500, all=True)
        paused_at = time.monotonic()
        try:
            got, elapsed = await _timed(cache.get_many([prefix + "before", prefix + "x"]))
            assert got == [None, None]
            assert elapsed < SLOW_S
            assert _errors(metrics) == 1
            await _wait_out_backoff(cache)
            _, elapsed = await _timed(cache.set_many({prefix + "during": b"2"}))
            assert elapsed < SLOW_S
            assert _errors(metrics) == 2
            assert cache.backoff_s == pytest.approx(0.2)
            status, elapsed = await _timed(cache.status())
            assert not status.ok
            assert elapsed < SLOW_S
            assert time.monotonic() - paused_at < 1.4, "the calls above must have run while Redis was paused"
        finally:
            # On Redis 7.0 a PAUSE ALL also holds this UNPAUSE until it expires; either way it ends here.
            await admin.client_unpause()

        await _wait_out_backoff(cache)
        await cache.set_many({prefix + "after": b"3"})
        assert await cache.get_many([prefix + "before", prefix + "after"]) == [b"1", b"3"]
        assert cache.backoff_s == 0  # a success resets the back-off
        assert _errors(metrics) == 2
        assert len(_records(cache_log, logging.WARNING)) == 1
        assert len([r for r in _records(cache_log, logging.INFO) if "recovered" in r.getMessage()]) == 1
    finally:
        await cache.close()


@needs_redis
async def test_redis_status_shows_recovery_inside_the_backoff_window(admin: Redis, prefix: str) -> None:
    metrics = Metrics()
    cache = RedisCache(REDIS_URL, TIMEOUT_S, 60, metrics, backoff_start_s=30.0)
    try:
        assert await cache.get_many([prefix + "a"]) == [None]
        await admin.client_pause(400, all=True)
        try:
            assert await cache.get_many([prefix + "a"]) == [None]
            assert cache.in_backoff()
        finally:
            await admin.client_unpause()
        await cache.set_many({prefix + "a": b"A"})  # still inside the 30 s window: dropped
        assert await cache.get_many([prefix + "a"]) == [None]
        assert await admin.exists(prefix + "a") == 0

        status = await cache.status()  # PINGs despite the window, and a success ends it
        assert status.ok
        assert not cache.in_backoff()
        await cache.set_many({prefix + "a": b"A"})
        assert await cache.get_many([prefix + "a"]) == [b"A"]
    finally:
        await cache.close()


# --- create_cache


async def test_create_cache_without_redis_is_memory(tmp_path: Path) -> None:
    metrics = Metrics()
    cache = create_cache(Settings(redis_url=None, home=tmp_path, cache_max_items=7), metrics)
    assert isinstance(cache, MemoryCache)
    assert (cache.name, cache.max_items) == ("memory", 7)
    off = create_cache(Settings(redis_url=None, home=tmp_path, cache_max_items=0), metrics)
    assert off.name == "off"
    await cache.close()
    await off.close()


@needs_redis
async def test_create_cache_with_redis_url_is_redis(tmp_path: Path, admin: Redis, prefix: str) -> None:
    settings = Settings(redis_url=REDIS_URL, home=tmp_path, redis_timeout_ms=250, cache_ttl_s=123)
    cache = create_cache(settings, Metrics())
    try:
        assert isinstance(cache, RedisCache)
        assert cache.name == "redis"
        assert cache.timeout_s == 0.25
        await cache.set_many({prefix + "k": b"v"})
        assert await cache.get_many([prefix + "k"]) == [b"v"]
        assert 100 <= await admin.ttl(prefix + "k") <= 123
    finally:
        await cache.close()
