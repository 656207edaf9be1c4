"""``POST /search``: queries in any language against a collection, with filters."""

from __future__ import annotations

import hashlib
import json
from functools import partial

import anyio
from fastapi import APIRouter

from index.filters import Filter
from index.retrieval import Hit
from service.deps import CacheDep, CollectionsDep, EmbedderDep, MetricsDep, SettingsDep
from service.errors import APIError
from service.schemas import SearchHit, SearchRequest, SearchResponse
from service.validation import check_texts

router = APIRouter(tags=["search"])


def _result_key(model_id: str, body: SearchRequest, queries: list[str], identity: str, version: int) -> str:
    """Keyed by the collection's identity and committed version: any write makes older entries
    unreachable, and so does deleting the collection (a re-created one has another identity)."""
    spec = json.dumps(
        [queries, body.k, body.filter.model_dump() if body.filter else None],
        sort_keys=True,
        ensure_ascii=False,
    )
    digest = hashlib.sha256(spec.encode("utf-8", "surrogatepass")).hexdigest()
    return f"dapsearch:v2:search:{model_id}:{identity}:{version}:{digest}"


def _hits(rows: list[list[Hit]]) -> list[list[SearchHit]]:
    return [
        [SearchHit(id=h.id, score=h.score, text=h.text, lang=h.lang, metadata=h.metadata) for h in row]
        for row in rows
    ]


@router.post("/search", response_model=SearchResponse, operation_id="search")
async def search(
    body: SearchRequest,
    embedder: EmbedderDep,
    collections: CollectionsDep,
    cache: CacheDep,
    metrics: MetricsDep,
    settings: SettingsDep,
) -> SearchResponse:
    if (body.query is None) == (body.queries is None):
        raise APIError(422, "give exactly one of 'query' or 'queries'", "query")
    queries = [body.query] if body.query is not None else list(body.queries or [])
    check_texts(queries, settings, "queries" if body.queries is not None else "query")
    if body.k > settings.max_k:
        raise APIError(422, f"k must be at most {settings.max_k}", "k")
    # Unknown collection → 404 before any model work.
    identity, version = await anyio.to_thread.run_sync(partial(collections.version, body.collection))
    key = _result_key(embedder.model_id, body, queries, identity, version)
    cached = await cache.get_many([key])
    if cached[0] is not None:
        metrics.cache_hits.labels("search").inc()
        return SearchResponse.model_validate_json(cached[0])
    metrics.cache_misses.labels("search").inc()
    param = "queries" if body.queries is not None else "query"
    vectors = (await embedder.embed(queries, "query", param)).vectors
    flt = Filter(lang=body.filter.lang, metadata=body.filter.metadata) if body.filter else None
    searched_identity, searched, rows = await anyio.to_thread.run_sync(
        partial(collections.search, body.collection, vectors, body.k, flt)
    )
    response = SearchResponse(
        collection=body.collection, version=searched, model=embedder.model_id, results=_hits(rows)
    )
    if (searched_identity, searched) == (identity, version):
        await cache.set_many({key: response.model_dump_json().encode()})
    return response
