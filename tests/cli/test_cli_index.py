"""``dapsearch index …`` as a data team runs it: real subprocesses on a tiny model, exit codes, output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from index.collection import Collection


def cli(home: Path, model_dir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DAPSEARCH_HOME": str(home), "DAPSEARCH_MODEL_DIR": str(model_dir)}
    cmd = [sys.executable, "-m", "cli", "index", *args]
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
    cmd = [sys.executable, "-m", "cli", "index", "reindex", "old", "new", "--chunk-size", "50"]
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


@pytest.mark.usefixtures("local_ray")
def test_ingest_reindex_and_embed_on_a_ray_cluster_given_by_its_address(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    import ray

    address = ray.get_runtime_context().gcs_address
    home = tmp_path / "home"
    src = write_docs(tmp_path / "docs.jsonl", 300)
    assert cli(home, tiny_model_dir, "create", "c").returncode == 0
    on_ray = ("--engine", "ray", "--ray-address", address, "--actors", "2")
    ingested = cli(home, tiny_model_dir, "ingest", "c", str(src), *on_ray, "--shard-bytes", "4096")
    assert ingested.returncode == 0, ingested.stderr
    assert "ingested 300 documents" in ingested.stdout and "300 documents, version" in ingested.stdout
    assert "shards: " in ingested.stderr and " embedded on Ray, 0 found written" in ingested.stderr
    again = cli(home, tiny_model_dir, "ingest", "c", str(src), *on_ray)
    assert again.returncode == 0 and "ingested 0 documents" in again.stdout  # all committed
    copied = cli(home, tiny_model_dir, "reindex", "c", "c2", *on_ray)
    assert copied.returncode == 0 and "re-indexed 300 documents" in copied.stdout, copied.stderr
    with Collection.open(home / "collections", "c2", readonly=True) as c2:
        assert len(c2) == 300

    lines = tmp_path / "lines.txt"
    lines.write_text("".join(f"line {i}\n" for i in range(50)))
    env = {**os.environ, "DAPSEARCH_HOME": str(home), "DAPSEARCH_MODEL_DIR": str(tiny_model_dir)}
    embed = [sys.executable, "-m", "cli", "embed", str(lines), "-o", str(tmp_path / "v.npy")]
    local = subprocess.run(embed, capture_output=True, text=True, env=env, timeout=300)
    remote = subprocess.run(
        [*embed[:-1], str(tmp_path / "r.npy"), *on_ray], capture_output=True, text=True, env=env, timeout=300
    )
    # No address: the command starts a Ray of its own beside the one running here.
    own = subprocess.run(
        [*embed[:-1], str(tmp_path / "o.npy"), "--engine", "ray", "--actors", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert local.returncode == remote.returncode == own.returncode == 0, remote.stderr + own.stderr
    for name in ("r.npy", "o.npy"):
        np.testing.assert_allclose(np.load(tmp_path / name), np.load(tmp_path / "v.npy"), atol=2e-5)

    mine = [sys.executable, "-m", "cli", "mine", str(lines), str(lines), "--threshold", "1.0"]
    here = subprocess.run([*mine, "-o", str(tmp_path / "here.tsv")], capture_output=True, text=True, env=env)
    there = subprocess.run(
        [*mine, "-o", str(tmp_path / "there.tsv"), *on_ray, "--knn", "ivf"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert here.returncode == there.returncode == 0, there.stderr
    rows = [(tmp_path / f).read_text().splitlines() for f in ("here.tsv", "there.tsv")]
    assert len(rows[0]) > 40 and [r.split("\t")[1:3] for r in rows[0]] == [
        r.split("\t")[1:3] for r in rows[1]
    ]


def test_ray_options_without_the_ray_engine_are_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    src = write_docs(tmp_path / "docs.jsonl", 3)
    r = cli(tmp_path / "home", tiny_model_dir, "ingest", "c", str(src), "--actors", "2")
    assert r.returncode == 2 and "--ray-address and --actors need --engine ray" in r.stderr
    r = cli(tmp_path / "home", tiny_model_dir, "ingest", "c", str(src), "--engine", "spark")
    assert r.returncode == 2 and "engine must be one of local, ray, not 'spark'" in r.stderr
