"""``POST /search`` modes over HTTP on the dummy backend: each mode answers with documents and
their best passage, scores and highlights when asked, filters in every mode, the cache keeps
modes apart, and a collection made before passages answers 409 for what it cannot serve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from index.collection import MANIFEST, CollectionManifest
from index.store import DOCS, Store
from model.encoder import Encoder
from tests.service.test_model_free import serve, settings_for

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    """Long enough a maximum length that a sentence is one passage and the long text several."""
    return Encoder.dummy(dim=32, max_length=64, batch_size=8)


DOCS_IN = [
    {"id": "zebra", "text": "The zebra crossing near the old market.", "lang": "en", "metadata": {"k": 1}},
    {"id": "quartz", "text": "Quartz watches keep time with a crystal.", "lang": "en", "metadata": {"k": 2}},
    {
        "id": "long",
        "text": " ".join(f"Sentence {i} mentions nothing special." for i in range(60))
        + " The final sentence names Xylophone Quintet.",
    },
]


async def _ingest(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    assert (await client.post("/admin/collections", json={"name": name})).status_code == 201
    body = "".join(json.dumps(d) + "\n" for d in DOCS_IN)
    r = await client.post(
        f"/admin/collections/{name}/documents", content=body, headers={"Content-Type": "application/x-ndjson"}
    )
    assert r.status_code == 202, r.text
    with anyio.fail_after(30):
        while (job := (await client.get(f"/admin/jobs/{r.json()['job']['id']}")).json()["job"])["state"] != (
            "succeeded"
        ):
            assert job["state"] in ("queued", "running"), job
            await anyio.sleep(0.01)
    result: dict[str, Any] = job
    return result


async def test_every_mode_finds_documents_by_their_best_passage(tmp_path: Path, encoder: Encoder) -> None:
    async with serve(settings_for(tmp_path), encoder) as (_, client):
        job = await _ingest(client, "c")
        assert job["result"]["passages"] > 3 and job["progress"]["passages"] == job["result"]["passages"]
        stats = (await client.get("/admin/collections/c")).json()
        assert stats["modes"] == ["dense", "lexical", "hybrid"] and stats["passages"] > 3
        for mode in ("dense", "lexical", "hybrid"):
            r = await client.post(
                "/search",
                json={
                    "collection": "c",
                    "query": "Xylophone Quintet",
                    "k": 2,
                    "mode": mode,
                    "scores": True,
                    "highlight": True,
                },
            )
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["mode"] == mode
            hits = body["results"][0]
            assert len({h["id"] for h in hits}) == len(hits)  # documents, not passages
            for hit in hits:
                passage = hit["passage"]
                assert hit["text"][passage["start"] : passage["end"]] == passage["text"]
                assert (hit["scores"]["dense"] is None) == (mode == "lexical")
                assert (hit["scores"]["lexical"] is None) == (mode == "dense")
            if mode == "lexical":
                top = hits[0]
                assert top["id"] == "long" and top["passage"]["start"] > 0
                marked = [top["passage"]["text"][a:b] for a, b in top["highlights"]]
                assert "Xylophone" in marked and "Quintet" in marked
        # The default is hybrid; a filter holds in every mode.
        for mode in ("dense", "lexical", "hybrid"):
            r = await client.post(
                "/search",
                json={"collection": "c", "query": "crossing", "mode": mode, "filter": {"metadata": {"k": 2}}},
            )
            assert [h["id"] for h in r.json()["results"][0]] in ([], ["quartz"]), (mode, r.text)
        assert (await client.post("/search", json={"collection": "c", "query": "x"})).json()[
            "mode"
        ] == "hybrid"
        # Hybrid reports both components whatever its weight (0 and >= 1 once lost one).
        for weight in (0.0, 1.0, 2.5):
            r = await client.post(
                "/search",
                json={
                    "collection": "c",
                    "query": "Xylophone Quintet",
                    "mode": "hybrid",
                    "lexical_weight": weight,
                    "scores": True,
                },
            )
            assert r.status_code == 200, r.text
            for hit in r.json()["results"][0]:
                assert hit["scores"]["dense"] is not None and hit["scores"]["lexical"] is not None, weight


async def test_modes_never_share_a_cached_answer(tmp_path: Path, encoder: Encoder) -> None:
    async with serve(settings_for(tmp_path), encoder) as (_, client):
        await _ingest(client, "c")
        answers: dict[str, list[dict[str, Any]]] = {}
        for mode in ("dense", "lexical", "hybrid"):
            for _ in range(2):  # the second is served from the cache
                r = await client.post(
                    "/search", json={"collection": "c", "query": "zebra market", "mode": mode}
                )
                answers.setdefault(mode, []).append(r.json())
            assert answers[mode][0] == answers[mode][1] and answers[mode][0]["mode"] == mode
        scores = {m: [h["score"] for h in a[0]["results"][0]] for m, a in answers.items()}
        assert scores["dense"] != scores["lexical"] != scores["hybrid"]


async def test_bad_search_input_is_a_clear_4xx(tmp_path: Path, encoder: Encoder) -> None:
    async with serve(settings_for(tmp_path), encoder) as (_, client):
        await _ingest(client, "c")
        for body, param in (
            ({"collection": "c", "query": "x", "mode": "fuzzy"}, "mode"),
            ({"collection": "c", "query": "x", "lexical_weight": -1}, "lexical_weight"),
        ):
            r = await client.post("/search", json=body)
            assert r.status_code == 422 and param in json.dumps(r.json()["error"]), r.text
        for query in ['"', "NEAR(a b)", "*", "-x", "🎉🎉", "(", "AND"]:
            r = await client.post("/search", json={"collection": "c", "query": query, "mode": "lexical"})
            assert r.status_code == 200, r.text


async def test_a_collection_made_before_passages_serves_dense_and_names_the_fix(
    tmp_path: Path, encoder: Encoder
) -> None:
    root = tmp_path / "collections" / "old"
    root.mkdir(parents=True)
    Store.initialise(root / DOCS, layout="documents")
    manifest = CollectionManifest(
        name="old", model_id=encoder.model_id, dim=32, index_factory="Flat", created="x"
    )
    (root / MANIFEST).write_text(manifest.model_dump_json())
    async with serve(settings_for(tmp_path), encoder) as (_, client):
        r = await client.post("/search", json={"collection": "old", "query": "x"})
        assert r.status_code == 200 and r.json()["mode"] == "dense", r.text
        for mode in ("lexical", "hybrid"):
            r = await client.post("/search", json={"collection": "old", "query": "x", "mode": mode})
            assert r.status_code == 409, r.text
            assert "reindex" in r.json()["error"]["message"]
