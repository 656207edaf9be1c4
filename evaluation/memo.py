"""Each distinct text embedded once per model: the mining sets reuse the retrieval sentences,
and search-dev's paragraphs serve several languages."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from model.encoder import Encoder, Kind


class EmbeddingMemo:
    """Embeds each distinct text once per model (the mining sets reuse the retrieval sentences)."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self._vectors: dict[tuple[str, str], np.ndarray] = {}

    def embed(self, texts: Sequence[str], kind: Kind = "query") -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if (kind, t) not in self._vectors))
        if todo:
            for text, vector in zip(todo, self.encoder.embed(todo, kind), strict=True):
                self._vectors[(kind, text)] = vector
        return np.stack([self._vectors[(kind, t)] for t in texts])
