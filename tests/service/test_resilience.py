"""What a hostile user, a damaged file or a race does to a running service: it keeps serving.

One damaged collection among sound ones, metadata stored too deep, a storm of creates, deletes
and searches on one name, and an answer bigger than a response may be. All real: the dummy
encoder's app, SQLite, FAISS and the job worker.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import anyio
import faiss
import httpx
import pytest

from index.checkpoint import checkpoints
from index.index_choice import make_index
from model.encoder import Encoder
from tests.service.test_model_free import serve, settings_for

pytestmark = pytest.mark.anyio


async def fill(client: httpx.AsyncClient, name: str, n: int) -> None:
    assert (await client.post("/admin/collections", json={"name": name})).status_code == 201
    body = "".join(json.dumps({"id": f"{name}{i}", "text": f"{name} text {i}"}) + "\n" for i in range(n))
    r = await client.post(
        f"/admin/collections/{name}/documents", content=body, headers={"Content-Type": "application/x-ndjson"}
    )
    job_id = r.json()["job"]["id"]
    with anyio.fail_after(30):
        while (await client.get(f"/admin/jobs/{job_id}")).json()["job"]["state"] != "succeeded":
            await anyio.sleep(0.01)


async def search(client: httpx.AsyncClient, name: str, query: str) -> httpx.Response:
    return await client.post("/search", json={"collection": name, "query": query, "k": 1, "mode": "dense"})


async def test_a_damaged_collection_is_named_and_the_others_serve(tmp_path: Path, encoder: Encoder) -> None:
    settings = settings_for(tmp_path)
    async with serve(settings, encoder) as (_, client):
        for name in ("good", "broken", "emptied"):
            await fill(client, name, 12)
    broken = settings.collections_dir / "broken"
    for path in broken.glob("docs.sqlite*"):
        path.write_bytes(b"\x13not a database\xff" * 200)
    [(_, index_file)] = checkpoints(settings.collections_dir / "emptied")
    faiss.write_index(make_index("Flat", encoder.dim), str(index_file))  # right dimension, no vectors

    async with serve(settings, encoder) as (_, client):
        listing = await client.get("/admin/collections")
        assert listing.status_code == 200, listing.text
        entries = {c["name"]: c for c in listing.json()["collections"]}
        assert entries["good"]["count"] == 12 and entries["emptied"]["count"] == 12
        assert entries["broken"]["damaged"] is True
        assert "its database is unreadable" in entries["broken"]["error"]

        r = await search(client, "broken", "x")
        assert r.status_code == 503, r.text
        message = r.json()["error"]["message"]
        assert message.startswith("collection 'broken' is damaged") and str(tmp_path) not in message
        r = await search(client, "good", "good text 3")
        assert r.status_code == 200 and r.json()["results"][0][0]["id"] == "good3"
        # The emptied vector index was rebuilt from the store: no document silently invisible.
        r = await search(client, "emptied", "emptied text 5")
        assert r.status_code == 200 and r.json()["results"][0][0]["id"] == "emptied5"

        ready = (await client.get("/health/ready")).json()
        assert ready["status"] == "degraded" and set(ready["damaged"]) == {"broken"}, ready
        assert "collection 'broken' is damaged" in ready["detail"]
        # Deleting the damaged collection clears it.
        assert (await client.delete("/admin/collections/broken")).status_code == 204
        assert (await client.get("/health/ready")).json()["status"] == "ready"


async def test_metadata_stored_too_deep_is_served_with_a_note_not_a_500(
    tmp_path: Path, encoder: Encoder
) -> None:
    """As a version that did not bound nesting left it: 600 levels in the database."""
    settings = settings_for(tmp_path)
    async with serve(settings, encoder) as (_, client):
        await fill(client, "old", 5)
    deep = "[" * 600 + "]" * 600
    with sqlite3.connect(settings.collections_dir / "old" / "docs.sqlite") as db:
        db.execute("UPDATE docs SET metadata = ? WHERE id = 'old2'", (f'{{"x": {deep}}}',))
    async with serve(settings, encoder) as (_, client):
        for _ in range(2):  # the second answer comes from the cache
            r = await search(client, "old", "old text 2")
            assert r.status_code == 200, r.text
            hit = r.json()["results"][0][0]
            assert hit["id"] == "old2" and "ingest the document again" in hit["metadata"]["_unservable"]
        r = await client.post("/search", json={"collection": "old", "query": "old text 1", "k": 5})
        assert r.status_code == 200 and len(r.json()["results"][0]) == 5


async def test_a_storm_of_creates_deletes_and_searches_on_one_name_never_gives_a_5xx(
    tmp_path: Path, encoder: Encoder
) -> None:
    statuses: dict[str, set[int]] = {"create": set(), "delete": set(), "search": set(), "stats": set()}
    async with serve(settings_for(tmp_path), encoder) as (_, client):

        async def hammer(what: str) -> None:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                await anyio.sleep(0.001)
                if what == "create":
                    r = await client.post("/admin/collections", json={"name": "storm"})
                elif what == "delete":
                    r = await client.delete("/admin/collections/storm")
                elif what == "search":
                    r = await search(client, "storm", "anything")
                else:
                    r = await client.get("/admin/collections")
                assert r.status_code < 500, (what, r.text)
                statuses[what].add(r.status_code)

        async with anyio.create_task_group() as tg:
            for what in statuses:
                for _ in range(2):
                    tg.start_soon(hammer, what)
    assert statuses["create"] <= {201, 409} and statuses["delete"] <= {204, 404}
    assert statuses["search"] <= {200, 404} and statuses["stats"] == {200}
    assert 201 in statuses["create"] and 204 in statuses["delete"]


async def test_an_answer_over_the_response_budget_is_a_413_naming_it(
    tmp_path: Path, encoder: Encoder
) -> None:
    settings = settings_for(tmp_path, max_response_bytes=100_000)
    async with serve(settings, encoder) as (_, client):
        assert (await client.post("/admin/collections", json={"name": "long"})).status_code == 201
        blob = {"notes": "y" * 9000}  # metadata travels with every hit, as long texts do
        body = "".join(
            json.dumps({"id": f"l{i}", "text": f"long {i}", "metadata": blob}) + "\n" for i in range(30)
        )
        r = await client.post(
            "/admin/collections/long/documents",
            content=body,
            headers={"Content-Type": "application/x-ndjson"},
        )
        with anyio.fail_after(30):
            while (await client.get(r.headers["Location"])).json()["job"]["state"] != "succeeded":
                await anyio.sleep(0.01)
        query = {"collection": "long", "query": "long 3", "mode": "dense"}
        r = await client.post("/search", json=query | {"k": 20})  # 20 documents of 10 KB
        assert r.status_code == 413, r.text
        error = r.json()["error"]
        assert "DAPSEARCH_MAX_RESPONSE_BYTES" in error["message"] and error["param"] == "k"
        for _ in range(2):  # the second from the cache
            r = await client.post("/search", json=query | {"k": 5})
            assert r.status_code == 200 and len(r.json()["results"][0]) == 5
