"""Bulk ingest: formats, malformed lines, resume, and a real ingest process killed at random."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.errors import InputError
from index.collection import Collection
from index.ingest import detect_format, ingest
from model.encoder import Encoder


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Encoder:
    return Encoder.load(tiny_model_dir, backend="onnx-int8")


def _collection(tmp_path: Path, enc: Encoder, name: str = "c") -> Collection:
    return Collection.create(tmp_path / "collections", name, enc.model_id, enc.dim)


def test_jsonl_with_malformed_lines_reported_by_number(tmp_path: Path, tiny: Encoder) -> None:
    src = tmp_path / "docs.jsonl"
    lines = [
        json.dumps({"id": "a", "text": "hello", "lang": "en", "metadata": {"k": 1}}),
        "{broken",
        json.dumps({"id": "b", "text": ""}),
        "",
        json.dumps({"id": 7, "text": "seven"}),
        json.dumps({"id": "c", "text": "x", "metadata": [1]}),
        json.dumps(["not", "an", "object"]),
    ]
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with src.open("ab") as fh:
        fh.write(b'{"id": "z", "text": "caf\xe9"}\n')
    coll = _collection(tmp_path, tiny)
    report = ingest(coll, tiny, src, chunk_size=2)
    assert report.documents == 2 and len(coll) == 2
    assert [(e.line, e.reason.split(":")[0]) for e in report.errors] == [
        (2, "invalid JSON"),
        (3, "'text' must be a non-empty string"),
        (6, "'metadata' must be a JSON object"),
        (7, "expected a JSON object"),
        (8, "not valid UTF-8 (byte 24)"),
    ]
    assert coll.get("7") is not None and coll.get("a") is not None
    with pytest.raises(InputError, match=r"docs.jsonl:2: invalid JSON"):
        ingest(_collection(tmp_path, tiny, "strict"), tiny, src, strict=True)


def test_lines_json_allows_but_text_cannot_hold_are_skipped_one_by_one(tmp_path: Path, tiny: Encoder) -> None:
    """Lone surrogates (a \\ud800 escape) anywhere, and NaN / Infinity / overflowing numbers in
    metadata: each such line is reported and skipped, the lines around it are ingested, and the
    metadata stored stays strict JSON that SQLite's json functions (metadata filters) can read."""
    src = tmp_path / "docs.jsonl"
    raw_lines = [
        '{"id": "ok-1", "text": "before", "metadata": {"n": 1.5}}',
        '{"id": "t", "text": "broken \\ud800 text"}',
        '{"id": "\\udfff", "text": "broken id"}',
        '{"id": "m", "text": "x", "metadata": {"k": NaN}}',
        '{"id": "m2", "text": "x", "metadata": {"k": [1, -Infinity]}}',
        '{"id": "m3", "text": "x", "metadata": {"k": 1e999}}',
        '{"id": "m4", "text": "x", "metadata": {"\\ud800": 1}}',
        '{"id": "l", "text": "x", "lang": "\\udc00"}',
        '{"id": "ok-2", "text": "after \\ud83d\\ude00", "metadata": {"k": 2}}',
    ]
    src.write_text("\n".join(raw_lines) + "\n", encoding="utf-8")
    coll = _collection(tmp_path, tiny)
    report = ingest(coll, tiny, src, chunk_size=3)
    assert report.documents == 2 and report.error_count == 7
    assert [e.line for e in report.errors] == [2, 3, 4, 5, 6, 7, 8]
    assert "lone surrogate" in report.errors[0].reason and "NaN" in report.errors[2].reason
    kept = coll.get("ok-2")
    assert kept is not None and kept.text == "after \U0001f600"
    with sqlite3.connect(tmp_path / "collections" / "c" / "docs.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM docs WHERE json_valid(metadata)").fetchone()[0] == 2


