"""Dependencies: the runtime made in the lifespan, reached through one ready dependency.

Every heavy object comes from ``get_runtime``, which answers 503 (with Retry-After) until the
model has loaded, or for good after a failed load; FastAPI runs it once per request however
many dependencies derive from it. They are ``async def`` because they only read attributes: a
plain ``def`` dependency would run on a worker thread, a hop per dependency per request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from model.backend_choice import BackendChoice
from model.encoder import Encoder
from service.cache import Cache
from service.collections import Collections
from service.embedding import CallerEmbedder
from service.errors import APIError
from service.jobs.runner import JobRunner
from service.metrics import Metrics
from service.runtime import Runtime
from service.search import SearchService
from service.settings import Settings


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_runtime(request: Request) -> Runtime:
    """503 + Retry-After while the model loads (or if it failed to), instead of an attribute error."""
    runtime: Runtime | None = request.app.state.runtime
    if runtime is None:
        error = request.app.state.load_error
        message = (
            f"service failed to start: {error}" if error else "service is starting: the model is loading"
        )
        raise APIError(503, message, headers={"Retry-After": "5"})
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


async def get_encoder(runtime: RuntimeDep) -> Encoder:
    return runtime.encoder


async def get_embedder(request: Request, runtime: RuntimeDep, settings: SettingsDep) -> CallerEmbedder:
    return CallerEmbedder(runtime.embedder, request.receive, settings.max_request_tokens)


async def get_backend_choice(runtime: RuntimeDep) -> BackendChoice:
    return runtime.backend_choice


async def get_collections(runtime: RuntimeDep) -> Collections:
    return runtime.collections


async def get_cache(runtime: RuntimeDep) -> Cache:
    return runtime.cache


async def get_searches(runtime: RuntimeDep) -> SearchService:
    return runtime.searches


async def get_jobs(runtime: RuntimeDep) -> JobRunner:
    return runtime.jobs


EncoderDep = Annotated[Encoder, Depends(get_encoder)]
BackendChoiceDep = Annotated[BackendChoice, Depends(get_backend_choice)]
EmbedderDep = Annotated[CallerEmbedder, Depends(get_embedder)]
CollectionsDep = Annotated[Collections, Depends(get_collections)]
CacheDep = Annotated[Cache, Depends(get_cache)]
JobsDep = Annotated[JobRunner, Depends(get_jobs)]
SearchDep = Annotated[SearchService, Depends(get_searches)]
