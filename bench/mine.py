"""Time and peak memory of ``index.mining.mine`` against the naive full-matrix margin.

Why: bitext mining must scale to corpora where the n x m similarity matrix cannot exist (100k x
100k is 40 GB in float32). ``mine`` keeps only chunked exact k-NN results; the naive approach
(``x @ y.T``, top-k means along both axes, margin over the whole matrix) is what one writes
first and is run at the largest size where it still fits comfortably, in the same run.

Data are synthetic but shaped like sentence embeddings: a shared direction (real embeddings are
anisotropic, unrelated pairs have cosine > 0), clusters (topics) and noise, L2-normalised, dim 384.
Half of the targets are planted translations (a source plus as much noise: cosine ~0.7, as close as
its topic neighbours); the rest are unrelated, drawn from the same distribution. Each measurement
runs in its own subprocess; peak RSS (VmHWM, reset after the data are generated) includes the two
input matrices.

    .venv/bin/python bench/mine.py --sizes 20000,100000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from machine import cpu_flags, cpu_model, main_for, peak_rss_mb, reset_peak_rss, rss_mb, version

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # workers must import `index` even without the editable install
    sys.path.insert(0, str(ROOT))

METHODS: tuple[str, ...] = ("mine", "naive")
RESULT_MARK = "@@BENCH_RESULT@@ "
DIM = 384
K = 4
PLANTED_FRACTION = 0.5
POINTS_PER_CLUSTER = 50
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


# --------------------------------------------------------------------------- data


def _normalise(a: F32) -> F32:
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    return a


def synthetic(n: int, seed: int) -> tuple[F32, F32, I64]:
    """(source, target, planted): planted[j] is the source row that target j translates, or -1.

    Built in float32 blocks so generation itself stays within the inputs' own memory.
    """
    rng = np.random.default_rng(seed)
    common = _normalise(rng.standard_normal((1, DIM), dtype=np.float32))
    centres = _normalise(rng.standard_normal((max(1, n // POINTS_PER_CLUSTER), DIM), dtype=np.float32))

    def sample(count: int) -> F32:
        out = np.empty((count, DIM), dtype=np.float32)
        for start in range(0, count, 8192):
            rows = min(8192, count - start)
            noise = _normalise(rng.standard_normal((rows, DIM), dtype=np.float32))
            cluster = centres[rng.integers(0, centres.shape[0], rows)]
            out[start : start + rows] = 1.0 * common + 1.0 * cluster + 0.9 * noise
        return _normalise(out)

    source = sample(n)
    target = sample(n)
    planted = np.full(n, -1, dtype=np.int64)
    count = int(n * PLANTED_FRACTION)
    chosen_targets = rng.permutation(n)[:count]
    chosen_sources = rng.permutation(n)[:count]
    for start in range(0, chosen_targets.shape[0], 8192):
        t = chosen_targets[start : start + 8192]
        s = chosen_sources[start : start + 8192]
        noise = _normalise(rng.standard_normal((t.shape[0], DIM), dtype=np.float32))
        target[t] = _normalise(source[s] + 1.0 * noise)
        planted[t] = s
    return source, target, planted


# --------------------------------------------------------------------------- methods


def naive(x: F32, y: F32) -> tuple[I64, I64, F32]:
    """The full-matrix ratio margin with LASER's max strategy, written the obvious way.

    Memory: the n x m similarity matrix plus one transient copy from ``np.partition``; the margin
    is computed in place.
    """
    sims = x @ y.T
    x_mean = np.partition(sims, -K, axis=1)[:, -K:].mean(axis=1)
    y_mean = np.partition(sims, -K, axis=0)[-K:, :].mean(axis=0)
    sims /= (x_mean[:, None] + y_mean[None, :]) / 2
    fwd = sims.argmax(axis=1)
    bwd = sims.argmax(axis=0)
    rows = np.arange(x.shape[0])
    cols = np.arange(y.shape[0])
    src = np.concatenate([rows, bwd]).astype(np.int64)
    tgt = np.concatenate([fwd, cols]).astype(np.int64)
    val = np.concatenate([sims[rows, fwd], sims[bwd, cols]]).astype(np.float32)
    order = np.argsort(-val, kind="stable")
    used_src: set[int] = set()
    used_tgt: set[int] = set()
    keep: list[int] = []
    for pos in order.tolist():
        s, t = int(src[pos]), int(tgt[pos])
        if s not in used_src and t not in used_tgt:
            used_src.add(s)
            used_tgt.add(t)
            keep.append(pos)
    idx = np.asarray(keep, dtype=np.int64)
    return src[idx], tgt[idx], val[idx]


class _OutOfTime(Exception):
    """Raised from the progress callback to stop a run that would exceed --stop-after."""


def worker(args: argparse.Namespace) -> int:
    import faiss

    from evaluation.mining import best_threshold
    from index.mining import mine

    faiss.omp_set_num_threads(args.threads)
    x, y, planted = synthetic(args.size, args.seed)
    gold = [(int(s), int(t)) for t, s in enumerate(planted.tolist()) if s >= 0]
    data_rss = rss_mb()
    reset_peak_rss()
    start = time.perf_counter()
    rows_done = 0

    def advance(rows: int) -> None:
        nonlocal rows_done
        rows_done += rows
        if args.stop_after and time.perf_counter() - start > args.stop_after:
            raise _OutOfTime

    if args.worker == "mine":
        try:
            result = mine(x, y, k=K, score="ratio", strategy="max", progress=advance)
        except _OutOfTime:
            # Every buffer is allocated before the first tile, so the peak so far is the run's peak
            # (bar the final O((n + m)·k) margin arrays); time extrapolates linearly in source rows.
            seconds = time.perf_counter() - start
            partial = {"method": "mine", "size": args.size, "seconds": seconds, "rows_done": rows_done}
            partial |= {"peak_rss_mb": peak_rss_mb()}
            partial |= {"data_rss_mb": data_rss, "estimated_seconds": seconds * args.size / rows_done}
            print(RESULT_MARK + json.dumps(partial), flush=True)
            return 0
        src, tgt, val = result.source, result.target, result.scores
    else:
        src, tgt, val = naive(x, y)
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    best = best_threshold(zip(src.tolist(), tgt.tolist(), val.tolist(), strict=True), gold)
    out: dict[str, Any] = {
        "method": args.worker,
        "size": args.size,
        "seconds": seconds,
        "peak_rss_mb": peak,
        "data_rss_mb": data_rss,
        "planted": len(gold),
        "found": best.n_correct,
        "extracted": best.n_extracted,
        "f1": best.f1,
        "threshold": best.threshold,
    }
    print(RESULT_MARK + json.dumps(out), flush=True)
    return 0


# --------------------------------------------------------------------------- parent


@dataclass
class Run:
    method: str
    size: int
    result: dict[str, Any]

    @property
    def error(self) -> str | None:
        err = self.result.get("error")
        return str(err) if err else None


def run_worker(method: str, size: int, args: argparse.Namespace) -> Run:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(args.threads)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        method,
        "--size",
        str(size),
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
        "--stop-after",
        str(args.stop_after),
    ]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired:
        return Run(method, size, {"error": f"timed out after {args.timeout:.0f}s"})
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return Run(method, size, json.loads(line[len(RESULT_MARK) :]))
    tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    reason = tail[-1] if tail else "no output"
    if proc.returncode < 0:
        reason = f"killed by signal {-proc.returncode} (out of memory?)"
    return Run(method, size, {"error": f"exit {proc.returncode}: {reason}"})


def total_ram_mb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20


def table(runs: Sequence[Run]) -> list[str]:
    """One row per measurement; mine rows at a size where naive also ran carry the ratios."""
    naive_at = {r.size: r.result for r in runs if r.method == "naive" and not r.error}
    header = (
        f"{'size (n x m)':>17}  {'method':<6}  {'time s':>8}  {'peak RSS MB':>11}  {'inputs MB':>9}  "
        f"{'planted found':>15}  {'F1':>6}  {'time vs naive':>13}  {'RSS vs naive':>12}"
    )
    lines = [header, "-" * len(header)]
    for r in runs:
        size = f"{r.size:,} x {r.size:,}"
        if r.error:
            lines.append(f"{size:>17}  {r.method:<6}  {r.error}")
            continue
        res = r.result
        ratio_t = ratio_m = ""
        ref = naive_at.get(r.size)
        if r.method == "mine" and ref is not None:
            ratio_t = f"{res['seconds'] / ref['seconds']:.2f}x"
            ratio_m = f"{res['peak_rss_mb'] / ref['peak_rss_mb']:.2f}x"
        if "rows_done" in res:
            lines.append(
                f"{size:>17}  {r.method:<6}  stopped after {res['seconds']:.0f} s at "
                f"{res['rows_done']:,} source rows; peak RSS {res['peak_rss_mb']:.0f} MB "
                f"(inputs {res['data_rss_mb']:.0f} MB); full run est. {res['estimated_seconds']:.0f} s"
            )
            continue
        found = f"{res['found']:,}/{res['planted']:,}"
        lines.append(
            f"{size:>17}  {r.method:<6}  {res['seconds']:8.1f}  {res['peak_rss_mb']:11.0f}  "
            f"{res['data_rss_mb']:9.0f}  {found:>15}  {res['f1']:6.3f}  {ratio_t:>13}  {ratio_m:>12}"
        )
    return lines


def parent(args: argparse.Namespace, argv: Sequence[str]) -> int:
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    if not sizes or min(sizes) < 2:
        raise SystemExit("--sizes needs sizes >= 2, e.g. 20000,100000")
    print("command: " + shlex.join([Path(sys.executable).name, *argv]))
    print(
        f"cpu: {cpu_model()} ({os.cpu_count()} logical cores, {cpu_flags()}, "
        f"{total_ram_mb() / 1024:.0f} GiB RAM)"
    )
    print(f"threads: {args.threads} (OMP/OpenBLAS/MKL and faiss.omp_set_num_threads)")
    versions = ", ".join(f"{d} {version(d)}" for d in ("numpy", "faiss-cpu"))
    print(f"python {platform.python_version()}, {versions}")
    print(
        f"data: dim {DIM}, {POINTS_PER_CLUSTER} points/cluster, {PLANTED_FRACTION:.0%} of targets planted; "
        f"ratio margin, k={K}, max strategy; F1 and 'found' at the F1-best threshold (planted as gold)"
    )
    print(flush=True)
    runs: list[Run] = []
    for size in sizes:
        methods = ["mine"]
        # sims + np.partition's copy, both float32: skip the naive method where that crowds RAM.
        naive_mb = 2 * size * size * 4 / 2**20
        if size <= args.naive_max and naive_mb < 0.6 * total_ram_mb():
            methods.append("naive")
        for method in methods:
            print(f"{method} at {size:,} x {size:,} ...", file=sys.stderr, flush=True)
            runs.append(run_worker(method, size, args))
    print("\n".join(table(runs)))
    print(
        "\nNote: peak RSS is the whole worker process, the two input matrices included "
        "('inputs MB' is the RSS right after generating them); times exclude data generation."
    )
    return 0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="20000,100000", help="comma-separated n (= m) for mine()")
    p.add_argument(
        "--naive-max", type=int, default=20000, help="largest size at which the naive full matrix also runs"
    )
    p.add_argument("--threads", type=int, default=2, help="BLAS/OpenMP threads for every method")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds before a worker is given up")
    p.add_argument(
        "--stop-after",
        type=float,
        default=0.0,
        help="stop mine() after this many seconds and report peak RSS and the extrapolated time "
        "(for sizes like 1000000 that take hours here); 0 runs to the end",
    )
    p.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return main_for(parse_args, worker, parent, argv)


if __name__ == "__main__":
    sys.exit(main())
