"""What the service tests share: the anyio backend, the dummy encoder, a started app behind an
in-process httpx client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx
import pytest
from fastapi import FastAPI

from model.encoder import Encoder
from service.app import create_app
from service.settings import Settings


@asynccontextmanager
async def started(
    settings: Settings, timeout: float = 180
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """Run the lifespan, wait until /health/ready says 200 (the model loads in the background)."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as client:
            with anyio.fail_after(timeout):
                while True:
                    r = await client.get("/health/ready")
                    if r.status_code == 200:
                        break
                    assert r.json()["status"] == "starting", r.text
                    await anyio.sleep(0.05)
            yield app, client


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    """The dummy encoder: deterministic vectors, no model files (a module may use its own)."""
    return Encoder.dummy(dim=32, max_length=16, batch_size=4)
