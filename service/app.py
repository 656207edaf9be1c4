"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
from fastapi import FastAPI

from index.restore import finish_interrupted
from index.snapshot import clean_snapshots
from model.artifact import read_manifest
from model.backend_choice import BackendChoice, choose_backend
from model.cpu import cpu_features
from model.encoder import Encoder
from service.access_log import redact_access_log
from service.api_docs import install_docs
from service.batcher import Batcher, BulkEncoder
from service.cache import create_cache
from service.collections import Collections
from service.demo import ensure_demo_collection
from service.embedding import Embedder
from service.errors import install_error_handlers
from service.jobs.runner import JobRunner
from service.metrics import Metrics
from service.middleware import install_middleware
from service.routers import admin, embed, health, info, mine, openai, search, snapshots
from service.runtime import Runtime
from service.settings import Settings

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
        cpu = cpu_features()
        model_dir = settings.resolved_model_dir

        def open_encoder() -> tuple[BackendChoice, Encoder]:
            """Off the event loop: the choice reads the manifest and looks for the graphs on disk."""
            if given is not None:
                return BackendChoice(
                    settings.backend, given.backend.name, "the encoder given to the app"
                ), given
            choice = choose_backend(settings.backend, model_dir, read_manifest(model_dir), cpu)
            choice.log_fallback()
            encoder = Encoder.load(
                model_dir, backend=choice.backend, threads=settings.threads, batch_size=settings.batch_size
            )
            return choice, encoder

        choice, encoder = await anyio.to_thread.run_sync(open_encoder)
        metrics.engine.info(
            {
                "backend": choice.backend,
                "requested": choice.requested,
                "cpu": cpu.model,
                "cpu_features": cpu.simd_text,
            }
        )
        # One forward pass before serving: the first request must not pay for session warm-up.
        await anyio.to_thread.run_sync(lambda: encoder.embed(["warm-up"], "query"))
        batcher = Batcher(
            encoder,
            metrics,
            settings.batch_size,
            settings.batch_wait_ms / 1000,
            settings.max_queue,
            settings.bulk_batch_size,
            settings.batch_tokens,
        )
        batcher.start()
        stack.push_async_callback(batcher.stop)
        cache = create_cache(settings, metrics)
        stack.push_async_callback(cache.close)
        collections = Collections(settings.collections_dir, encoder.model_id, settings.search_threads)
        stack.callback(collections.close)
        # What a killed create, delete, restore or snapshot left: removed, or a checked restore finished.
        await anyio.to_thread.run_sync(finish_interrupted, settings.collections_dir)
        await anyio.to_thread.run_sync(clean_snapshots, settings.snapshots_dir)
        if settings.demo:
            await anyio.to_thread.run_sync(lambda: ensure_demo_collection(settings.collections_dir, encoder))
        # Jobs embed through the batcher at bulk priority, never beside it on the engine.
        bulk = BulkEncoder(batcher, asyncio.get_running_loop())
        jobs = JobRunner(settings, bulk, collections, metrics, model=encoder)
        await jobs.start()
        stack.push_async_callback(jobs.stop)
        app.state.runtime = Runtime(
            encoder=encoder,
            backend_choice=choice,
            batcher=batcher,
            cache=cache,
            embedder=Embedder(batcher, cache, metrics),
            collections=collections,
            jobs=jobs,
        )
        log.info(
            "dapsearch ready: model %s, backend %s (%s) on %s (%s), cache %s",
            encoder.model_id,
            choice.backend,
            choice.reason,
            cpu.model,
            cpu.simd_text,
            cache.name,
        )

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
