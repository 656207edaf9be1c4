"""Cutting documents into passages the encoder sees whole, with the model's own tokenizer.

Why: the encoder reads at most ``max_length`` tokens, so one vector per document drops
everything past its first few hundred words. Every document is cut into passages of at most
``tokens`` tokens (the ``passage: `` prefix and the special tokens included), overlapping by
``overlap`` tokens, cut at a sentence end where one is near, else at a word start. Offsets are
character offsets into the document's text, so a hit can show the passage that matched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel, Field, model_validator

from model.encoder import TextTokenizer

# A sentence ends with one of these (Latin, CJK, Arabic, Devanagari, Thai has none: spaces)
# followed by a space or the end, or at a line break.
_SENTENCE_END = re.compile(r"[.!?…。！？؟।॥]['\"”’»)\]]*(?=\s|$)|[。！？]|\n")
SENTENCE_WINDOW = 0.5  # a sentence end within the last half of a window is preferred to a word cut
WORD_WINDOW = 0.25  # failing that, a word start within the last quarter


class PassageOptions(BaseModel):
    """How a collection cuts its documents (kept in its manifest: every ingest cuts alike)."""

    tokens: int = Field(
        256, ge=32, le=512, description="Most tokens per passage, prefix and specials included"
    )
    overlap: int = Field(32, ge=0, description="Tokens the next passage repeats from the end of the previous")
    max_passages: int = Field(256, ge=1, description="Most passages per document; longer ones are refused")

    @model_validator(mode="after")
    def _overlap_fits(self) -> PassageOptions:
        if self.overlap * 2 > self.tokens:
            raise ValueError(f"overlap {self.overlap} must be at most half of tokens {self.tokens}")
        return self


@dataclass(frozen=True)
class Span:
    """A passage: characters ``start:end`` of its document's text."""

    start: int
    end: int


class TooLong(ValueError):
    """A document with more passages than the collection allows (a malformed line at ingest)."""


class Splitter:
    """Cuts texts into passages that the model never truncates."""

    def __init__(self, tokenizer: TextTokenizer, options: PassageOptions) -> None:
        self.options = options
        self._tok = tokenizer.plain()
        limit = min(options.tokens, tokenizer.manifest.max_length)
        self.limit = limit
        prefix = tokenizer.manifest.prefix("passage")
        self._prefix = prefix
        overhead = len(self._tok.encode(prefix).ids)  # the prefix and the special tokens
        self.budget = max(8, limit - overhead)
        # A model with a short maximum length gets a proportionate overlap: passages always
        # advance by at least a quarter of their length.
        self.overlap = min(options.overlap, self.budget // 4)
        # No token covers 64 characters, so a text this long needs more passages than allowed:
        # refused before tokenizing megabytes.
        self.max_chars = options.max_passages * self.budget * 64

    def split(self, text: str) -> list[Span]:
        """The passages of ``text`` in order; raises TooLong past ``max_passages``."""
        if len(text) > self.max_chars:
            raise self._too_long(f"{len(text):,} characters")
        enc = self._tok.encode(text, add_special_tokens=False)
        offsets: list[tuple[int, int]] = list(enc.offsets)
        n = len(offsets)
        if n <= self.budget:
            return [Span(0, len(text))]
        starts = self._sentence_token_starts(text, offsets)
        words = [_word_start(t) for t in enc.tokens]
        spans: list[Span] = []
        begin = 0
        while begin < n:
            end = self._cut(begin, n, starts, words)
            span = self._fit(text, offsets, begin, end)
            spans.append(span)
            if len(spans) > self.options.max_passages:
                raise self._too_long(f"{n:,} tokens")
            if end >= n:
                break
            begin = self._next_begin(begin, end, starts, words)
        return spans

    def _too_long(self, size: str) -> TooLong:
        o = self.options
        return TooLong(
            f"text of {size} needs more than the most passages a document may have "
            f"({o.max_passages} of {o.tokens} tokens); split it into several documents"
        )

    @staticmethod
    def _sentence_token_starts(text: str, offsets: list[tuple[int, int]]) -> set[int]:
        """Token indices that begin a sentence (the first token starting after a sentence end)."""
        ends = [m.end() for m in _SENTENCE_END.finditer(text)]
        out: set[int] = set()
        j = 0
        for i, (start, _) in enumerate(offsets):
            while j < len(ends) and ends[j] <= start:
                out.add(i)
                j += 1
        return out

    def _cut(self, begin: int, n: int, starts: set[int], words: list[bool]) -> int:
        """Where the passage that begins at token ``begin`` ends (exclusive)."""
        end = min(begin + self.budget, n)
        if end == n:
            return end
        for window, good in ((SENTENCE_WINDOW, starts.__contains__), (WORD_WINDOW, words.__getitem__)):
            floor = end - int(self.budget * window)
            for j in range(end, max(begin + 1, floor) - 1, -1):
                if good(j):
                    return j
        return end

    def _next_begin(self, begin: int, end: int, starts: set[int], words: list[bool]) -> int:
        """The next passage repeats about ``overlap`` tokens, from a sentence or word start."""
        if self.overlap == 0:
            return end
        low = max(begin + 1, end - self.overlap)
        for good in (starts.__contains__, words.__getitem__):
            for j in range(low, end):
                if good(j):
                    return j
        return low

    def _fit(self, text: str, offsets: list[tuple[int, int]], begin: int, end: int) -> Span:
        """The characters of tokens ``begin:end``, shortened until the model takes them whole (a
        substring can tokenize into a few more tokens than its share of the whole text)."""
        while True:
            start, stop = offsets[begin][0], offsets[end - 1][1]
            while start < stop and text[start].isspace():  # a word piece's offsets hold its space
                start += 1
            span = Span(start, stop)
            count = len(self._tok.encode(self._prefix + text[span.start : span.end].strip()).ids)
            if count <= self.limit or end - begin <= 1:
                return span
            end = max(begin + 1, end - (count - self.limit) - 1)


def _word_start(token: str) -> bool:
    """Whether a token begins a word: sentencepiece's '▁', byte-level BPE's 'Ġ', or punctuation."""
    return token.startswith(("▁", "Ġ")) or not token[:1].isalnum()


def passage_texts(text: str, spans: list[Span]) -> list[str]:
    return [text[s.start : s.end] for s in spans]


@dataclass(frozen=True)
class DocPassages:
    """One document's passages as stored: their spans, and their lexical terms (None: the
    collection keeps no lexical index)."""

    spans: list[Span]
    terms: list[list[int]] | None = None
