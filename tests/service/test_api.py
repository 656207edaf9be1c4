"""The HTTP API on the real int8 model and the bundled demo collection, through httpx with the lifespan."""

from __future__ import annotations

import asyncio
import base64
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from index.collection import Collection
from index.store import Document
from model.artifact import ONNX_INT8
from model.backend_choice import preference
from model.cpu import cpu_features
from model.encoder import Encoder
from service.schemas import EmbedResponse, OpenAIEmbeddingResponse
from service.settings import Settings
from tests.conftest import SHARED
from tests.sentences import ORDINARY
from tests.service.conftest import started

pytestmark = [pytest.mark.anyio, pytest.mark.real_model]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("api-home")


@pytest.fixture(scope="module")
async def client(real_model_dir: Path, home: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        home=home,
        model_dir=real_model_dir,
        max_texts=8,
        max_text_chars=5000,
        max_body_bytes=64 * 1024,
        mine_max_sentences=50,
        max_k=100,
        max_search_hits=500,
    )
    async with started(settings) as (_, c):
        yield c


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        metric_name, _, rest = key.partition("{")
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if metric_name == name and got == want:
            return float(value)
    return 0.0


# --------------------------------------------------------------------------- health, info, metrics


async def test_live_ready_info(client: httpx.AsyncClient, real_encoders: dict[str, Encoder]) -> None:
    assert (await client.get("/health/live")).json() == {"status": "ok"}
    ready = (await client.get("/health/ready")).json()
    assert ready["status"] == "ready" and ready["model"] == real_encoders["served"].model_id
    assert ready["collections"] == 1 and ready["cache"]["backend"] == "memory"
    info = (await client.get("/info")).json()
    cpu = cpu_features()  # what the kernels depend on, as /proc/cpuinfo says
    assert info["dim"] == 384 and info["backend"] == preference(cpu)[0]  # every graph is there
    assert info["backend_requested"] == "auto"
    assert info["backend_reason"] == f"fastest usable on this CPU ({cpu.simd_text})"
    assert info["cpu"] == {
        "model": cpu.model,
        "features": cpu.simd,
        "int8_vnni": cpu.int8_vnni,
        "native_bf16": cpu.native_bf16,
    }
    assert info["prefixes"] == {"query": "query: ", "passage": "passage: "}
    assert info["limits"]["max_texts"] == 8
    labels = {
        "backend": info["backend"],
        "requested": "auto",
        "cpu": cpu.model,
        "cpu_features": cpu.simd_text,
    }
    assert metric((await client.get("/metrics")).text, "dapsearch_engine_info", **labels) == 1.0


