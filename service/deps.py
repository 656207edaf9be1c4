"""Dependencies: the heavy objects made in the lifespan, reached through ``app.state``.

They are ``async def`` because they only read attributes: FastAPI runs a plain ``def`` dependency
on a worker thread, a hop per dependency per request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from model.backend_choice import BackendChoice
from model.encoder import Encoder
from service.collections import Collections
from service.embedding import CallerEmbedder, Embedder
from service.errors import APIError
from service.metrics import Metrics
from service.settings import Settings

if TYPE_CHECKING:
    from service.cache import Cache
    from service.jobs import JobManager


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def require_ready(request: Request) -> None:
    """503 + Retry-After while the model loads (or if it failed to), instead of an attribute error."""
    state = request.app.state
    if not state.ready:
        error = state.load_error
        message = (
            f"service failed to start: {error}" if error else "service is starting: the model is loading"
        )
        raise APIError(503, message, headers={"Retry-After": "5"})


async def get_encoder(request: Request) -> Encoder:
    require_ready(request)
    encoder: Encoder = request.app.state.encoder
    return encoder


async def get_embedder(request: Request) -> CallerEmbedder:
    require_ready(request)
    embedder: Embedder = request.app.state.embedder
    settings: Settings = request.app.state.settings
    return CallerEmbedder(embedder, request.receive, settings.max_request_tokens)


async def get_backend_choice(request: Request) -> BackendChoice:
    require_ready(request)
    choice: BackendChoice = request.app.state.backend_choice
    return choice


async def get_collections(request: Request) -> Collections:
    require_ready(request)
    collections: Collections = request.app.state.collections
    return collections


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_cache(request: Request) -> Cache:
    require_ready(request)
    cache: Cache = request.app.state.cache
    return cache


async def get_jobs(request: Request) -> JobManager:
    require_ready(request)
    jobs: JobManager = request.app.state.jobs
    return jobs


SettingsDep = Annotated[Settings, Depends(get_settings)]
EncoderDep = Annotated[Encoder, Depends(get_encoder)]
BackendChoiceDep = Annotated[BackendChoice, Depends(get_backend_choice)]
EmbedderDep = Annotated[CallerEmbedder, Depends(get_embedder)]
CollectionsDep = Annotated[Collections, Depends(get_collections)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
CacheDep = Annotated["Cache", Depends(get_cache)]
JobsDep = Annotated["JobManager", Depends(get_jobs)]
