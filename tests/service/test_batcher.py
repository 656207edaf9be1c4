"""The micro-batcher: big requests are sliced and served round-robin, gone callers are dropped,
bulk work runs only when no online request waits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from model.encoder import Embeddings, Encoder, Kind, Timings, Tokenized
from service.batcher import Batcher, BulkEncoder
from service.metrics import Metrics

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def encoder(tiny_model_dir: Path) -> Encoder:
    return Encoder.load(tiny_model_dir, backend="onnx", threads=1)


def _texts(prefix: str, n: int) -> list[str]:
    return [f"{prefix} sentence number {i} " + "word " * (i % 40) for i in range(n)]


def _costs(encoder: Encoder, texts: list[str]) -> list[int]:
    """Tokens each text costs the model as a passage (prefix and specials included, cut at max_length)."""
    return [len(ids) for ids in encoder.tokenizer.tokenize(texts, "passage").ids]


def _embedded(metrics: Metrics) -> float:
    return float(metrics.registry.get_sample_value("dapsearch_embedded_texts_total") or 0)


async def test_a_small_request_is_not_queued_behind_a_big_one(encoder: Encoder) -> None:
    batcher = Batcher(encoder, Metrics(), max_batch=8, max_wait_s=0.0, max_queue=10_000)
    batcher.start()
    try:
        finished: list[str] = []

        async def run(name: str, texts: list[str]) -> np.ndarray:
            result = await batcher.embed(texts, "passage")
            finished.append(name)
            assert result.vectors.shape == (len(texts), encoder.dim)
            assert result.lengths == _costs(encoder, texts)
            assert result.tokens == sum(result.lengths)
            return result.vectors

        big_texts, small_texts = _texts("big", 4000), _texts("small", 3)
        big = asyncio.create_task(run("big", big_texts))
        while _embedded(batcher.metrics) < 8:  # wait until the big one is served, slice by slice
            await asyncio.sleep(0.001)
        assert not big.done()
        small = await run("small", small_texts)
        assert finished == ["small"]
        vectors = await big
        assert finished == ["small", "big"]
        direct = encoder.encode(big_texts, "passage").vectors
        assert float((vectors * direct).sum(axis=1).min()) > 0.9999  # same vectors, same order
        assert float((small * encoder.encode(small_texts, "passage").vectors).sum(axis=1).min()) > 0.9999
    finally:
        await batcher.stop()


class RecordingEncoder(Encoder):
    """The real encoder, keeping the texts of each engine call in the order the calls started."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__(encoder.manifest, encoder.tokenizer, encoder.backend, encoder.batch_size)
        self.calls: list[list[str]] = []

    def encode(
        self,
        texts: Sequence[str],
        kind: Kind = "query",
        progress: Callable[[int], None] | None = None,
        timings: Timings | None = None,
        tokenized: Tokenized | None = None,
    ) -> Embeddings:
        self.calls.append(list(texts))
        return super().encode(texts, kind, progress, timings, tokenized)


BULK = 4000


