"""Benchmark FAISS index types for dapsearch collections: build time, memory, speed and recall.

Why: collections switch from exact ``Flat`` to ``HNSW32`` past 200k vectors, and IVF is the obvious
alternative once trained indexes are supported. This measures what each costs and buys on data shaped
like the project's (384-dim, L2-normalised, searched by inner product), at the sizes that matter,
so the choice and the default search parameters rest on numbers rather than folklore.

The vectors are synthetic but clustered like sentence embeddings (see ``Generator``): no model or
download is needed, and a fixed seed makes every run search the same data. Ground truth is exact
``Flat`` search of the same queries; queries are drawn like the base vectors but are not in it.

Indexes are built bare (``faiss.index_factory(d, spec, METRIC_INNER_PRODUCT)``); the service wraps
them in ``IDMap2``, which only translates ids after the search and so does not change the timings.

    .venv/bin/python bench/search.py --sizes 100000,1000000 --json /tmp/search.json
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
import psutil
from machine import cpu_flags, cpu_model

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

DIM = 384
K = 10
RECALL_TARGET = 0.95
P99_TARGET_MS = 5.0
EF_SEARCH = (32, 64, 128, 256)
NPROBE = (8, 16, 32, 64, 128)
INDEX_KINDS = ("flat", "hnsw", "ivf", "ivfsq8")
CHUNK = 65_536  # generation chunk; fixed, so a smaller size is a prefix of a larger one (same seed)
TRAIN_PER_LIST = 50
TRAIN_MAX = 256_000
HNSW_BUILD_BUDGET_S = 480.0  # past this at the largest size, efConstruction 80 is too slow for a 20-min run


@dataclass(frozen=True)
class DataShape:
    """Knobs of the synthetic embedding distribution (defaults give NN cos ≈ 0.8-0.9, random ≈ 0.2)."""

    clusters: int = 4000
    common: float = 0.5  # weight of a direction shared by all centres: real embeddings are anisotropic
    noise: float = 0.55  # typical ||noise|| relative to the unit centre
    decay: float = 0.6  # noise spectrum sigma_i ∝ (i+1)^-decay: low intrinsic dimension, like real models
    noise_spread: float = 0.25  # per-vector log-normal spread of the noise scale
    size_spread: float = 1.0  # log-normal spread of cluster popularity (uneven clusters, like topics)


@dataclass
class Row:
    """One measured (size, index, search parameter) combination."""

    size: int
    index: str
    param: str
    build_s: float
    train_s: float
    add_s: float
    memory_mb: float
    rss_delta_mb: float
    batch_qps: float
    p50_ms: float
    p99_ms: float
    recall: float
    single_n: int
    notes: list[str] = field(default_factory=list)


class Generator:
    """Draws clustered unit vectors; the centres and the noise basis are fixed by the seed."""

    def __init__(self, shape: DataShape, seed: int) -> None:
        self.shape = shape
        self.seed = seed
        rng = np.random.default_rng([seed, 0])
        common = _unit(rng.standard_normal((1, DIM), dtype=np.float32))
        rand = _unit(rng.standard_normal((shape.clusters, DIM), dtype=np.float32))
        self.centres = _unit(shape.common * common + math.sqrt(1 - shape.common**2) * rand)
        weights = rng.lognormal(0.0, shape.size_spread, shape.clusters)
        self.cdf = np.cumsum(weights / weights.sum())
        sigma = (np.arange(DIM, dtype=np.float64) + 1.0) ** -shape.decay
        self.sigma = (sigma / np.sqrt((sigma**2).sum())).astype(np.float32)  # E||noise||^2 = 1
        q, r = np.linalg.qr(rng.standard_normal((DIM, DIM)))
        self.rotation = (q * np.sign(np.diag(r))).astype(np.float32)  # random orthogonal basis

    def draw(self, n: int, stream: int) -> F32:
        """``n`` vectors in chunks of ``CHUNK``, each chunk seeded by (seed, stream, chunk number)."""
        out = np.empty((n, DIM), dtype=np.float32)
        for c, start in enumerate(range(0, n, CHUNK)):
            m = min(CHUNK, n - start)
            rng = np.random.default_rng([self.seed, stream, c])
            which = np.minimum(np.searchsorted(self.cdf, rng.random(m)), self.shape.clusters - 1)
            scale = self.shape.noise * rng.lognormal(0.0, self.shape.noise_spread, (m, 1)).astype(np.float32)
            noise = (rng.standard_normal((m, DIM), dtype=np.float32) * self.sigma) @ self.rotation.T
            out[start : start + m] = _unit(self.centres[which] + scale * noise)
        return out


def _unit(x: F32) -> F32:
    out: F32 = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32, copy=False)
    return out


def nlist_for(n: int) -> int:
    """About 4·sqrt(n) inverted lists, rounded to a power of two (1024 at 100k, 4096 at 1M)."""
    return int(2 ** round(math.log2(4 * math.sqrt(n))))


def rss_mb(trim: bool = False) -> float:
    """Resident set size; ``trim`` first hands freed heap back to the OS so a baseline is not inflated."""
    if trim and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
    return float(psutil.Process().memory_info().rss) / 2**20


def serialized_mb(index: Any) -> float:
    """Size of the index as written to disk: what a collection's ``index.faiss`` file would hold."""
    return float(faiss.serialize_index(index).nbytes) / 2**20


