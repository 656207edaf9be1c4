"""``POST /v1/embeddings``: the OpenAI embeddings API, so OpenAI clients work unchanged."""

from __future__ import annotations

from fastapi import APIRouter

from model.encoder import Kind
from service.deps import EmbedderDep, SettingsDep
from service.errors import APIError
from service.responses import VectorJSONResponse
from service.routers.embed import encode_vectors
from service.schemas import OpenAIEmbeddingRequest, OpenAIEmbeddingResponse
from service.validation import check_texts

router = APIRouter(tags=["embeddings"])


def _model_names(model_id: str) -> set[str]:
    """The full id ('name@hash') and its name alone both select the served model."""
    return {model_id, model_id.split("@", 1)[0]}


@router.post("/v1/embeddings", response_model=OpenAIEmbeddingResponse, response_class=VectorJSONResponse)
async def embeddings(
    body: OpenAIEmbeddingRequest, embedder: EmbedderDep, settings: SettingsDep
) -> VectorJSONResponse:
    if body.model is not None and body.model not in _model_names(embedder.model_id):
        raise APIError(
            404,
            f"model {body.model!r} is not served here; this service serves {embedder.model_id}",
            "model",
            "model_not_found",
        )
    if body.dimensions is not None and body.dimensions != embedder.dim:
        raise APIError(
            400,
            f"dimensions={body.dimensions} is not supported: the model returns {embedder.dim}",
            "dimensions",
        )
    if isinstance(body.input, str):
        texts = [body.input]
    elif all(isinstance(t, str) for t in body.input):
        texts = [t for t in body.input if isinstance(t, str)]
    else:
        raise APIError(400, "token-id input is not supported; send text", "input")
    if not texts:
        raise APIError(400, "input is an empty list", "input")
    check_texts(texts, settings, "input")
    kind: Kind = "query" if body.input_type == "query" else "passage"
    result = await embedder.embed(texts, kind, "input")
    vectors = encode_vectors(result.vectors, body.encoding_format)
    return VectorJSONResponse(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "model": embedder.model_id,
            "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens},
        }
    )
