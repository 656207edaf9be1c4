"""Snapshots and restore through the admin API: jobs, listing, download, refusals, and a
snapshot taken in the middle of an ingest. Real SQLite, FAISS, tar files and job worker; the
dummy encoder, whose vectors are the same in every process."""

from __future__ import annotations

import io
import json
import sqlite3
import tarfile
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from index.collection import Collection
from index.snapshot import HEADER, take_snapshot
from model.encoder import Encoder
from tests.service.test_model_free import serve, settings_for

pytestmark = pytest.mark.anyio
TAR = {"Content-Type": "application/x-tar"}


async def finished(client: httpx.AsyncClient, r: httpx.Response, timeout: float = 60) -> dict[str, Any]:
    assert r.status_code == 202, r.text
    location = r.headers["Location"]
    with anyio.fail_after(timeout):
        while (job := (await client.get(location)).json()["job"])["state"] in ("queued", "running"):
            await anyio.sleep(0.02)
    return job  # type: ignore[no-any-return]


def lines(n: int, start: int = 0) -> str:
    words = ("river", "stone", "cloud", "field", "light", "paper", "glass")
    return "".join(
        json.dumps(
            {"id": f"d{i}", "text": f"{words[i % 7]} {words[i * 3 % 7]} note {i}", "metadata": {"i": i}}
        )
        + "\n"
        for i in range(start, start + n)
    )


async def ingest(client: httpx.AsyncClient, name: str, body: str, **params: Any) -> httpx.Response:
    headers = {"Content-Type": "application/x-ndjson"}
    return await client.post(
        f"/admin/collections/{name}/documents", content=body, headers=headers, params=params
    )


async def results(client: httpx.AsyncClient, name: str) -> list[Any]:
    out = []
    for mode in ("dense", "hybrid", "lexical"):
        body = {"collection": name, "queries": ["river note", "glass paper 12"], "k": 5, "mode": mode}
        r = await client.post("/search", json=body)
        assert r.status_code == 200, r.text
        out.append(
            [[(h["id"], h["score"], h["text"], h["metadata"]) for h in row] for row in r.json()["results"]]
        )
    return out


async def test_snapshot_download_and_restore_search_as_the_original(tmp_path: Path, encoder: Encoder) -> None:
    settings = settings_for(tmp_path)
    async with serve(settings, encoder) as (_, client):
        assert (await client.post("/admin/collections", json={"name": "news"})).status_code == 201
        assert (await finished(client, await ingest(client, "news", lines(300))))["state"] == "succeeded"
        job = await finished(client, await client.post("/admin/collections/news/snapshots"))
        assert job["state"] == "succeeded" and job["type"] == "snapshot", job
        assert job["result"]["documents"] == 300 and job["progress"]["fraction"] == 1.0
        listed = (await client.get("/admin/collections/news/snapshots")).json()["snapshots"]
        assert [s["name"] for s in listed] == [job["result"]["snapshot"]] and listed[0]["documents"] == 300
        archive = await client.get(job["result"]["download"])
        assert archive.status_code == 200 and archive.headers["content-type"] == "application/x-tar"

        # From the snapshot the server keeps, and from the downloaded archive.
        kept = {"source": "news", "snapshot": listed[0]["name"]}
        restored = await finished(client, await client.post("/admin/collections/copy/restore", json=kept))
        assert restored["state"] == "succeeded" and restored["result"]["documents"] == 300, restored
        assert restored["params"]["archive"] == listed[0]["name"]
        r = await client.post("/admin/collections/upload/restore", content=archive.content, headers=TAR)
        assert (await finished(client, r))["state"] == "succeeded"
        assert restored["params"]["upload"] is False and list(settings.uploads_dir.iterdir()) == []
        original = await results(client, "news")
        assert await results(client, "copy") == original
        assert await results(client, "upload") == original

        # Overwrite: a collection changed since is put back to the snapshot's documents.
        assert (await finished(client, await ingest(client, "copy", lines(20, 1000))))["state"] == "succeeded"
        r = await client.post("/admin/collections/copy/restore", json=kept | {"overwrite": True})
        assert (await finished(client, r))["state"] == "succeeded"
        assert (await client.get("/admin/collections/copy")).json()["count"] == 300
        assert await results(client, "copy") == original

        assert (
            await client.delete(f"/admin/collections/news/snapshots/{listed[0]['name']}")
        ).status_code == 204
        assert (await client.get("/admin/collections/news/snapshots")).json()["snapshots"] == []
        for bad in ("..%2F..%2Fjobs", "x.snapshot.tar", listed[0]["name"]):
            assert (await client.get(f"/admin/collections/news/snapshots/{bad}")).status_code == 404