def test_metadata_too_deep_or_too_big_is_a_line_error_and_the_rest_is_served(
    tmp_path: Path, tiny: Encoder
) -> None:
    """Metadata nested beyond MAX_METADATA_DEPTH (even beyond what the JSON parser can take) or
    larger than MAX_METADATA_BYTES is one line's error; the other lines are ingested, and every
    stored document can be written as JSON by the service's writer (orjson) and read back."""
    import orjson

    from index.ingest import MAX_METADATA_BYTES
    from index.metadata import MAX_METADATA_DEPTH

    def nested(levels: int) -> str:
        """``levels`` objects, one inside the other."""
        return '{"a": ' * levels + "1" + "}" * levels

    src = tmp_path / "docs.jsonl"
    raw_lines = [
        f'{{"id": "ok-1", "text": "just deep enough", "metadata": {nested(MAX_METADATA_DEPTH)}}}',
        f'{{"id": "deep", "text": "x", "metadata": {nested(MAX_METADATA_DEPTH + 1)}}}',
        f'{{"id": "list", "text": "x", "metadata": {{"k": {"[" * 300}{"]" * 300}}}}}',
        f'{{"id": "abyss", "text": "x", "metadata": {nested(100_000)}}}',
        json.dumps({"id": "big", "text": "x", "metadata": {"k": "y" * MAX_METADATA_BYTES}}),
        '{"id": "ok-2", "text": "after them", "metadata": {"k": 2}}',
    ]
    src.write_text("\n".join(raw_lines) + "\n", encoding="utf-8")
    coll = _collection(tmp_path, tiny)
    report = ingest(coll, tiny, src, chunk_size=2)
    assert report.documents == 2 and [e.line for e in report.errors] == [2, 3, 4, 5]
    assert all("levels deep" in e.reason for e in report.errors[:3]), report.errors
    assert "bytes" in report.errors[3].reason
    for doc_id in ("ok-1", "ok-2"):
        doc = coll.get(doc_id)
        assert doc is not None
        assert orjson.loads(orjson.dumps({"metadata": doc.metadata}))["metadata"] == doc.metadata


def test_tsv_header_lang_metadata_and_upsert(tmp_path: Path, tiny: Encoder) -> None:
    src = tmp_path / "docs.tsv"
    src.write_text(
        'id\ttext\tlang\tmetadata\n1\tone\ten\t{"n": 1}\n2\tzwei\tde\t\n1\tone again\ten\n3\tonly id\n',
        encoding="utf-8",
    )
    coll = _collection(tmp_path, tiny)
    report = ingest(coll, tiny, src)
    assert report.documents == 4 and len(coll) == 3
    assert coll.get("1") is not None and coll.get("1").text == "one again"  # type: ignore[union-attr]
    assert coll.get("2") is not None and coll.get("2").lang == "de"  # type: ignore[union-attr]


def test_resume_skips_what_is_committed(tmp_path: Path, tiny: Encoder) -> None:
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": str(i), "text": f"doc {i}"}) + "\n" for i in range(10)))
    coll = _collection(tmp_path, tiny)
    first = ingest(coll, tiny, src, chunk_size=4)
    assert first.documents == 10
    again = ingest(coll, tiny, src, chunk_size=4)
    assert again.documents == 0 and again.resumed_from_line == 10
    with src.open("a") as fh:
        fh.write(json.dumps({"id": "10", "text": "appended"}) + "\n")
    more = ingest(coll, tiny, src)
    assert more.documents == 1 and len(coll) == 11


@pytest.mark.parametrize("size", ["same", "longer"])
def test_a_replaced_file_is_ingested_from_its_start(tmp_path: Path, tiny: Encoder, size: str) -> None:
    """Same path, other content: resuming at the old offset silently lost the new file's first
    documents while the job said it succeeded."""
    src = tmp_path / "docs.jsonl"

    def write(prefix: str, n: int) -> None:
        src.write_text(
            "".join(json.dumps({"id": f"{prefix}{i}", "text": f"{prefix} {i}"}) + "\n" for i in range(n))
        )

    write("a", 10)
    coll = _collection(tmp_path, tiny)
    assert ingest(coll, tiny, src, chunk_size=4).documents == 10
    n = {"same": 10, "longer": 30}[size]
    write("b", n)  # 'same': the same byte length as before
    report = ingest(coll, tiny, src, chunk_size=4)
    assert report.resumed_from_line == 0 and report.documents == n
    assert all(coll.get(f"b{i}") for i in range(n))


def test_bad_sources(tmp_path: Path, tiny: Encoder) -> None:
    coll = _collection(tmp_path, tiny)
    with pytest.raises(InputError, match="not found"):
        ingest(coll, tiny, tmp_path / "missing.jsonl")
    odd = tmp_path / "docs.xml"
    odd.write_text("<x/>")
    with pytest.raises(InputError, match="--format"):
        ingest(coll, tiny, odd)
    assert detect_format(odd, "tsv") == "tsv"
    other = Collection.create(tmp_path / "collections", "other", "another-model@1", tiny.dim)
    good = tmp_path / "d.jsonl"
    good.write_text(json.dumps({"id": "1", "text": "x"}) + "\n")
    with pytest.raises(InputError, match="holds vectors of model another-model@1"):
        ingest(other, tiny, good)


def _version(home: Path, name: str) -> int:
    with sqlite3.connect(home / "collections" / name / "docs.sqlite", timeout=30) as db:
        return int(db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0])


