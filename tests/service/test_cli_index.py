"""``dapsearch index …`` as a data team runs it: real subprocesses on a tiny model, exit codes, output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from index.collection import Collection


def cli(home: Path, model_dir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DAPSEARCH_HOME": str(home), "DAPSEARCH_MODEL_DIR": str(model_dir)}
    cmd = [sys.executable, "-m", "service.cli", "index", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def write_docs(path: Path, n: int) -> Path:
    langs = ("en", "de", "fr")
    path.write_text(
        "".join(
            json.dumps(
                {"id": f"d{i}", "text": f"document {i}", "lang": langs[i % 3], "metadata": {"n": i % 2}}
            )
            + "\n"
            for i in range(n)
        )
    )
    return path


def test_create_ingest_search_delete_stats_list(tmp_path: Path, tiny_model_dir: Path) -> None:
    home = tmp_path / "home"
    src = write_docs(tmp_path / "docs.jsonl", 30)
    assert cli(home, tiny_model_dir, "create", "c").returncode == 0
    ingested = cli(home, tiny_model_dir, "ingest", "c", str(src), "--chunk-size", "7")
    assert ingested.returncode == 0, ingested.stderr
    assert "ingested 30 documents" in ingested.stdout
    assert cli(home, tiny_model_dir, "list").stdout.split() == ["c"]

    found = cli(home, tiny_model_dir, "search", "c", "document 4", "-k", "5", "--lang", "de", "--meta", "n=1")
    assert found.returncode == 0, found.stderr
    hits = [json.loads(line) for line in found.stdout.splitlines()]
    assert len(hits) == 5  # 30 docs, a sixth are German with n == 1: exactly 5 match
    assert all(h["lang"] == "de" and h["metadata"] == {"n": 1} for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)

    deleted = cli(home, tiny_model_dir, "delete", "c", "d0", "d1", "nope")
    assert deleted.returncode == 0 and "deleted 2 of 3" in deleted.stdout
    stats = json.loads(cli(home, tiny_model_dir, "stats", "c").stdout)
    assert stats["count"] == 28


def test_errors_are_one_line_and_exit_2(tmp_path: Path, tiny_model_dir: Path, real_model_dir: Path) -> None:
    home = tmp_path / "home"
    assert cli(home, tiny_model_dir, "create", "c").returncode == 0
    cases = [
        (("search", "nope", "hello"), "unknown collection"),
        (("ingest", "c", str(tmp_path / "missing.jsonl")), "input file not found"),
        (("create", "c"), "already exists"),
        (("create", "../x"), "invalid collection name"),
        (("search", "c", "hi", "--meta", "novalue"), "--meta takes KEY=VALUE"),
    ]
    for args, message in cases:
        result = cli(home, tiny_model_dir, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    # Vectors of two models never mix: the real model may not write into or search a tiny-model collection.
    src = write_docs(tmp_path / "docs.jsonl", 3)
    for args in (("ingest", "c", str(src)), ("search", "c", "hi")):
        mixed = cli(home, real_model_dir, *args)
        assert mixed.returncode == 2 and "holds vectors of model" in mixed.stderr, mixed.stderr
    for command in ("create", "ingest", "search", "delete", "stats", "reindex", "list"):
        assert cli(home, tiny_model_dir, command, "--help").returncode == 0


def _target_version(home: Path, name: str) -> int:
    try:
        with Collection.open(home / "collections", name, readonly=True) as coll:
            return coll.version
    except Exception:  # not created yet, or created but not yet readable
        return -1


def test_reindex_resumes_after_a_kill_and_refuses_a_foreign_target(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    home = tmp_path / "home"
    n = 6000
    src = write_docs(tmp_path / "docs.jsonl", n)
    assert cli(home, tiny_model_dir, "create", "old").returncode == 0
    assert cli(home, tiny_model_dir, "ingest", "old", str(src), "--chunk-size", "1000").returncode == 0

    env = {**os.environ, "DAPSEARCH_HOME": str(home), "DAPSEARCH_MODEL_DIR": str(tiny_model_dir)}
    cmd = [sys.executable, "-m", "service.cli", "index", "reindex", "old", "new", "--chunk-size", "50"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _target_version(home, "new") < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "re-index finished before it could be interrupted; use more documents"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Collection.open(home / "collections", "new", readonly=True) as partial:
        done = len(partial)
    assert 0 < done < n

    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {done} documents already re-indexed" in resumed.stdout
    with (
        Collection.open(home / "collections", "old", readonly=True) as old,
        Collection.open(home / "collections", "new", readonly=True) as new,
    ):
        assert len(new) == n and new.stats()["index_vectors"] == n
        assert [d.id for d in new.documents()] == [d.id for d in old.documents()]
        assert new.get("d5") == old.get("d5")

    assert cli(home, tiny_model_dir, "create", "other").returncode == 0
    assert (
        cli(home, tiny_model_dir, "ingest", "other", str(write_docs(tmp_path / "x.jsonl", 2))).returncode == 0
    )
    foreign = cli(home, tiny_model_dir, "reindex", "old", "other")
    assert foreign.returncode == 2 and "was not re-indexed from 'old'" in foreign.stderr


@pytest.mark.parametrize("command", ["stats", "delete"])
def test_unknown_collection(tmp_path: Path, tiny_model_dir: Path, command: str) -> None:
    args = ("nope", "d1") if command == "delete" else ("nope",)
    result = cli(tmp_path / "home", tiny_model_dir, command, *args)
    assert result.returncode == 2 and "unknown collection" in result.stderr
