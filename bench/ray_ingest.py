"""The same ingest, local against Ray: one JSONL file of ``--docs`` unique short passages into a
fresh collection, by the local engine (one process, all cores) and by ``ingest_on_ray`` on a
local Ray with this machine's CPUs: 1 actor of 1 CPU, 2 actors of 1 CPU, 1 actor of 2 CPUs.

What it shows is the engine's overhead on one box (actor start and model load, shard files,
the single writer's merge) and the per-shard time that an N-node estimate starts from. It also
times the writer alone (upserting precomputed vectors), the ceiling any number of nodes meets.

    .venv/bin/python bench/ray_ingest.py --docs 20000
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from machine import cpu_flags, cpu_model, version
from serve import ROOT, default_model_dir, sentence, served_backend

from model.artifact import Backend


def write_documents(path: Path, docs: int) -> None:
    with path.open("w", encoding="utf-8") as out:
        for i in range(docs):
            out.write(json.dumps({"id": f"d{i}", "text": sentence("passage", i)}, ensure_ascii=False) + "\n")


def run(
    label: str, source: Path, home: Path, model_dir: Path, backend: Backend, ray: Any | None
) -> dict[str, Any]:
    from index.collection import Collection
    from index.ingest import ShardCounts, ingest
    from index.ray_ingest import ingest_on_ray
    from model.encoder import Encoder

    encoder = Encoder.load(model_dir, backend)
    stamps: list[float] = []

    def shard_done(counts: ShardCounts) -> None:
        if counts.embedded > len(stamps):
            stamps.append(time.perf_counter())

    print(f"{label} ...", file=sys.stderr, flush=True)
    with Collection.create(home / label.replace(" ", "-"), "bench", encoder.model_id, encoder.dim) as coll:
        started = time.perf_counter()
        if ray is None:
            report = ingest(coll, encoder, source)
        else:
            report = ingest_on_ray(coll, encoder, source, options=ray, shard_progress=shard_done)
        wall = time.perf_counter() - started
        assert len(coll) == report.documents
    first = stamps[0] - started if stamps else None
    return {"wall": wall, "docs": report.documents, "shards": report.shards, "first": first}


def writer_ceiling(source: Path, home: Path, model_dir: Path, backend: Backend) -> float:
    """Documents/s the single writer commits when vectors come for free (precomputed)."""
    import numpy as np

    from index.collection import Collection
    from index.store import Document
    from model.encoder import Encoder

    encoder = Encoder.load(model_dir, backend)
    docs = [Document(**json.loads(line)) for line in source.read_text(encoding="utf-8").splitlines()]
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((len(docs), encoder.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with Collection.create(home / "writer", "bench", encoder.model_id, encoder.dim) as coll:
        started = time.perf_counter()
        step = 2048
        for i in range(0, len(docs), step):
            coll.upsert(docs[i : i + step], vectors[i : i + step])
        return len(docs) / (time.perf_counter() - started)


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=20_000)
    p.add_argument("--shard-kib", type=int, default=128, help="input KiB per shard")
    p.add_argument("--model-dir", type=Path, default=None, help="[default: the tests' model]")
    args = p.parse_args(argv)
    import ray

    from index.cluster import RayOptions

    model_dir = (args.model_dir or default_model_dir()).resolve()
    backend = served_backend(model_dir)
    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        source = home / "docs.jsonl"
        write_documents(source, args.docs)
        started = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - started
        shard = args.shard_kib << 10
        cells = [
            ("local", None),
            ("ray, 1 actor x 1 CPU", RayOptions(actors=1, cpus_per_actor=1, shard_bytes=shard)),
            ("ray, 2 actors x 1 CPU", RayOptions(actors=2, cpus_per_actor=1, shard_bytes=shard)),
            ("ray, 1 actor x 2 CPUs", RayOptions(actors=1, cpus_per_actor=2, shard_bytes=shard)),
        ]
        rows = [(label, run(label, source, home, model_dir, backend, options)) for label, options in cells]
        ray.shutdown()
        ceiling = writer_ceiling(source, home, model_dir, backend)
        size = source.stat().st_size
    script = Path(__file__).resolve().relative_to(ROOT)
    print("command: " + shlex.join([".venv/bin/python", str(script), *argv]))
    print(
        f"cpu: {cpu_model()} ({cpus} logical cores, {cpu_flags()}); ray {version('ray')}, "
        f"model {model_dir.name} on {backend}"
    )
    print(
        f"{args.docs:,} JSONL passages ({size / 1e6:.1f} MB), shards of {args.shard_kib} KiB; a local Ray "
        f"with {cpus} CPUs started in {ray_start:.1f} s (not in the times below)"
    )
    print()
    print(
        "| engine | wall s | docs/s | vs local | shards | s per shard in an actor "
        "| actor docs/s | first shard done at s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    local = rows[0][1]["wall"]
    for label, r in rows:
        counts = r["shards"]
        if counts is None:
            extra = "| | | | |"
        else:
            per = counts.embed_seconds / counts.embedded
            rate = r["docs"] / counts.embed_seconds
            extra = f"| {counts.total} | {per:.2f} | {rate:.0f} | {r['first']:.1f} |"
        print(f"| {label} | {r['wall']:.1f} | {r['docs'] / r['wall']:.0f} | {local / r['wall']:.2f}× {extra}")
    print()
    print(f"single writer alone (precomputed vectors, upserts of 2,048): {ceiling:,.0f} docs/s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
