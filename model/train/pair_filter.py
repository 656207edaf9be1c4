"""The paper's filters on training pairs, judged in batches and cached per line."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from model.train.corpus import Pair

REASONS: tuple[str, ...] = ("url", "identical", "length", "ratio", "overlap")


@dataclass
class PairFilter:
    """The paper's filters (DAP code data/gen_sent_pair.py) on token counts of the given tokenizer.

    ``count_tokens`` gives the length of a sentence without special tokens; ``tokenize`` gives
    the tokens for the overlap test (when None, whitespace-separated lower-cased words are
    used). ``encode_batch`` is optional: when set, :meth:`keep_batch` tokenizes a whole chunk in
    one call (the Rust tokenizer parallelises it). Use :meth:`from_tokenizer` to get all three
    from a ``tokenizers.Tokenizer`` with each sentence tokenized once.
    """

    count_tokens: Callable[[str], int]
    tokenize: Callable[[str], list[int]] | None = None
    min_tokens: int = 3  # both sides need > min_tokens
    max_tokens: int = 64  # min(l1, l2) <= max_tokens
    max_ratio: float = 2.0  # max(l1, l2) <= max(max_ratio * min(l1, l2), ratio_free_tokens)
    max_overlap: float = 0.5  # drop when >= this share of either side's tokens occur in the other
    ratio_free_tokens: int = 32
    overlap_min_tokens: int = 5  # the overlap test runs only when both sides have more tokens
    encode_batch: Callable[[list[str]], list[list[int]]] | None = None

    @classmethod
    def from_tokenizer(cls, tok: Any, **kw: Any) -> PairFilter:
        """Filter on ``tok``'s tokens (no specials, no truncation); the caller's tokenizer is not changed."""
        if tok.truncation is not None or tok.padding is not None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_str(tok.to_str())  # a copy, so counts are never capped
            tok.no_truncation()
            tok.no_padding()
        cache: dict[str, list[int]] = {}  # the current pair: count and overlap share one encode

        def ids(text: str) -> list[int]:
            hit = cache.get(text)
            if hit is None:
                if len(cache) >= 4:
                    cache.clear()
                hit = cache[text] = list(tok.encode(text, add_special_tokens=False).ids)
            return hit

        def count(text: str) -> int:
            return len(ids(text))

        def encode_batch(texts: list[str]) -> list[list[int]]:
            return [list(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)]

        return cls(count_tokens=count, tokenize=ids, encode_batch=encode_batch, **kw)

    def _text_reason(self, pair: Pair) -> str | None:
        """Checks that need no tokens: URLs/e-mails/N/A, and copies."""
        for side in (pair.src, pair.en):
            if "@" in side or "http" in side or "N/A" in side:
                return "url"
        if pair.src == pair.en:
            return "identical"
        return None

    def _token_reason(
        self, l1: int, l2: int, tokens: Callable[[], tuple[Sequence[object], Sequence[object]]]
    ) -> str | None:
        short, long = min(l1, l2), max(l1, l2)
        if short <= self.min_tokens:
            return "length"
        if long > max(self.max_ratio * short, self.ratio_free_tokens):
            return "ratio"
        if short > self.max_tokens:
            return "length"
        if short <= self.overlap_min_tokens:
            return None
        t1, t2 = tokens()
        for mine, other in ((t1, t2), (t2, t1)):
            others = set(other)
            shared = sum(1 for t in mine if t in others)
            if shared >= self.max_overlap * len(mine):
                return "overlap"
        return None

    def _tokens(self, text: str) -> Sequence[object]:
        if self.tokenize is not None:
            return self.tokenize(text)
        return text.lower().split()

    def keep(self, pair: Pair) -> str | None:
        """None to keep the pair, else why it is dropped (one of ``REASONS``)."""
        reason = self._text_reason(pair)
        if reason is not None:
            return reason
        return self._token_reason(
            self.count_tokens(pair.src),
            self.count_tokens(pair.en),
            lambda: (self._tokens(pair.src), self._tokens(pair.en)),
        )

    def keep_batch(self, pairs: Sequence[Pair]) -> list[str | None]:
        """``[keep(p) for p in pairs]``, with one batched tokenizer call when ``encode_batch`` is set."""
        if self.encode_batch is None:
            return [self.keep(p) for p in pairs]
        reasons = [self._text_reason(p) for p in pairs]
        todo = [i for i, r in enumerate(reasons) if r is None]
        encoded = self.encode_batch([s for i in todo for s in (pairs[i].src, pairs[i].en)])
        for k, i in enumerate(todo):
            ids1, ids2 = encoded[2 * k], encoded[2 * k + 1]
            reasons[i] = self._token_reason(len(ids1), len(ids2), _given(ids1, ids2))
        return reasons


def _given(a: list[int], b: list[int]) -> Callable[[], tuple[Sequence[object], Sequence[object]]]:
    return lambda: (a, b)
