"""Request and response bodies (the OpenAPI schema at /docs is generated from these)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
)

from index.mining import Score, Strategy
from index.retrieval import DEFAULT_WEIGHT, Mode
from model.encoder import Kind

EncodingFormat = Literal["float", "base64"]


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[StrictStr] = Field(..., min_length=1, description="Texts to embed, in any language.")
    kind: Kind = Field("query", description="e5 prefix: 'query' for search queries, 'passage' for documents.")
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


MAX_FILTER_KEYS = 32
MAX_FILTER_KEY_CHARS = 128
MAX_FILTER_VALUE_CHARS = 1024
INT64 = (-(2**63), 2**63 - 1)  # SQLite's integers
FilterValue = StrictStr | StrictBool | StrictInt | StrictFloat | None


def _text(value: str, what: str, limit: int) -> str:
    if len(value) > limit:
        raise ValueError(f"{what} is longer than {limit} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} holds a lone surrogate: not text") from None
    return value


class SearchFilter(BaseModel):
    """Bounded and checked here, so every filter the schema admits is one SQLite can run."""

    model_config = ConfigDict(extra="forbid")

    lang: StrictStr | None = Field(None, max_length=64, description="Only documents in this language.")
    metadata: dict[str, FilterValue] = Field(
        default_factory=dict,
        max_length=MAX_FILTER_KEYS,
        description=f"Exact key = value matches, all of them (at most {MAX_FILTER_KEYS} keys; values "
        "are strings, booleans, finite numbers or null).",
    )

    @field_validator("lang")
    @classmethod
    def _lang(cls, value: str | None) -> str | None:
        return None if value is None else _text(value, "lang", 64)

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, FilterValue]) -> dict[str, FilterValue]:
        for key, item in value.items():
            _text(key, "a metadata key", MAX_FILTER_KEY_CHARS)
            if not key or any(ch in key for ch in '"\\') or not key.isprintable():
                raise ValueError(
                    f"metadata key {key[:40]!r} must be printable, without quotes or backslashes"
                )
            if isinstance(item, str):
                _text(item, f"the value of {key[:40]!r}", MAX_FILTER_VALUE_CHARS)
            elif isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"the value of {key[:40]!r} must be a finite number")
            elif isinstance(item, int) and not isinstance(item, bool) and not INT64[0] <= item <= INT64[1]:
                raise ValueError(f"the value of {key[:40]!r} is beyond a 64-bit integer")
        return value


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection: StrictStr
    query: StrictStr | None = Field(None, description="One query (or use 'queries').")
    queries: list[StrictStr] | None = Field(
        None, min_length=1, description="Several queries, one result list each."
    )
    k: int = Field(10, ge=1, description="Documents per query (each found by its best passage).")
    filter: SearchFilter | None = None
    mode: Mode | None = Field(
        None,
        description="'dense' (embeddings), 'lexical' (BM25 over the model's subword terms) or 'hybrid' "
        "(cosine + lexical_weight × BM25 normalised by the query's upper bound). Default: hybrid where "
        "the collection has a lexical index, else dense.",
    )
    lexical_weight: float = Field(
        DEFAULT_WEIGHT, ge=0.0, le=10.0, description="The weight of the lexical score in hybrid mode."
    )
    scores: bool = Field(False, description="Give each hit its dense and lexical scores.")
    highlight: bool = Field(
        False, description="Give each hit the character spans of its passage that match query terms."
    )


class HitPassage(BaseModel):
    text: str = Field(description="The passage of the document that matched best.")
    start: int = Field(description="Its first character in the document's text.")
    end: int = Field(description="One past its last character in the document's text.")


class HitScores(BaseModel):
    dense: float | None = Field(description="Cosine of query and passage (None in lexical mode).")
    lexical: float | None = Field(
        description="BM25 ÷ the query's BM25 upper bound, 0 to 1 (None in dense mode)."
    )


class SearchHit(BaseModel):
    id: str
    score: float
    text: str
    lang: str | None
    metadata: dict[str, Any]
    lang_detected: bool = Field(False, description="'lang' was detected from the text, not given.")
    passage: HitPassage
    scores: HitScores | None = None
    highlights: list[tuple[int, int]] | None = Field(
        None, description="[start, end) character spans of passage.text holding query terms."
    )


class SearchResponse(BaseModel):
    collection: str
    version: int = Field(description="The committed collection version these results come from.")
    model: str
    mode: Mode = Field(description="The search mode that ran.")
    results: list[list[SearchHit]]


class MineRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: list[StrictStr] = Field(..., min_length=1, description="Sentences in one language.")
    target: list[StrictStr] = Field(..., min_length=1, description="Sentences in another language.")
    k: int = Field(4, ge=1, le=64, description="Neighbourhood size of the margin.")
    score: Score = "ratio"
    strategy: Strategy = "max"
    threshold: float | None = Field(
        None, description="Keep pairs scoring above this; null keeps all candidates."
    )
    kind: Kind = Field("passage", description="e5 prefix used for both sides.")


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
    jobs: dict[str, Any] = Field(default_factory=dict, description="The job worker and its queue.")
    disk: dict[str, Any] = Field(
        default_factory=dict, description="Free space on the home's volume and the reserve kept."
    )
    damaged: dict[str, str] = Field(
        default_factory=dict, description="Collections that cannot be served, and what is wrong with each."
    )
    detail: str | None = None
