"""Documents made ready for a collection: a detected language where none was given, the
passages the encoder sees whole, and each passage's lexical terms.

One place does this for every writer (a local ingest, a shard embedded on Ray, a re-index, the
CLI and the demo), so a document is cut the same way whichever path stored it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from index.language import detect
from index.lexical import Lexicon
from index.passages import DocPassages, PassageOptions, Span, Splitter
from index.store import Document
from model.encoder import TextEncoder, TextTokenizer

_lexicons: weakref.WeakKeyDictionary[TextTokenizer, Lexicon] = weakref.WeakKeyDictionary()
_lexicons_lock = threading.Lock()


def lexicon_of(tokenizer: TextTokenizer) -> Lexicon:
    """The Lexicon of a tokenizer, made once (it scans the whole vocabulary)."""
    with _lexicons_lock:
        found = _lexicons.get(tokenizer)
        if found is None:
            found = _lexicons[tokenizer] = Lexicon(tokenizer)
        return found


@dataclass(frozen=True)
class CutOptions:
    """How a collection stores documents: ``passages`` None is the first layout (one vector
    per document, cut at the model's maximum length, no lexical terms, no detection)."""

    passages: PassageOptions | None = None
    lexical: bool = False


@dataclass
class Prepared:
    """The documents that can be stored, their passages, and the ones refused with why (by
    their index in the input)."""

    docs: list[Document] = field(default_factory=list)
    passages: list[DocPassages] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)

    def texts(self) -> list[str]:
        """Every passage's text, document by document: what is embedded, one vector each."""
        pairs = zip(self.docs, self.passages, strict=True)
        return [d.text[s.start : s.end] for d, p in pairs for s in p.spans]

    @property
    def passage_count(self) -> int:
        return sum(len(p.spans) for p in self.passages)


class Cutter:
    """Prepares documents for one collection's layout."""

    def __init__(self, tokenizer: TextTokenizer, options: CutOptions) -> None:
        self.options = options
        self._splitter = Splitter(tokenizer, options.passages) if options.passages is not None else None
        self._lexicon = lexicon_of(tokenizer) if options.lexical else None

    def prepare(self, docs: Sequence[Document]) -> Prepared:
        out = Prepared()
        for i, doc in enumerate(docs):
            if self._splitter is None:
                out.docs.append(doc)
                out.passages.append(DocPassages([Span(0, len(doc.text))]))
                continue
            try:
                spans = self._splitter.split(doc.text)
            except ValueError as exc:
                out.refused.append((i, str(exc)))
                continue
            if doc.lang is None:
                found = detect(doc.text)
                if found is not None:
                    doc = replace(doc, lang=found, lang_detected=True)
            terms = self._lexicon.terms(doc.text, spans) if self._lexicon is not None else None
            out.docs.append(doc)
            out.passages.append(DocPassages(spans, terms))
        return out

    def embed(self, encoder: TextEncoder, docs: Sequence[Document]) -> tuple[Prepared, np.ndarray]:
        """Prepared documents and one vector per passage (embedded as ``passage``)."""
        prepared = self.prepare(docs)
        texts = prepared.texts()
        if not texts:
            return prepared, np.zeros((0, encoder.dim), dtype=np.float32)
        return prepared, encoder.embed(texts, "passage")
