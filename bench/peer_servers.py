"""dapsearch against the peer embedding servers over HTTP: the same model, the same wrk load.

Each server serves the same model directory on the same cores, one at a time: dapsearch
(`dapsearch serve`, its `auto` backend) and infinity-emb, mean pooling, on its ONNX Runtime engine
with optimum's dynamic int8 for this CPU (its fastest here) and on its default torch engine
(installed by ``bench/peers.py install infinity`` into its own venv). wrk sends OpenAI-style requests
(``bench/load.lua``, mode ``openai``) of 1 and 32 new texts at 1, 8 and 32 keep-alive clients (a cell
must outlast one round of requests: 32 × 32 texts take 20 s at 50 texts/s); every text
carries e5's ``query: `` prefix, added by dapsearch itself (``input_type: query``) and written into
the text for infinity. Printed: one table with req/s, texts/s, p50 and the ratio to the best peer
per cell, start-up time and resident memory, and the CPU flags.

    .venv/bin/python bench/peer_servers.py --model-dir var/models/multilingual-e5-small-dap --seconds 15
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import peers
from machine import cpu_flags, cpu_model
from peer_engines import st_quantization
from serve import (
    free_port,
    have_wrk,
    run_raw_engine,
    run_wrk,
    start_server,
    stop_server,
    version_of_wrk,
    wait_ready,
)

# Embedded once through each server: their vectors must agree (same model, same pooling, same prefix).
CHECK_TEXTS = [
    "The cat is sleeping on the sofa.",
    "Die Katze schläft auf dem Sofa.",
    "猫在沙发上睡觉。",
    "How much protein should an adult eat every day to stay healthy and strong?",
]
PEER_MODEL = "e5"  # the name infinity serves the model under
TEI_ABSENT = "no PyPI or Debian package, its crates unreachable"


@dataclass
class Server:
    """One running server and how to address it."""

    name: str
    proc: subprocess.Popen[bytes]
    base: str
    path: str  # the embeddings route
    model: str  # "-": no model field
    prefix: str  # written into each text: "-" when the server adds it
    input_type: str  # "-": no input_type field
    ready: str  # the route that answers 200 once it serves
    startup_s: float = 0.0
    rss_mb: float = 0.0  # after the load, the whole session
    vectors: Any = None  # CHECK_TEXTS embedded by this server, to compare servers' vectors
    cells: dict[tuple[int, int], dict[str, float]] = field(default_factory=dict)


def rss_mb(sid: int) -> float:
    """Resident memory of the server's whole session (its workers included), in MB."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) != sid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total / 1024


async def wait_for(server: Server, timeout: float, log: Path) -> None:
    """Until the server answers its ready route; its start-up time is recorded."""
    started = time.monotonic()
    await wait_ready(server.base, server.proc, log, timeout, server.ready)
    server.startup_s = time.monotonic() - started


def start_dapsearch(home: Path, model_dir: Path) -> Server:
    port = free_port()
    proc = start_server(home, model_dir, port, None)
    base = f"http://127.0.0.1:{port}"
    return Server("dapsearch", proc, base, "/v1/embeddings", "-", "-", "query", "/health/ready")


def start_infinity(home: Path, model_dir: Path) -> Server:
    """infinity's default torch engine."""
    return _infinity(home, model_dir, "torch")


def start_infinity_onnx(home: Path, model_dir: Path) -> Server:
    """infinity's ONNX Runtime engine on optimum's dynamic int8 for this CPU (its best here)."""
    return _infinity(home, model_dir, "optimum")