def recall_at_k(found: I64, truth: I64) -> float:
    """Mean fraction of the exact top-k that the index also returned (any order)."""
    hits = sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


def batch_search(index: Any, queries: F32, min_seconds: float = 1.0) -> tuple[float, I64]:
    """Queries/s searching all queries in one call (best of repeats adding up to ``min_seconds``)."""
    best = math.inf
    spent = 0.0
    labels: I64 | None = None
    while labels is None or spent < min_seconds:
        t0 = time.perf_counter()
        _, labels = index.search(queries, K)
        dt = time.perf_counter() - t0
        best = min(best, dt)
        spent += dt
    return len(queries) / best, labels


def single_latency(
    index: Any, queries: F32, budget_s: float, min_calls: int = 100, warmup: int = 10
) -> tuple[float, float, int]:
    """p50 and p99 ms of one-query searches, the way the HTTP API calls FAISS.

    Stops early (after at least ``min_calls``) once ``budget_s`` is spent: exact search of 1M vectors
    takes ~0.1 s a query, and 500 of them would cost more than the whole HNSW sweep.
    """
    for i in range(min(warmup, len(queries))):
        index.search(queries[i : i + 1], K)
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    for i in range(len(queries)):
        t0 = time.perf_counter()
        index.search(queries[i : i + 1], K)
        t1 = time.perf_counter()
        times.append(t1 - t0)
        if t1 > deadline and len(times) >= min_calls:
            break
    p50, p99 = np.percentile(np.array(times) * 1e3, [50, 99])
    return float(p50), float(p99), len(times)


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class SizeBench:
    """All index types at one collection size, sharing the data, the queries and the ground truth."""

    def __init__(self, args: argparse.Namespace, gen: Generator, n: int, queries: F32) -> None:
        self.args = args
        self.n = n
        self.queries = queries
        self.single = queries[: args.single_queries]
        self.rows: list[Row] = []
        self.stats: dict[str, float] = {}
        t0 = time.perf_counter()
        self.base = gen.draw(n, stream=1)
        self.stats["generate_s"] = time.perf_counter() - t0
        self.truth: I64 = np.empty((0, K), dtype=np.int64)
        self.centroids: F32 | None = None
        self.kmeans_s = 0.0

    def measure(
        self, index: Any, name: str, param: str, built: tuple[float, float, float], prefix: float = 0.0
    ) -> Row:
        """Search timings and recall of a built index at its current search parameter."""
        qps, labels = batch_search(index, self.queries)
        p50, p99, single_n = single_latency(index, self.single, self.args.latency_budget)
        train_s, add_s, rss_delta = built
        row = Row(
            size=self.n,
            index=name,
            param=param,
            build_s=prefix + train_s + add_s,
            train_s=train_s,
            add_s=add_s,
            memory_mb=serialized_mb(index),
            rss_delta_mb=rss_delta,
            batch_qps=qps,
            p50_ms=p50,
            p99_ms=p99,
            recall=recall_at_k(labels, self.truth),
            single_n=single_n,
        )
        log(
            f"  {self.n} {name} {param or '-'}: recall {row.recall:.4f} qps {qps:.0f} "
            f"p50 {p50:.2f} p99 {p99:.2f} ms"
        )
        return row

    def build(
        self, spec: str, configure: Callable[[Any], None] | None = None
    ) -> tuple[Any, float, float, float]:
        """Train on a sample (if the index needs it) then add everything; returns times and RSS delta."""
        index = faiss.index_factory(DIM, spec, faiss.METRIC_INNER_PRODUCT)
        if configure is not None:
            configure(index)
        rss0 = rss_mb(trim=True)
        train_s = 0.0
        if not index.is_trained:
            sample = self.train_sample(faiss.extract_index_ivf(index).nlist)
            train_s = timed(lambda: index.train(sample))
            del sample
        add_s = timed(lambda: index.add(self.base))
        return index, train_s, add_s, rss_mb() - rss0

    def train_sample(self, nlist: int) -> F32:
        m = min(TRAIN_PER_LIST * nlist, TRAIN_MAX, self.n)
        rng = np.random.default_rng([self.args.seed, 3, self.n])
        return self.base[np.sort(rng.choice(self.n, m, replace=False))]

    def flat(self, report: bool) -> None:
        """Exact search; its batch result is the ground truth for every other index at this size."""
        log(f"{self.n}: Flat (ground truth)")
        index, train_s, add_s, rss = self.build("Flat")
        t0 = time.perf_counter()
        _, truth = index.search(self.queries, K)
        gt_s = time.perf_counter() - t0
        self.truth = truth
        self.stats["ground_truth_s"] = gt_s
        dist, _ = index.search(self.queries[:200], K)
        self.stats["nn_cos_top1_mean"] = float(dist[:, 0].mean())
        self.stats["nn_cos_top10_mean"] = float(dist[:, K - 1].mean())
        rng = np.random.default_rng([self.args.seed, 4])
        a, b = rng.integers(0, self.n, (2, 20_000))
        self.stats["random_pair_cos_mean"] = float(np.einsum("ij,ij->i", self.base[a], self.base[b]).mean())
        log(
            f"  data: NN cos top1 {self.stats['nn_cos_top1_mean']:.3f}, top10 "
            f"{self.stats['nn_cos_top10_mean']:.3f}, random pairs {self.stats['random_pair_cos_mean']:.3f}"
        )
        if report:
            # One 1000-query batch of exact search takes seconds, so its single run is the QPS figure.
            p50, p99, single_n = single_latency(index, self.single, self.args.latency_budget)
            row = Row(self.n, "Flat", "", train_s + add_s, train_s, add_s, serialized_mb(index), rss,
                      len(self.queries) / gt_s, p50, p99, 1.0, single_n)  # fmt: skip
            if single_n < len(self.single):
                row.notes.append(f"latency over {single_n} single queries (time budget)")
            log(f"  {self.n} Flat: qps {row.batch_qps:.0f} p50 {p50:.2f} p99 {p99:.2f} ms")
            self.rows.append(row)

    def hnsw(self, ef_construction: int) -> None:
        """HNSW32 (the project's default factory for large collections), efSearch swept upwards."""
        name = f"HNSW32 (efC {ef_construction})"
        log(f"{self.n}: {name}")

        def configure(index: Any) -> None:
            index.hnsw.efConstruction = ef_construction

        index, train_s, add_s, rss = self.build("HNSW32", configure)
        self.stats[f"hnsw_efc{ef_construction}_build_s"] = add_s
        log(f"  built in {add_s:.1f} s")
        for ef in EF_SEARCH:
            index.hnsw.efSearch = ef
            row = self.measure(index, name, f"efSearch={ef}", (train_s, add_s, rss))
            self.rows.append(row)
            if row.recall >= RECALL_TARGET:
                break

    def ivf(self, nlist: int) -> None:
        """IVF{nlist},Flat; keeps its centroids so the SQ8 variant can skip k-means."""
        spec = f"IVF{nlist},Flat"
        log(f"{self.n}: {spec} (training sample {min(TRAIN_PER_LIST * nlist, TRAIN_MAX, self.n)})")
        index, train_s, add_s, rss = self.build(spec)
        log(f"  trained in {train_s:.1f} s, added in {add_s:.1f} s")
        self.kmeans_s = train_s
        self.centroids = index.quantizer.reconstruct_n(0, nlist)
        self.sweep(index, spec, (train_s, add_s, rss))

    def ivf_sq8(self, nlist: int) -> None:
        """IVF{nlist},SQ8: a quarter of the memory; reuses the IVF Flat centroids when it has them."""
        spec = f"IVF{nlist},SQ8"
        log(f"{self.n}: {spec}")
        centroids = self.centroids

        def configure(index: Any) -> None:
            if centroids is not None:  # a quantizer holding nlist vectors is not retrained by train()
                faiss.extract_index_ivf(index).quantizer.add(centroids)

        index, train_s, add_s, rss = self.build(spec, configure)
        prefix = self.kmeans_s if centroids is not None else 0.0
        log(f"  trained in {train_s:.1f} s (+{prefix:.1f} s shared k-means), added in {add_s:.1f} s")
        self.sweep(index, spec, (train_s, add_s, rss), prefix)

    def sweep(self, index: Any, spec: str, built: tuple[float, float, float], prefix: float = 0.0) -> None:
        for nprobe in NPROBE:
            faiss.extract_index_ivf(index).nprobe = nprobe
            row = self.measure(index, spec, f"nprobe={nprobe}", built, prefix)
            if prefix:
                row.notes.append(f"build includes {prefix:.1f} s k-means shared with IVF Flat")
            self.rows.append(row)
            if row.recall >= RECALL_TARGET:
                break


