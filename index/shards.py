"""An input file cut into shards: byte ranges on line boundaries, and one vector file per shard.

The cut is a grid fixed by the file alone (the first line start at or after each multiple of
the shard size), so every run over the same file plans the same shards and names their files
the same: a shard whose file exists is not embedded again, which is what resumes a Ray ingest.
A shard is parsed with the local ingest's own parser, so it yields the same documents and the
same malformed lines, numbered from the shard's first line.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.files import atomic_binary_writer
from index.cutting import CutOptions, Cutter
from index.ingest import Format, file_mark, parse_lines
from index.passages import DocPassages, Span
from index.sources import LineError
from index.store import Document
from model.encoder import Encoder

DEFAULT_SHARD_BYTES = 4 << 20  # about 25k short documents: minutes of one actor's time
SUFFIX = ".npz"


@dataclass(frozen=True)
class Shard:
    """Bytes ``start``..``end`` of the input: whole lines."""

    index: int  # position on the file's grid
    start: int
    end: int

    def file_name(self, mark: str) -> str:
        return f"{self.index:06d}-{self.start:012d}-{self.end:012d}-{mark[:12]}{SUFFIX}"


@dataclass
class ShardResult:
    """A shard's documents and vectors, its malformed lines and how many lines it spans."""

    docs: list[Document]
    vectors: np.ndarray
    errors: list[LineError]  # numbered from the shard's first line (1)
    lines: int
    seconds: float = 0.0  # the actor's time to parse and embed it (not stored in the shard file)
    passages: list[DocPassages] | None = None  # each document's passages (None: one each, whole)


def _line_start_at_or_after(fh: io.BufferedReader, offset: int, size: int) -> int:
    """The first line start at or after ``offset``: the offset itself if a line ends just before."""
    if offset <= 0:
        return 0
    if offset >= size:
        return size
    fh.seek(offset - 1)
    if fh.read(1) == b"\n":
        return offset
    fh.readline()
    return min(fh.tell(), size)


def plan(path: Path, start: int, shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[Shard]:
    """The shards from byte ``start`` (a committed position, a line start) to the end of the file."""
    if shard_bytes < 1:
        raise ValueError("shard_bytes must be at least 1")
    size = Path(path).stat().st_size
    shards: list[Shard] = []
    with Path(path).open("rb") as fh:
        cut = _line_start_at_or_after(fh, start, size)
        index = start // shard_bytes
        while cut < size:
            index += 1
            end = _line_start_at_or_after(fh, index * shard_bytes, size)
            if end > cut:
                shards.append(Shard(index - 1, cut, end))
                cut = end
    return shards


def read_shard_bytes(path: Path, shard: Shard) -> bytes:
    with Path(path).open("rb") as fh:
        fh.seek(shard.start)
        return fh.read(shard.end - shard.start)


def embed_shard(encoder: Encoder, data: bytes, fmt: Format, start: int, options: CutOptions) -> ShardResult:
    """Parse, cut into passages (as the collection's ``options`` say) and embed one shard's bytes
    (read at byte ``start`` of the file): what an actor runs."""
    started = time.perf_counter()
    docs: list[Document] = []
    numbers: list[int] = []
    errors: list[LineError] = []
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    for record in parse_lines(io.BytesIO(data), fmt, start, 0, file_start=start == 0):
        if record.doc is None:
            errors.append(LineError(record.line, record.error or "malformed"))
        else:
            docs.append(record.doc)
            numbers.append(record.line)
    prepared, vectors = Cutter(encoder.tokenizer, options).embed(encoder, docs)
    errors += [LineError(numbers[i], reason) for i, reason in prepared.refused]
    errors.sort(key=lambda e: e.line)
    seconds = time.perf_counter() - started
    return ShardResult(prepared.docs, vectors, errors, lines, seconds, prepared.passages)


def work_dir(root: Path, source: str, model_id: str, fmt: Format) -> Path:
    """Where one source's shard files go: a new folder for another model or format."""
    digest = hashlib.sha256(f"{source}\0{model_id}\0{fmt}".encode()).hexdigest()[:16]
    return Path(root) / digest


def shard_path(folder: Path, path: Path, shard: Shard) -> Path:
    """The shard's file: named by its range and its content, so a changed file is never resumed."""
    return folder / shard.file_name(file_mark(path, shard.end))


def _as_bytes(value: object) -> np.ndarray:
    return np.frombuffer(json.dumps(value, ensure_ascii=False).encode("utf-8"), dtype=np.uint8)


def write_shard(file: Path, result: ShardResult) -> None:
    """Write atomically: a shard file that exists is complete."""
    docs = [[d.id, d.text, d.lang, d.metadata, d.lang_detected] for d in result.docs]
    passages = (
        None
        if result.passages is None
        else [[[[s.start, s.end] for s in p.spans], p.terms] for p in result.passages]
    )
    errors = [[e.line, e.reason] for e in result.errors]
    with atomic_binary_writer(file) as fh:
        np.savez(
            fh,
            vectors=np.ascontiguousarray(result.vectors, dtype=np.float32),
            docs=_as_bytes(docs),
            errors=_as_bytes(errors),
            passages=_as_bytes(passages),
            lines=np.array([result.lines], dtype=np.int64),
        )


def read_shard(file: Path) -> ShardResult:
    with np.load(file, allow_pickle=False) as data:
        docs = [Document(*row) for row in json.loads(data["docs"].tobytes())]
        errors = [LineError(int(n), str(r)) for n, r in json.loads(data["errors"].tobytes())]
        found = json.loads(data["passages"].tobytes()) if "passages" in data.files else None
        passages = (
            None
            if found is None
            else [DocPassages([Span(int(a), int(b)) for a, b in spans], terms) for spans, terms in found]
        )
        return ShardResult(docs, np.array(data["vectors"]), errors, int(data["lines"][0]), 0.0, passages)


def written(folder: Path) -> Iterator[Path]:
    return iter(sorted(folder.glob(f"*{SUFFIX}"))) if folder.is_dir() else iter(())