def _infinity(home: Path, model_dir: Path, engine: str) -> Server:
    """infinity with mean pooling (its ONNX engine pools CLS otherwise), started inside a copy of
    the model folder (it cannot match an absolute model path against its files)."""
    if not peers.installed("infinity"):
        raise RuntimeError("not installed: bench/peers.py install infinity")
    folder = peers.peer_model_copy(model_dir)
    name = "infinity-emb (torch)"
    if engine == "optimum":
        config = st_quantization()
        print(f"infinity: exporting ONNX and its {config} int8 (first run only) ...", file=sys.stderr)
        folder = peers.infinity_onnx_copy(model_dir, config)
        name = f"infinity-emb (ONNX int8, {config})"
    port = free_port()
    binary = peers.venv_python("infinity").parent / "infinity_emb"
    cmd = [
        str(binary), "v2", "--model-id", ".", "--served-model-name", PEER_MODEL, "--engine", engine,
        "--device", "cpu", "--pooling-method", "mean", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", DO_NOT_TRACK="1", INFINITY_ANONYMOUS_USAGE_STATS="0")
    with (home / "infinity.log").open("wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    return Server(name, proc, f"http://127.0.0.1:{port}", "/embeddings", PEER_MODEL,
                  "query: ", "-", "/health")  # fmt: skip


async def embed_check(server: Server) -> None:
    """The CHECK_TEXTS' vectors as this server returns them, L2-normalised."""
    import httpx

    prefix = "" if server.prefix == "-" else server.prefix
    body: dict[str, Any] = {"input": [prefix + t for t in CHECK_TEXTS]}
    if server.model != "-":
        body["model"] = server.model
    if server.input_type != "-":
        body["input_type"] = server.input_type
    async with httpx.AsyncClient(base_url=server.base, timeout=60.0) as client:
        reply = await client.post(server.path, json=body)
        reply.raise_for_status()
    vectors = np.asarray([row["embedding"] for row in reply.json()["data"]], dtype=np.float64)
    server.vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def cell_label(run: str, texts: int, clients: int) -> str:
    """The label inside every text of one cell (bench/load.lua appends its thread id, 1): unique
    per cell and run, so no server answers from a cache, and short, so the texts stay 15-20
    tokens. Every server gets the same texts; the raw engine gets texts of the same length."""
    return f"{run}{texts}x{clients}"


async def run_cell(server: Server, tag: str, texts: int, clients: int, seconds: float) -> dict[str, float]:
    script_args = ["openai", tag, server.path, server.model, str(texts), server.prefix, server.input_type]
    result = await run_wrk(server.base, clients, seconds, script_args)
    ok = result["requests"] - result["status_errors"]
    elapsed = result["duration_us"] / 1e6
    return {
        "rps": ok / elapsed,
        "texts_s": ok * texts / elapsed,
        "p50_ms": result["p50_us"] / 1e3,
        "errors": float(result["errors"] + result["status_errors"]),
    }


async def measure(server: Server, args: argparse.Namespace) -> None:
    for texts in args.text_list:
        await run_cell(server, cell_label(args.run + "w", texts, 1), texts, 1, 3.0)  # warm-up, not recorded
        for clients in args.client_list:
            print(
                f"  {server.name}: {texts} text(s)/request, {clients} clients ...",
                file=sys.stderr,
                flush=True,
            )
            tag = cell_label(args.run, texts, clients)
            server.cells[(texts, clients)] = await run_cell(server, tag, texts, clients, args.seconds)
            # wrk leaves up to clients × texts texts in flight; a server that keeps embedding them
            # after the hang-up must not carry them into the next cell.
            await asyncio.sleep(min(30.0, texts * clients / 40))


def table(servers: Sequence[Server], args: argparse.Namespace) -> list[str]:
    head = " | ".join(f"{t} text(s)/req, {c} clients" for t in args.text_list for c in args.client_list)
    lines = [
        f"| server | start-up s | RSS MB | cos to first mean / min | {head} |",
        "|---|---:|---:|---|" + "---:|" * len(head.split(" | ")),
    ]
    ours = servers[0]
    for server in servers:
        row = []
        for texts in args.text_list:
            for clients in args.client_list:
                cell = server.cells.get((texts, clients))
                if cell is None:
                    row.append("—")
                    continue
                value = cell["rps"] if texts == 1 else cell["texts_s"]
                note = f" ({cell['errors']:.0f} err)" if cell["errors"] else ""
                row.append(f"{value:,.0f} · {cell['p50_ms']:.1f} ms{note}")
        cos = np.sum(server.vectors * servers[0].vectors, axis=1)
        agree = f"{cos.mean():.4f} / {cos.min():.4f}"
        first = f"| {server.name} | {server.startup_s:.1f} | {server.rss_mb:,.0f} | {agree} | "
        lines.append(first + " | ".join(row) + " |")
    cells = len(args.text_list) * len(args.client_list)
    lines.append(
        f"| text-embeddings-inference | — | — | not installable here: {TEI_ABSENT} |" + " — |" * cells
    )
    peers_run = [s for s in servers[1:] if s.cells]
    if peers_run:
        ratios = []
        for texts in args.text_list:
            for clients in args.client_list:
                key = "rps" if texts == 1 else "texts_s"
                best = max(p.cells[(texts, clients)][key] for p in peers_run)
                mine = ours.cells[(texts, clients)][key]
                ratios.append(f"{mine / best:.2f}×" if best > 0 else "— (no peer answered)")
        lines.append("| dapsearch ÷ best peer | | | | " + " | ".join(ratios) + " |")
    return lines


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--model-dir", type=Path, required=True, help="a built model directory (dapsearch model build)"
    )
    p.add_argument("--seconds", type=float, default=15.0, help="duration of each cell")
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--texts", default="1,32", help="texts per request")
    p.add_argument("--servers", default="dapsearch,infinity-onnx,infinity")
    args = p.parse_args(argv)
    args.client_list = [int(c) for c in args.clients.split(",")]
    args.run = secrets.token_hex(2)  # a new run never meets a text an earlier run left in a cache
    args.text_list = [int(t) for t in args.texts.split(",")]
    if not have_wrk():
        p.error("needs wrk on PATH (Debian: apt-get install wrk)")
    return args


