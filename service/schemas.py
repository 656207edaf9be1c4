"""Request and response bodies (the OpenAPI schema at /docs is generated from these)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

EncodingFormat = Literal["float", "base64"]


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[StrictStr] = Field(..., min_length=1, description="Texts to embed, in any language.")
    kind: Literal["query", "passage"] = Field(
        "query", description="e5 prefix: 'query' for search queries, 'passage' for documents."
    )
    normalize: bool = Field(
        True, description="L2-normalise (the exported model always does; false is refused)."
    )
    truncate: bool = Field(
        True, description="Cut texts longer than the model's maximum length; false answers 413 instead."
    )
    encoding_format: EncodingFormat = Field(
        "float", description="'base64': each vector as base64 of little-endian float32 bytes."
    )


class Usage(BaseModel):
    tokens: int


class EmbedResponse(BaseModel):
    model: str
    dim: int
    embeddings: list[list[float]] | list[str]
    truncated: list[int] = Field(description="Indices of texts cut at the model's maximum length.")
    usage: Usage


class OpenAIEmbeddingRequest(BaseModel):
    """The OpenAI embeddings request; ``input_type`` is an extension (query or passage prefix)."""

    model_config = ConfigDict(extra="forbid")

    input: StrictStr | list[StrictStr] | list[int] | list[list[int]] = Field(
        ..., description="A text or a list of texts (token-id input is not supported)."
    )
    model: StrictStr | None = Field(None, description="The served model's id or name.")
    encoding_format: EncodingFormat = "float"
    dimensions: int | None = Field(None, description="Only the model's own dimension is supported.")
    user: StrictStr | None = None
    input_type: Literal["query", "passage", "document"] = Field(
        "query", description="e5 prefix (extension): 'query' (default) or 'passage'/'document'."
    )


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class SearchFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lang: StrictStr | None = Field(None, description="Only documents in this language.")
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Exact key = value matches, all of them."
    )


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection: StrictStr
    query: StrictStr | None = Field(None, description="One query (or use 'queries').")
    queries: list[StrictStr] | None = Field(
        None, min_length=1, description="Several queries, one result list each."
    )
    k: int = Field(10, ge=1, description="Hits per query.")
    filter: SearchFilter | None = None


class SearchHit(BaseModel):
    id: str
    score: float
    text: str
    lang: str | None
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    collection: str
    version: int = Field(description="The committed collection version these results come from.")
    model: str
    results: list[list[SearchHit]]


class MineRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: list[StrictStr] = Field(..., min_length=1, description="Sentences in one language.")
    target: list[StrictStr] = Field(..., min_length=1, description="Sentences in another language.")
    k: int = Field(4, ge=1, le=64, description="Neighbourhood size of the margin.")
    score: Literal["ratio", "distance", "absolute"] = "ratio"
    strategy: Literal["forward", "backward", "intersect", "max"] = "max"
    threshold: float | None = Field(
        None, description="Keep pairs scoring above this; null keeps all candidates."
    )
    kind: Literal["query", "passage"] = Field("passage", description="e5 prefix used for both sides.")


class MinedPair(BaseModel):
    source_index: int
    target_index: int
    score: float


class MineResponse(BaseModel):
    model: str
    pairs: list[MinedPair]
    threshold: float | None
    score: str
    strategy: str
    k: int


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: Literal["ready", "degraded", "starting", "failed"]
    model: str | None = None
    collections: int = 0
    cache: dict[str, Any] = Field(default_factory=dict)
    detail: str | None = None
