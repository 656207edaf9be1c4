"""Re-embedding every stored text of one collection into another (a model upgrade).

Each chunk commits with its position in the source (the source's row cursor), so running the
same re-index again after an interruption continues where it stopped. Writes to the source
should pause meanwhile: deletions made to it during a re-index are not carried over.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.errors import InputError
from index.collection import Collection, SourceCommit, list_collections
from index.store import Document
from model.encoder import Encoder


@dataclass(frozen=True)
class ReindexReport:
    resumed: int  # documents an earlier, interrupted run had re-indexed
    documents: int  # documents this run re-embedded
    count: int  # documents in the target afterwards


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
) -> ReindexReport:
    """Re-embed ``source`` into collection ``target`` (created with ``index_factory``, default the
    source's); ``progress(done, total)`` once before the first chunk (``done``: what an earlier
    run did) and after each commit."""
    dst, after = _target(source, Path(home_dir), target, encoder, index_factory)
    key = _key(source)
    with dst:
        resumed = source.count_through(after)
        total = len(source)
        done = resumed
        if progress is not None:
            progress(done, total)
        chunk: list[Document] = []

        def flush(position: int) -> None:
            nonlocal done
            dst.upsert(
                chunk, encoder.embed([d.text for d in chunk], "passage"), SourceCommit(key, position, 0)
            )
            done += len(chunk)
            chunk.clear()
            if progress is not None:
                progress(done, total)

        position = after
        for position, doc in source.scan(after):
            chunk.append(doc)
            if len(chunk) >= chunk_size:
                flush(position)
        if chunk:
            flush(position)
        dst.checkpoint()
        return ReindexReport(resumed=resumed, documents=done - resumed, count=len(dst))
