"""Re-embedding every stored text of one collection into another (a model upgrade).

Each chunk commits with its position in the source (the source's row cursor), so running the
same re-index again after an interruption continues where it stopped. Writes to the source
should pause meanwhile: deletions made to it during a re-index are not carried over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InputError
from index.cluster import EmbeddingPool, RayOptions
from index.collection import Collection
from index.cutting import Cutter, Prepared
from index.manifest import list_collections
from index.sources import SourceCommit
from index.store import Document
from model.encoder import Encoder


@dataclass(frozen=True)
class ReindexReport:
    resumed: int  # documents an earlier, interrupted run had re-indexed
    documents: int  # documents this run re-embedded
    count: int  # documents in the target afterwards
    refused: int = 0  # documents over the target's passage maximum, not carried over


def _target(
    source: Collection, home_dir: Path, target: str, encoder: Encoder, index_factory: str | None
) -> tuple[Collection, int]:
    """The target collection and the source position it has reached; a collection under the
    target name that is not this re-index's is refused, never mixed into."""
    key = _key(source)
    if target not in list_collections(home_dir):
        factory = index_factory or source.manifest.index_factory
        return Collection.create(home_dir, target, encoder.model_id, encoder.dim, factory), 0
    dst = Collection.open(home_dir, target, encoder.model_id)
    after, _ = dst.source_progress(key)
    if after == 0 and len(dst):
        dst.close()
        raise InputError(f"collection {target!r} already exists and was not re-indexed from {source.name!r}")
    if index_factory is not None and index_factory != dst.manifest.index_factory:
        dst.close()
        raise InputError(f"collection {target!r} exists with index {dst.manifest.index_factory!r}")
    return dst, after


def _key(source: Collection) -> str:
    return f"reindex:{source.name}"


def reindex(
    source: Collection,
    home_dir: Path,
    target: str,
    encoder: Encoder,
    index_factory: str | None = None,
    chunk_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
    ray: RayOptions | None = None,
) -> ReindexReport:
    """Re-embed ``source`` into collection ``target`` (created with ``index_factory``, default the
    source's); ``progress(done, total)`` once before the first chunk (``done``: what an earlier
    run did) and after each commit. With ``ray``, a pool of actors embeds ``shard_texts``
    documents per task and this process commits them in order."""
    dst, after = _target(source, Path(home_dir), target, encoder, index_factory)
    key = _key(source)
    with dst:
        resumed = source.count_through(after)
        total = len(source)
        done = resumed
        if progress is not None:
            progress(done, total)
        size = chunk_size if ray is None else ray.shard_texts
        cutter = Cutter(encoder.tokenizer, dst.cut_options)
        refused = 0
        for chunk, position, vectors in _embedded(_chunks(source, after, size, cutter), encoder, ray):
            dst.upsert(chunk.docs, vectors, SourceCommit(key, position, 0), chunk.passages)
            done += len(chunk.docs) + len(chunk.refused)
            refused += len(chunk.refused)
            if progress is not None:
                progress(done, total)
        dst.checkpoint()
        return ReindexReport(
            resumed=resumed, documents=done - resumed - refused, count=len(dst), refused=refused
        )


def _chunks(source: Collection, after: int, size: int, cutter: Cutter) -> Iterator[tuple[Prepared, int]]:
    """The source's documents after row ``after``, cut for the target, in chunks of about
    ``size`` passages, each with its last row position."""
    chunk: list[Document] = []
    position = after
    for position, doc in source.scan(after):
        chunk.append(doc)
        if len(chunk) >= size:
            yield cutter.prepare(chunk), position
            chunk = []
    if chunk:
        yield cutter.prepare(chunk), position


def _embedded(
    chunks: Iterator[tuple[Prepared, int]], encoder: Encoder, ray: RayOptions | None
) -> Iterator[tuple[Prepared, int, np.ndarray]]:
    """Each chunk with its vectors, in order: embedded here, or by a pool of Ray actors."""
    if ray is None:
        for chunk, position in chunks:
            texts = chunk.texts()
            empty = np.zeros((0, encoder.dim), dtype=np.float32)
            yield chunk, position, encoder.embed(texts, "passage") if texts else empty
        return
    held: dict[int, tuple[Prepared, int]] = {}

    def tasks() -> Iterator[tuple[int, tuple[Any, ...]]]:
        for i, (chunk, position) in enumerate(chunks):
            held[i] = (chunk, position)
            yield i, (chunk.texts(), "passage")

    with EmbeddingPool(encoder, ray, "embed") as pool:
        for i, vectors in enumerate(pool.ordered(tasks())):
            chunk, position = held.pop(i)
            yield chunk, position, vectors
