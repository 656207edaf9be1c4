"""Collections on real FAISS and SQLite: upsert, delete, filters, persistence, model binding."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.errors import InputError
from index.collection import Collection
from index.filters import Filter
from index.index_choice import INDEX_PATTERN, check_index_factory
from index.manifest import list_collections
from index.store import Document

DIM = 16


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    out: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def docs(n: int, start: int = 0) -> list[Document]:
    return [
        Document(f"d{i}", f"text {i}", "de" if i % 2 else "en", {"group": i % 3, "tag": f"t{i % 5}"})
        for i in range(start, start + n)
    ]


@pytest.fixture(params=["Flat", "HNSW32"])
def coll(request: pytest.FixtureRequest, tmp_path: Path) -> Collection:
    return Collection.create(tmp_path, "c", "model@1", DIM, request.param)


def test_search_returns_exact_neighbours_with_documents(coll: Collection) -> None:
    rng = np.random.default_rng(0)
    vectors = unit(rng, 200)
    coll.upsert(docs(200), vectors)
    hits = coll.search(vectors[:5], k=3)
    for i, row in enumerate(hits):
        assert row[0].id == f"d{i}"
        assert row[0].score == pytest.approx(1.0, abs=1e-5)
        assert row[0].text == f"text {i}" and row[0].metadata == {"group": i % 3, "tag": f"t{i % 5}"}
        assert [h.score for h in row] == sorted((h.score for h in row), reverse=True)


def test_upsert_replaces_and_delete_removes(coll: Collection) -> None:
    rng = np.random.default_rng(1)
    vectors = unit(rng, 50)
    coll.upsert(docs(50), vectors)
    new = unit(rng, 1)
    coll.upsert([Document("d3", "replaced", "fr")], new)
    assert len(coll) == 50
    assert coll.get("d3") == Document("d3", "replaced", "fr", {})
    assert coll.search(new, k=1)[0][0].id == "d3"
    assert coll.search(vectors[3:4], k=1)[0][0].score < 0.999  # the old vector is gone
    assert coll.delete(["d4", "d5", "missing"]) == 2
    assert len(coll) == 48
    ids = {h.id for h in coll.search(vectors[4:6], k=48)[0]}
    assert not ids & {"d4", "d5"} and len(ids) == 48
    assert coll.stats()["index_vectors"] == 48


def test_duplicate_ids_in_one_batch_keep_the_last(coll: Collection) -> None:
    rng = np.random.default_rng(2)
    vectors = unit(rng, 2)
    coll.upsert([Document("x", "first"), Document("x", "second")], vectors)
    assert len(coll) == 1
    assert coll.get("x") is not None and coll.get("x").text == "second"  # type: ignore[union-attr]
    assert coll.search(vectors[1:], k=1)[0][0].score == pytest.approx(1.0, abs=1e-5)


def test_filters_still_return_k_hits(coll: Collection) -> None:
    rng = np.random.default_rng(3)
    vectors = unit(rng, 300)
    coll.upsert(docs(300), vectors)
    hits = coll.search(vectors[:1], k=10, flt=Filter(lang="de", metadata={"group": 2}))[0]
    assert len(hits) == 10
    assert all(h.lang == "de" and h.metadata["group"] == 2 for h in hits)
    expected = [i for i in range(300) if i % 2 and i % 3 == 2]
    exact = sorted(expected, key=lambda i: -float(vectors[i] @ vectors[0]))[:10]
    assert [h.id for h in hits] == [f"d{i}" for i in exact]
    assert coll.search(vectors[:1], k=10, flt=Filter(metadata={"tag": "nope"}))[0] == []
    with pytest.raises(InputError):
        coll.search(vectors[:1], k=10, flt=Filter(metadata={"group": [1, 2]}))


def test_persistence_replays_writes_after_the_last_checkpoint(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    vectors = unit(rng, 120)
    with Collection.create(tmp_path, "p", "model@1", DIM) as coll:
        coll.upsert(docs(100), vectors[:100])
        coll.checkpoint()
        coll.upsert(docs(20, start=100), vectors[100:])  # committed, not checkpointed
        coll.delete(["d0"])
    with Collection.open(tmp_path, "p", "model@1") as again:
        assert len(again) == 119 and again.stats()["index_vectors"] == 119
        assert again.search(vectors[110:111], k=1)[0][0].id == "d110"
        assert again.get("d0") is None
        assert [p.name for p in tmp_path.joinpath("p").glob("index.*.faiss")] == ["index.1.faiss"]


def test_reader_in_another_connection_sees_committed_versions(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    vectors = unit(rng, 40)
    writer = Collection.create(tmp_path, "r", "model@1", DIM)
    writer.upsert(docs(20), vectors[:20])
    reader = Collection.open(tmp_path, "r", readonly=True)
    writer.upsert(docs(20, start=20), vectors[20:])
    assert len(reader.search(vectors[:1], k=40)[0]) == 20  # still serving its version
    reader.refresh()
    assert len(reader.search(vectors[:1], k=40)[0]) == 40
    with pytest.raises(InputError, match="read-only"):
        reader.delete(["d1"])


def test_model_binding_names_and_bad_input(tmp_path: Path) -> None:
    Collection.create(tmp_path, "m", "model@1", DIM).close()
    with pytest.raises(InputError, match="holds vectors of model model@1"):
        Collection.open(tmp_path, "m", "model@2")
    with pytest.raises(InputError, match="already exists"):
        Collection.create(tmp_path, "m", "model@1", DIM)
    with pytest.raises(InputError, match="unknown collection"):
        Collection.open(tmp_path, "nope")
    for bad in ("", "../x", "a b", "-x", "x\n", "x\r\n", "x" * 65, "é"):  # "$" would let "x\n" in
        with pytest.raises(InputError, match="invalid collection name"):
            Collection.create(tmp_path, bad, "model@1", DIM)
    for bad in (
        "NotAnIndex",
        "HNSW32,Bogus",
        "HNSW0",
        "HNSW1000",
        "HNSW16,SQ8",
        "IVF0,Flat",
        "IVF4,PQ7",
        "IVF4,PQ8x12",
    ):
        with pytest.raises(InputError, match="is not one a collection can use") as err:
            Collection.create(tmp_path, "f", "model@1", DIM, bad)
        assert ".cpp" not in str(err.value) and "faiss/" not in str(err.value)
    with Collection.open(tmp_path, "m") as coll:
        with pytest.raises(InputError, match="shape"):
            coll.upsert(docs(2), np.zeros((2, DIM + 1), dtype=np.float32))
        with pytest.raises(InputError, match="dim"):
            coll.search(np.zeros((1, DIM + 1), dtype=np.float32))
        assert coll.search(np.zeros((1, DIM), dtype=np.float32), k=5) == [[]]
    assert list_collections(tmp_path) == ["m"]


@pytest.mark.parametrize(("factory", "kind"), [("HNSW32", "HNSW"), ("IVF64,Flat", "IVF")])
def test_approximate_recall_against_exact(tmp_path: Path, factory: str, kind: str) -> None:
    """Clustered 384-d vectors like sentence embeddings: recall@10 vs exact search >= 0.95."""
    rng = np.random.default_rng(6)
    dim, n = 384, 10_000
    centres = rng.normal(size=(100, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = centres[rng.integers(0, 100, size=n)] + 0.06 * rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[rng.choice(n, 200, replace=False)] + 0.02 * rng.normal(size=(200, dim)).astype(
        np.float32
    )
    flat = Collection.create(tmp_path, "flat", "m@1", dim, "Flat")
    approx = Collection.create(tmp_path, "approx", "m@1", dim, factory)
    all_docs = [Document(f"d{i}", "t") for i in range(n)]
    for c in (flat, approx):
        c.upsert(all_docs, vectors)
    assert approx.stats()["index_type"] == kind
    exact = flat.search(queries, k=10)
    found = approx.search(queries, k=10)
    overlap = [len({h.id for h in a} & {h.id for h in e}) / 10 for a, e in zip(found, exact, strict=True)]
    assert float(np.mean(overlap)) >= 0.95


def test_ivf_searches_exactly_until_it_can_train(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    vectors = unit(rng, 1000)
    coll = Collection.create(tmp_path, "ivf", "m@1", DIM, "IVF16,Flat")
    coll.upsert(docs(300), vectors[:300])
    assert coll.stats()["index_type"] == "Flat"  # 300 < 39 * 16 training points
    coll.upsert(docs(700, start=300), vectors[300:])
    assert coll.stats()["index_type"] == "IVF"
    coll.manifest.nprobe = 16  # all lists: exact, so the answer is known
    hits = coll.search(vectors[500:501], k=1)[0]
    assert hits[0].id == "d500"
    assert coll.delete(["d500"]) == 1
    assert coll.search(vectors[500:501], k=1)[0][0].id != "d500"
    coll.checkpoint()
    coll.close()
    with Collection.open(tmp_path, "ivf") as again:
        assert again.stats()["index_type"] == "IVF" and len(again) == 999


def test_auto_grows_from_exact_to_hnsw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import index.index_choice as collection_module

    monkeypatch.setattr(collection_module, "AUTO_HNSW_AT", 100)
    rng = np.random.default_rng(8)
    vectors = unit(rng, 150)
    coll = Collection.create(tmp_path, "auto", "m@1", DIM)
    assert coll.manifest.index_factory == "auto"
    coll.upsert(docs(80), vectors[:80])
    assert coll.stats()["index_type"] == "Flat"
    coll.upsert(docs(70, start=80), vectors[80:])
    assert coll.stats()["index_type"] == "HNSW"
    assert coll.search(vectors[120:121], k=1)[0][0].id == "d120"
    coll.upsert([Document("d120", "moved")], unit(rng, 1))  # superseded rows are hidden in HNSW
    assert all(h.id != "d120" or h.text == "moved" for h in coll.search(vectors[120:121], k=5)[0])
    assert coll.stats()["index_vectors"] == 150


ACCEPTED = ["auto", "Flat", "HNSW4", "HNSW128", "HNSW8,SQfp16", "HNSW16,Flat", "IVF1,Flat"]
ACCEPTED += ["IVF4,SQ8", "IVF4,SQfp16", "IVF4,PQ4", "IVF4,PQ8x4", "IVF2,PQ16"]


@pytest.mark.parametrize("factory", ACCEPTED)
def test_every_index_string_a_collection_accepts_fills_and_searches(tmp_path: Path, factory: str) -> None:
    """Past the training thresholds too: what create accepts must never fail later, in a job."""
    rng = np.random.default_rng(0)
    coll = Collection.create(tmp_path, "c", "m@1", DIM, factory)
    vectors = unit(rng, 1000)
    for start, end in ((0, 100), (100, 300), (300, 1000)):  # below, around and past training minimums
        coll.upsert(docs(end - start, start), vectors[start:end])
        hits = coll.search(vectors[start : start + 1], k=5)[0]
        # Compressed codes (SQ, PQ) rank approximately: the document itself is among the first hits.
        assert f"d{start}" in [h.id for h in hits], (factory, start)
    kinds = coll.stats()["index_type"]
    coll.checkpoint()
    coll.close()
    with Collection.open(tmp_path, "c") as again:
        assert len(again) == 1000 and again.stats()["index_type"] == kinds
        assert "d0" in [h.id for h in again.search(vectors[:1], k=5)[0]]


def test_the_published_index_pattern_admits_what_create_accepts() -> None:
    """The OpenAPI pattern must never refuse a valid index string, and refuses what the syntax does."""
    for factory in ACCEPTED:
        assert re.search(INDEX_PATTERN, factory), factory
    for factory in ["", "flat", "HNSW", "HNSW32,SQ8", "IVF,Flat", "IVF4", "IVF4,PQ", " auto", "Flat,IVF4"]:
        assert not re.search(INDEX_PATTERN, factory), factory
        with pytest.raises(InputError, match="is not one a collection can use"):
            check_index_factory(factory, DIM)


def test_concurrent_creates_of_one_name_make_one_collection(tmp_path: Path) -> None:
    """Of many creates racing for one name, exactly one wins; the others are told it exists, and
    no half-made folder is left behind."""
    from concurrent.futures import ThreadPoolExecutor

    from index.manifest import CollectionExists

    def create(_: int) -> str:
        try:
            Collection.create(tmp_path, "race", "model@x", 8).close()
        except CollectionExists:
            return "exists"
        return "created"

    for _ in range(5):
        with ThreadPoolExecutor(max_workers=16) as pool:
            outcomes = list(pool.map(create, range(32)))
        assert outcomes.count("created") == 1 and outcomes.count("exists") == 31
        assert list_collections(tmp_path) == ["race"]
        assert [p.name for p in tmp_path.iterdir()] == ["race"]
        with Collection.open(tmp_path, "race") as coll:
            assert len(coll) == 0 and coll.manifest.dim == 8
        shutil.rmtree(tmp_path / "race")
