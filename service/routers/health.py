"""Liveness: answers as soon as the process serves HTTP, without touching the model."""

from __future__ import annotations

from fastapi import APIRouter

from service.schemas import Health

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", response_model=Health)
async def live() -> Health:
    return Health(status="ok")
