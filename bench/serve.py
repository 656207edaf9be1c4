"""Benchmark the served HTTP API end to end: /embed (cache miss and hit) and /search under load.

Starts the real service (``python -m cli serve``) in a subprocess on a temporary
DAPSEARCH_HOME holding a synthetic collection of ``--docs`` clustered unit vectors, then drives it
with 1, 8 and 32 concurrent keep-alive clients for ``--seconds`` per cell: wrk where it is installed
(a C load generator outside any Python process, ``bench/load.lua``), else httpx loops in this one.
In the same run, a separate process measures the raw ONNX int8 engine (``Encoder.encode``, batches
of 32) while the server is idle, so "served vs raw" is a ratio measured side by side.

    .venv/bin/python bench/serve.py --docs 100000 --seconds 10

Either way the clients run on the same cores as the server: on a small machine their CPU use
lowers what the server can do, and the numbers include that (wrk's far less than httpx's).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from machine import cpu_flags, cpu_model, version

if TYPE_CHECKING:
    import httpx

    from model.artifact import Backend

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

COLLECTION = "bench"
CENTRES, NOISE, CHUNK = 300, 0.04, 10_000  # noise per dimension: cosine to the centre ≈ 0.8
CACHED_SET = 64
RESULT_MARK = "@@BENCH_RESULT@@ "
TEMPLATES = (
    "The train to the airport leaves every {n} minutes.",
    "Der Zug zum Flughafen fährt alle {n} Minuten ab.",
    "Le train pour l'aéroport part toutes les {n} minutes.",
    "El tren al aeropuerto sale cada {n} minutos.",
    "Поезд в аэропорт отправляется каждые {n} минут.",
    "去机场的火车每{n}分钟发一班。",
)
TARGET_RATIO, TARGET_CACHED_P50_MS, TARGET_SEARCH_P99_MS = 0.85, 1.0, 10.0


def sentence(tag: str, n: int) -> str:
    """A short (~15-20 token) sentence, unique per (tag, n), so nothing is served from a cache."""
    return f"{TEMPLATES[n % len(TEMPLATES)].format(n=n)} ({tag})"


# --------------------------------------------------------------------------- raw engine (subprocess)


def raw_engine(model_dir: Path, seconds: float, label: str) -> int:
    """Sentences/s of Encoder.encode on unique short sentences in batches of 32; one marked JSON line.
    ``label`` goes into every sentence as it does in the served cells, so both embed texts of one
    length (a longer label adds tokens, and served ÷ raw would compare different work)."""
    from model.encoder import Encoder

    encoder = Encoder.load(model_dir, backend=served_backend(model_dir))
    counter = itertools.count()

    def batch() -> list[str]:
        return [sentence(label, next(counter)) for _ in range(32)]

    encoder.encode(batch(), "query")  # warm-up
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        encoder.encode(batch(), "query")
        done += 32
    print(RESULT_MARK + json.dumps({"sent_s": done / elapsed, "sentences": done}), flush=True)
    return 0


def served_backend(model_dir: Path) -> Backend:
    """What the server's ``auto`` runs on this CPU: the raw engine measures the same backend."""
    from model.artifact import read_manifest
    from model.backend_choice import choose_backend
    from model.cpu import cpu_features

    return choose_backend("auto", model_dir, read_manifest(model_dir), cpu_features()).backend


def run_raw_engine(model_dir: Path, seconds: float, label: str) -> float:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--raw-engine", "--model-dir", str(model_dir)]
    cmd += ["--raw-label", label]
    proc = subprocess.run(
        [*cmd, "--seconds", str(seconds)], capture_output=True, text=True, timeout=300, check=False
    )
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return float(json.loads(line[len(RESULT_MARK) :])["sent_s"])
    raise RuntimeError(f"raw engine failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")


# --------------------------------------------------------------------------- collection and server