async def test_an_online_request_waits_behind_at_most_one_bulk_batch(encoder: Encoder) -> None:
    recording = RecordingEncoder(encoder)
    metrics = Metrics()
    batcher = Batcher(recording, metrics, max_batch=8, max_wait_s=0.0, max_queue=100, bulk_batch=4)
    batcher.start()
    try:
        # Beyond max_queue (bulk work is never refused), and enough that it is still under way
        # after the sleep below on a fast, idle machine.
        bulk_texts = _texts("bulk", BULK)
        bulk = asyncio.create_task(batcher.embed(bulk_texts, "passage", "bulk"))
        await asyncio.sleep(0.05)  # bulk slices are running
        started_before = len(recording.calls)
        assert started_before > 0 and batcher.bulk_queued > 0
        online_texts = _texts("online", 3)
        online = await batcher.embed(online_texts, "passage")
        first_online = next(i for i, call in enumerate(recording.calls) if call[0] in online_texts)
        # Only the bulk batch under way ran in between: the one logged last, or one the batcher
        # had taken but whose engine call had not started when the calls were counted. Batches
        # run one at a time, so it is never both.
        assert started_before <= first_online <= started_before + 1
        assert recording.calls[first_online] == online_texts
        # While online requests wait, no bulk slice runs (round-robin would interleave them).
        crowd = [_texts(f"crowd{n}", 20) for n in range(5)]
        await asyncio.gather(*(batcher.embed(texts, "passage") for texts in crowd))
        is_crowd = [call[0].startswith("crowd") for call in recording.calls]
        first, last = is_crowd.index(True), len(is_crowd) - 1 - is_crowd[::-1].index(True)
        assert all(is_crowd[first : last + 1]) and last - first + 1 == 13  # 100 texts in batches of 8
        vectors = (await bulk).vectors
        # Bulk batches are full while no online request comes, and cut to bulk_batch right after one.
        assert all(len(call) == 8 for call in recording.calls[: started_before - 1])
        after = [call for call in recording.calls[first_online + 1 :] if call[0].startswith("bulk")]
        assert len(after[0]) == 4
        assert all(len(call) <= 8 for call in recording.calls)
        assert sum(1 for call in recording.calls if call[0].startswith("bulk")) > BULK / 8
        direct = encoder.encode(bulk_texts, "passage").vectors
        assert float((vectors * direct).sum(axis=1).min()) > 0.9999
        assert (
            float((online.vectors * encoder.encode(online_texts, "passage").vectors).sum(axis=1).min())
            > 0.9999
        )
        assert metrics.registry.get_sample_value("dapsearch_bulk_embedded_texts_total") == BULK
        assert _embedded(metrics) == BULK + 103 and batcher.bulk_queued == 0
    finally:
        await batcher.stop()


async def test_the_batch_wait_is_paid_only_while_requests_arrive_together(encoder: Encoder) -> None:
    """Requests one at a time run at once; once requests come together, a batch waits for more."""
    recording = RecordingEncoder(encoder)
    wait_s = 0.5
    batcher = Batcher(recording, Metrics(), max_batch=8, max_wait_s=wait_s, max_queue=100)
    batcher.start()
    loop = asyncio.get_running_loop()
    try:
        for n in range(3):  # a lone request after another: never waits
            started = loop.time()
            await batcher.embed([f"alone {n}"], "query")
            assert loop.time() - started < wait_s * 0.8
        assert recording.calls == [["alone 0"], ["alone 1"], ["alone 2"]]
        await asyncio.gather(*(batcher.embed([f"together {n}"], "query") for n in range(3)))
        # Requests now arrive together: a request's batch waits for the next one to join.
        first = asyncio.create_task(batcher.embed(["first"], "query"))
        await asyncio.sleep(wait_s / 5)
        await asyncio.gather(first, batcher.embed(["second"], "query"))
        assert recording.calls[-1] == ["first", "second"]
        await batcher.embed(["lone again"], "query")  # one lone batch: back to not waiting
        started = loop.time()
        await batcher.embed(["and again"], "query")
        assert loop.time() - started < wait_s * 0.8
        assert recording.calls[-2:] == [["lone again"], ["and again"]]
    finally:
        await batcher.stop()


async def test_bulk_encoder_embeds_from_a_job_thread_in_the_callers_order(encoder: Encoder) -> None:
    batcher = Batcher(encoder, Metrics(), max_batch=8, max_wait_s=0.0, max_queue=10_000)
    batcher.start()
    try:
        bulk = BulkEncoder(batcher, asyncio.get_running_loop())
        assert bulk.model_id == encoder.model_id and bulk.dim == encoder.dim
        texts = _texts("job", 50)[::-1]  # lengths vary, so the encoder reorders them internally
        vectors = await asyncio.to_thread(bulk.embed, texts, "passage")
        direct = encoder.embed(texts, "passage")
        assert vectors.shape == direct.shape
        assert float((vectors * direct).sum(axis=1).min()) > 0.9999
        assert (await asyncio.to_thread(bulk.embed, [], "passage")).shape == (0, encoder.dim)
    finally:
        await batcher.stop()


