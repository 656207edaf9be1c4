"""Bulk ingest and embedding on a local Ray (two CPUs): the same collection as the local engine,
resumed by shard files, and errors that keep their meaning across the cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.errors import InputError
from index.cluster import EmbeddingPool, EncoderSpec, RayOptions, embed_texts, ray_module
from index.collection import Collection
from index.ingest import ShardCounts, ingest
from index.mining import MiningResult, mine
from index.neighbours import IvfSearch, knn_both, recall
from index.ray_ingest import SHARDS, ingest_on_ray
from index.ray_mining import RaySearch
from index.reindex import reindex
from index.shards import plan, read_shard_bytes
from index.store import Document
from model.encoder import Encoder
from tests.conftest import parallel_sentences

pytestmark = pytest.mark.usefixtures("local_ray")


@pytest.fixture(scope="module")
def real(real_model_dir: Path) -> Encoder:
    """The real model on ONNX Runtime's int8 graph, whose vectors do not depend on what else is
    in the batch: so the engines' different batches must give the same numbers. (OpenVINO's int8
    kernels move a vector by up to 1e-4 in cosine with its batch, on either engine.)"""
    return Encoder.load(real_model_dir, "onnx-int8")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Encoder:
    return Encoder.load(tiny_model_dir, backend="onnx-int8")


def corpus(path: Path, n: int) -> Path:
    """``n`` documents of real sentences, with the malformed and blank lines real files have."""
    lines = [
        json.dumps({"id": f"d{i}", "text": t, "lang": "xx"}, ensure_ascii=False)
        for i, t in enumerate(parallel_sentences(n))
    ]
    lines.insert(17, "{broken")
    lines.insert(400, "")
    lines.insert(1200, json.dumps({"id": "no-text"}))
    lines.append(json.dumps({"id": "d3", "text": "a later version of d3"}))  # an upsert
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def contents(collection: Collection) -> tuple[list[str], list[str], np.ndarray]:
    ids, texts, vectors = collection.vectors()
    return list(ids), list(texts), vectors


def test_ray_ingest_gives_the_local_collection(tmp_path: Path, real: Encoder) -> None:
    source = corpus(tmp_path / "docs.jsonl", 2000)
    root = tmp_path / "collections"
    local = Collection.create(root, "local", real.model_id, real.dim)
    on_ray = Collection.create(root, "ray", real.model_id, real.dim)
    with local, on_ray:
        expected = ingest(local, real, source)
        seen: list[int] = []
        report = ingest_on_ray(
            on_ray,
            real,
            source,
            options=RayOptions(actors=2, shard_bytes=32 << 10),
            shard_progress=lambda c: seen.append(c.merged),
        )
        want, got = contents(local), contents(on_ray)
        assert got[0] == want[0] and got[1] == want[1]  # the same ids and texts, in the same order
        assert len(got[0]) == 2000 and len(set(got[0])) == 2000
        np.testing.assert_allclose(got[2], want[2], atol=2e-5)
        assert (
            (report.documents, report.error_count) == (expected.documents, expected.error_count) == (2001, 2)
        )
        assert [e.line for e in report.errors] == [e.line for e in expected.errors] == [18, 1201]
        assert report.committed.documents == 2001 and report.committed.line == expected.committed.line
        assert report.shards is not None and report.shards.total > 4
        assert report.shards.embedded == report.shards.merged == report.shards.total
        assert seen[-1] == report.shards.total and seen == sorted(seen)
        assert not list((on_ray.root / SHARDS).rglob("*.npz"))  # committed shards leave no files
        hits = on_ray.search(real.embed([got[1][42]], "query"), 1)
        assert hits[0][0].id == got[0][42]


class Stop(Exception):
    pass


def test_an_interrupted_ray_ingest_embeds_only_the_missing_shards_again(
    tmp_path: Path, tiny: Encoder
) -> None:
    source = corpus(tmp_path / "docs.jsonl", 1500)
    options = RayOptions(actors=2, shard_bytes=16 << 10)
    shards = plan(source, 0, 16 << 10)
    assert len(shards) >= 8 and b"".join(read_shard_bytes(source, s) for s in shards) == source.read_bytes()
    root = tmp_path / "collections"

    def stop_at(counts: ShardCounts) -> None:
        if counts.embedded == 4:
            raise Stop

    with Collection.create(root, "ray", tiny.model_id, tiny.dim) as coll:
        with pytest.raises(Stop):
            ingest_on_ray(coll, tiny, source, options=options, shard_progress=stop_at)
        left = sorted((coll.root / SHARDS).rglob("*.npz"))
        merged = coll.source_checkpoint(str(source.resolve()))
        assert left, "the shard written last is not committed yet"
        assert 0 < merged.offset < source.stat().st_size
        report = ingest_on_ray(coll, tiny, source, options=options)
        assert report.shards is not None
        assert report.shards.reused == len(left)
        assert report.shards.total == len(plan(source, merged.offset, 16 << 10))
        assert report.shards.embedded == report.shards.total - len(left) < len(shards)
        assert report.committed.documents == 1501 and report.committed.errors == 2
        got = contents(coll)
    with Collection.create(root, "local", tiny.model_id, tiny.dim) as local:
        ingest(local, tiny, source)
        want = contents(local)
    assert got[0] == want[0] and got[1] == want[1]
    np.testing.assert_allclose(got[2], want[2], atol=2e-5)


def test_a_changed_file_is_not_resumed_from_its_old_shards(tmp_path: Path, tiny: Encoder) -> None:
    source = corpus(tmp_path / "docs.jsonl", 300)
    options = RayOptions(actors=1, shard_bytes=8 << 10)
    with Collection.create(tmp_path / "collections", "c", tiny.model_id, tiny.dim) as coll:
        ingest_on_ray(coll, tiny, source, options=options)
        source.write_text(json.dumps({"id": "only", "text": "one document now"}) + "\n")
        report = ingest_on_ray(coll, tiny, source, options=options)
        assert report.committed.documents == 1 and report.shards is not None and report.shards.reused == 0
        assert "only" in contents(coll)[0]


def test_embedding_texts_on_ray_keeps_their_order(tiny: Encoder) -> None:
    texts = [f"sentence number {i}" for i in range(500)]
    done: list[int] = []
    vectors = embed_texts(tiny, texts, "query", RayOptions(actors=2, shard_texts=64), done.append)
    np.testing.assert_allclose(vectors, tiny.embed(texts, "query"), atol=2e-5)
    assert sum(done) == 500 and len(done) == 8


def test_an_actor_that_cannot_load_its_model_fails_the_job_with_the_reason(
    tmp_path: Path, tiny: Encoder
) -> None:
    moved = Encoder.load(tiny.directory or tmp_path, backend="onnx-int8")
    moved.directory = tmp_path / "nowhere"  # as if the driver's directory were not on the node
    pool = EmbeddingPool(moved, RayOptions(actors=1, stall_timeout_s=30), "embed")
    with pytest.raises(InputError, match=r"is not at .*nowhere on this Ray node"), pool:
        list(pool.run([(0, (["x"], "query"))]))


def test_shipped_model_files_are_unpacked_once_on_a_node_without_the_directory(
    tmp_path: Path, tiny: Encoder
) -> None:
    ray = ray_module()
    spec = EncoderSpec.of(tiny, threads=1)
    shipped = EncoderSpec(
        **{**spec.__dict__, "directory": str(tmp_path / "nowhere"), "files": ray.put(spec.model_files())}
    )
    encoder = shipped.load()
    assert encoder.directory is not None and encoder.directory != tiny.directory
    assert encoder.model_id == tiny.model_id
    np.testing.assert_array_equal(encoder.embed(["a text"]), tiny.embed(["a text"]))


def test_too_many_actors_for_the_cluster_is_refused(tiny: Encoder) -> None:
    with pytest.raises(InputError, match=r"3 actors of 1 CPU.* need 3 CPUs; the Ray cluster has 2"):
        EmbeddingPool(tiny, RayOptions(actors=3), "embed")


def test_without_the_extra_the_ray_engine_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(InputError, match=r"pip install 'dapsearch\[ray\]'"):
        ray_module()


def translations(n: int, dim: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sources, and targets that are noisy copies of a shuffled 80% of them among unrelated ones."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    y = rng.standard_normal((n, dim)).astype(np.float32)
    gold = rng.permutation(n)[: n * 4 // 5]
    slots = rng.permutation(n)[: len(gold)]
    y[slots] = x[gold] + 0.6 * rng.standard_normal((len(gold), dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return x, y, np.stack([gold, slots], axis=1)


def same_pairs(got: MiningResult, want: MiningResult) -> None:
    """The same pairs with the same scores. Similarities may differ in the last bit (BLAS sums in
    another order with another thread count), so two pairs of one score may swap places."""
    pairs = dict(
        zip(zip(want.source.tolist(), want.target.tolist(), strict=True), want.scores.tolist(), strict=True)
    )
    found = dict(
        zip(zip(got.source.tolist(), got.target.tolist(), strict=True), got.scores.tolist(), strict=True)
    )
    assert found.keys() == pairs.keys() and len(got) == len(want)
    np.testing.assert_allclose([found[p] for p in pairs], list(pairs.values()), rtol=1e-5, atol=1e-6)


def test_ray_mining_gives_the_local_pairs_on_5k_by_5k() -> None:
    x, y, _ = translations(5000)
    local = mine(x, y, k=4)
    done: list[int] = []
    same_pairs(mine(x, y, k=4, search=RaySearch(RayOptions(), row_block=1024), progress=done.append), local)
    assert sum(done) == 5000 and len(done) == 5
    # Column blocks too: both directions' heaps merged from 5 x 3 blocks.
    same_pairs(mine(x, y, k=4, search=RaySearch(RayOptions(), row_block=1024, column_block=2000)), local)
    for strategy in ("forward", "intersect"):
        want = mine(x, y, k=4, strategy=strategy, score="distance")
        same_pairs(mine(x, y, k=4, strategy=strategy, score="distance", search=RaySearch(RayOptions())), want)


def test_ivf_mining_on_ray_is_the_local_ivf_search_and_close_to_exact() -> None:
    x, y, gold = translations(5000, seed=1)
    exact = knn_both(x, y, 4)
    ivf = IvfSearch(nlist=64, nprobe=8)
    local = ivf(x, y, 4, 1024, None)
    on_ray = RaySearch(RayOptions(), ivf=ivf, row_block=2000)(x, y, 4, 1024, None)
    for i in range(4):
        np.testing.assert_allclose(np.asarray(on_ray[i]), np.asarray(local[i]), rtol=1e-5)
    # Random vectors are IVF's worst case (no clusters): 8 of 64 lists find most, all 64 find all.
    assert 0.5 < recall(local[1], exact[1]) < 1 and 0.5 < recall(local[3], exact[3]) < 1
    everything = IvfSearch(nlist=64, nprobe=64)(x, y, 4, 1024, None)
    assert recall(everything[1], exact[1]) == recall(everything[3], exact[3]) == 1.0
    found = {(s, t) for s, t, _ in mine(x, y, search=ivf)}
    assert len(found & {(int(s), int(t)) for s, t in gold}) > 0.99 * len(gold)  # the translations


def test_reindex_on_ray_resumes_and_copies_what_the_local_one_copies(tmp_path: Path, tiny: Encoder) -> None:
    home = tmp_path / "collections"
    with Collection.create(home, "old", tiny.model_id, tiny.dim) as src:
        docs = [Document(f"d{i}", f"document {i}", "en", {"i": i}) for i in range(50)]
        src.upsert(docs, tiny.embed([d.text for d in docs], "passage"))
        calls: list[tuple[int, int]] = []

        def stop_after_two(done: int, total: int) -> None:
            calls.append((done, total))
            if len(calls) == 3:
                raise Stop

        options = RayOptions(actors=2, shard_texts=7)
        with pytest.raises(Stop):
            reindex(src, home, "on-ray", tiny, progress=stop_after_two, ray=options)
        assert calls == [(0, 50), (7, 50), (14, 50)]
        report = reindex(src, home, "on-ray", tiny, ray=options)
        assert (report.resumed, report.documents, report.count) == (14, 36, 50)
        reindex(src, home, "local", tiny)
    with (
        Collection.open(home, "on-ray", readonly=True) as a,
        Collection.open(home, "local", readonly=True) as b,
    ):
        got, want = contents(a), contents(b)
    assert got[0] == want[0] and got[1] == want[1]
    np.testing.assert_allclose(got[2], want[2], atol=2e-5)


def test_the_local_engine_never_imports_ray() -> None:
    """The CLI, the app and every local path load without Ray: it is the extra's, on demand."""
    code = (
        "import sys, cli, service.app, index.ingest, index.reindex, index.mining, index.ray_ingest; "
        "from service.settings import Settings; Settings().ray(); "
        "assert 'ray' not in sys.modules, 'ray was imported'"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
