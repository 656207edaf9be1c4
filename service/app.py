"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from model.encoder import Encoder
from service.access_log import redact_access_log
from service.api_docs import install_docs
from service.errors import install_error_handlers
from service.metrics import Metrics
from service.middleware import install_middleware
from service.routers import admin, embed, health, info, mine, openai, search, snapshots
from service.settings import Settings
from service.startup import start_runtime

log = logging.getLogger("dapsearch")


def create_app(settings: Settings | None = None, encoder: Encoder | None = None) -> FastAPI:
    """Build the app; the model, cache, collections and jobs are made in the lifespan, never at import.

    ``encoder`` replaces the model the settings name (``Encoder.dummy()`` in the model-free tests).
    """
    settings = settings or Settings()
    given = encoder
    metrics = Metrics()

    async def load(app: FastAPI, stack: AsyncExitStack) -> None:
        """Everything heavy, in order; /health/live answers meanwhile and /health/ready says 503."""
        app.state.runtime = await start_runtime(settings, metrics, stack, given)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redact_access_log()  # here: uvicorn has configured its loggers by now
        async with AsyncExitStack() as stack:
            task = asyncio.create_task(load(app, stack), name="load")

            def loaded(done: asyncio.Task[None]) -> None:
                if not done.cancelled() and done.exception() is not None:
                    # Public (/health/ready): no paths or library text; the log has the cause.
                    app.state.load_error = "failed to start; the service log has the cause"
                    log.error("dapsearch failed to start: %r", done.exception())

            task.add_done_callback(loaded)
            try:
                yield
            finally:
                app.state.runtime = None
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    app = FastAPI(
        title="dapsearch",
        version="0.1.0",
        description="Multilingual semantic search, embeddings and bitext mining (DAP encoders).",
        lifespan=lifespan,
        # Starlette answers a path with a stray slash by a redirect built from the Host header: an
        # open redirect behind a proxy. Such a path is a 404 instead.
        redirect_slashes=False,
        # FastAPI's pages load their files from a CDN; install_docs serves them from the package.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.runtime = None
    app.state.load_error = None
    install_error_handlers(app)
    install_middleware(app, settings, metrics)
    install_docs(app)
    for router in (health, info, embed, openai, search, mine, admin, snapshots):
        app.include_router(router.router)
    return app
