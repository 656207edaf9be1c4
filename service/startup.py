"""What the lifespan starts, in order: the encoder (warmed up), the batcher, the cache, the
collections (after what a killed process left is cleaned up), the demo, the job runner.

Apart from the app factory so that ``create_app`` only wires routes, handlers and the lifespan,
and so that the order of start-up reads in one place. Each object is stopped in reverse order by
the lifespan's exit stack.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack

import anyio

from index.restore import finish_interrupted
from index.snapshot import clean_snapshots
from model.artifact import read_manifest
from model.backend_choice import BackendChoice, choose_backend
from model.cpu import CpuFeatures, cpu_features
from model.encoder import Encoder
from service.batcher import Batcher, BulkEncoder
from service.cache import create_cache
from service.collections import Collections
from service.demo import ensure_demo_collection
from service.embedding import Embedder
from service.jobs.runner import JobRunner
from service.metrics import Metrics
from service.runtime import Runtime
from service.search import SearchService
from service.settings import Settings

log = logging.getLogger("dapsearch")


def open_encoder(
    settings: Settings, cpu: CpuFeatures, given: Encoder | None
) -> tuple[BackendChoice, Encoder]:
    """The encoder the settings name, on the backend chosen for this CPU (or ``given``). Run off
    the event loop: the choice reads the manifest and looks for the graphs on disk."""
    if given is not None:
        return BackendChoice(settings.backend, given.backend.name, "the encoder given to the app"), given
    model_dir = settings.resolved_model_dir
    choice = choose_backend(settings.backend, model_dir, read_manifest(model_dir), cpu)
    choice.log_fallback()
    encoder = Encoder.load(
        model_dir, backend=choice.backend, threads=settings.threads, batch_size=settings.batch_size
    )
    return choice, encoder


async def start_runtime(
    settings: Settings, metrics: Metrics, stack: AsyncExitStack, given: Encoder | None = None
) -> Runtime:
    """Start everything the routes use; ``stack`` stops it again."""
    cpu = cpu_features()
    choice, encoder = await anyio.to_thread.run_sync(open_encoder, settings, cpu, given)
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
    collections = await _collections(settings, encoder)
    stack.callback(collections.close)
    # Jobs embed through the batcher at bulk priority, never beside it on the engine.
    jobs = JobRunner(
        settings, BulkEncoder(batcher, asyncio.get_running_loop()), collections, metrics, model=encoder
    )
    await jobs.start()
    stack.push_async_callback(jobs.stop)
    log.info(
        "dapsearch ready: model %s, backend %s (%s) on %s (%s), cache %s",
        encoder.model_id,
        choice.backend,
        choice.reason,
        cpu.model,
        cpu.simd_text,
        cache.name,
    )
    embedder = Embedder(batcher, cache, metrics)
    return Runtime(
        encoder=encoder,
        backend_choice=choice,
        batcher=batcher,
        cache=cache,
        embedder=embedder,
        collections=collections,
        jobs=jobs,
        searches=SearchService(encoder, collections, cache, metrics, settings.max_response_bytes),
    )


async def _collections(settings: Settings, encoder: Encoder) -> Collections:
    """The collections' registry, once what a killed create, delete, restore or snapshot left is
    removed (or a checked restore finished), with the demo collection where it is wanted."""
    await anyio.to_thread.run_sync(finish_interrupted, settings.collections_dir)
    await anyio.to_thread.run_sync(clean_snapshots, settings.snapshots_dir)
    if settings.demo:
        await anyio.to_thread.run_sync(ensure_demo_collection, settings.collections_dir, encoder)
    return Collections(settings.collections_dir, encoder.model_id, settings.search_threads)
