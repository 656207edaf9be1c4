"""``POST /search``: queries in any language against a collection: dense, lexical or hybrid,
with filters; each hit is a document with the passage that matched best."""

from __future__ import annotations

import hashlib
import json
from functools import partial

import anyio
import numpy as np
from fastapi import APIRouter, Response

from index.cutting import lexicon_of
from index.filters import Filter
from index.lexical import Lexicon
from index.retrieval import Hit, Query
from service.deps import CacheDep, CollectionsDep, EmbedderDep, EncoderDep, MetricsDep, SettingsDep
from service.errors import APIError
from service.schemas import HitPassage, HitScores, SearchHit, SearchRequest, SearchResponse
from service.validation import check_texts

router = APIRouter(tags=["search"])


def _result_key(model_id: str, body: SearchRequest, queries: list[str], identity: str, version: int) -> str:
    """Keyed by the collection's identity and committed version: any write makes older entries
    unreachable, and so does deleting the collection (a re-created one has another identity);
    and by everything in the request that changes the answer (mode, weight, scores, highlights)."""
    spec = json.dumps(
        [
            queries,
            body.k,
            body.filter.model_dump() if body.filter else None,
            body.mode,
            body.lexical_weight,
            body.scores,
            body.highlight,
        ],
        sort_keys=True,
        ensure_ascii=False,
    )
    digest = hashlib.sha256(spec.encode("utf-8", "surrogatepass")).hexdigest()
    return f"dapsearch:v3:search:{model_id}:{identity}:{version}:{digest}"


def _hit(hit: Hit, body: SearchRequest, lexicon: Lexicon) -> SearchHit:
    passage = hit.text[hit.start : hit.end]
    return SearchHit(
        id=hit.id,
        score=hit.score,
        text=hit.text,
        lang=hit.lang,
        metadata=hit.metadata,
        lang_detected=hit.lang_detected,
        passage=HitPassage(text=passage, start=hit.start, end=hit.end),
        scores=HitScores(dense=hit.dense, lexical=hit.lexical) if body.scores else None,
        highlights=lexicon.highlight(passage, hit.terms) if body.highlight else None,
    )


def _hits(rows: list[list[Hit]], body: SearchRequest, lexicon: Lexicon) -> list[list[SearchHit]]:
    return [[_hit(h, body, lexicon) for h in row] for row in rows]


@router.post("/search", response_model=SearchResponse, operation_id="search")
async def search(
    body: SearchRequest,
    embedder: EmbedderDep,
    encoder: EncoderDep,
    collections: CollectionsDep,
    cache: CacheDep,
    metrics: MetricsDep,
    settings: SettingsDep,
) -> Response:
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
    # Unknown collection → 404, and a mode it cannot serve → 409, before any model work.
    identity, version, mode = await anyio.to_thread.run_sync(
        partial(collections.describe, body.collection, body.mode)
    )
    key = _result_key(embedder.model_id, body, queries, identity, version)
    cached = await cache.get_many([key])
    if cached[0] is not None:
        metrics.cache_hits.labels("search").inc()
        return Response(content=cached[0], media_type="application/json")
    metrics.cache_misses.labels("search").inc()
    lexicon = lexicon_of(encoder.tokenizer)
    terms: list[list[int]] = [[] for _ in queries]
    if mode != "dense" or body.highlight:  # a plain dense search needs no lexical terms
        terms = await anyio.to_thread.run_sync(lambda: [lexicon.query_terms(q) for q in queries])
    vectors: list[np.ndarray | None] = [None] * len(queries)
    if mode != "lexical":  # lexical search needs no model work
        vectors = list((await embedder.embed(queries, "query", param)).vectors)
    flt = Filter(lang=body.filter.lang, metadata=body.filter.metadata) if body.filter else None
    prepared = [Query(v, t) for v, t in zip(vectors, terms, strict=True)]
    run = partial(
        collections.search, body.collection, prepared, body.k, flt, mode, body.lexical_weight, body.highlight
    )
    searched_identity, searched, rows = await anyio.to_thread.run_sync(run)
    results = await anyio.to_thread.run_sync(_hits, rows, body, lexicon)
    response = SearchResponse(
        collection=body.collection, version=searched, model=embedder.model_id, mode=mode, results=results
    )
    data = response.model_dump_json().encode()
    if len(data) > settings.max_response_bytes:  # long documents: hits alone do not bound the answer
        raise APIError(
            413,
            f"the answer would be {len(data) / 2**20:.1f} MiB, more than the {settings.max_response_bytes} "
            "bytes one response may be (DAPSEARCH_MAX_RESPONSE_BYTES); lower k or send fewer queries",
            "k",
        )
    if (searched_identity, searched) == (identity, version):
        await cache.set_many({key: data})
    return Response(content=data, media_type="application/json")
