"""Re-indexing one collection into another: everything copied, resumable, foreign targets refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import InputError
from index.collection import Collection
from index.reindex import reindex
from index.store import Document
from model.encoder import Encoder


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Encoder:
    return Encoder.load(tiny_model_dir, backend="onnx-int8")


class Stop(Exception):
    pass


def _source(home: Path, enc: Encoder, n: int) -> Collection:
    src = Collection.create(home, "old", enc.model_id, enc.dim, "Flat")
    docs = [Document(f"d{i}", f"document {i}", "en", {"i": i}) for i in range(n)]
    src.upsert(docs, enc.embed([d.text for d in docs], "passage"))
    return src


def test_reindex_copies_resumes_and_refuses_a_foreign_target(tmp_path: Path, tiny: Encoder) -> None:
    home = tmp_path / "collections"
    src = _source(home, tiny, 23)
    calls: list[tuple[int, int]] = []

    def stop_after_two(done: int, total: int) -> None:
        calls.append((done, total))
        if len(calls) == 3:  # the call before the first chunk, then two chunks
            raise Stop

    with pytest.raises(Stop):
        reindex(src, home, "new", tiny, chunk_size=5, progress=stop_after_two)
    assert calls == [(0, 23), (5, 23), (10, 23)]
    seen: list[tuple[int, int]] = []
    report = reindex(src, home, "new", tiny, chunk_size=5, progress=lambda d, t: seen.append((d, t)))
    assert (report.resumed, report.documents, report.count) == (10, 13, 23)
    assert seen[0] == (10, 23) and seen[-1] == (23, 23)
    with Collection.open(home, "new", tiny.model_id, readonly=True) as dst:
        assert dst.manifest.index_factory == "Flat"  # the source's
        copied = dst.get("d7")
        assert copied is not None and copied.metadata == {"i": 7} and copied.lang == "en"
        assert {d.id for d in dst.documents()} == {f"d{i}" for i in range(23)}
    again = reindex(src, home, "new", tiny)
    assert (again.resumed, again.documents, again.count) == (23, 0, 23)
    with pytest.raises(InputError, match="exists with index"):
        reindex(src, home, "new", tiny, index_factory="HNSW32")
    with Collection.create(home, "other", tiny.model_id, tiny.dim) as other:
        other.upsert([Document("x", "x")], tiny.embed(["x"], "passage"))
    with pytest.raises(InputError, match="was not re-indexed from 'old'"):
        reindex(src, home, "other", tiny)
    src.close()
