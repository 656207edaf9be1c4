"""The lexical channel: BM25 over the encoder's own subword tokens, in SQLite FTS5.

Why subword tokens: they need no word segmenter for any script the model covers (FTS5's
``unicode61`` keeps a whole CJK run as one token and splits Thai and Devanagari at every
combining mark), and a word inside a compound or an inflected form shares its pieces with the
query. Texts are lower-cased by the tokenizer's own normaliser, so offsets still point into the
original text. Each passage's term ids are stored in an FTS5 table in the collection's own
database, written in the same transaction as the passage: the lexical index can never drift
from the vectors. Queries are built from term ids only, so nothing a user types is ever FTS
syntax.

Scores are normalised per query to [0, 1] by the query's BM25 upper bound
(Σ idf·(k1 + 1) over its terms): a query with little lexical mass in a collection (a question in
another language) keeps a small lexical score instead of being inflated to full weight, which
is what keeps cross-lingual retrieval intact in hybrid mode.
"""

from __future__ import annotations

import math
import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from index.passages import Span
from model.encoder import TextTokenizer

K1, B = 1.2, 0.75  # FTS5's bm25() constants
TABLE = "lexical"
SCHEMA = f"""
CREATE VIRTUAL TABLE IF NOT EXISTS {TABLE} USING fts5(terms, tokenize = 'ascii');
CREATE VIRTUAL TABLE IF NOT EXISTS {TABLE}_vocab USING fts5vocab({TABLE}, 'row');
"""
SMALL_COLLECTION = 1000  # passages: below this, even the commonest terms are matched
MAX_QUERY_TERMS = 64  # the rarest terms of a long query are the ones that rank
POSTINGS_BUDGET = 5_000  # passages FTS5 may rank to find one query's lexical candidates
MIN_FRAGMENT = 3  # characters a highlighted run inside a word needs


class Lexicon:
    """A text's lexical terms (lower-cased subword ids) and where they occur."""

    def __init__(self, tokenizer: TextTokenizer) -> None:
        from tokenizers import normalizers

        tok = tokenizer.plain()
        lower = normalizers.Lowercase()
        tok.normalizer = lower if tok.normalizer is None else normalizers.Sequence([tok.normalizer, lower])
        self._tok = tok
        size = tok.get_vocab_size(with_added_tokens=True)
        useful = np.zeros(size, dtype=bool)
        for piece, index in tok.get_vocab(with_added_tokens=False).items():
            # Pieces without a letter or digit (punctuation, emoji, the bare word marker) carry
            # no lexical meaning and would match nearly every passage; nor do <s>, <unk>, ...
            special = piece.startswith("<") and piece.endswith(">")
            useful[index] = not special and any(ch.isalnum() for ch in piece)
        self._useful = useful

    def _encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self._tok.encode(text, add_special_tokens=False)
        return list(enc.ids), list(enc.offsets)

    def _is_term(self, token: int) -> bool:
        return 0 <= token < len(self._useful) and bool(self._useful[token])

    def terms(self, text: str, spans: Sequence[Span]) -> list[list[int]]:
        """The terms of each passage of ``text`` (one tokenisation of the whole text)."""
        ids, offsets = self._encode(text)
        out: list[list[int]] = [[] for _ in spans]
        j = 0
        for i, span in enumerate(spans):
            # Passages overlap: restart from the first token at or after this passage's start.
            while j > 0 and offsets[j - 1][0] >= span.start:
                j -= 1
            while j < len(ids) and offsets[j][0] < span.start:
                j += 1
            k = j
            while k < len(ids) and offsets[k][0] < span.end:
                if self._is_term(ids[k]):
                    out[i].append(ids[k])
                k += 1
        return out

    def query_terms(self, text: str) -> list[int]:
        """A query's distinct terms, in order of first occurrence."""
        ids, _ = self._encode(text)
        return list(dict.fromkeys(t for t in ids if self._is_term(t)))

    def highlight(self, text: str, terms: Iterable[int]) -> list[tuple[int, int]]:
        """Character spans of ``text`` made of query terms, adjacent pieces merged into one. A run
        of pieces inside a word counts when it starts a word or is at least MIN_FRAGMENT long:
        "Bahnhof" in "Hauptbahnhof" does, a stray one-letter piece of another word does not."""
        wanted = set(terms)
        if not wanted:
            return []
        enc = self._tok.encode(text, add_special_tokens=False)
        runs: list[list[int]] = []  # [start, end, starts a word]
        for token, piece, (start, end) in zip(enc.ids, enc.tokens, enc.offsets, strict=True):
            if token not in wanted:
                runs.append([-1, -1, 0])  # a break between runs
                continue
            while start < end and text[start].isspace():
                start += 1
            if start >= end:
                continue
            if runs and runs[-1][1] >= start:
                runs[-1][1] = max(runs[-1][1], end)
            else:
                runs.append([start, end, int(piece.startswith(("▁", "Ġ")))])
        return [(s, e) for s, e, word in runs if s >= 0 and (word or e - s >= MIN_FRAGMENT)]


def document(terms: Sequence[int]) -> str:
    """The FTS5 row of a passage: its term ids as words."""
    return " ".join(map(str, terms))


def add(db: sqlite3.Connection, rows: Iterable[tuple[int, Sequence[int]]]) -> None:
    """Index passages (row id = the passage's id) inside the caller's write transaction."""
    db.executemany(f"INSERT INTO {TABLE} (rowid, terms) VALUES (?, ?)", [(p, document(t)) for p, t in rows])


