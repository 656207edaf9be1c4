"""Online requests beside a bulk ingest: /embed latency at 8 clients with and without an admin
ingest job running, and the job's throughput alone and under that online load.

Each server tree (this checkout, and with ``--baseline-src`` another one, for example a git
worktree of an older commit, so two versions are compared in one run on one machine) runs as
``python -m cli serve`` on a temporary home with an admin key, an empty collection and a
JSONL file of ``--docs`` unique short passages in its data directory. Three phases of
``--seconds`` each:

1. online alone: ``--clients`` loops of one-text /embed requests, every text unique (no cache hits);
2. ingest alone: an admin job ingesting the file; documents/s from its progress;
3. both at once, each measured as above.

The job is cancelled at the end (the file is large enough that it never finishes first).

    .venv/bin/python bench/bulk.py --docs 100000 --seconds 20 --baseline-src /tmp/before
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import secrets
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from machine import cpu_flags, cpu_model, version
from serve import (
    ROOT,
    Cell,
    default_model_dir,
    free_port,
    have_wrk,
    run_cell,
    run_cell_wrk,
    sentence,
    start_server,
    stop_server,
    wait_ready,
)

KEY = "bench-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
COLLECTION = "bulk"
CHUNK = 64  # documents per committed chunk: the progress the ingest rate is read from


def write_documents(path: Path, docs: int) -> None:
    with path.open("w", encoding="utf-8") as out:
        for i in range(docs):
            out.write(json.dumps({"id": f"d{i}", "text": sentence("passage", i)}, ensure_ascii=False) + "\n")


async def job_docs(client: Any, job_id: str) -> int:
    job = (await client.get(f"/admin/jobs/{job_id}", headers=AUTH)).json()["job"]
    return int(job["progress"]["docs"])


async def phases(base: str, clients: int, seconds: float, load: str) -> dict[str, Any]:
    import httpx

    run = secrets.token_hex(3)
    counter = itertools.count()

    def unique() -> dict[str, Any]:
        return {"texts": [sentence(f"online {run}", next(counter))]}

    async def online(phase: str) -> Cell:
        if load == "wrk":
            return await run_cell_wrk(base, "/embed", "cold", f"{run} {phase}", clients, seconds)
        return await run_cell(base, "/embed", unique, clients, seconds)

    out: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=base, timeout=120.0) as client:
        created = await client.post("/admin/collections", json={"name": COLLECTION}, headers=AUTH)
        created.raise_for_status()
        print("  online alone ...", file=sys.stderr, flush=True)
        out["online_alone"] = await online("alone")
        job = await client.post(
            f"/admin/collections/{COLLECTION}/documents",
            json={"path": "documents.jsonl", "chunk_size": CHUNK},
            headers=AUTH,
        )
        job.raise_for_status()
        job_id = job.json()["job"]["id"]
        while await job_docs(client, job_id) == 0:  # the first chunk is in: the job is under way
            await asyncio.sleep(0.2)
        print("  ingest alone ...", file=sys.stderr, flush=True)
        first, started = await job_docs(client, job_id), time.perf_counter()
        await asyncio.sleep(seconds)
        out["ingest_alone"] = (await job_docs(client, job_id) - first) / (time.perf_counter() - started)
        print("  both ...", file=sys.stderr, flush=True)
        first, started = await job_docs(client, job_id), time.perf_counter()
        out["online_with_ingest"] = await online("both")
        out["ingest_with_online"] = (await job_docs(client, job_id) - first) / (time.perf_counter() - started)
        state = (await client.get(f"/admin/jobs/{job_id}", headers=AUTH)).json()["job"]["state"]
        if state != "running":
            raise RuntimeError(
                f"the ingest job was {state} before the end of the measurement; use more --docs"
            )
        (await client.post(f"/admin/jobs/{job_id}/cancel", headers=AUTH)).raise_for_status()
    return out


def measure_tree(
    src: Path, model_dir: Path, docs: int, clients: int, seconds: float, load: str
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-bulk-") as tmp:
        home = Path(tmp)
        (home / "data").mkdir()
        write_documents(home / "data" / "documents.jsonl", docs)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = start_server(home, model_dir, port, None, src, {"DAPSEARCH_ADMIN_KEYS": KEY})
        try:
            asyncio.run(wait_ready(base, server, home / "server.log", timeout=300))
            return asyncio.run(phases(base, clients, seconds, load))
        finally:
            stop_server(server)


def latency(cell: Cell) -> str:
    return f"{cell.pct(50):.1f} / {cell.pct(99):.1f} ({cell.rps:.0f} req/s, {cell.errors} errors)"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--docs", type=int, default=100_000, help="documents in the ingest file")
    p.add_argument("--seconds", type=float, default=20.0, help="duration of each phase")
    p.add_argument("--clients", type=int, default=8, help="concurrent online clients")
    p.add_argument("--baseline-src", type=Path, default=None, help="another source tree to compare")
    p.add_argument("--model-dir", type=Path, default=None, help="built model [default: the tests' one]")
    p.add_argument("--load", choices=("wrk", "httpx"), default=None, help="[default: wrk where installed]")
    args = p.parse_args(argv)
    if args.load is None:
        args.load = "wrk" if have_wrk() else "httpx"
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    model_dir = (args.model_dir or default_model_dir()).resolve()
    trees = [("this tree", ROOT)]
    if args.baseline_src is not None:
        trees.insert(0, (f"baseline ({args.baseline_src})", args.baseline_src.resolve()))
    rows = []
    for label, src in trees:
        print(f"{label} ...", file=sys.stderr, flush=True)
        rows.append((label, measure_tree(src, model_dir, args.docs, args.clients, args.seconds, args.load)))
    script = Path(__file__).resolve().relative_to(ROOT)
    print("command: " + shlex.join([".venv/bin/python", str(script), *argv]))
    print(
        f"cpu: {cpu_model()} ({os.cpu_count()} logical cores, {cpu_flags()}), "
        f"onnxruntime {version('onnxruntime')}"
    )
    print(
        f"model {model_dir.name} (onnx-int8); {args.clients} online clients ({args.load}), one "
        f"unique text per /embed; ingest: admin job over {args.docs:,} JSONL passages, chunks of {CHUNK}; "
        f"{args.seconds:g} s per phase"
    )
    print()
    print(
        "| server | /embed p50 / p99 ms alone | /embed p50 / p99 ms beside ingest | p99 ratio "
        "| ingest docs/s alone | ingest docs/s beside online |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for label, r in rows:
        alone, both = r["online_alone"], r["online_with_ingest"]
        print(
            f"| {label} | {latency(alone)} | {latency(both)} | {both.pct(99) / alone.pct(99):.2f}× "
            f"| {r['ingest_alone']:.0f} | {r['ingest_with_online']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
