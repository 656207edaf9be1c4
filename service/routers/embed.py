"""``POST /embed``: texts in, L2-normalised vectors out (cached, micro-batched)."""

from __future__ import annotations

import base64

import numpy as np
from fastapi import APIRouter

from service.deps import EmbedderDep, SettingsDep
from service.errors import APIError
from service.responses import VectorJSONResponse
from service.schemas import EmbedRequest, EmbedResponse
from service.validation import check_texts

router = APIRouter(tags=["embeddings"])


def encode_vectors(vectors: np.ndarray, encoding_format: str) -> np.ndarray | list[str]:
    """float32 rows (written as JSON numbers by VectorJSONResponse), or base64 of little-endian
    float32 bytes per vector (OpenAI's base64 format)."""
    if encoding_format == "base64":
        little = np.ascontiguousarray(vectors, dtype="<f4")
        return [base64.b64encode(row.tobytes()).decode("ascii") for row in little]
    return np.ascontiguousarray(vectors, dtype=np.float32)


@router.post("/embed", response_model=EmbedResponse, response_class=VectorJSONResponse)
async def embed(body: EmbedRequest, embedder: EmbedderDep, settings: SettingsDep) -> VectorJSONResponse:
    if not body.normalize:
        raise APIError(
            400, "normalize=false is not supported: the model returns L2-normalised vectors", "normalize"
        )
    check_texts(body.texts, settings, "texts")
    result = await embedder.embed(body.texts, body.kind)
    if not body.truncate and result.truncated:
        first = result.truncated[0]
        raise APIError(
            413,
            f"texts[{first}] is longer than the model's maximum of {embedder.max_length} tokens "
            "(send truncate=true to cut it)",
            f"texts[{first}]",
        )
    return VectorJSONResponse(
        {
            "model": embedder.model_id,
            "dim": embedder.dim,
            "embeddings": encode_vectors(result.vectors, body.encoding_format),
            "truncated": result.truncated,
            "usage": {"tokens": result.tokens},
        }
    )
