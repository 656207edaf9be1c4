"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.runtime import Runtime
from service.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/health/live", response_model=Health)
async def live() -> Health:
    """Up as soon as the process serves HTTP; never touches the model (for restart decisions)."""
    return Health(status="ok")


@router.get("/health/ready", response_model=Readiness, responses={503: {"model": Readiness}})
async def ready(request: Request) -> Response:
    """200 once the model is warm and collections are reachable; Redis down is 'degraded' but ready."""
    state = request.app.state
    runtime: Runtime | None = state.runtime
    if runtime is None:
        failed = state.load_error is not None
        body = Readiness(status="failed" if failed else "starting", detail=state.load_error)
        return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "5"})
    cache = await runtime.cache.status()
    body = Readiness(
        status="ready" if cache.ok else "degraded",
        model=runtime.encoder.model_id,
        collections=len(runtime.collections.names()),
        cache=cache.model_dump(),
    )
    return JSONResponse(body.model_dump())


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text format: request latencies per route, queue/tokenize/inference times, cache."""
    state = request.app.state
    runtime: Runtime | None = state.runtime
    if runtime is not None:
        state.metrics.queue_depth.set(runtime.batcher.queued)
        state.metrics.bulk_queue_depth.set(runtime.batcher.bulk_queued)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
