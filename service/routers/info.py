"""``GET /info``: what is served and the limits a client must respect."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from model.cpu import cpu_features
from service.deps import BackendChoiceDep, CacheDep, EncoderDep, SettingsDep

router = APIRouter(tags=["health"])


@router.get("/info")
async def info(
    encoder: EncoderDep, backend: BackendChoiceDep, settings: SettingsDep, cache: CacheDep
) -> dict[str, Any]:
    m = encoder.manifest
    cpu = cpu_features()
    return {
        "model": m.id,
        "dim": m.dim,
        "backend": backend.backend,
        "backend_requested": backend.requested,
        "backend_reason": backend.reason,
        "cpu": {
            "model": cpu.model,
            "features": cpu.simd,
            "int8_vnni": cpu.int8_vnni,
            "native_bf16": cpu.native_bf16,
        },
        "pooling": m.pooling,
        "max_length": m.max_length,
        "prefixes": {"query": m.prefix("query"), "passage": m.prefix("passage")},
        "cache": cache.name,
        "limits": {
            "max_texts": settings.max_texts,
            "max_text_chars": settings.max_text_chars,
            "max_body_bytes": settings.max_body_bytes,
            "max_k": settings.max_k,
            "mine_max_sentences": settings.mine_max_sentences,
            "max_upload_bytes": settings.max_upload_bytes,
            "batch_size": settings.batch_size,
            "max_queue": settings.max_queue,
        },
    }