def build_collection(
    collections_dir: Path, model_id: str, dim: int, docs: int, seed: int, index: str = "auto"
) -> str:
    """Clustered random unit vectors ("doc i") written straight to disk; returns the index kind."""
    from index.collection import Collection
    from index.index_choice import effective_factory
    from index.store import Document

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CENTRES, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    coll = Collection.create(collections_dir, COLLECTION, model_id, dim, index)
    try:
        for start in range(0, docs, CHUNK):
            n = min(CHUNK, docs - start)
            vecs = centres[rng.integers(0, CENTRES, n)] + NOISE * rng.standard_normal((n, dim), np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            coll.upsert([Document(f"d{i}", f"doc {i}") for i in range(start, start + n)], vecs)
        coll.checkpoint()  # the server loads the snapshot instead of replaying every row
    finally:
        coll.close()
    return effective_factory(coll.manifest.index_factory, docs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(
    home: Path,
    model_dir: Path,
    port: int,
    redis: str | None,
    src: Path = ROOT,
    settings: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """The real CLI in its own session (Ctrl-C reaches only us; we stop it), cwd = home (no .env).

    ``src`` is the source tree to run (another checkout compares two versions in one run);
    ``settings`` are extra DAPSEARCH_* variables."""
    env = dict(
        os.environ, DAPSEARCH_HOME=str(home), DAPSEARCH_MODEL_DIR=str(model_dir), DAPSEARCH_DEMO="false"
    )
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), env.get("PYTHONPATH")) if p)
    env.pop("DAPSEARCH_REDIS_URL", None)
    if redis:
        env["DAPSEARCH_REDIS_URL"] = redis
    env.update(settings or {})
    cmd = [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with (home / "server.log").open("wb") as log:
        return subprocess.Popen(
            cmd, cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_ready(
    base: str, proc: subprocess.Popen[bytes], log: Path, timeout: float, path: str = "/health/ready"
) -> dict[str, Any]:
    """The body of ``path`` once it answers 200 (dapsearch's readiness by default; a peer names its
    own); fails with the server's log when it exits, reports a failed load, or stays unready."""
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=base, timeout=5.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                resp = await client.get(path)
                json_body = resp.headers.get("content-type", "").startswith("application/json")
                body: dict[str, Any] = resp.json() if json_body else {}
                if resp.status_code == 200:
                    return body
                if body.get("status") == "failed":
                    raise RuntimeError(f"server failed to load: {body.get('detail')}")
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


# --------------------------------------------------------------------------- server metrics


@dataclass
class Histogram:
    """One Prometheus histogram series: cumulative (upper bound, count) buckets, sum and count."""

    buckets: list[tuple[float, float]]
    sum: float
    count: float

    def __sub__(self, other: Histogram) -> Histogram:
        if not other.buckets:  # the series did not exist yet
            return self
        pairs = zip(self.buckets, other.buckets, strict=True)
        return Histogram(
            [(b, c - d) for (b, c), (_, d) in pairs], self.sum - other.sum, self.count - other.count
        )

    def quantile(self, q: float) -> float:
        """Linear interpolation inside the bucket holding the q-th observation (Prometheus' method)."""
        target, lo, below = q * self.count, 0.0, 0.0
        for bound, cum in self.buckets:
            if cum >= target:
                if math.isinf(bound):
                    return lo
                return lo + (bound - lo) * ((target - below) / (cum - below) if cum > below else 1.0)
            lo, below = bound, cum
        return lo


_SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_histogram(text: str, name: str, **labels: str) -> Histogram:
    buckets: list[tuple[float, float]] = []
    total = count = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or not match.group(1).startswith(name):
            continue
        found = dict(_LABEL.findall(match.group(2) or ""))
        if any(found.get(k) != v for k, v in labels.items()):
            continue
        suffix, value = match.group(1)[len(name) :], float(match.group(3))
        if suffix == "_bucket":
            buckets.append((float(found["le"]), value))
        elif suffix == "_sum":
            total = value
        elif suffix == "_count":
            count = value
    return Histogram(sorted(buckets), total, count)


# --------------------------------------------------------------------------- load generation


@dataclass
class Cell:
    clients: int
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0
    server: Histogram | None = None  # request-duration delta over the cell
    batch: Histogram | None = None  # forward batch sizes over the cell
    requests: int | None = None  # from wrk, which reports counts and percentiles, not every latency
    percentiles_ms: dict[float, float] | None = None

    @property
    def rps(self) -> float:
        done = len(self.latencies_ms) if self.requests is None else self.requests
        return done / self.elapsed if self.elapsed else 0.0

    def pct(self, q: float) -> float:
        if self.percentiles_ms is not None:
            return self.percentiles_ms.get(q, math.nan)
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else math.nan

    def server_p50_ms(self) -> float:
        return self.server.quantile(0.5) * 1e3 if self.server and self.server.count else math.nan


def server_side(cell: Cell, path: str, before: str, after: str) -> None:
    """The cell's handler-time and batch-size histograms: /metrics after the cell minus before."""
    name, route = "dapsearch_request_duration_seconds", {"route": path, "method": "POST"}
    cell.server = parse_histogram(after, name, **route) - parse_histogram(before, name, **route)
    name = "dapsearch_batch_size"
    cell.batch = parse_histogram(after, name) - parse_histogram(before, name)


async def run_cell(
    base: str, path: str, make_body: Callable[[], dict[str, Any]], clients: int, seconds: float
) -> Cell:
    """``clients`` concurrent loops, each with its own keep-alive HTTP/1.1 connection, for ``seconds``."""
    import httpx

    cell = Cell(clients)

    async def loop(client: httpx.AsyncClient, deadline: float) -> None:
        while time.perf_counter() < deadline:
            body = make_body()
            started = time.perf_counter()
            try:
                status = (await client.post(path, json=body)).status_code
            except httpx.HTTPError:
                status = 0
            if status == 200:
                cell.latencies_ms.append((time.perf_counter() - started) * 1000.0)
            else:
                cell.errors += 1

    pool = [httpx.AsyncClient(base_url=base, timeout=60.0) for _ in range(clients)]
    try:
        await asyncio.gather(*(c.get("/health/live") for c in pool))  # connect before the clock starts
        before = (await pool[0].get("/metrics")).text
        start = time.perf_counter()
        await asyncio.gather(*(loop(c, start + seconds) for c in pool))
        cell.elapsed = time.perf_counter() - start
        after = (await pool[0].get("/metrics")).text
    finally:
        await asyncio.gather(*(c.aclose() for c in pool))
    server_side(cell, path, before, after)
    return cell


WRK_SCRIPT = HERE / "load.lua"
WRK_MARK = "@@WRK@@ "


async def run_wrk(base: str, clients: int, seconds: float, script_args: Sequence[str]) -> dict[str, int]:
    """One wrk run (one thread, ``clients`` keep-alive connections; bench/load.lua makes the
    bodies from ``script_args``): the JSON line the script prints at the end."""
    proc = await asyncio.create_subprocess_exec(
        "wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--timeout", "60s",
        "-s", str(WRK_SCRIPT), base, "--", *script_args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    lines = [line for line in out.decode().splitlines() if line.startswith(WRK_MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}): {err.decode()[-2000:]}")
    result: dict[str, int] = json.loads(lines[-1][len(WRK_MARK) :])
    return result


async def run_cell_wrk(base: str, path: str, mode: str, tag: str, clients: int, seconds: float) -> Cell:
    """The same cell driven by wrk: a load generator in C, outside any Python process, so the
    clients cost the server's CPU far less than httpx loops do."""
    import httpx

    cell = Cell(clients)
    async with httpx.AsyncClient(base_url=base, timeout=60.0) as client:
        before = (await client.get("/metrics")).text
        result = await run_wrk(base, clients, seconds, [mode, tag, COLLECTION])
        after = (await client.get("/metrics")).text
    cell.elapsed = result["duration_us"] / 1e6
    cell.errors = result["errors"] + result["status_errors"]
    cell.requests = result["requests"] - result["status_errors"]
    cell.percentiles_ms = {50: result["p50_us"] / 1e3, 99: result["p99_us"] / 1e3}
    server_side(cell, path, before, after)
    return cell


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def version_of_wrk() -> str:
    proc = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    first = (proc.stdout or proc.stderr).split("\n", 1)[0].split()
    return first[1] if len(first) > 1 else "?"


async def measure(
    base: str, clients: Sequence[int], seconds: float, load: str = "httpx"
) -> dict[tuple[str, str], list[Cell]]:
    import httpx

    run = secrets.token_hex(3)  # unique per run, so a persistent Redis cache never turns misses into hits
    counter = itertools.count()
    cached = [sentence(f"cached {run}", i) for i in range(CACHED_SET)]
    async with httpx.AsyncClient(base_url=base, timeout=120.0) as client:
        for text in cached:  # warm the cache
            (await client.post("/embed", json={"texts": [text]})).raise_for_status()
        warm = {"collection": COLLECTION, "query": sentence(f"warm {run}", 0), "k": 10}
        (await client.post("/search", json=warm)).raise_for_status()  # opens the collection

    def cold() -> dict[str, Any]:
        return {"texts": [sentence(f"cold {run}", next(counter))]}

    def hit() -> dict[str, Any]:
        return {"texts": [cached[next(counter) % CACHED_SET]]}

    def search() -> dict[str, Any]:
        return {"collection": COLLECTION, "query": sentence(f"search {run}", next(counter)), "k": 10}

    modes: list[tuple[str, str, Callable[[], dict[str, Any]], str]] = [
        ("/embed", "cold (unique text)", cold, "cold"),
        ("/embed", "cached (64 texts)", hit, "cached"),
        ("/search", "k=10, unique query", search, "search"),
    ]
    results: dict[tuple[str, str], list[Cell]] = {}
    for path, mode, make_body, wrk_mode in modes:
        for n in clients:
            print(f"  {path} {mode}, {n} clients ({load}) ...", file=sys.stderr, flush=True)
            if load == "wrk":
                # cached: the texts warmed above; the others: unique per cell as well as per run
                tag = run if wrk_mode == "cached" else f"{run} {n}"
                cell = await run_cell_wrk(base, path, wrk_mode, tag, n, seconds)
            else:
                cell = await run_cell(base, path, make_body, n, seconds)
            results.setdefault((path, mode), []).append(cell)
    return results


# --------------------------------------------------------------------------- report


def table(results: dict[tuple[str, str], list[Cell]], clients: Sequence[int]) -> list[str]:
    head = [f"{n} client{'s' if n > 1 else ''}: req/s · p50 · p99 ms (errors)" for n in clients]
    lines = ["| endpoint | mode | " + " | ".join(head) + " |", "|---|---|" + "---:|" * len(clients)]
    for (endpoint, mode), cells in results.items():
        row = [f"{c.rps:,.0f} · {c.pct(50):.1f} · {c.pct(99):.1f} ({c.errors})" for c in cells]
        lines.append(f"| {endpoint} | {mode} | " + " | ".join(row) + " |")
    head = [f"{n}: p50 est · mean ms (mean batch)" for n in clients]
    lines += ["", "Server-side handler time (from /metrics deltas per cell; no client or socket time):", ""]
    lines += ["| endpoint | mode | " + " | ".join(head) + " |", "|---|---|" + "---:|" * len(clients)]
    for (endpoint, mode), cells in results.items():
        row = []
        for c in cells:
            s, b = c.server, c.batch
            ms = f"{c.server_p50_ms():.2f} · {s.sum / s.count * 1e3:.2f}" if s and s.count else "n/a"
            row.append(ms + (f" ({b.sum / b.count:.1f})" if b and b.count else " (-)"))
        lines.append(f"| {endpoint} | {mode} | " + " | ".join(row) + " |")
    return lines


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def per_clients(cells: Sequence[Cell], value: Callable[[Cell], float], target: float) -> str:
    """'1 client 1.4 ms met; 8 clients 8.3 ms NOT met; ...' (NaN, no data, is never met)."""
    parts = [(c.clients, value(c)) for c in cells]
    return "; ".join(f"{n} client{'s' * (n > 1)} {v:.2f} ms {verdict(v <= target)}" for n, v in parts)


def report_targets(
    results: dict[tuple[str, str], list[Cell]], raw_sent_s: float, docs: int, backend: str
) -> list[str]:
    cold, hit, search = results.values()
    top = max(cold, key=lambda c: c.clients)
    ratio = top.rps / raw_sent_s
    lines = [
        f"raw engine (Encoder.encode, {backend}, batches of 32, separate process, server idle): "
        f"{raw_sent_s:,.0f} sentences/s",
        f"served /embed cold at {top.clients} clients ÷ raw engine: {top.rps:,.0f} / {raw_sent_s:,.0f} = "
        f"{ratio:.2f} (target ≥ {TARGET_RATIO}): {verdict(ratio >= TARGET_RATIO)}",
    ]
    lines.append(
        f"cached /embed server-side p50 (target ≤ {TARGET_CACHED_P50_MS:g} ms): "
        + per_clients(hit, Cell.server_p50_ms, TARGET_CACHED_P50_MS)
    )
    lines.append(
        f"/search client-side p99 at {docs:,} docs (target ≤ {TARGET_SEARCH_P99_MS:g} ms): "
        + per_clients(search, lambda c: c.pct(99), TARGET_SEARCH_P99_MS)
    )
    if docs != 100_000:
        lines.append(f"note: --docs {docs:,}, not the 100,000 the /search target is stated for")
    return lines


def default_model_dir() -> Path:
    """The real model as tests/conftest.py finds it (built on first use)."""
    from model.artifact import default_model_dir as model_dir_in
    from model.build import ensure_model

    directory = model_dir_in(Path(os.environ.get("DAPSEARCH_HOME", ROOT / "var")))
    ensure_model(directory, "onnx-int8")
    return directory


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--docs", type=int, default=100_000, help="documents in the bench collection")
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each cell (and of the raw run)")
    p.add_argument("--clients", default="1,8,32", help="comma-separated concurrent client counts")
    p.add_argument("--redis", default=None, metavar="URL", help="serve with DAPSEARCH_REDIS_URL=URL")
    p.add_argument("--model-dir", type=Path, default=None, help="built model [default: the tests' one]")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--index", default="auto", help="the collection's index (a collection's index_factory)")
    p.add_argument(
        "--load",
        choices=("wrk", "httpx"),
        default=None,
        help="load generator: wrk (a C program; Debian's wrk package) or httpx loops in this process "
        "[default: wrk where installed]",
    )
    p.add_argument("--raw-engine", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--raw-label", default="raw", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.client_list = [int(c) for c in args.clients.split(",") if c.strip()]
    if args.load is None:
        args.load = "wrk" if have_wrk() else "httpx"
    elif args.load == "wrk" and not have_wrk():
        p.error("--load wrk: no wrk on PATH (Debian: apt-get install wrk)")
    if not args.client_list or min(args.client_list) < 1:
        p.error("--clients needs positive integers")
    return args


def _terminate(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # so `finally` stops the server and removes the temp dir on SIGTERM too


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    model_dir = (args.model_dir or default_model_dir()).resolve()
    if args.raw_engine:
        return raw_engine(model_dir, args.seconds, args.raw_label)
    from model.artifact import read_manifest

    signal.signal(signal.SIGTERM, _terminate)
    manifest = read_manifest(model_dir)
    backend = served_backend(model_dir)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        home = Path(tmp)
        print(f"building {args.docs:,} documents ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        kind = build_collection(
            home / "collections", manifest.id, manifest.dim, args.docs, args.seed, args.index
        )
        build_s = time.perf_counter() - started
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = start_server(home, model_dir, port, args.redis)
        try:
            ready = asyncio.run(wait_ready(base, server, home / "server.log", timeout=300))
            print("raw engine ...", file=sys.stderr, flush=True)
            # the label of a cold cell at 8 clients: "cold", a 6-hex run, the clients, thread 1
            raw_sent_s = run_raw_engine(model_dir, args.seconds, f"cold {secrets.token_hex(3)} 8 1")
            results = asyncio.run(measure(base, args.client_list, args.seconds, args.load))
        finally:
            stop_server(server)
    load_after = os.getloadavg()

    script = Path(__file__).resolve().relative_to(ROOT)
    print("command: " + shlex.join([".venv/bin/python", str(script), *argv]))
    print(
        f"cpu: {cpu_model()} ({os.cpu_count()} logical cores, {cpu_flags()}); "
        f"1-min load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}"
    )
    dists = ("fastapi", "uvicorn", "httpx", "onnxruntime", "faiss-cpu", "numpy", "redis")
    print(f"python {platform.python_version()}, " + ", ".join(f"{d} {version(d)}" for d in dists))
    ours = {f"DAPSEARCH_{k}" for k in ("HOME", "MODEL_DIR", "DEMO", "REDIS_URL")}
    inherited = sorted(k for k in os.environ if k.startswith("DAPSEARCH_") and k not in ours)
    cache = ready.get("cache") or {}
    extra = f" (inherited: {', '.join(inherited)})" if inherited else ""
    print(
        f"server: `python -m cli serve`, model {manifest.id} ({backend}, auto), "
        f"cache {cache.get('backend')} (ok: {cache.get('ok')}), other settings default{extra}"
    )
    print(
        f"collection: {args.docs:,} clustered random unit vectors ({CENTRES} centres), index {kind} "
        f"({args.index}), built on disk in {build_s:.1f} s"
    )
    if args.load == "wrk":
        print(
            f"load: {args.seconds:g} s per cell; wrk {version_of_wrk()} (one thread, one HTTP/1.1 keep-alive "
            "connection per client, bench/load.lua), sharing the CPU with the server; 1 text per request; "
            "latency = wrk's client-side percentiles; errors = non-2xx or socket errors"
        )
    else:
        print(
            f"load: {args.seconds:g} s per cell; one httpx.AsyncClient per client (HTTP/1.1 keep-alive), "
            "asyncio, in this process, sharing the CPU with the server; 1 text per request; "
            "latency = client-side end to end of 200 responses; errors = non-200 or transport errors"
        )
    print()
    print("\n".join(table(results, args.client_list)))
    print()
    for line in report_targets(results, raw_sent_s, args.docs, backend):
        print(line)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        print("interrupted: server stopped, temporary directory removed", file=sys.stderr)
        sys.exit(130)