def _state(home: Path, name: str) -> tuple[int, int, set[str]]:
    """(documents, vectors in the index, ids), after checking that documents, passages, vectors
    and the lexical index agree: every document has passages, every passage a document, one
    vector and one lexical row."""
    with Collection.open(home / "collections", name, readonly=True) as coll:
        stats = coll.stats()
        ids = {doc.id for doc in coll.documents()}
    with sqlite3.connect(home / "collections" / name / "docs.sqlite", timeout=30) as db:
        orphans = db.execute(
            "SELECT count(*) FROM passages WHERE doc NOT IN (SELECT rid FROM docs)"
        ).fetchone()
        bare = db.execute("SELECT count(*) FROM docs WHERE rid NOT IN (SELECT doc FROM passages)").fetchone()
        lexical = db.execute("SELECT count(*) FROM lexical").fetchone()
        stray = db.execute(
            "SELECT count(*) FROM lexical WHERE rowid NOT IN (SELECT pid FROM passages)"
        ).fetchone()
    assert orphans[0] == bare[0] == stray[0] == 0, "passages, documents and lexical rows disagree"
    assert stats["passages"] == stats["index_vectors"] == lexical[0], "vectors or lexical rows went astray"
    return int(stats["count"]), int(stats["passages"]), ids


def test_sigkill_mid_ingest_never_loses_or_corrupts(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Kill a real `dapsearch index ingest` at random moments; reopen; resume; nothing lost:
    documents, their passages (every tenth document has several), vectors and the lexical
    index stay in step."""
    n = 50_000
    src = tmp_path / "docs.jsonl"
    long = " ".join(f"word{j}" for j in range(30))

    def text(i: int) -> str:
        return f"document number {i}" + (f" {long}" if i % 10 == 0 else "")

    src.write_text("".join(json.dumps({"id": f"d{i}", "text": text(i)}) + "\n" for i in range(n)))
    passages_per_long = 0
    home = tmp_path / "home"
    env = {**os.environ, "DAPSEARCH_HOME": str(home), "DAPSEARCH_MODEL_DIR": str(tiny_model_dir)}
    cli = [sys.executable, "-m", "cli"]
    subprocess.run([*cli, "index", "create", "k"], env=env, check=True, capture_output=True)
    cmd = [*cli, "index", "ingest", "k", str(src), "--chunk-size", "200"]
    rng = random.Random(1234)
    committed = 0
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start = _version(home, "k")
        deadline = time.monotonic() + 120
        while _version(home, "k") == start and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # wait until this run commits, so the kill lands mid-ingest
        time.sleep(rng.uniform(0.0, 0.3))  # a fast machine ingests the rest in about a second
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        count, vectors, ids = _state(home, "k")
        assert count >= committed, "a committed chunk was lost"
        assert ids == {f"d{i}" for i in range(count)}, "chunks must commit in file order"
        committed = count
    assert kills >= 2, "the ingest finished before it could be killed; make the input larger"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "resumed after line" in done.stdout
    count, vectors, ids = _state(home, "k")
    assert count == n and len(ids) == n
    with Collection.open(home / "collections", "k", readonly=True) as coll:
        passages_per_long = len(coll.passage_spans("d0"))
        assert len(coll.passage_spans("d1")) == 1
    assert passages_per_long > 1
    assert vectors == n + (passages_per_long - 1) * (n // 10)


def test_reader_process_serves_committed_versions_during_a_live_ingest(
    tmp_path: Path, tiny_model_dir: Path, tiny: Encoder
) -> None:
    """While `dapsearch index ingest` runs in another process, one open read handle keeps
    answering: each refresh lands on a committed version whose index and documents agree, and
    versions only move forward."""
    n = 20_000
    src = tmp_path / "docs.jsonl"
    src.write_text(
        "".join(json.dumps({"id": f"d{i}", "text": f"document number {i}"}) + "\n" for i in range(n))
    )
    home = tmp_path / "home"
    env = {**os.environ, "DAPSEARCH_HOME": str(home), "DAPSEARCH_MODEL_DIR": str(tiny_model_dir)}
    cli = [sys.executable, "-m", "cli", "index"]
    subprocess.run([*cli, "create", "live", "--index", "Flat"], env=env, check=True, capture_output=True)
    writer = subprocess.Popen(
        [*cli, "ingest", "live", str(src), "--chunk-size", "500"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    query = tiny.embed(["document number 7"], "query")
    seen: list[int] = []
    try:
        with Collection.open(home / "collections", "live", tiny.model_id, readonly=True) as reader:
            while True:
                running = writer.poll() is None
                reader.refresh()
                vectors = int(reader.stats()["index_vectors"])
                # Each commit is one whole chunk of 500: the index at version v holds exactly them.
                assert vectors == min(500 * reader.version, n), "a reader saw a half-applied version"
                hits = reader.search(query, k=5)[0]
                assert len(hits) == min(5, vectors)
                seen.append(vectors)
                if not running:  # this refresh came after the writer's last commit
                    break
                time.sleep(0.02)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == 0 and seen[-1] == n
    assert seen == sorted(seen), "versions went backwards"
    assert len(set(seen)) >= 3, (
        f"the reader should have seen several committed versions, saw {sorted(set(seen))}"
    )
