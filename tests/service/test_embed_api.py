"""The HTTP API on the real int8 model, through httpx with the app's lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from model.encoder import Encoder
from service.app import create_app
from service.settings import Settings
from tests.sentences import ORDINARY

pytestmark = [pytest.mark.anyio, pytest.mark.real_model]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def client(real_model_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(model_dir=real_model_dir, max_texts=8, max_text_chars=5000)
    app: FastAPI = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


async def test_live(client: httpx.AsyncClient) -> None:
    r = await client.get("/health/live")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


async def test_embed_returns_the_encoder_vectors(
    client: httpx.AsyncClient, real_encoders: dict[str, Encoder]
) -> None:
    texts = ORDINARY[:5]
    r = await client.post("/embed", json={"texts": texts, "kind": "passage"})
    assert r.status_code == 200, r.text
    body = r.json()
    enc = real_encoders["onnx-int8"]
    assert body["model"] == enc.model_id and body["dim"] == 384
    vectors = np.array(body["embeddings"], dtype=np.float32)
    assert vectors.shape == (5, 384)
    np.testing.assert_allclose(vectors, enc.embed(texts, "passage"), atol=1e-6)
    assert body["truncated"] == []
    assert body["usage"]["tokens"] == enc.encode(texts, "passage").tokens


async def test_default_kind_is_query(client: httpx.AsyncClient, real_encoders: dict[str, Encoder]) -> None:
    r = await client.post("/embed", json={"texts": ["hello world"]})
    assert r.status_code == 200
    expected = real_encoders["onnx-int8"].embed(["hello world"], "query")[0]
    np.testing.assert_allclose(r.json()["embeddings"][0], expected, atol=1e-6)


async def test_long_text_is_truncated_and_reported(client: httpx.AsyncClient) -> None:
    r = await client.post("/embed", json={"texts": ["ok", " ".join(str(i) for i in range(700))]})
    assert r.status_code == 200
    assert r.json()["truncated"] == [1]


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


async def test_malformed_bodies(client: httpx.AsyncClient) -> None:
    for content in (b"{not json", b'{"texts": ["\xff\xfe"]}', b""):
        r = await client.post("/embed", content=content, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, (content, r.status_code, r.text)
        assert "error" in r.json()


async def test_unknown_route_uses_the_envelope(client: httpx.AsyncClient) -> None:
    r = await client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