def chosen(rows: Sequence[Row]) -> list[Row]:
    """Per (size, index): the smallest parameter reaching the recall target (or the best tried)."""
    out: dict[tuple[int, str], Row] = {}
    for r in rows:
        key = (r.size, r.index)
        if key not in out or out[key].recall < RECALL_TARGET:
            out[key] = r
    return list(out.values())


def table(rows: Sequence[Row], single_target: int) -> str:
    picks = {id(r) for r in chosen(rows)}
    lines = [
        "| size | index | param | build s | memory MB | batch QPS | p50 ms | p99 ms | recall@10 |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        param = r.param or "-"
        if r.single_n < single_target:
            param += f" ({r.single_n} single queries)"
        if id(r) in picks and r.param:
            param = f"**{param}**"
        lines.append(
            f"| {r.size:,} | {r.index} | {param} | {r.build_s:.1f} | {r.memory_mb:.0f} | {r.batch_qps:,.0f} "
            f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.recall:.4f} |"
        )
    return "\n".join(lines)


def verdicts(rows: Sequence[Row], largest: int) -> list[str]:
    out = []
    for r in chosen(rows):
        if r.size != largest or r.index == "Flat":
            continue
        ok_recall = r.recall >= RECALL_TARGET
        ok_p99 = r.p99_ms <= P99_TARGET_MS
        verdict = "MEETS" if ok_recall and ok_p99 else "misses"
        why = []
        if not ok_recall:
            why.append(f"recall {r.recall:.4f} < {RECALL_TARGET}")
        if not ok_p99:
            why.append(f"p99 {r.p99_ms:.2f} ms > {P99_TARGET_MS} ms")
        out.append(
            f"- {r.size:,} {r.index} {r.param}: {verdict} the target (recall@10 {r.recall:.4f}, "
            f"p99 {r.p99_ms:.2f} ms){'; ' + ', '.join(why) if why else ''}"
        )
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--sizes", default="100000,1000000", help="comma-separated collection sizes")
    p.add_argument("--indexes", default=",".join(INDEX_KINDS), help=f"subset of {','.join(INDEX_KINDS)}")
    p.add_argument("--threads", type=int, default=2, help="faiss.omp_set_num_threads")
    p.add_argument("--queries", type=int, default=1000, help="queries per batch search (and for recall)")
    p.add_argument("--single-queries", type=int, default=500, help="one-at-a-time queries for p50/p99")
    p.add_argument(
        "--ef-construction",
        type=int,
        default=40,
        help="HNSW efConstruction; 40 is FAISS's default, so what the service's 'HNSW32' builds "
        "(80 took 1.4x as long at 100k, past the 8-minute budget at 1M)",
    )
    p.add_argument(
        "--latency-budget",
        type=float,
        default=60.0,
        help="seconds per single-query latency run; past it (and 100 queries) it stops early",
    )
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--json", type=Path, default=None, help="write raw results here")
    args = p.parse_args(argv)
    args.size_list = sorted(int(s) for s in args.sizes.split(",") if s.strip())
    args.kinds = [k.strip().lower() for k in args.indexes.split(",") if k.strip()]
    unknown = set(args.kinds) - set(INDEX_KINDS)
    if unknown:
        p.error(f"unknown index kinds {sorted(unknown)}; choose from {', '.join(INDEX_KINDS)}")
    if args.single_queries > args.queries:
        p.error("--single-queries cannot exceed --queries")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    load_before = os.getloadavg()
    started = time.perf_counter()
    shape = DataShape()
    gen = Generator(shape, args.seed)
    queries = gen.draw(args.queries, stream=2)
    rows: list[Row] = []
    stats: dict[int, dict[str, float]] = {}
    notes: list[str] = []
    hnsw_first: tuple[int, float] | None = None
    for n in args.size_list:
        log(f"== size {n:,}: generating")
        bench = SizeBench(args, gen, n, queries)
        bench.flat(report="flat" in args.kinds)
        if "hnsw" in args.kinds:
            if hnsw_first is not None:
                n0, t0 = hnsw_first
                guess = t0 * n / n0 * math.log(n) / math.log(n0)
                notes.append(
                    f"HNSW build at {n:,} extrapolated from {n0:,} (n·log n): {guess:.0f} s "
                    f"(budget {HNSW_BUILD_BUDGET_S:.0f} s)"
                )
                log(notes[-1])
            bench.hnsw(args.ef_construction)
            hnsw_first = hnsw_first or (n, bench.stats[f"hnsw_efc{args.ef_construction}_build_s"])
        nlist = nlist_for(n)
        if "ivf" in args.kinds:
            bench.ivf(nlist)
        if "ivfsq8" in args.kinds:
            bench.ivf_sq8(nlist)
        rows.extend(bench.rows)
        stats[n] = bench.stats
        del bench
    load_after = os.getloadavg()
    total_s = time.perf_counter() - started

    versions = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "faiss-cpu (dist)": _dist_version("faiss-cpu"),
    }
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/search.py", *sys.argv[1:]])
    print(f"Command: `{command}`\n")
    print(
        f"CPU: {cpu_model()} ({os.cpu_count()} logical cores, {cpu_flags()}), FAISS threads: {args.threads}, "
        f"1-min load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}, "
        f"total {total_s / 60:.1f} min"
    )
    print("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(
        f"Data: {DIM}-dim unit vectors, {shape.clusters} clusters (seed {args.seed}); "
        f"{args.queries} queries drawn separately (not in the base), batch = all {args.queries} in one call, "
        f"latency = {args.single_queries} one-query calls, k = {K}, recall vs exact Flat."
    )
    for n, s in stats.items():
        print(
            f"  {n:,}: mean cosine of query to its 1st / 10th exact neighbour "
            f"{s['nn_cos_top1_mean']:.3f} / {s['nn_cos_top10_mean']:.3f}, random pairs "
            f"{s['random_pair_cos_mean']:.3f}; generated in {s['generate_s']:.1f} s"
        )
    print(
        f"Settings: HNSW32 efConstruction {args.ef_construction}, efSearch from {EF_SEARCH}; "
        f"IVF nlist ≈ 4·sqrt(n) as a power of two, trained on min({TRAIN_PER_LIST}·nlist, {TRAIN_MAX:,}) "
        f"sampled base vectors (spherical k-means, FAISS defaults), nprobe from {NPROBE}; "
        "sweeps stop at the first value reaching the recall target (in bold). "
        "IVF SQ8 reuses the IVF Flat centroids; its build time includes that k-means."
    )
    print(
        "Memory MB = faiss.serialize_index size (the on-disk index); RSS deltas are in the JSON. "
        "No IDMap2 wrapper (the service's), which maps ids after the search and does not change timings."
    )
    print()
    print(table(rows, args.single_queries))
    print()
    largest = args.size_list[-1]
    print(f"Target at {largest:,}: recall@10 ≥ {RECALL_TARGET} and single-query p99 ≤ {P99_TARGET_MS} ms")
    for line in verdicts(rows, largest):
        print(line)
    for line in notes:
        print(f"- {line}")

    if args.json is not None:
        payload = {
            "command": command,
            "cpu": cpu_model(),
            "threads": args.threads,
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "total_s": total_s,
            "versions": versions,
            "data_shape": asdict(shape),
            "seed": args.seed,
            "queries": args.queries,
            "single_queries": args.single_queries,
            "ef_construction": args.ef_construction,
            "stats": {str(n): s for n, s in stats.items()},
            "notes": notes,
            "rows": [asdict(r) for r in rows],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