async def test_a_caller_that_went_away_costs_at_most_one_more_batch(encoder: Encoder) -> None:
    metrics = Metrics()
    batcher = Batcher(encoder, metrics, max_batch=8, max_wait_s=0.0, max_queue=10_000)
    batcher.start()
    try:
        task = asyncio.create_task(batcher.embed(_texts("gone", 800), "passage"))
        await asyncio.sleep(0.05)
        task.cancel()  # what a disconnect does to the request's task
        with pytest.raises(asyncio.CancelledError):
            await task
        done = _embedded(metrics)
        await batcher.embed(["after"], "passage")
        assert _embedded(metrics) - done <= 8 + 1  # the slice under way, then the next request
        assert _embedded(metrics) < 800 and batcher.queued == 0
    finally:
        await batcher.stop()


async def test_a_request_whose_client_disconnects_is_not_embedded(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Through the real app: the client sends its body and goes away; the texts it asked for
    are dropped from the queue instead of being embedded for nobody."""
    import json

    from asgi_lifespan import LifespanManager

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(
        home=tmp_path, model_dir=tiny_model_dir, backend="onnx", threads=1, batch_size=2, demo=False
    )
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=120) as manager:
        while app.state.runtime is None:
            await asyncio.sleep(0.02)
        body = json.dumps({"texts": _texts("nobody", 200)}).encode()
        sent: list[dict[str, object]] = []
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, object]:
            if messages:
                return messages.pop()
            await asyncio.sleep(0.01)  # the client hangs up right after sending
            return {"type": "http.disconnect"}

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/embed",
            "raw_path": b"/embed",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
        }
        await manager.app(scope, receive, send)  # type: ignore[arg-type]
        assert sent[0]["status"] == 499
        await asyncio.sleep(0.2)  # a slice under way finishes
        # Some slices of 2 ran before the hang-up was seen (how many depends on the machine's
        # speed: 26 were seen once); most of the 200 texts never are.
        assert _embedded(app.state.metrics) <= 100 and app.state.runtime.batcher.queued == 0


async def test_one_request_may_cost_at_most_its_token_budget(tiny_model_dir: Path, tmp_path: Path) -> None:
    import httpx
    from asgi_lifespan import LifespanManager

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(
        home=tmp_path, model_dir=tiny_model_dir, backend="onnx", threads=1, demo=False, max_request_tokens=600
    )
    encoder = Encoder.load(tiny_model_dir, backend="onnx")
    texts = _texts("budget", 60)
    cost = _costs(encoder, texts)
    fits = next(n for n in range(len(texts), 0, -1) if sum(cost[:n]) <= 600)
    async with LifespanManager(create_app(settings), startup_timeout=120) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            while (await client.get("/health/ready")).status_code != 200:
                await asyncio.sleep(0.02)
            ok = await client.post("/embed", json={"texts": texts[:fits], "kind": "passage"})
            assert ok.status_code == 200 and ok.json()["usage"]["tokens"] == sum(cost[:fits])
            over = await client.post("/embed", json={"texts": texts[: fits + 1], "kind": "passage"})
            assert over.status_code == 413 and over.json()["error"]["param"] == "texts", over.text
            assert "DAPSEARCH_MAX_REQUEST_TOKENS" in over.json()["error"]["message"]
            openai = await client.post("/v1/embeddings", json={"input": texts})
            assert openai.status_code == 413 and openai.json()["error"]["param"] == "input"
            # /mine-bitext: both sides count against one budget; the side that exceeds it is named.
            side = next(n for n in range(1, fits + 1) if 2 * sum(cost[:n]) > 600)  # fits alone, not twice
            half = texts[:side]
            mine = await client.post("/mine-bitext", json={"source": half, "target": half})
            assert mine.status_code == 413 and mine.json()["error"]["param"] == "target", mine.text
