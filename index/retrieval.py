"""Dense, lexical and hybrid retrieval of documents by their best passage.

A collection stores passages; users get documents. Each mode ranks passages, keeps every
document's best one, and returns the top k documents, each with the passage that won.

Hybrid scores are ``cosine + weight · lexical``, where the lexical score is BM25 divided by the
query's own upper bound (``index.lexical``): both stay on an absolute scale. Rank fusion and
per-query min-max normalisation were measured and rejected: a question in another language has
almost no lexical mass in a collection, and normalising it per query turns noise into a
full-weight signal that wrecks cross-lingual retrieval (bench/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

from index.lexical import LexicalQuery
from index.store import Store

Mode = Literal["dense", "lexical", "hybrid"]
MODES: tuple[Mode, ...] = get_args(Mode)
DEFAULT_WEIGHT = 0.2  # the lexical weight of hybrid mode (tuned on search-dev, bench/RESULTS.md)
CANDIDATES = 3  # passages per wanted document each channel proposes to hybrid fusion

# Runs a FAISS search: (query vectors (n, dim), passages wanted) -> (scores, FAISS ids), both (n, m).
DenseSearch = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Query:
    """One query: its vector (None in lexical mode) and its lexical terms."""

    vector: np.ndarray | None
    terms: list[int] = field(default_factory=list)


@dataclass
class Hit:
    """A document found, by its best passage (characters ``start:end`` of its text)."""

    id: str
    score: float
    text: str
    lang: str | None
    metadata: dict[str, Any]
    start: int = 0
    end: int = 0
    lang_detected: bool = False
    dense: float | None = None
    lexical: float | None = None
    terms: list[int] = field(default_factory=list)  # the query terms that weigh in this collection


@dataclass
class Searcher:
    """One search over one collection snapshot: the store, the FAISS search, the filter."""

    store: Store
    dense_search: DenseSearch
    vectors: int  # passages in the index
    lexical: tuple[int, float]  # the lexical index's passages and mean terms per passage
    where: tuple[str, list[Any]] | None = None  # a filter as SQL on docs (index.filters)
    known: dict[str, int] = field(default_factory=dict)  # document frequencies read at this snapshot
    highlight: bool = False  # dense hits, too, carry the query terms that weigh here

    def run(self, queries: Sequence[Query], k: int, mode: Mode, weight: float) -> list[list[Hit]]:
        if mode == "dense":
            return self._dense(queries, k)
        n = min(max(self.vectors, 1), CANDIDATES * k + 30)
        dense: list[dict[int, float]] = [{} for _ in queries]
        if mode == "hybrid" and self.vectors and queries:  # one FAISS call for every query
            scores, ids = self.dense_search(np.stack([q.vector for q in queries if q.vector is not None]), n)
            dense = [
                {int(p): float(s) for p, s in zip(row_ids, row, strict=True) if p >= 0}
                for row_ids, row in zip(ids, scores, strict=True)
            ]
        return [self._one(q, k, mode, weight, n, d) for q, d in zip(queries, dense, strict=True)]

    # ------------------------------------------------------------------ dense

    def _dense(self, queries: Sequence[Query], k: int) -> list[list[Hit]]:
        if not queries or self.vectors == 0:
            return [[] for _ in queries]
        matrix = np.stack([q.vector for q in queries if q.vector is not None])
        wanted = min(self.vectors, max(2 * k, k + 16))
        out: list[list[Hit]] = []
        scores, ids = self.dense_search(matrix, wanted)
        for i, query in enumerate(queries):
            row_scores, row_ids, n = scores[i], ids[i], wanted
            while True:
                pairs = [(int(p), float(s)) for p, s in zip(row_ids, row_scores, strict=True) if p >= 0]
                hits = self._group(pairs, dict(pairs), {}, k, "dense")
                found = len(pairs)
                if len(hits) >= k or n >= self.vectors or found < n:
                    break  # enough documents, or every passage (the filter admits) was ranked
                n = min(self.vectors, n * 4)
                row_scores, row_ids = (a[0] for a in self.dense_search(matrix[i : i + 1], n))
            out.append(self._finish(hits, query))
        return out

    # ------------------------------------------------------------------ lexical and hybrid

    def _lexical(self, query: Query, n: int, mode: Mode) -> tuple[LexicalQuery, list[tuple[int, float]]]:
        db = self.store.connection()
        lq = LexicalQuery(db, query.terms, *self.lexical, self.known)
        exhaustive = mode == "lexical"  # hybrid scores its dense candidates lexically anyway
        if self.where is None:
            return lq, lq.top(db, n, exhaustive=exhaustive)
        sql, args = self.where
        return lq, lq.top(db, n, f"rowid IN ({self.store.matching_sql(sql)})", args, exhaustive)

    def _one(
        self, query: Query, k: int, mode: Mode, weight: float, n: int, dense: dict[int, float]
    ) -> list[Hit]:
        """Lexical or hybrid search of one query; ``dense``: its n best passages by cosine."""
        lq, lexical = self._lexical(query, n, mode)
        if mode == "lexical":
            while True:
                hits = self._group(lexical, {}, dict(lexical), k, mode)
                if len(hits) >= k or len(lexical) < n:
                    break
                n *= 4
                lq, lexical = self._lexical(query, n, mode)
            return self._finish(hits, query, lq)
        assert query.vector is not None
        lex = dict(lexical)
        missing = [p for p in lex if p not in dense]
        if missing:
            stored = self.store.vectors_of(missing)
            dense.update({p: float(v @ query.vector) for p, v in stored.items()})
        unscored = [p for p in dense if p not in lex]
        lex.update(lq.scores(self.store.connection(), unscored))
        fused = {p: score + weight * lex.get(p, 0.0) for p, score in dense.items()}
        pairs = sorted(fused.items(), key=lambda item: item[1], reverse=True)
        return self._finish(self._group(pairs, dense, lex, k, mode), query, lq)

    # ------------------------------------------------------------------ grouping

    def _group(
        self,
        pairs: list[tuple[int, float]],
        dense: dict[int, float],
        lexical: dict[int, float],
        k: int,
        mode: Mode,
    ) -> list[Hit]:
        """The best passage of each document, best documents first, at most k (``pairs`` sorted
        best first), with the component scores ``mode`` has (dense: no lexical, and the reverse)."""
        places = self.store.passage_places(p for p, _ in pairs)
        chosen: dict[int, tuple[int, float]] = {}  # document row id -> (its best passage, score)
        for pid, score in pairs:
            place = places.get(pid)
            if place is None or place[0] in chosen:
                continue  # deleted since the index was searched, or its document has a better one
            chosen[place[0]] = (pid, score)
            if len(chosen) == k:
                break
        docs = self.store.documents_by_rid(chosen)
        hits: list[Hit] = []
        for rid, (pid, score) in chosen.items():
            doc = docs.get(rid)
            if doc is None:
                continue
            _, start, end = places[pid]
            hits.append(
                Hit(
                    doc.id,
                    score,
                    doc.text,
                    doc.lang,
                    doc.metadata,
                    start,
                    end,
                    doc.lang_detected,
                    dense.get(pid) if mode != "lexical" else None,
                    lexical.get(pid, 0.0) if mode != "dense" else None,
                )
            )
        return hits

    def _finish(self, hits: list[Hit], query: Query, lq: LexicalQuery | None = None) -> list[Hit]:
        """Hits with the query terms worth highlighting: those that weigh in this collection (a
        term in half the passages or more weighs nothing, as in BM25)."""
        if lq is None and self.highlight and self.store.lexical and query.terms and hits:
            lq = LexicalQuery(self.store.connection(), query.terms, *self.lexical, self.known)
        terms = lq.weighted_terms() if lq is not None else list(query.terms)
        for hit in hits:
            hit.terms = terms
        return hits
