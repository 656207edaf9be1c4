"""``POST /search``: queries in any language against a collection: dense, lexical or hybrid,
with filters; each hit is a document with the passage that matched best. The route checks the
request (one of query/queries, k, the hits budget); ``service.search`` does the rest."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.deps import EmbedderDep, SearchDep, SettingsDep
from service.errors import APIError
from service.schemas import SearchRequest, SearchResponse
from service.validation import check_texts

router = APIRouter(tags=["search"])


@router.post("/search", response_model=SearchResponse, operation_id="search")
async def search(
    body: SearchRequest, embedder: EmbedderDep, searches: SearchDep, settings: SettingsDep
) -> Response:
    """Validate, then search (service.search) and answer its bytes."""
    if (body.query is None) == (body.queries is None):
        raise APIError(422, "give exactly one of 'query' or 'queries'", "query")
    queries = [body.query] if body.query is not None else list(body.queries or [])
    param = "queries" if body.queries is not None else "query"
    check_texts(queries, settings, param)
    if body.k > settings.max_k:
        raise APIError(422, f"k must be at most {settings.max_k}", "k")
    if (hits := len(queries) * body.k) > settings.max_search_hits:  # bounds the work and the answer
        raise APIError(
            413,
            f"{len(queries)} queries with k={body.k} ask for {hits} hits, more than the "
            f"{settings.max_search_hits} one request may (DAPSEARCH_MAX_SEARCH_HITS); lower k or "
            "send fewer queries",
            "k",
        )
    data = await searches.search(body, queries, param, embedder)
    return Response(content=data, media_type="application/json")
