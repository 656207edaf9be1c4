"""Mining at scale: exact search here, exact search on Ray, and the approximate IVF option, on
real embeddings: ``--pairs`` sentence pairs of the shared parallel data (``--lang``-English),
the English side shuffled, embedded once by the served model.

For each search: wall time of ``mine`` (ratio margin, k=4, max strategy), recall of the k
nearest neighbours against exact search in both directions, the share of exact search's pairs
it mines too, and the share of the gold translations it finds.

    .venv/bin/python bench/mine_scale.py --pairs 20000 --lang de
"""

from __future__ import annotations

import argparse
import gzip
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from machine import cpu_flags, cpu_model, version
from serve import ROOT, default_model_dir, served_backend

SHARED = ROOT.parent / "shared" / "data" / "parallel"


def read_pairs(lang: str, n: int) -> tuple[list[str], list[str]]:
    xs: list[str] = []
    ens: list[str] = []
    with gzip.open(SHARED / f"{lang}-en.tsv.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            cols = line.rstrip("\n").split("\t")
            if len(cols) >= 2 and cols[0] and cols[1]:
                xs.append(cols[0])
                ens.append(cols[1])
            if len(xs) == n:
                break
    return xs, ens


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=20_000)
    p.add_argument("--lang", default="de")
    p.add_argument("--nprobe", default="4,16,64")
    p.add_argument("--model-dir", type=Path, default=None)
    args = p.parse_args(argv)
    import ray

    from index.cluster import RayOptions
    from index.mining import MiningResult, mine
    from index.neighbours import IvfSearch, ivf_nlist, knn_both, recall
    from index.ray_mining import RaySearch
    from model.encoder import Encoder

    model_dir = (args.model_dir or default_model_dir()).resolve()
    backend = served_backend(model_dir)
    encoder = Encoder.load(model_dir, backend)
    xs, ens = read_pairs(args.lang, args.pairs)
    order = np.random.default_rng(0).permutation(len(ens))
    gold = {(int(order[j]), j) for j in range(len(ens))}  # source i's translation is target j
    started = time.perf_counter()
    x = encoder.embed(xs, "passage")
    y = encoder.embed([ens[i] for i in order], "passage")
    embed_s = time.perf_counter() - started
    exact_neighbours = knn_both(x, y, 4)

    def pairs_of(result: MiningResult) -> set[tuple[int, int]]:
        return set(zip(result.source.tolist(), result.target.tolist(), strict=True))

    rows = []

    def measure(label: str, search: object) -> None:
        print(f"{label} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        result = mine(x, y, search=search)  # type: ignore[arg-type]
        wall = time.perf_counter() - started
        found = search(x, y, 4, 1024, None) if search is not None else exact_neighbours  # type: ignore[operator]
        rows.append(
            (
                label,
                wall,
                result,
                recall(found[1], exact_neighbours[1]),
                recall(found[3], exact_neighbours[3]),
            )
        )

    measure("exact, here", None)
    cpus = os.cpu_count() or 1
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    measure(f"exact, Ray ({cpus} CPUs)", RaySearch(RayOptions()))
    nlist = ivf_nlist(len(x))
    for nprobe in (int(v) for v in args.nprobe.split(",")):
        measure(f"IVF{nlist} nprobe {nprobe}, here", IvfSearch(nprobe=nprobe))
    measure(f"IVF{nlist} nprobe 16, Ray", RaySearch(RayOptions(), ivf=IvfSearch(nprobe=16)))
    ray.shutdown()

    exact_pairs = pairs_of(rows[0][2])
    script = Path(__file__).resolve().relative_to(ROOT)
    print("command: " + shlex.join([".venv/bin/python", str(script), *argv]))
    print(
        f"cpu: {cpu_model()} ({cpus} logical cores, {cpu_flags()}); "
        f"ray {version('ray')}, faiss {version('faiss-cpu')}"
    )
    print(
        f"{len(xs):,} {args.lang}-en pairs of the shared parallel data, English shuffled; model "
        f"{model_dir.name} on {backend} ({embed_s:.0f} s to embed both sides); mine(): ratio, k=4, max"
    )
    print()
    print("| search | mine() s | recall@4 x→y / y→x | exact's pairs kept | gold pairs found |")
    print("|---|---:|---:|---:|---:|")
    for label, wall, result, fwd, bwd in rows:
        mined = pairs_of(result)
        kept = len(mined & exact_pairs) / len(exact_pairs)
        hits = len(mined & gold) / len(gold)
        print(f"| {label} | {wall:.1f} | {fwd:.4f} / {bwd:.4f} | {kept:.4f} | {hits:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
