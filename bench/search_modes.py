"""Search latency by mode (dense, lexical, hybrid) over HTTP, and what the lexical index costs.

Part 1, latency: a collection of ``--docs`` documents of real multilingual text (sentences of the
shared parallel corpus, ``--sentences`` per document, so that each is cut into about three
passages) with their real lexical index, and clustered random unit vectors per passage (embedding
300k passages would take hours on 2 cores and changes nothing in what a search costs). The real
server (``dapsearch serve``) answers /search with a unique query each request (real sentences,
embedded by the served model, so no cache hit), 1 and 8 keep-alive clients, per mode.

Part 2, ingest: the same kind of documents (``--ingest-docs``) ingested for real through the
served model into a collection with and without the lexical index: documents/s, passages/s and
the size on disk of each.

    .venv/bin/python bench/search_modes.py --docs 100000 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import itertools
import json
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from machine import cpu_flags, cpu_model
from serve import free_port, run_cell, served_backend, start_server, stop_server, wait_ready

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data" / "parallel"
COLLECTION = "bench"
MODES = ("dense", "lexical", "hybrid")


def sentences(limit: int, seed: int) -> list[str]:
    """Both sides of the parallel corpus, every language, shuffled."""
    out: list[str] = []
    files = sorted(SHARED.glob("*-en.tsv.gz"))
    per = limit // max(1, len(files)) + 1
    for path in files:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for line in itertools.islice(fh, per // 2 + 1):
                out += [s for s in line.rstrip("\n").split("\t")[:2] if s.strip()]
    random.Random(seed).shuffle(out)
    return out


def documents(pool: list[str], n: int, per_doc: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(f"d{i}", " ".join(rng.choices(pool, k=per_doc))) for i in range(n)]


def build(home: Path, model_dir: Path, docs: list[tuple[str, str]], seed: int) -> dict[str, Any]:
    """The latency collection: real passages and lexical terms, clustered random vectors."""
    from index.collection import Collection
    from index.cutting import Cutter
    from index.store import Document
    from model.artifact import read_manifest
    from model.encoder import TextTokenizer

    manifest = read_manifest(model_dir)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((300, manifest.dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    started = time.perf_counter()
    coll = Collection.create(home / "collections", COLLECTION, manifest.id, manifest.dim)
    cutter = Cutter(TextTokenizer(model_dir / "tokenizer.json", manifest), coll.cut_options)
    passages = 0
    for start in range(0, len(docs), 2000):
        chunk = [Document(i, t, "xx") for i, t in docs[start : start + 2000]]
        prepared = cutter.prepare(chunk)
        n = prepared.passage_count
        vecs = centres[rng.integers(0, 300, n)] + 0.04 * rng.standard_normal((n, manifest.dim), np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        coll.upsert(prepared.docs, vecs, passages=prepared.passages)
        passages += n
        print(f"  built {start + len(chunk)} documents, {passages} passages", file=sys.stderr, flush=True)
    coll.checkpoint()
    index = coll.stats()["index_type"]
    coll.close()
    size = sum(p.stat().st_size for p in (home / "collections" / COLLECTION).iterdir())
    return {
        "documents": len(docs),
        "passages": passages,
        "index": index,
        "bytes": size,
        "build_s": time.perf_counter() - started,
    }


async def latency(
    home: Path, model_dir: Path, queries: list[str], clients: Sequence[int], seconds: float
) -> dict[str, list[dict[str, float]]]:
    port = free_port()
    proc = start_server(home, model_dir, port, None)
    base = f"http://127.0.0.1:{port}"
    counter = itertools.count()
    out: dict[str, list[dict[str, float]]] = {}
    try:
        await wait_ready(base, proc, home / "server.log", 600)
        import httpx

        async with httpx.AsyncClient(base_url=base, timeout=300) as client:  # open the collection
            r = await client.post("/search", json={"collection": COLLECTION, "query": "warm up", "k": 10})
            r.raise_for_status()
        for mode in MODES:

            def body(mode: str = mode) -> dict[str, Any]:
                query = queries[next(counter) % len(queries)]
                return {"collection": COLLECTION, "query": query, "k": 10, "mode": mode}

            for n in clients:
                print(f"  /search {mode}, {n} clients ...", file=sys.stderr, flush=True)
                cell = await run_cell(base, "/search", body, n, seconds)
                out.setdefault(mode, []).append(
                    {
                        "clients": n,
                        "rps": cell.rps,
                        "p50": cell.pct(50),
                        "p99": cell.pct(99),
                        "errors": cell.errors,
                    }
                )
    finally:
        stop_server(proc)
    return out


def ingest_cost(model_dir: Path, docs: list[tuple[str, str]], workdir: Path) -> list[dict[str, Any]]:
    """Real ingest through the served model, with and without the lexical index."""
    from index.collection import Collection
    from index.ingest import ingest
    from model.encoder import Encoder

    encoder = Encoder.load(model_dir, backend=served_backend(model_dir))
    src = workdir / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n" for i, t in docs))
    rows = []
    for lexical in (False, True):
        home = workdir / f"lexical-{lexical}"
        coll = Collection.create(home, "c", encoder.model_id, encoder.dim, lexical=lexical)
        started = time.perf_counter()
        report = ingest(coll, encoder, src)
        coll.checkpoint()
        seconds = time.perf_counter() - started
        coll.close()
        size = sum(p.stat().st_size for p in (home / "c").iterdir())
        rows.append(
            {
                "lexical": lexical,
                "documents": report.documents,
                "passages": report.passages,
                "seconds": seconds,
                "docs_per_s": report.documents / seconds,
                "bytes": size,
            }
        )
    return rows


def report(
    built: dict[str, Any], lat: dict[str, list[dict[str, float]]], ingests: list[dict[str, Any]]
) -> None:
    print(f"\nCPU: {cpu_model()}\nflags: {cpu_flags()}\n")
    print(
        f"collection: {built['documents']:,} documents, {built['passages']:,} passages, "
        f"index {built['index']}, {built['bytes'] / 2**20:,.0f} MiB on disk, "
        f"built in {built['build_s']:.0f} s\n"
    )
    print("| mode | clients | req/s | p50 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode, cells in lat.items():
        for c in cells:
            print(
                f"| {mode} | {c['clients']:.0f} | {c['rps']:.1f} | {c['p50']:.1f} | {c['p99']:.1f} "
                f"| {c['errors']:.0f} |"
            )
    for n_index, cell in enumerate(lat.get("dense", [])):
        hybrid = lat["hybrid"][n_index]
        print(f"\nhybrid p99 ÷ dense p99 at {cell['clients']:.0f} clients: {hybrid['p99'] / cell['p99']:.2f}")
    print("\n| lexical index | documents | passages | documents/s | size on disk |")
    print("|---|---:|---:|---:|---:|")
    for row in ingests:
        print(
            f"| {'yes' if row['lexical'] else 'no'} | {row['documents']} | {row['passages']} | "
            f"{row['docs_per_s']:.1f} | {row['bytes'] / 2**20:.1f} MiB |"
        )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=ROOT / "var" / "models" / "multilingual-e5-small-dap")
    p.add_argument("--docs", type=int, default=100_000)
    p.add_argument("--sentences", type=int, default=18, help="sentences per document (about 3 passages)")
    p.add_argument("--ingest-docs", type=int, default=300)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--clients", default="1,8")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    pool = sentences(600_000, args.seed)
    queries = pool[:5000]
    docs = documents(pool[5000:], args.docs, args.sentences, args.seed)
    with tempfile.TemporaryDirectory(prefix="dapsearch-modes-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        built = build(home, args.model_dir, docs, args.seed)
        clients = [int(c) for c in args.clients.split(",")]
        lat = asyncio.run(latency(home, args.model_dir, queries, clients, args.seconds))
        ingests = ingest_cost(args.model_dir, docs[: args.ingest_docs], Path(tmp))
    report(built, lat, ingests)
    if args.json:
        args.json.write_text(json.dumps({"collection": built, "latency": lat, "ingest": ingests}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