async def test_a_backend_that_cannot_run_falls_back_and_says_so(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A model directory without ONNX Runtime's int8 graph, served with DAPSEARCH_BACKEND=onnx-int8:
    the service starts on the next backend of this CPU's order, and /info, /metrics and one log
    line say so."""
    cpu = cpu_features()
    expected = next(b for b in preference(cpu) if b != "onnx-int8")
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / ONNX_INT8).unlink()
    settings = Settings(home=tmp_path, model_dir=model_dir, backend="onnx-int8", demo=False)
    with caplog.at_level(logging.WARNING, logger="dapsearch"):
        async with started(settings) as (_, c):
            info = (await c.get("/info")).json()
            assert (info["backend"], info["backend_requested"]) == (expected, "onnx-int8")
            assert info["backend_reason"] == "onnx-int8 cannot run here"
            labels = {
                "backend": expected,
                "requested": "onnx-int8",
                "cpu": cpu.model,
                "cpu_features": cpu.simd_text,
            }
            assert metric((await c.get("/metrics")).text, "dapsearch_engine_info", **labels) == 1.0
            assert (await c.post("/embed", json={"texts": ["still served"]})).status_code == 200
    fallbacks = [r.getMessage() for r in caplog.records if "cannot run here" in r.getMessage()]
    assert len(fallbacks) == 1 and fallbacks[0].endswith(f"; serving with {expected}"), fallbacks


async def test_metrics_count_requests_batches_and_cache(client: httpx.AsyncClient) -> None:
    texts = ["metrics probe one", "metrics probe two"]
    assert (await client.post("/embed", json={"texts": texts})).status_code == 200
    before = (await client.get("/metrics")).text
    assert (await client.post("/embed", json={"texts": texts})).status_code == 200
    after = (await client.get("/metrics")).text
    assert metric(after, "dapsearch_cache_hits_total", kind="embedding") == (
        metric(before, "dapsearch_cache_hits_total", kind="embedding") + 2
    )
    assert metric(after, "dapsearch_requests_total", route="/embed", method="POST", status="200") >= 2
    assert metric(after, "dapsearch_batch_size_count") >= 1
    assert metric(after, "dapsearch_inference_duration_seconds_count") >= 1
    assert "dapsearch_queue_duration_seconds_bucket" in after and "dapsearch_queue_depth" in after


# --------------------------------------------------------------------------- /embed


async def test_embed_returns_the_encoder_vectors(
    client: httpx.AsyncClient, real_encoders: dict[str, Encoder]
) -> None:
    texts = ORDINARY[:5]
    r = await client.post("/embed", json={"texts": texts, "kind": "passage"})
    assert r.status_code == 200, r.text
    body = r.json()
    EmbedResponse.model_validate_json(r.content)  # the fast writer keeps to the documented schema
    enc = real_encoders["served"]
    assert body["model"] == enc.model_id and body["dim"] == 384
    vectors = np.array(body["embeddings"], dtype=np.float32)
    np.testing.assert_allclose(vectors, enc.embed(texts, "passage"), atol=1e-6)
    assert body["truncated"] == []
    assert body["usage"]["tokens"] == enc.encode(texts, "passage").tokens


async def test_default_kind_is_query_and_duplicates_agree(
    client: httpx.AsyncClient, real_encoders: dict[str, Encoder]
) -> None:
    r = await client.post("/embed", json={"texts": ["hello world", "hello world"]})
    assert r.status_code == 200
    expected = real_encoders["served"].embed(["hello world"], "query")[0]
    vectors = r.json()["embeddings"]
    np.testing.assert_allclose(vectors[0], expected, atol=1e-6)
    assert vectors[0] == vectors[1]


async def test_cache_hit_returns_identical_vectors_and_usage(client: httpx.AsyncClient) -> None:
    body = {"texts": ["Der Zug fährt um acht.", "cache me"], "kind": "passage"}
    first = (await client.post("/embed", json=body)).json()
    second = (await client.post("/embed", json=body)).json()
    assert first == second
    other_kind = (await client.post("/embed", json={**body, "kind": "query"})).json()
    assert other_kind["embeddings"] != first["embeddings"]  # the prefix is part of the key


async def test_truncation_reported_or_refused(client: httpx.AsyncClient) -> None:
    long = " ".join(str(i) for i in range(700))
    r = await client.post("/embed", json={"texts": ["ok", long]})
    assert r.status_code == 200 and r.json()["truncated"] == [1]
    r = await client.post("/embed", json={"texts": ["ok", long], "truncate": False})
    assert r.status_code == 413 and r.json()["error"]["param"] == "texts[1]"


async def test_base64_is_little_endian_float32(client: httpx.AsyncClient) -> None:
    texts = ["base64 please"]
    floats = (await client.post("/embed", json={"texts": texts})).json()["embeddings"][0]
    b64 = (await client.post("/embed", json={"texts": texts, "encoding_format": "base64"})).json()[
        "embeddings"
    ][0]
    decoded = np.frombuffer(base64.b64decode(b64), dtype="<f4")
    np.testing.assert_array_equal(decoded, np.array(floats, dtype=np.float32))


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"texts": []}, 422, "texts"),
        ({"texts": ["ok", ""]}, 422, "texts[1]"),
        ({"texts": ["ok", "   "]}, 422, "texts[1]"),
        ({"texts": ["ok", 3]}, 422, "texts[1]"),
        ({"texts": "not a list"}, 422, "texts"),
        ({"texts": ["ok"], "kind": "document"}, 422, "kind"),
        ({}, 422, "texts"),
        ({"texts": ["ok"], "extra": 1}, 422, "extra"),
        ({"texts": ["x"] * 9}, 413, "texts"),
        ({"texts": ["x" * 5001]}, 413, "texts[0]"),
        ({"texts": ["ok"], "normalize": False}, 400, "normalize"),
        ({"texts": ["ok"], "encoding_format": "int8"}, 422, "encoding_format"),
    ],
)
async def test_bad_input_is_a_clear_4xx(
    client: httpx.AsyncClient, body: dict[str, Any], status: int, param: str
) -> None:
    r = await client.post("/embed", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param
    assert error["message"] and error["type"]


async def test_malformed_and_oversized_bodies(client: httpx.AsyncClient) -> None:
    for content in (b"{not json", b'{"texts": ["\xff\xfe"]}', b"", b"[1, 2]"):
        r = await client.post("/embed", content=content, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, (content, r.status_code, r.text)
        assert "error" in r.json()
    surrogate = b'{"texts": ["ok", "\\ud800"]}'  # valid JSON escape, not encodable text
    r = await client.post("/embed", content=surrogate, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "texts[1]", r.text
    big = b'{"texts": ["' + b"a" * 70_000 + b'"]}'
    r = await client.post("/embed", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "DAPSEARCH_MAX_BODY_BYTES" in r.json()["error"]["message"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while streaming
        yield b'{"texts": ["'
        for _ in range(10):
            yield b"a" * 10_000
        yield b'"]}'

    r = await client.post("/embed", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


async def test_unknown_route_uses_the_envelope(client: httpx.AsyncClient) -> None:
    r = await client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"


async def test_no_redirect_is_built_from_the_host_header(client: httpx.AsyncClient) -> None:
    """A trailing slash is a 404, not a redirect to whatever Host the request named (behind a
    proxy that is an open redirect)."""
    for method, path in (("GET", "/info/"), ("POST", "/search/"), ("GET", "/health/live/")):
        r = await client.request(method, path, headers={"Host": "evil.example"}, json={})
        assert r.status_code == 404, (path, r.status_code)
        assert "location" not in r.headers and r.json()["error"]["type"] == "not_found"


# --------------------------------------------------------------------------- /v1/embeddings


async def test_openai_shape_and_options(client: httpx.AsyncClient, real_encoders: dict[str, Encoder]) -> None:
    enc = real_encoders["served"]
    r = await client.post(
        "/v1/embeddings", json={"input": ["Hallo Welt", "hello world"], "model": enc.model_id}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    OpenAIEmbeddingResponse.model_validate_json(r.content)
    assert body["object"] == "list" and body["model"] == enc.model_id
    assert [d["index"] for d in body["data"]] == [0, 1] and body["data"][0]["object"] == "embedding"
    # int8 activations are quantised per batch, so compare by cosine, not bitwise.
    expected = enc.embed(["Hallo Welt", "hello world"])
    assert (np.array([d["embedding"] for d in body["data"]]) * expected).sum(axis=1).min() > 0.99
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    short = await client.post(
        "/v1/embeddings", json={"input": "Hallo Welt", "model": "multilingual-e5-small"}
    )
    assert short.json()["data"][0]["embedding"] == body["data"][0]["embedding"]
    b64 = await client.post("/v1/embeddings", json={"input": "Hallo Welt", "encoding_format": "base64"})
    decoded = np.frombuffer(base64.b64decode(b64.json()["data"][0]["embedding"]), dtype="<f4")
    # JSON numbers are float32's shortest representations: they parse back to the same bits.
    np.testing.assert_array_equal(decoded, np.array(body["data"][0]["embedding"], dtype=np.float32))
    same_dim = await client.post("/v1/embeddings", json={"input": "x", "dimensions": 384})
    assert same_dim.status_code == 200
    passage = await client.post("/v1/embeddings", json={"input": "Hallo Welt", "input_type": "passage"})
    assert passage.json()["data"][0]["embedding"] != body["data"][0]["embedding"]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"input": "x", "dimensions": 256}, 400, "dimensions"),
        ({"input": "x", "model": "text-embedding-3-small"}, 404, "model"),
        ({"input": [1, 2, 3]}, 400, "input"),
        ({"input": []}, 400, "input"),
        ({"input": ""}, 422, "input[0]"),
        ({"input": ["x"] * 9}, 413, "input"),
        ({"model": "x"}, 422, "input"),
    ],
)
async def test_openai_errors(
    client: httpx.AsyncClient, body: dict[str, Any], status: int, param: str
) -> None:
    r = await client.post("/v1/embeddings", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param


# --------------------------------------------------------------------------- /search


async def test_search_the_demo_collection_across_languages(client: httpx.AsyncClient) -> None:
    query = "Welsh Assembly members are unhappy about being called MWPs"
    r = await client.post("/search", json={"collection": "demo", "query": query, "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    (hits,) = body["results"]
    assert len(hits) == 5 and body["version"] >= 1
    assert hits[0]["id"] == "de-000", hits  # the German translation of exactly that news sentence
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert hits[0]["lang"] == "de" and hits[0]["metadata"]["source"] == "NTREX-128"
    german_only = await client.post(
        "/search",
        json={"collection": "demo", "queries": [query, "Fußball"], "k": 3, "filter": {"lang": "fr"}},
    )
    results = german_only.json()["results"]
    assert (
        len(results) == 2 and all(h["lang"] == "fr" for row in results for h in row) and len(results[0]) == 3
    )


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"collection": "nope", "query": "x"}, 404, None),
        ({"collection": "demo"}, 422, "query"),
        ({"collection": "demo", "query": "x", "queries": ["y"]}, 422, "query"),
        ({"collection": "demo", "query": "x", "k": 0}, 422, "k"),
        ({"collection": "demo", "query": "x", "k": 101}, 422, "k"),
        ({"collection": "demo", "queries": [f"x{i}" for i in range(6)], "k": 100}, 413, "k"),  # 600 hits
        ({"collection": "demo", "query": " "}, 422, "query[0]"),
        ({"collection": "demo", "query": "x", "filter": {"language": "de"}}, 422, "filter.language"),
        ({"collection": "../etc", "query": "x"}, 400, None),
    ],
)
async def test_search_errors(
    client: httpx.AsyncClient, body: dict[str, Any], status: int, param: str | None
) -> None:
    r = await client.post("/search", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param


async def test_search_cache_never_serves_a_stale_version(
    client: httpx.AsyncClient, home: Path, real_encoders: dict[str, Encoder]
) -> None:
    body = {"collection": "demo", "query": "a brand new document about penguins on Mars", "k": 1}
    first = (await client.post("/search", json=body)).json()
    again = (await client.post("/search", json=body)).json()
    assert again == first
    enc = real_encoders["served"]
    doc = Document("penguins", "Penguins have landed on Mars, a brand new document says.", "en", {})
    with Collection.open(home / "collections", "demo", enc.model_id) as writer:  # another writer
        writer.upsert([doc], enc.embed([doc.text], "passage"))
    fresh = (await client.post("/search", json=body)).json()
    assert fresh["version"] == first["version"] + 1
    assert fresh["results"][0][0]["id"] == "penguins"


# --------------------------------------------------------------------------- /mine-bitext


async def test_mine_bitext_recovers_translations(client: httpx.AsyncClient) -> None:
    rows = (SHARED / "data/parallel/dev/fr-en.tsv").read_text(encoding="utf-8").splitlines()[300:320]
    french = [r.split("\t")[0] for r in rows]
    english = [r.split("\t")[1] for r in rows][::-1]  # reversed: gold pair i ↔ 19 - i
    distractors = [
        r.split("\t")[1] for r in (SHARED / "data/parallel/dev/de-en.tsv").read_text().splitlines()[:10]
    ]
    r = await client.post("/mine-bitext", json={"source": french, "target": english + distractors})
    assert r.status_code == 200, r.text
    body = r.json()
    found = {(p["source_index"], p["target_index"]) for p in body["pairs"]}
    assert len(found & {(i, 19 - i) for i in range(20)}) >= 19
    assert body["strategy"] == "max" and body["k"] == 4 and body["threshold"] is None
    scores = [p["score"] for p in body["pairs"]]
    assert scores == sorted(scores, reverse=True)
    strict = await client.post(
        "/mine-bitext", json={"source": french, "target": english, "threshold": 1.05, "strategy": "intersect"}
    )
    assert strict.status_code == 200 and all(p["score"] > 1.05 for p in strict.json()["pairs"])


async def test_mine_bitext_limits(client: httpx.AsyncClient) -> None:
    r = await client.post("/mine-bitext", json={"source": ["a"] * 51, "target": ["b"]})
    assert r.status_code == 413 and "/admin/mine" in r.json()["error"]["message"]
    r = await client.post("/mine-bitext", json={"source": ["a"], "target": ["b"], "strategy": "best"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "strategy"
    r = await client.post("/mine-bitext", json={"source": ["a", ""], "target": ["b"]})
    assert r.status_code == 422 and r.json()["error"]["param"] == "source[1]"


# --------------------------------------------------------------------------- backpressure


async def test_full_queue_answers_429_with_retry_after(real_model_dir: Path, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, model_dir=real_model_dir, demo=False, max_queue=4, batch_size=2)
    async with started(settings) as (_, c):
        texts = [f"backpressure sentence number {i}" for i in range(4)]
        replies = await asyncio.gather(
            *(c.post("/embed", json={"texts": texts[i:] + texts[:i]}) for i in range(4))
        )
        codes = sorted(r.status_code for r in replies)
        assert 429 in codes and 200 in codes and set(codes) <= {200, 429}, codes
        refused = next(r for r in replies if r.status_code == 429)
        assert int(refused.headers["retry-after"]) >= 1 and refused.json()["error"]["type"] == "overloaded"
        # Once the queue drains, the same request is served.
        assert (await c.post("/embed", json={"texts": texts})).status_code == 200