async def amain(args: argparse.Namespace) -> int:
    starters = {
        "dapsearch": start_dapsearch,
        "infinity-onnx": start_infinity_onnx,
        "infinity": start_infinity,
    }
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="dapsearch-peers-") as tmp:
        for name in args.servers.split(","):
            home = Path(tmp) / name
            home.mkdir()
            try:
                server = starters[name](home, args.model_dir.resolve())
            except RuntimeError as exc:
                print(f"{name}: {exc}")
                continue
            try:
                await wait_for(server, 300.0, next(home.glob("*.log")))
                await embed_check(server)
                await measure(server, args)
                server.rss_mb = rss_mb(server.proc.pid)
            finally:
                stop_server(server.proc)
            servers.append(server)
    print("command: " + shlex.join([Path(sys.executable).name, *sys.argv]))
    print(f"cpu: {cpu_model()} ({os.cpu_count()} logical cores, {cpu_flags()}); wrk {version_of_wrk()}")
    for venv in ("infinity",):
        print(f"peer venv {peers.versions(venv)}")
    print(
        f"cells of {args.seconds:g} s after a 3 s warm-up; 1 text/request: req/s · p50; 32: texts/s · p50\n"
    )
    print("\n".join(table(servers, args)))
    ours = next((s for s in servers if s.name == "dapsearch"), None)
    if ours is not None and max(args.text_list) > 1:
        print("raw engine ...", file=sys.stderr, flush=True)
        label = f"{cell_label(secrets.token_hex(2), max(args.text_list), 8)} 1"
        raw = run_raw_engine(args.model_dir.resolve(), args.seconds, label)
        texts = max(args.text_list)
        served = " · ".join(f"{ours.cells[(texts, c)]['texts_s'] / raw:.2f} at {c}" for c in args.client_list)
        print(
            f"\nraw engine (Encoder.encode on texts of the cells' length, batches of 32, its own process): "
            f"{raw:,.0f} texts/s; dapsearch served ÷ raw at {texts} texts/request: {served} clients"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(amain(parse_args(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    raise SystemExit(main())
