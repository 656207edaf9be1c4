"""Bulk ingest: stream JSONL or TSV documents, embed them in chunks, commit chunk by chunk.

Memory is bounded by the chunk size whatever the file size. Each chunk's documents, the
byte offset reached, and the source's document and malformed-line counts (with its first
malformed lines) are committed in one transaction, so an interrupted ingest resumes exactly
after its last committed chunk and knows exactly what the lines before it held: nobody
re-reads the file to count. Malformed lines are reported with their line numbers and
skipped, or stop the ingest with ``strict``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from core.errors import InputError
from index.collection import MAX_STORED_ERRORS, Collection
from index.cutting import Cutter
from index.metadata import MAX_METADATA_DEPTH
from index.passages import DocPassages
from index.sources import LineError, SourceCheckpoint, SourceCommit
from index.store import Document
from model.encoder import TextEncoder

Format = Literal["jsonl", "tsv"]  # the input formats an ingest reads
FORMATS: tuple[Format, ...] = get_args(Format)
MAX_REPORTED_ERRORS = 1000  # malformed lines an ingest run returns; MAX_STORED_ERRORS are committed
MAX_METADATA_BYTES = 65_536  # a document's metadata, as UTF-8 JSON


@dataclass
class Record:
    """A parsed line, or the reason it could not be parsed."""

    line: int
    end_offset: int  # byte offset just after this line
    doc: Document | None
    error: str | None = None


@dataclass
class IngestReport:
    """One run's counts (``documents``, ``error_count``, ``errors``) and the source's
    cumulative committed checkpoint after it (``committed``)."""

    source: str
    documents: int = 0
    lines: int = 0
    resumed_from_line: int = 0
    errors: list[LineError] = field(default_factory=list)
    error_count: int = 0
    version: int = 0
    resumed: SourceCheckpoint = field(default_factory=SourceCheckpoint)
    committed: SourceCheckpoint = field(default_factory=SourceCheckpoint)
    shards: ShardCounts | None = None  # on Ray: the shards planned, found written, embedded
    passages: int = 0  # passages this run stored (a long document has several)


@dataclass
class ShardCounts:
    total: int = 0  # shards from the resume point to the end of the file
    reused: int = 0  # found written by an earlier run: not embedded again
    embedded: int = 0
    merged: int = 0
    retried: int = 0  # shards given to another actor after theirs was lost (a node removed, a crash)
    embed_seconds: float = 0.0  # the actors' time on the shards this run embedded, summed


def detect_format(path: Path, fmt: str | None) -> Format:
    if fmt is not None:
        if fmt not in ("jsonl", "tsv"):
            raise InputError(f"--format must be jsonl or tsv, not {fmt!r}")
        return "jsonl" if fmt == "jsonl" else "tsv"
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".ndjson", ".json"}:
        return "jsonl"
    if suffix in {".tsv", ".txt"}:
        return "tsv"
    raise InputError(f"cannot tell the format of {path.name}; pass --format jsonl or --format tsv")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf
        raise ValueError(f"{text[:40]} is beyond the range of a JSON number here")
    return value


def _loads(text: str) -> Any:
    """Strict JSON: NaN, Infinity and overflowing numbers, which Python's json accepts, are refused;
    so is nesting beyond what the parser can take (a line error, not the job's failure)."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
    except RecursionError:
        raise ValueError(f"nested more than {MAX_METADATA_DEPTH} levels deep") from None


def _check_value(value: Any, where: str) -> None:
    """Every string (keys too) must be encodable as UTF-8: JSON's \\ud800 escapes decode to lone
    surrogates, which SQLite, the tokenizer and every reader downstream refuse. And nesting is
    bounded (MAX_METADATA_DEPTH): the response writer and the cache's parser stop at a few
    hundred levels, so a deeper value would be stored and then break every search that finds it.
    Walked with a stack, not recursion, so no depth is too deep to refuse."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                bad = f"\\u{ord(item[exc.start]):04x}"
                raise ValueError(f"{where} holds a lone surrogate ({bad}): not text") from None
        elif isinstance(item, dict | list):
            if depth >= MAX_METADATA_DEPTH:
                raise ValueError(f"{where} is nested more than {MAX_METADATA_DEPTH} levels deep")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def _document(obj: Any) -> Document:
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    doc_id = obj.get("id")
    if isinstance(doc_id, bool) or not isinstance(doc_id, str | int) or str(doc_id) == "":
        raise ValueError("'id' must be a non-empty string or an integer")
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("'text' must be a non-empty string")
    lang = obj.get("lang")
    if lang is not None and not isinstance(lang, str):
        raise ValueError("'lang' must be a string")
    metadata = obj.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise ValueError("'metadata' must be a JSON object")
    for name in ("id", "text", "lang", "metadata"):
        _check_value(obj.get(name), f"'{name}'")
    size = len(json.dumps(metadata, ensure_ascii=False).encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"'metadata' is {size} bytes as JSON, more than the {MAX_METADATA_BYTES} allowed")
    return Document(str(doc_id), text, lang or None, metadata)


def _parse(line: str, fmt: Format) -> Document:
    if fmt == "jsonl":
        try:
            obj = _loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON: {exc.msg} at column {exc.colno}") from exc
        return _document(obj)
    cols = line.split("\t")
    if not 2 <= len(cols) <= 4:
        raise ValueError(f"expected 2 to 4 tab-separated columns (id, text, lang, metadata), got {len(cols)}")
    row: dict[str, Any] = {"id": cols[0], "text": cols[1]}
    if len(cols) > 2 and cols[2]:
        row["lang"] = cols[2]
    if len(cols) > 3 and cols[3]:
        try:
            row["metadata"] = _loads(cols[3])
        except json.JSONDecodeError as exc:
            raise ValueError(f"metadata column is not valid JSON: {exc.msg}") from exc
    return _document(row)


MARK_WINDOW = 1 << 16  # bytes read from the start, and before the offset, to fingerprint a file


def file_mark(path: Path, offset: int) -> str:
    """A fingerprint of a file's content up to ``offset``: its first and its last 64 KiB before
    the offset. Cheap at every chunk, and a replaced file (other content) almost surely differs,
    while a file that only grew (appended lines) keeps its mark."""
    digest = hashlib.sha256(offset.to_bytes(8, "little"))
    with Path(path).open("rb") as fh:
        digest.update(fh.read(min(offset, MARK_WINDOW)))
        start = max(0, offset - MARK_WINDOW)
        fh.seek(start)
        digest.update(fh.read(offset - start))
    return digest.hexdigest()


def source_key(path: Path) -> str:
    """The key an ingest source's progress is committed under: its resolved path."""
    return str(Path(path).resolve())


def committed(collection: Collection, path: Path, errors_after: int = 0) -> SourceCheckpoint:
    """What is committed for ``path``, with the first stored malformed lines after ``errors_after``."""
    return collection.source_checkpoint(source_key(path), errors_after)


def _replaced(collection: Collection, path: Path, checkpoint: SourceCheckpoint) -> bool:
    if checkpoint.offset > Path(path).stat().st_size:
        return True
    mark = collection.source_mark(source_key(path))
    return mark is not None and mark != file_mark(path, checkpoint.offset)


def resume_point(collection: Collection, path: Path, errors_after: int = 0) -> SourceCheckpoint:
    """The checkpoint to continue ``path`` from: the committed one if the file is the one that
    was committed, else an empty one: a replaced file is ingested from its start, counts reset."""
    checkpoint = committed(collection, path, errors_after)
    if checkpoint.offset == 0 or _replaced(collection, path, checkpoint):
        return SourceCheckpoint()
    return checkpoint


def read_records(path: Path, fmt: Format, start_offset: int = 0, start_line: int = 0) -> Iterator[Record]:
    """Stream records from ``start_offset`` (a committed position), never loading the file."""
    with Path(path).open("rb") as fh:
        fh.seek(start_offset)
        yield from parse_lines(fh, fmt, start_offset, start_line, file_start=start_offset == 0)


def parse_lines(
    raws: Iterable[bytes], fmt: Format, start_offset: int, start_line: int, file_start: bool
) -> Iterator[Record]:
    """Records of raw lines read from ``start_offset``, numbered on from ``start_line``: the one
    parser of the local ingest and of a shard embedded elsewhere. ``file_start``: the first line
    is the file's first, where a TSV header may stand."""
    offset, number = start_offset, start_line
    for raw in raws:
        number += 1
        offset += len(raw)
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            yield Record(number, offset, None, f"not valid UTF-8 (byte {exc.start})")
            continue
        if not line.strip():
            continue
        if file_start and number == start_line + 1 and fmt == "tsv" and line.lower().startswith("id\ttext"):
            continue  # header row
        try:
            yield Record(number, offset, _parse(line, fmt))
        except ValueError as exc:
            yield Record(number, offset, None, str(exc))


def check_input(collection: Collection, encoder: TextEncoder, path: Path) -> None:
    if not path.is_file():
        raise InputError(f"input file not found: {path}")
    if encoder.model_id != collection.manifest.model_id:
        raise InputError(
            f"collection {collection.name!r} holds vectors of model {collection.manifest.model_id}, "
            f"the encoder is {encoder.model_id}"
        )


class SourceWriter:
    """The one way an ingest commits: a batch of documents with the source's position, cumulative
    counts and first malformed lines, in one transaction (local chunks and Ray shards alike)."""

    def __init__(self, collection: Collection, path: Path, start: SourceCheckpoint) -> None:
        self.collection, self.path, self.source = collection, path, source_key(path)
        self.report = IngestReport(
            source=self.source, resumed_from_line=start.line, resumed=start, committed=start
        )
        self._restart = start.offset == 0  # whatever an earlier file under this key left is dropped
        self._kept = 0  # malformed lines committed by this run

    def commit(
        self,
        docs: list[Document],
        vectors: np.ndarray,
        bad: list[LineError],
        end: Record,
        passages: list[DocPassages] | None = None,
    ) -> None:
        """Commit ``docs`` (with ``passages``, one vector each) and the lines' errors up to ``end``."""
        stored = bad[: max(0, MAX_STORED_ERRORS - self._kept)]
        done = self.report.committed
        total = SourceCheckpoint(
            offset=end.end_offset,
            line=end.line,
            documents=done.documents + len(docs),
            errors=done.errors + len(bad),
        )
        commit = SourceCommit(
            self.source,
            total.offset,
            total.line,
            mark=file_mark(self.path, total.offset),
            documents=total.documents,
            errors=total.errors,
            error_lines=stored,
            restart=self._restart,
        )
        self.report.version = self.collection.upsert(docs, vectors, commit, passages)
        self.report.committed = total
        self.report.documents += len(docs)
        self.report.passages += len(vectors)
        self._restart, self._kept = False, self._kept + len(stored)

    def malformed(self, error: LineError) -> None:
        self.report.error_count += 1
        if len(self.report.errors) < MAX_REPORTED_ERRORS:
            self.report.errors.append(error)

    def finish(self) -> IngestReport:
        self.report.committed = committed(self.collection, self.path, self.report.resumed.line)
        return self.report


def ingest(
    collection: Collection,
    encoder: TextEncoder,
    path: Path,
    fmt: str | None = None,
    chunk_size: int = 256,
    strict: bool = False,
    progress: Callable[[int, int, int], None] | None = None,
) -> IngestReport:
    """Embed (as passages) and upsert every document of ``path``; ``progress(docs, bytes, passages)``
    after each commit (an exception it raises stops the ingest there, all of it committed)."""
    path = Path(path)
    check_input(collection, encoder, path)
    kind: Format = detect_format(path, fmt)
    start = resume_point(collection, path)
    writer = SourceWriter(collection, path, start)
    cutter = Cutter(encoder.tokenizer, collection.cut_options)
    docs: list[Document] = []
    lines: list[int] = []  # each document's line
    bad: list[LineError] = []  # this chunk's malformed lines
    last: Record | None = None

    def flush(end: Record) -> None:
        prepared, vectors = cutter.embed(encoder, docs)
        for i, reason in prepared.refused:  # too long for the collection's passage maximum
            if strict:
                raise InputError(f"{path.name}:{lines[i]}: {reason}")
            writer.malformed(LineError(lines[i], reason))
            bad.append(LineError(lines[i], reason))
        bad.sort(key=lambda e: e.line)
        writer.commit(prepared.docs, vectors, bad, end, prepared.passages)
        n, passages = len(prepared.docs), len(vectors)
        docs.clear()
        lines.clear()
        bad.clear()
        if progress is not None:
            progress(n, end.end_offset, passages)

    for record in read_records(path, kind, start.offset, start.line):
        writer.report.lines = record.line
        last = record
        if record.error is not None:
            if strict:
                raise InputError(f"{path.name}:{record.line}: {record.error}")
            error = LineError(record.line, record.error)
            writer.malformed(error)
            bad.append(error)
            continue
        assert record.doc is not None
        docs.append(record.doc)
        lines.append(record.line)
        if len(docs) >= chunk_size:
            flush(record)
    if last is not None and (docs or bad):
        flush(last)  # the last documents, or malformed lines after them: their counts too
    return writer.finish()
