"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core.disk import free_bytes, full_message
from service.runtime import Runtime
from service.schemas import Health, Readiness
from service.settings import Settings

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
    settings: Settings = state.settings
    jobs = runtime.jobs.health()
    damaged = runtime.collections.damaged()
    free = free_bytes(settings.home)
    disk = {
        "free_bytes": free,
        "min_free_bytes": settings.min_free_bytes,
        "ok": free >= settings.min_free_bytes,
    }
    problems = [
        *([] if cache.ok else ["the cache is unreachable"]),
        *([] if disk["ok"] else [full_message(free, settings.min_free_bytes, "take new writes")]),
        *([f"{jobs['unsaved']} job records wait to be saved"] if jobs["unsaved"] else []),
        *[f"collection {name!r} is damaged: {what}" for name, what in damaged.items()],
    ]
    # A dead job worker would leave every job queued for ever: that is not ready.
    failed = jobs["worker"] != "running"
    body = Readiness(
        status="failed" if failed else ("degraded" if problems else "ready"),
        model=runtime.encoder.model_id,
        collections=len(runtime.collections.names()),
        cache=cache.model_dump(),
        jobs=jobs,
        disk=disk,
        damaged=damaged,
        detail="the job worker stopped; restart the service" if failed else "; ".join(problems) or None,
    )
    return JSONResponse(body.model_dump(), status_code=503 if failed else 200)


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text format: request latencies per route, queue/tokenize/inference times, cache."""
    state = request.app.state
    runtime: Runtime | None = state.runtime
    if runtime is not None:
        state.metrics.queue_depth.set(runtime.batcher.queued)
        state.metrics.bulk_queue_depth.set(runtime.batcher.bulk_queued)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
