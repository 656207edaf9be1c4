"""Request and response bodies."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[StrictStr] = Field(..., min_length=1, description="Texts to embed, in any language.")
    kind: Literal["query", "passage"] = Field(
        "query", description="e5 prefix: 'query' for search queries, 'passage' for documents."
    )


class Usage(BaseModel):
    tokens: int


class EmbedResponse(BaseModel):
    model: str
    dim: int
    embeddings: list[list[float]]
    truncated: list[int] = Field(description="Indices of texts cut at the model's maximum length.")
    usage: Usage


class Health(BaseModel):
    status: str
