"""Micro-batching: concurrent requests share forward passes, off the event loop, with backpressure.

Why: on CPU a batch of 32 short texts costs far less than 32 single forwards, and the runtime
already uses every core for one batch, so requests are queued, coalesced (up to ``max_batch``
texts or ``max_wait`` seconds after the first arrives, a wait paid only while requests arrive
concurrently) and run one batch at a time on a dedicated thread. A request larger than one batch
is cut into batch-sized slices served round-robin with the other waiting requests, so no request
delays another by more than one batch. The queue is bounded in texts: when it is full, new
requests fail at once with ``Overloaded`` (HTTP 429 + Retry-After) instead of piling up latency
for everyone. A request whose caller went away (its future cancelled) is dropped before its next
slice reaches the engine.

Admin jobs (ingest) embed through the same batcher at ``bulk`` priority (``BulkEncoder``): a bulk
slice runs only when no online request waits, so an online request waits behind at most the one
bulk batch already running, and bulk work still uses every idle moment of the engine. While online
requests keep arriving (one in the last ``ONLINE_QUIET_S``), bulk batches are cut to
``bulk_batch`` texts, so that one bulk batch is a short wait; in quiet times they are full size.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from core.errors import InputError
from model.encoder import Embeddings, Encoder, Kind, Timings, Tokenized
from service.metrics import Metrics

Priority = Literal["online", "bulk"]
ONLINE_QUIET_S = 1.0  # no online request for this long: bulk batches go back to full size


class Overloaded(InputError):
    """The queue is full (429); ``retry_after`` is a hint in whole seconds, sent as Retry-After."""

    status = 429

    def __init__(self, queued: int, retry_after: int) -> None:
        super().__init__(f"the inference queue is full ({queued} texts waiting); retry in {retry_after} s")
        self.retry_after = retry_after

    def headers(self) -> Mapping[str, str]:
        return {"Retry-After": str(self.retry_after)}


@dataclass
class _Pending:
    texts: list[str]
    kind: Kind
    future: asyncio.Future[Embeddings]
    tokens: Tokenized | None  # the texts' ids, if the caller had them
    enqueued: float = field(default_factory=time.perf_counter)
    taken: int = 0  # texts handed to the engine so far
    parts: list[Embeddings] = field(default_factory=list)  # results of the slices done, in order

    @property
    def left(self) -> int:
        return len(self.texts) - self.taken


@dataclass
class _Lane:
    """Requests of one priority, in the order their next slice is due."""

    items: deque[_Pending] = field(default_factory=deque)
    queued: int = 0  # texts not yet handed to the engine


@dataclass
class _Slice:
    item: _Pending
    start: int
    stop: int


class Batcher:
    def __init__(
        self,
        encoder: Encoder,
        metrics: Metrics,
        max_batch: int = 32,
        max_wait_s: float = 0.002,
        max_queue: int = 2048,
        bulk_batch: int = 8,
        max_batch_tokens: int = 8192,
    ) -> None:
        self.encoder = encoder
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_batch_tokens = max_batch_tokens
        self.bulk_batch = max(1, min(bulk_batch, max_batch))
        self._last_online = -math.inf  # loop time of the latest online request
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._online = _Lane()
        self._bulk = _Lane()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._task: asyncio.Task[None] | None = None
        self._texts_per_s = 100.0  # refined from measured batches, for Retry-After
        # Whether online requests are arriving together: the last online batch held more than one
        # request, or others were waiting when it finished. Only then is waiting worth it.
        self._concurrent = False

    @property
    def queued(self) -> int:
        """Online texts waiting (bulk texts never count against the queue bound)."""
        return self._online.queued

    @property
    def bulk_queued(self) -> int:
        return self._bulk.queued

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for lane in (self._online, self._bulk):
            for item in lane.items:
                if not item.future.done():
                    item.future.cancel()
            lane.items.clear()
            lane.queued = 0
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def embed(
        self, texts: list[str], kind: Kind, priority: Priority = "online", tokenized: Tokenized | None = None
    ) -> Embeddings:
        """Embed ``texts`` (``tokenized``: their ids under ``kind``, if the caller has them) in the
        next batches; online requests raise Overloaded when the queue is full, bulk ones (a job's
        chunk, already bounded by its caller) always wait their turn."""
        if not texts:
            return Embeddings(np.empty((0, self.encoder.dim), dtype=np.float32), [], 0, [])
        lane = self._bulk if priority == "bulk" else self._online
        if lane is self._online and lane.queued and lane.queued + len(texts) > self.max_queue:
            self.metrics.rejected.inc()
            wait = math.ceil((lane.queued + len(texts)) / max(self._texts_per_s, 1.0))
            raise Overloaded(lane.queued, max(1, wait))
        loop = asyncio.get_running_loop()
        if lane is self._online:
            self._last_online = loop.time()
        future: asyncio.Future[Embeddings] = loop.create_future()
        lane.items.append(_Pending(list(texts), kind, future, tokenized))
        lane.queued += len(texts)
        self._report_depth()
        self._wakeup.set()
        return await future

    def _report_depth(self) -> None:
        self.metrics.queue_depth.set(self._online.queued)
        self.metrics.bulk_queue_depth.set(self._bulk.queued)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not (self._online.items or self._bulk.items):
                self._wakeup.clear()
                await self._wakeup.wait()
            # Give concurrent online requests a moment to join, unless a full batch is already
            # waiting or requests come one at a time (a lone query should not pay the wait);
            # bulk work never waits: its requests are whole chunks.
            deadline = loop.time() + self.max_wait_s
            while (
                self._concurrent
                and self._online.items
                and self._online.queued < self.max_batch
                and (left := deadline - loop.time()) > 0
            ):
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), left)
                except TimeoutError:
                    break
            batch = self._take(self._online, self.max_batch)
            bulk = not batch
            if bulk:
                busy = loop.time() - self._last_online < ONLINE_QUIET_S
                batch = self._take(self._bulk, self.bulk_batch if busy else self.max_batch)
            self._report_depth()
            if batch:
                await self._process(loop, batch, bulk)
                if not bulk:
                    self._concurrent = len(batch) > 1 or bool(self._online.items)

    def _take(self, lane: _Lane, limit: int) -> list[_Slice]:
        """Up to ``limit`` texts of one kind and ``max_batch_tokens`` tokens (TEI's
        max_batch_tokens: 32 short queries cost what 2 long passages do, so a batch is bounded in
        work, and whoever waits behind it waits for about the same time): slices of the lane's
        requests in arrival order; a request with texts left after its slice goes to the back of
        the lane (round-robin). A text longer than the budget still runs, alone."""
        batch: list[_Slice] = []
        count = spent = 0
        kind = None
        skipped: list[_Pending] = []
        unfinished: list[_Pending] = []
        while lane.items and count < limit:
            item = lane.items.popleft()
            if item.future.done():  # the caller went away: drop what it has not had yet
                lane.queued -= item.left
                continue
            if kind is not None and item.kind != kind:
                skipped.append(item)
                continue
            size, spent = self._fitting(item, min(item.left, limit - count), spent, first=not batch)
            if not size:  # its next text would overrun the budget: it leads the next batch
                lane.items.appendleft(item)
                break
            kind = item.kind
            batch.append(_Slice(item, item.taken, item.taken + size))
            item.taken += size
            count += size
            lane.queued -= size
            if item.left:
                unfinished.append(item)
        lane.items.extendleft(reversed(skipped))
        lane.items.extend(unfinished)
        return batch

    async def _process(self, loop: asyncio.AbstractEventLoop, batch: list[_Slice], bulk: bool) -> None:
        started = time.perf_counter()
        for part in batch:
            if part.start == 0:
                self.metrics.queue_seconds.observe(started - part.item.enqueued)
        texts = [t for part in batch for t in part.item.texts[part.start : part.stop]]
        timings = Timings()
        try:
            result = await loop.run_in_executor(self._executor, self._encode, texts, batch, timings)
        except Exception as exc:  # a model failure fails these requests, not the batcher
            for part in batch:
                if not part.item.future.done():
                    part.item.future.set_exception(exc)
            return
        elapsed = time.perf_counter() - started
        self._texts_per_s = 0.8 * self._texts_per_s + 0.2 * (len(texts) / max(elapsed, 1e-6))
        if timings.tokenize_s:  # this batch tokenised texts that came without their ids
            self.metrics.tokenize_seconds.observe(timings.tokenize_s)
        for seconds, size, tokens in zip(
            timings.forward_s, timings.batch_sizes, timings.batch_tokens, strict=True
        ):
            self.metrics.inference_seconds.observe(seconds)
            self.metrics.batch_size.observe(size)
            self.metrics.batch_tokens.observe(tokens)
        self.metrics.embedded_texts.inc(len(texts))
        if bulk:
            self.metrics.bulk_texts.inc(len(texts))
        truncated = set(result.truncated)
        start = 0
        for part in batch:
            stop = start + part.stop - part.start
            item = part.item
            if not item.future.done():
                lengths = result.lengths[start:stop]
                cut = [part.start + i - start for i in range(start, stop) if i in truncated]
                item.parts.append(Embeddings(result.vectors[start:stop], cut, sum(lengths), lengths))
                if part.stop == len(item.texts):
                    item.future.set_result(_joined(item.parts))
            start = stop

    def _encode(self, texts: list[str], batch: list[_Slice], timings: Timings) -> Embeddings:
        """The engine call, on the inference thread: slices whose ids came with the request are
        not tokenised again; the others are tokenised here, a slice at a time."""
        ids: list[list[int]] = []
        cut: list[int] = []
        for part in batch:
            item = part.item
            if item.tokens is None:
                started = time.perf_counter()
                tokens = self.encoder.tokenizer.tokenize(item.texts[part.start : part.stop], item.kind)
                timings.tokenize_s += time.perf_counter() - started
            else:
                tokens = item.tokens.take(range(part.start, part.stop))
            cut.extend(len(ids) + j for j in tokens.truncated)
            ids.extend(tokens.ids)
        return self.encoder.encode(texts, batch[0].item.kind, timings=timings, tokenized=Tokenized(ids, cut))

    def _fitting(self, item: _Pending, size: int, spent: int, first: bool) -> tuple[int, int]:
        """How many of ``item``'s next ``size`` texts fit the batch's token budget, and the tokens
        spent with them (texts whose ids are unknown are counted by number only)."""
        if item.tokens is None:
            return size, spent
        fit = 0
        while fit < size:
            tokens = len(item.tokens.ids[item.taken + fit])
            if spent + tokens > self.max_batch_tokens and not (first and fit == 0):
                break
            spent += tokens
            fit += 1
        return fit, spent


def _joined(parts: list[Embeddings]) -> Embeddings:
    """One request's slices as one result (indices of ``truncated`` are already the request's)."""
    if len(parts) == 1:
        return parts[0]
    return Embeddings(
        np.concatenate([p.vectors for p in parts]),
        [i for p in parts for i in p.truncated],
        sum(p.tokens for p in parts),
        [n for p in parts for n in p.lengths],
    )


class BulkEncoder:
    """The batcher as a blocking encoder for job threads (ingest): every call is queued at bulk
    priority on the event loop, so jobs and online requests share one engine and online goes first.

    Texts are tokenised here, on the job's thread (never the engine's), and sent shortest first
    in tokens, so each batch-sized slice pads to about its own length, as ``Encoder.encode`` does
    within one call.
    """

    def __init__(self, batcher: Batcher, loop: asyncio.AbstractEventLoop) -> None:
        self.batcher = batcher
        self.loop = loop
        self.model_id = batcher.encoder.model_id
        self.dim = batcher.encoder.dim
        self.tokenizer = batcher.encoder.tokenizer

    def embed(self, texts: Sequence[str], kind: Kind = "query") -> np.ndarray:
        """(n, dim) float32, L2-normalised; blocks the calling thread (never the loop's)."""
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        tokenized = self.tokenizer.tokenize(texts, kind)
        order = sorted(range(len(texts)), key=lambda i: len(tokenized.ids[i]))
        work = self.batcher.embed([texts[i] for i in order], kind, "bulk", tokenized.take(order))
        result = asyncio.run_coroutine_threadsafe(work, self.loop).result()
        out = np.empty_like(result.vectors)
        out[order] = result.vectors
        return out