def remove(db: sqlite3.Connection, pids: Sequence[int]) -> None:
    db.executemany(f"DELETE FROM {TABLE} WHERE rowid = ?", [(p,) for p in pids])


def totals(db: sqlite3.Connection) -> tuple[int, float]:
    """(passages, mean terms per passage) as FTS5's bm25() sees them: its averages record."""
    row = db.execute(f"SELECT block FROM {TABLE}_data WHERE id = 1").fetchone()
    if row is None or not row[0]:
        return 0, 0.0
    rows, at = _varint(row[0], 0)
    tokens, _ = _varint(row[0], at)
    return rows, tokens / rows if rows else 0.0


class LexicalQuery:
    """A query's terms weighed against one collection snapshot.

    Scores are BM25 exactly as FTS5's bm25() computes it over every term of the query (its idf,
    k1 = 1.2, b = 0.75, its mean passage length), divided by the query's upper bound. Finding
    candidates is the expensive part: a term in a tenth of 300k passages makes FTS5 rank 30k
    rows. So candidates come from the query's rarest terms, up to POSTINGS_BUDGET postings (a
    passage that holds only common terms scores near nothing), and each candidate is then
    scored on all terms from its stored row.
    """

    def __init__(
        self,
        db: sqlite3.Connection,
        terms: Sequence[int],
        rows: int,
        mean_length: float,
        known: dict[str, int] | None = None,
    ) -> None:
        """``known``: document frequencies already read at this snapshot, filled in here."""
        known = {} if known is None else known
        keys = [str(t) for t in terms]
        if rows:
            # One seek per term (fts5vocab scans its whole vocabulary for IN (...), and a range
            # seeks faster than its term = ?).
            sql = f"SELECT doc FROM {TABLE}_vocab WHERE term >= ? AND term <= ?"
            for key in keys:
                if key not in known:
                    row = db.execute(sql, (key, key)).fetchone()
                    known[key] = int(row[0]) if row is not None else 0
        found = {key: known[key] for key in keys if known.get(key)}
        weights = {key: _idf(rows, found.get(key, 0)) for key in keys}
        self.bound = sum(w * (K1 + 1) for w in weights.values())
        self._mean = mean_length or 1.0
        # Terms in at least half the passages weigh nothing (idf clamped to 1e-6) in a large
        # collection; in a small one they still match (a word in one of two documents).
        common = 1e-6 if rows > SMALL_COLLECTION else 0.0
        present = sorted((k for k in keys if found.get(k, 0) and weights[k] > common), key=found.__getitem__)
        self._weights = {k: weights[k] for k in present[:MAX_QUERY_TERMS]}
        rare: list[str] = []
        postings = 0
        for key in self._weights:  # rarest first
            postings += found[key]
            if rare and postings > POSTINGS_BUDGET:
                break
            rare.append(key)
        self._rare = rare
        self._cheap = bool(rare) and found[rare[0]] <= POSTINGS_BUDGET

    def weighted_terms(self) -> list[int]:
        """The query's terms that weigh in this collection."""
        return [int(k) for k in self._weights]

    def top(
        self,
        db: sqlite3.Connection,
        limit: int,
        where: str = "",
        args: Sequence[Any] = (),
        exhaustive: bool = True,
    ) -> list[tuple[int, float]]:
        """About the ``limit`` best passages as (passage id, normalised score), best first;
        ``where`` restricts passage ids (an SQL condition on ``rowid``). Not ``exhaustive``
        (hybrid, whose dense candidates are scored anyway): nothing when even the rarest term is
        common."""
        if not self._rare or not (exhaustive or self._cheap):
            return []
        extra = f" AND {where}" if where else ""
        match = " OR ".join(f'"{k}"' for k in self._rare)
        found = db.execute(
            f"SELECT rowid FROM {TABLE} WHERE {TABLE} MATCH ?{extra} ORDER BY rank LIMIT ?",
            [match, *args, limit],
        )
        scores = self.scores(db, [int(r[0]) for r in found])
        return sorted(scores.items(), key=lambda item: item[1], reverse=True)

    def scores(self, db: sqlite3.Connection, pids: Sequence[int]) -> dict[int, float]:
        """Normalised BM25 of given passages over every query term (absent: no term, score 0)."""
        if not self._weights or not pids:
            return {}
        out: dict[int, float] = {}
        # The stored rows, from FTS5's own content table: a plain B-tree lookup by row id.
        sql = f"SELECT id, c0 FROM {TABLE}_content WHERE id IN ({{}})"
        for start in range(0, len(pids), 500):
            chunk = pids[start : start + 500]
            for pid, text in db.execute(sql.format(",".join("?" * len(chunk))), chunk):
                words = text.split()
                counts = Counter(words)
                norm = K1 * (1 - B + B * len(words) / self._mean)
                score = 0.0
                for key, weight in self._weights.items():
                    tf = counts.get(key, 0)
                    if tf:
                        score += weight * tf * (K1 + 1) / (tf + norm)
                if score > 0:
                    out[int(pid)] = score / self.bound
        return out


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """SQLite's variable-length integer at ``at``: (value, the offset after it)."""
    value = 0
    for _ in range(8):
        byte = data[at]
        at += 1
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return value, at
    return (value << 8) | data[at], at + 1


def _idf(rows: int, df: int) -> float:
    """FTS5's idf: log((N − n + 0.5) / (n + 0.5)), at least 1e-6."""
    value = math.log((rows - df + 0.5) / (df + 0.5))
    return max(value, 1e-6)
