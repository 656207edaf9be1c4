"""A search, from checked queries to the answer's bytes: the result cache, the collection's
committed version, the query vectors and terms, the search itself and the answer's size bound.

Between the route (which only validates and answers) and the engine (``index``): a newcomer
follows ``/search`` through the route, this module, the collections' registry and the collection.
Answers are cached by collection identity and committed version, so any write makes older
entries unreachable and a re-created collection never meets its predecessor's.
"""

from __future__ import annotations

import hashlib
import json
from functools import partial

import anyio
import numpy as np

from index.cutting import lexicon_of
from index.filters import Filter
from index.lexical import Lexicon
from index.retrieval import Hit, Mode, Query
from model.encoder import Encoder
from service.cache import Cache
from service.collections import Collections
from service.embedding import CallerEmbedder
from service.errors import APIError
from service.metrics import Metrics
from service.schemas import HitPassage, HitScores, SearchHit, SearchRequest, SearchResponse


def result_key(model_id: str, body: SearchRequest, queries: list[str], identity: str, version: int) -> str:
    """Keyed by the collection's identity and committed version, and by everything in the request
    that changes the answer (mode, weight, scores, highlights)."""
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


class SearchService:
    """One per app: what every search needs besides the caller's own embedder."""

    def __init__(
        self, encoder: Encoder, collections: Collections, cache: Cache, metrics: Metrics, max_bytes: int
    ) -> None:
        self.collections, self.cache, self.metrics, self.max_bytes = collections, cache, metrics, max_bytes
        self.lexicon = lexicon_of(encoder.tokenizer)

    async def search(
        self, body: SearchRequest, queries: list[str], param: str, embedder: CallerEmbedder
    ) -> bytes:
        """The answer's JSON. An unknown collection is a 404 and a mode it cannot serve a 409,
        before any model work; an answer over the size bound a 413."""
        identity, version, mode = await anyio.to_thread.run_sync(
            partial(self.collections.describe, body.collection, body.mode)
        )
        key = result_key(embedder.model_id, body, queries, identity, version)
        cached = (await self.cache.get_many([key]))[0]
        if cached is not None:
            self.metrics.cache_hits.labels("search").inc()
            return cached
        self.metrics.cache_misses.labels("search").inc()
        prepared = await self._queries(body, queries, param, mode, embedder)
        flt = Filter(lang=body.filter.lang, metadata=body.filter.metadata) if body.filter else None
        run = partial(
            self.collections.search,
            body.collection,
            prepared,
            body.k,
            flt,
            mode,
            body.lexical_weight,
            body.highlight,
        )
        searched_identity, searched, rows = await anyio.to_thread.run_sync(run)
        results = await anyio.to_thread.run_sync(_hits, rows, body, self.lexicon)
        response = SearchResponse(
            collection=body.collection, version=searched, model=embedder.model_id, mode=mode, results=results
        )
        data = response.model_dump_json().encode()
        if len(data) > self.max_bytes:  # long documents: the hits budget alone does not bound the answer
            raise APIError(
                413,
                f"the answer would be {len(data) / 2**20:.1f} MiB, more than the {self.max_bytes} bytes one "
                "response may be (DAPSEARCH_MAX_RESPONSE_BYTES); lower k or send fewer queries",
                "k",
            )
        if (searched_identity, searched) == (identity, version):
            await self.cache.set_many({key: data})
        return data

    async def _queries(
        self, body: SearchRequest, queries: list[str], param: str, mode: Mode, embedder: CallerEmbedder
    ) -> list[Query]:
        """Each query's vector (not for lexical search) and lexical terms (not for plain dense)."""
        terms: list[list[int]] = [[] for _ in queries]
        if mode != "dense" or body.highlight:
            terms = await anyio.to_thread.run_sync(lambda: [self.lexicon.query_terms(q) for q in queries])
        vectors: list[np.ndarray | None] = [None] * len(queries)
        if mode != "lexical":
            vectors = list((await embedder.embed(queries, "query", param)).vectors)
        return [Query(v, t) for v, t in zip(vectors, terms, strict=True)]
