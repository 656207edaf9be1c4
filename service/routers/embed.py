"""``POST /embed``: texts in, L2-normalised vectors out."""

from __future__ import annotations

from functools import partial

import anyio
from fastapi import APIRouter

from service.deps import EncoderDep, InferenceLimiterDep, SettingsDep
from service.errors import APIError
from service.schemas import EmbedRequest, EmbedResponse, Usage

router = APIRouter(tags=["embeddings"])


@router.post("/embed", response_model=EmbedResponse)
async def embed(
    body: EmbedRequest, encoder: EncoderDep, settings: SettingsDep, limiter: InferenceLimiterDep
) -> EmbedResponse:
    if len(body.texts) > settings.max_texts:
        raise APIError(413, f"at most {settings.max_texts} texts per request, got {len(body.texts)}", "texts")
    for i, text in enumerate(body.texts):
        if not text.strip():
            raise APIError(422, f"texts[{i}] is empty", f"texts[{i}]")
        if len(text) > settings.max_text_chars:
            raise APIError(
                413,
                f"texts[{i}] has {len(text)} characters; the limit is {settings.max_text_chars}",
                f"texts[{i}]",
            )
    # One inference at a time: the runtime already uses every core for a single batch.
    result = await anyio.to_thread.run_sync(partial(encoder.encode, body.texts, body.kind), limiter=limiter)
    return EmbedResponse(
        model=encoder.model_id,
        dim=encoder.dim,
        embeddings=result.vectors.tolist(),
        truncated=result.truncated,
        usage=Usage(tokens=result.tokens),
    )