def _with_header(data: bytes, **changes: Any) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for entry in src.getmembers():
            content = src.extractfile(entry).read()  # type: ignore[union-attr]
            if entry.name == HEADER:
                content = json.dumps(json.loads(content) | changes).encode()
                entry.size = len(content)
            dst.addfile(entry, io.BytesIO(content))
    return out.getvalue()


async def test_a_restore_is_refused_at_once_naming_why(tmp_path: Path, encoder: Encoder) -> None:
    settings = settings_for(tmp_path)
    with Collection.create(tmp_path / "elsewhere", "alien", "other-model@1", encoder.dim) as alien:
        alien.checkpoint()
    alien_archive, _ = take_snapshot(tmp_path / "elsewhere", "alien", tmp_path / "out")
    async with serve(settings, encoder) as (_, client):
        assert (await client.post("/admin/collections", json={"name": "news"})).status_code == 201
        assert (await finished(client, await ingest(client, "news", lines(40))))["state"] == "succeeded"
        job = await finished(client, await client.post("/admin/collections/news/snapshots"))
        good = (await client.get(job["result"]["download"])).content

        async def refused(name: str, body: bytes, status: int, says: str) -> None:
            r = await client.post(f"/admin/collections/{name}/restore", content=body, headers=TAR)
            assert r.status_code == status, r.text
            assert says in r.json()["error"]["message"], r.json()
            assert str(tmp_path) not in r.text

        await refused("news", good, 409, "already exists; restore with overwrite")
        await refused("a", alien_archive.read_bytes(), 409, "holds vectors of model other-model@1")
        await refused("b", _with_header(good, format_version=7), 400, "format version 7, newer than")
        damaged = bytearray(good)
        damaged[damaged.find(b"SQLite format 3") + 5000] ^= 0xFF
        await refused("c", bytes(damaged), 400, "member docs.sqlite does not match its sha256")
        await refused("d", b"plain text, not an archive" * 50, 400, "not a tar archive")
        await refused("f", good[: len(good) // 2], 400, "the archive is cut short")
        r = await client.post("/admin/collections/e/restore", json={"source": "news", "snapshot": "nope"})
        assert r.status_code == 404 and r.json()["error"]["param"] == "snapshot"
        r = await client.post(
            "/admin/collections/e/restore", content=good, headers={"Content-Type": "text/csv"}
        )
        assert r.status_code == 415
        names = {c["name"] for c in (await client.get("/admin/collections")).json()["collections"]}
        assert names == {"news"} and list(settings.uploads_dir.iterdir()) == []
        assert [j["type"] for j in (await client.get("/admin/jobs")).json()["jobs"]] == ["ingest", "snapshot"]


async def test_a_snapshot_taken_during_an_ingest_restores_to_exactly_its_version(
    tmp_path: Path, encoder: Encoder
) -> None:
    settings = settings_for(tmp_path)
    async with serve(settings, encoder) as (_, client):
        assert (await client.post("/admin/collections", json={"name": "live"})).status_code == 201
        r = await ingest(client, "live", lines(6000), chunk_size=4)
        assert r.status_code == 202
        location = r.headers["Location"]
        with anyio.fail_after(60):
            while (await client.get(location)).json()["job"]["progress"]["docs"] < 200:
                await anyio.sleep(0.01)
        snap = await finished(client, await client.post("/admin/collections/live/snapshots"))
        ingest_job = (await client.get(location)).json()["job"]
        assert snap["state"] == "succeeded", snap
        version = snap["result"]["version"]
        assert ingest_job["state"] == "running", "the snapshot must be taken while the ingest runs"
        ingested = await finished(client, r)
        assert ingested["state"] == "succeeded" and ingested["counts"]["documents"] == 6000
        kept = {"source": "live", "snapshot": snap["result"]["snapshot"]}
        restored = await finished(client, await client.post("/admin/collections/then/restore", json=kept))
        assert restored["state"] == "succeeded", restored
    with sqlite3.connect(settings.collections_dir / "live" / "docs.sqlite") as db:
        expected = {row[0] for row in db.execute("SELECT id FROM docs WHERE version <= ?", (version,))}
    with sqlite3.connect(settings.collections_dir / "then" / "docs.sqlite") as db:
        got = {row[0] for row in db.execute("SELECT id FROM docs")}
    assert got == expected and 200 <= len(got) < 6000
    assert snap["result"]["documents"] == len(got)
