"""Bulk ingest on a Ray cluster: shards embedded by a pool of actors, merged here by one writer.

The input is cut into byte-range shards (``index.shards``); the actors parse and embed them in
any order and this process, the collection's single writer, writes each result to its shard
file, then commits the shards in file order through the local ingest's own ``SourceWriter``.
So the collection, its checkpoint and its counts end as a local ingest leaves them, and a rerun
after an interruption embeds only the shards that have no file yet: the committed ones are past
the checkpoint, and the written ones are read back. A shard's file goes once it is committed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from core.errors import InputError
from index.cluster import EmbeddingPool, RayOptions
from index.collection import Collection
from index.ingest import (
    IngestReport,
    Record,
    ShardCounts,
    SourceWriter,
    check_input,
    detect_format,
    resume_point,
)
from index.shards import (
    DEFAULT_SHARD_BYTES,
    Shard,
    ShardResult,
    plan,
    read_shard,
    read_shard_bytes,
    shard_path,
    work_dir,
    write_shard,
    written,
)
from index.sources import LineError
from model.encoder import Encoder

SHARDS = "shards"  # the folder in a collection's directory that holds its shard files


def ingest_on_ray(
    collection: Collection,
    encoder: Encoder,
    path: Path,
    fmt: str | None = None,
    strict: bool = False,
    options: RayOptions | None = None,
    progress: Callable[[int, int, int], None] | None = None,
    shard_progress: Callable[[ShardCounts], None] | None = None,
) -> IngestReport:
    """``index.ingest.ingest`` on Ray: ``progress(docs, bytes, passages)`` after each committed shard,
    ``shard_progress(counts)`` after each shard written or committed."""
    options = options or RayOptions()
    path = Path(path)
    check_input(collection, encoder, path)
    kind = detect_format(path, fmt)
    start = resume_point(collection, path)
    writer = SourceWriter(collection, path, start)
    shards = plan(path, start.offset, options.shard_bytes or DEFAULT_SHARD_BYTES)
    folder = work_dir(collection.root / SHARDS, writer.source, encoder.model_id, kind)
    files = {s.index: shard_path(folder, path, s) for s in shards}
    for stale in set(written(folder)) - set(files.values()):  # committed, or of another file
        stale.unlink(missing_ok=True)
    counts = ShardCounts(total=len(shards), reused=sum(f.is_file() for f in files.values()))
    writer.report.shards = counts

    def merge(shard: Shard, result: ShardResult) -> None:
        base = writer.report.committed.line
        errors = [LineError(base + e.line, e.reason) for e in result.errors]
        if strict and errors:
            raise InputError(f"{path.name}:{errors[0].line}: {errors[0].reason}")
        for error in errors:
            writer.malformed(error)
        end = Record(base + result.lines, shard.end, None)
        writer.commit(result.docs, result.vectors, errors, end, result.passages)
        writer.report.lines = end.line
        files[shard.index].unlink(missing_ok=True)
        counts.merged += 1
        if progress is not None:
            progress(len(result.docs), shard.end, len(result.vectors))

    following = 0

    def merge_ready(just_written: dict[int, ShardResult] | None = None) -> None:
        """Commit the shards now written, in order; the one just written comes from memory, the
        others are read back from their files."""
        nonlocal following
        while following < len(shards) and files[shards[following].index].is_file():
            shard = shards[following]
            result = (just_written or {}).get(shard.index)
            merge(shard, result if result is not None else read_shard(files[shard.index]))
            following += 1
            if shard_progress is not None:
                shard_progress(counts)

    merge_ready()
    todo = [s for s in shards[following:] if not files[s.index].is_file()]
    if todo:
        cut = collection.cut_options
        tasks = ((s.index, (read_shard_bytes(path, s), kind, s.start, cut)) for s in todo)
        with EmbeddingPool(encoder, options, "embed_shard") as pool:
            for index, result in pool.run(tasks):
                write_shard(files[index], result)
                counts.embedded, counts.retried = counts.embedded + 1, pool.retried
                counts.embed_seconds += result.seconds
                if shard_progress is not None:
                    shard_progress(counts)
                merge_ready({index: result})
    merge_ready()
    if following < len(shards):  # a shard file vanished under us: say so, never skip it
        raise InputError(f"shard {shards[following].index} of {path.name} was not written; run again")
    return writer.finish()
