"""The one path from texts to vectors in the service: cache lookup, batcher for misses, cache fill.

Cache keys hold the model id, the kind (query/passage prefix) and a hash of the exact text, so a
different model, prefix or text can never be served another's vector. A value is the float32
vector plus the token count and truncation flag, so cached responses report usage honestly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import struct
from collections.abc import Awaitable, Callable

import numpy as np
from starlette.types import Receive

from model.encoder import Embeddings, Kind, Tokenized
from service.batcher import Batcher
from service.cache import Cache
from service.errors import APIError
from service.metrics import Metrics

_HEADER = struct.Struct("<I?")  # tokens, truncated
KEY_PREFIX = "dapsearch:v1:emb"
# Up to this many characters a request's tokens are counted on the event loop: a short sentence
# takes ~15 us to tokenise, less than the hop to a worker thread and back.
INLINE_COUNT_CHARS = 2_000


def embedding_key(model_id: str, kind: Kind, text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{KEY_PREFIX}:{model_id}:{kind}:{digest}"


def _pack(vector: np.ndarray, tokens: int, truncated: bool) -> bytes:
    return _HEADER.pack(tokens, truncated) + np.ascontiguousarray(vector, dtype="<f4").tobytes()


def _unpack(value: bytes, dim: int) -> tuple[np.ndarray, int, bool] | None:
    if len(value) != _HEADER.size + 4 * dim:
        return None  # written by another version or corrupted: treat as a miss
    tokens, truncated = _HEADER.unpack_from(value)
    return np.frombuffer(value, dtype="<f4", offset=_HEADER.size), tokens, truncated


class Embedder:
    def __init__(self, batcher: Batcher, cache: Cache, metrics: Metrics) -> None:
        self.batcher = batcher
        self.cache = cache
        self.metrics = metrics
        self.model_id = batcher.encoder.model_id
        self.dim = batcher.encoder.dim
        self.max_length = batcher.encoder.manifest.max_length

    async def embed(
        self,
        texts: list[str],
        kind: Kind,
        gone: Callable[[], Awaitable[None]] | None = None,
        tokenized: Tokenized | None = None,
    ) -> Embeddings:
        """Vectors for ``texts`` (duplicates embedded once; ``tokenized``: their ids, if the caller
        has them, handed on so that the engine does not tokenise them again); raises
        batcher.Overloaded, and CallerGone when ``gone`` returns before the texts the cache lacks
        are embedded."""
        first: dict[str, int] = {}
        for i, text in enumerate(texts):
            first.setdefault(text, i)
        unique = list(first)
        keys = [embedding_key(self.model_id, kind, t) for t in unique]
        cached = await self.cache.get_many(keys)
        vectors = np.empty((len(unique), self.dim), dtype=np.float32)
        lengths = [0] * len(unique)
        cut = [False] * len(unique)
        missing: list[int] = []
        for i, value in enumerate(cached):
            hit = _unpack(value, self.dim) if value is not None else None
            if hit is None:
                missing.append(i)
            else:
                vectors[i], lengths[i], cut[i] = hit
        self.metrics.cache_hits.labels("embedding").inc(len(unique) - len(missing))
        self.metrics.cache_misses.labels("embedding").inc(len(missing))
        if missing:
            rows = [first[unique[i]] for i in missing]
            ids = None if tokenized is None else tokenized.take(rows)
            work = self.batcher.embed([texts[r] for r in rows], kind, tokenized=ids)
            fresh = await (work if gone is None else _unless_gone(work, gone))
            fresh_cut = set(fresh.truncated)
            fill: dict[str, bytes] = {}
            for j, i in enumerate(missing):
                vectors[i], lengths[i], cut[i] = fresh.vectors[j], fresh.lengths[j], j in fresh_cut
                fill[keys[i]] = _pack(vectors[i], lengths[i], cut[i])
            await self.cache.set_many(fill)
        position = {t: i for i, t in enumerate(unique)}
        rows = [position[t] for t in texts]
        out_lengths = [lengths[r] for r in rows]
        return Embeddings(
            vectors[rows], [n for n, r in enumerate(rows) if cut[r]], sum(out_lengths), out_lengths
        )


class CallerGone(APIError):
    """The client disconnected before its vectors were ready (nginx's 499: nobody reads it)."""

    def __init__(self) -> None:
        super().__init__(499, "the client closed the request before it was answered")


class CallerEmbedder:
    """The embedder as one HTTP request uses it.

    * A request may cost the model at most ``max_tokens`` tokens, counted over all its texts
      (cached or not, so the answer does not depend on the cache): the public routes are
      synchronous, and bigger work belongs to collections and admin jobs.
    * If the client disconnects while its texts wait or run, the work is cancelled, so the
      batcher drops the slices it has not embedded yet.
    """

    def __init__(self, embedder: Embedder, receive: Receive, max_tokens: int) -> None:
        self.embedder = embedder
        self.receive = receive
        self.max_tokens = max_tokens
        self.spent = 0
        self.model_id = embedder.model_id
        self.dim = embedder.dim
        self.max_length = embedder.max_length

    async def _charge(self, texts: list[str], kind: Kind, param: str) -> Tokenized:
        """The texts' ids (kept for the engine), once their tokens fit the request's budget."""
        tokenizer = self.embedder.batcher.encoder.tokenizer
        if sum(map(len, texts)) <= INLINE_COUNT_CHARS:
            tokenized = tokenizer.tokenize(texts, kind)
        else:
            tokenized = await asyncio.to_thread(tokenizer.tokenize, texts, kind)
        tokens = sum(map(len, tokenized.ids))
        if self.spent + tokens > self.max_tokens:
            raise APIError(
                413,
                f"{param} needs {self.spent + tokens} tokens of model work in this request, more than "
                f"the {self.max_tokens} one request may use (DAPSEARCH_MAX_REQUEST_TOKENS); send fewer "
                "or shorter texts, or index them in a collection with an admin job",
                param,
            )
        self.spent += tokens
        return tokenized

    async def _disconnected(self) -> None:
        # The routes that embed have read their whole body already, so the next message the
        # server sends is the disconnect.
        while (await self.receive())["type"] != "http.disconnect":
            pass

    async def embed(self, texts: list[str], kind: Kind, param: str = "texts") -> Embeddings:
        tokenized = await self._charge(texts, kind, param)
        return await self.embedder.embed(texts, kind, self._disconnected, tokenized)


async def _unless_gone(work: Awaitable[Embeddings], gone: Callable[[], Awaitable[None]]) -> Embeddings:
    """``work``'s result, or CallerGone once ``gone`` returns first (the work is cancelled, so the
    batcher drops the slices it has not embedded yet). Only the batcher's part is watched: a
    request answered from the cache never starts the two tasks this takes."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        finished = task.done()
        if not finished:  # the caller went away first (or this request itself was cancelled)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if not finished:
        raise CallerGone()
    return task.result()
