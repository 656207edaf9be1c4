"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

from model.encoder import Encoder
from service.errors import install_error_handlers
from service.routers import embed, health
from service.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the model is loaded once, in the lifespan, never at import time."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.encoder = await anyio.to_thread.run_sync(
            lambda: Encoder.load(
                settings.resolved_model_dir,
                backend=settings.backend,
                threads=settings.threads,
                batch_size=settings.batch_size,
            )
        )
        app.state.inference_limiter = anyio.CapacityLimiter(1)
        yield

    app = FastAPI(title="dapsearch", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(embed.router)
    return app
