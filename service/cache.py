"""The cache for embeddings and search results: Redis when configured, else a bounded in-process LRU.

A cache is an optimisation, never a dependency: every method here returns misses or drops writes
instead of raising, and a slow or unreachable Redis costs a request at most one timeout, after which
Redis is skipped entirely for a back-off window. Hits and misses are counted by the callers; this
module counts only failed calls (``metrics.cache_errors``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Mapping, Sequence
from typing import Protocol, TypeVar

from pydantic import BaseModel
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("dapsearch.cache")

T = TypeVar("T")


class CacheStatus(BaseModel):
    """What /health/ready reports about the cache; ``ok=False`` means degraded, not unready."""

    backend: str
    ok: bool
    detail: str | None = None


class Cache(Protocol):
    """What the service needs from a cache: batched bytes in and out, and no exceptions, ever."""

    name: str

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes) -> None: ...

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def set_many(self, items: Mapping[str, bytes]) -> None: ...

    async def status(self) -> CacheStatus: ...

    async def close(self) -> None: ...


class MemoryCache:
    """In-process LRU bounded by item count and by bytes, for a single instance without Redis.

    Entries range from a 1.5 kB vector to search results of many MB (8 of them held 250 MB when
    only items were counted), so both bounds hold: the least recently used entries go until the
    cache is within each, and a value larger than the byte bound is not kept at all.
    All operations are synchronous inside (no ``await`` in a critical section), so concurrent
    requests on one event loop cannot interleave half-done updates. ``max_items == 0`` stores
    nothing: the cache is off (``name == "off"``) and every lookup is a miss.
    """

    def __init__(self, max_items: int, max_bytes: int = 256 * 2**20) -> None:
        if max_items < 0 or max_bytes < 0:
            raise ValueError(f"max_items and max_bytes must be >= 0, got {max_items} and {max_bytes}")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.name = "memory" if max_items > 0 and max_bytes > 0 else "off"
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0  # keys and values held

    def __len__(self) -> int:
        return len(self._items)

    async def get(self, key: str) -> bytes | None:
        return (await self.get_many([key]))[0]

    async def set(self, key: str, value: bytes) -> None:
        await self.set_many({key: value})

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for key in keys:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)  # a hit makes the entry most recently used
            out.append(value)
        return out

    async def set_many(self, items: Mapping[str, bytes]) -> None:
        if self.name == "off":
            return
        for key, value in items.items():
            if len(key) + len(value) > self.max_bytes:
                continue  # it would push out everything else and still not fit
            # A fill never replaces what is stored: the first vector of a text stays its vector.
            if key not in self._items:
                self._items[key] = value
                self._bytes += len(key) + len(value)
            self._items.move_to_end(key)
        while len(self._items) > self.max_items or self._bytes > self.max_bytes:
            key, value = self._items.popitem(last=False)  # least recently used first
            self._bytes -= len(key) + len(value)

    async def status(self) -> CacheStatus:
        detail = f"{len(self._items)}/{self.max_items} items, {self._bytes}/{self.max_bytes} bytes"
        return CacheStatus(backend=self.name, ok=True, detail=detail)

    async def close(self) -> None:
        self._items.clear()


class RedisCache:
    """Shared cache in Redis (``redis.asyncio``), bounded in time and failing open.

    * ``get_many`` is one ``MGET``; ``set_many`` is one non-transactional pipeline of
      ``SET key value EX ttl_s NX``, so every key expires and the first value stored stays.
    * Every call is bounded by ``timeout_s`` (socket timeouts plus ``asyncio.wait_for``) and redis-py's
      own retries are disabled, so a slow or paused Redis delays a request by at most about one timeout.
    * Any error or timeout counts in ``metrics.cache_errors``, returns misses / drops the write, and
      opens a back-off window (``backoff_start_s`` doubling up to ``backoff_max_s``) during which calls
      skip Redis with no network at all. The first call after the window tries again (the connection
      pool reconnects by itself); a success closes the window and resets the back-off. One warning is
      logged per outage and one info line on recovery.
    * Size is bounded by the operator, not here: run Redis with ``maxmemory`` and
      ``maxmemory-policy allkeys-lru`` so old entries are evicted rather than writes refused.
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        timeout_s: float,
        ttl_s: int,
        metrics: Metrics,
        *,
        backoff_start_s: float = 1.0,
        backoff_max_s: float = 30.0,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if ttl_s < 1:
            raise ValueError(f"ttl_s must be >= 1, got {ttl_s}")
        if not 0 < backoff_start_s <= backoff_max_s:
            raise ValueError(
                f"need 0 < backoff_start_s <= backoff_max_s, got {backoff_start_s}, {backoff_max_s}"
            )
        self.timeout_s = timeout_s
        self.ttl_s = ttl_s
        self.metrics = metrics
        self.backoff_start_s = backoff_start_s
        self.backoff_max_s = backoff_max_s
        # Raises ValueError on a malformed URL: a configuration error should fail startup loudly.
        self._client: Redis = Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),  # a retry would multiply the worst-case delay
            health_check_interval=0,
        )
        self._down = False  # inside an outage (warned, not yet recovered)
        self._backoff_s = 0.0  # length of the current window; 0 when healthy
        self._retry_at = 0.0  # time.monotonic() before which Redis is skipped
        self._errors_in_outage = 0

    @property
    def backoff_s(self) -> float:
        """Length of the current back-off window in seconds; 0 while Redis is healthy."""
        return self._backoff_s

    def in_backoff(self) -> bool:
        """True while calls skip Redis (no network) after a failure."""
        return time.monotonic() < self._retry_at

    async def get(self, key: str) -> bytes | None:
        return (await self.get_many([key]))[0]

    async def set(self, key: str, value: bytes) -> None:
        await self.set_many({key: value})

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        misses: list[bytes | None] = [None] * len(keys)
        if not keys or self.in_backoff():
            return misses
        try:
            values = await self._bounded(self._client.mget(list(keys)))
            if len(values) != len(keys):
                raise RuntimeError(f"MGET returned {len(values)} values for {len(keys)} keys")
        except Exception as exc:  # the cache must never fail a request
            self._failed(exc)
            return misses
        self._succeeded()
        return [v if isinstance(v, bytes) else None for v in values]

    async def set_many(self, items: Mapping[str, bytes]) -> None:
        if not items or self.in_backoff():
            return
        try:
            await self._bounded(self._pipeline_set(items))
        except Exception as exc:  # a lost write is only a future miss
            self._failed(exc)
            return
        self._succeeded()

    async def status(self) -> CacheStatus:
        """PING, bypassing the back-off window so health shows recovery as soon as it happens."""
        try:
            await self._bounded(self._ping())
        except Exception as exc:
            detail = _public(exc, self.timeout_s)
            if self.in_backoff():
                detail += f"; bypassed for {self._retry_at - time.monotonic():.1f} s more"
            return CacheStatus(backend=self.name, ok=False, detail=detail)
        self._succeeded()
        return CacheStatus(backend=self.name, ok=True)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._client.aclose(), timeout=max(1.0, self.timeout_s))
        except Exception as exc:  # shutting down: nothing useful to do with it
            log.debug("closing the Redis cache client failed: %r", exc)

    async def _ping(self) -> None:
        response = self._client.ping()  # typed for both clients: bool | Awaitable[bool]
        if inspect.isawaitable(response):
            await response

    async def _pipeline_set(self, items: Mapping[str, bytes]) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for key, value in items.items():
                # NX: a fill never replaces a stored value (after a blip made a request miss, a
                # recomputed vector must not overwrite the one other replicas already served).
                pipe.set(key, value, ex=self.ttl_s, nx=True)
            await pipe.execute()

    async def _bounded(self, call: Awaitable[T]) -> T:
        # The socket timeouts bound each read and connect; wait_for bounds the whole call (a
        # connect plus handshake plus reply), and redis-py drops a connection cancelled mid-command.
        return await asyncio.wait_for(call, timeout=self.timeout_s)

    def _failed(self, exc: BaseException) -> None:
        self.metrics.cache_errors.inc()
        now = time.monotonic()
        if now < self._retry_at:
            # Concurrent calls started before the window opened: one outage, one doubling.
            return
        self._backoff_s = (
            self.backoff_start_s if self._backoff_s == 0 else min(self._backoff_s * 2, self.backoff_max_s)
        )
        self._retry_at = now + self._backoff_s
        self._errors_in_outage += 1
        if not self._down:
            self._down = True
            log.warning(
                "Redis cache unavailable (%s); serving without it, retrying in %.1f s with back-off",
                _describe(exc, self.timeout_s),
                self._backoff_s,
            )

    def _succeeded(self) -> None:
        if self._down:
            log.info("Redis cache recovered after %d failed attempt(s)", self._errors_in_outage)
        self._down = False
        self._backoff_s = 0.0
        self._retry_at = 0.0
        self._errors_in_outage = 0


def _public(exc: BaseException, timeout_s: float) -> str:
    """What /health/ready may say about a Redis failure: the kind, never the host, port or reply
    (the log line from ``_failed`` has the full error for the operator)."""
    if isinstance(exc, TimeoutError | RedisTimeoutError):
        return f"timed out after {timeout_s * 1000:g} ms"
    if isinstance(exc, ConnectionError | OSError | RedisConnectionError):
        return "unreachable"
    return f"failed ({type(exc).__name__})"


def _describe(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"timed out after {timeout_s * 1000:g} ms"
    return f"{type(exc).__name__}: {exc}"


def create_cache(settings: Settings, metrics: Metrics) -> Cache:
    """Redis when ``settings.redis_url`` is set, else the in-process LRU (off if its size is 0)."""
    if settings.redis_url:
        return RedisCache(settings.redis_url, settings.redis_timeout_ms / 1000, settings.cache_ttl_s, metrics)
    return MemoryCache(settings.cache_max_items, settings.cache_max_bytes)
