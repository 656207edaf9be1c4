"""Batches cut by length (``model.padding.plan``) against full batches, in the engine, side by side.

A served request's texts have whatever lengths its users wrote; one batch of them pads every text
to the longest. This measures, on the served graph of this CPU:

1. the cost of one forward pass of n texts padded to L tokens, fitted as ``a + b * n * L * (1 +
   L / ATTENTION_WIDTH)``: ``a / b`` is the pass cost in tokens that ``plan`` trades against padding;
2. requests of R dev sentences (all 36 languages and English, natural lengths), each embedded as
   full batches (the old plan) and as planned groups, interleaved over rounds: texts/s, the share
   of padded positions, and the ratio; and that both give the same vectors.

    .venv/bin/python bench/padding.py --model-dir var/models/multilingual-e5-small-dap
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from embed import read_parallel
from machine import ROOT, cpu_flags, cpu_model, version

from model.artifact import read_manifest
from model.backend_choice import choose_backend
from model.cpu import cpu_features
from model.encoder import MAX_BATCH_TOKENS, Encoder, TokenBatch
from model.padding import ATTENTION_WIDTH, PASS_TOKENS, full_batches, plan

Planner = Callable[[list[int]], list[list[int]]]


def fit_pass_cost(enc: Encoder, repeats: int) -> tuple[float, float]:
    """Least-squares (a, b) in seconds of ``a + b * n * L * (1 + L / ATTENTION_WIDTH)``."""
    rows, times = [], []
    for n in (1, 2, 4, 8, 16, 32):
        for width in (8, 16, 32, 64, 128):
            if n * width > MAX_BATCH_TOKENS:
                continue
            ids = np.full((n, width), 1000, dtype=np.int64)
            mask = np.ones_like(ids)
            enc.backend.forward(ids, mask)  # warm this shape
            samples = []
            for _ in range(repeats):
                started = time.perf_counter()
                enc.backend.forward(ids, mask)
                samples.append(time.perf_counter() - started)
            run = enc.backend.run_width(n, width)
            rows.append([1.0, n * run * (1 + run / ATTENTION_WIDTH)])
            times.append(statistics.median(samples))
    (a, b), *_ = np.linalg.lstsq(np.array(rows), np.array(times), rcond=None)
    return float(a), float(b)


def run(enc: Encoder, requests: list[list[list[int]]], planner: Planner) -> tuple[float, float, np.ndarray]:
    """Seconds for all requests, the padded share of the positions run, and the vectors."""
    padded = real = 0
    vectors = []
    started = time.perf_counter()
    for ids in requests:
        out = np.empty((len(ids), enc.dim), dtype=np.float32)
        for group in planner([len(row) for row in ids]):
            batch: TokenBatch = enc.tokenizer.pad(ids, group)
            out[group] = enc.backend.forward(batch.input_ids, batch.attention_mask)
            padded += batch.attention_mask.size
            real += int(batch.attention_mask.sum())
        vectors.append(out)
    return time.perf_counter() - started, 1 - real / padded, np.concatenate(vectors)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, default=ROOT / "var/models/multilingual-e5-small-dap")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/parallel/dev")
    parser.add_argument("--sizes", default="8,32", help="texts per request")
    parser.add_argument("--requests", type=int, default=40, help="requests per size and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15, help="forwards per cell of the cost fit")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    cpu = cpu_features()
    backend = choose_backend(args.backend, args.model_dir, read_manifest(args.model_dir), cpu).backend
    enc = Encoder.load(args.model_dir, backend=backend)
    print(
        f"CPU: {cpu_model()} ({cpu_flags()}); backend {backend}; onnxruntime {version('onnxruntime')}, "
        f"openvino {version('openvino')}"
    )
    a, b = fit_pass_cost(enc, args.repeats)
    print(
        f"pass cost fit: a = {a * 1e3:.2f} ms, b = {b * 1e6:.1f} us per padded token: "
        f"a / b = {a / b:.1f} tokens (shipped PASS_TOKENS = {PASS_TOKENS})"
    )

    sentences = [s for texts in read_parallel(args.data).values() for s in texts]
    rng = random.Random(7)

    def full(lengths: list[int]) -> list[list[int]]:
        return full_batches(lengths, args.batch_size, MAX_BATCH_TOKENS)

    def planned(lengths: list[int]) -> list[list[int]]:
        return plan(lengths, args.batch_size, MAX_BATCH_TOKENS, widening=enc.backend.run_width)

    print(
        "\n| texts per request | full batches texts/s | padded share | planned texts/s | padded share "
        "| planned ÷ full | max abs vector diff |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        texts = [rng.sample(sentences, size) for _ in range(args.requests)]
        requests = [enc.tokenizer.tokenize(t, "query").ids for t in texts]
        run(enc, requests[:3], planned)  # warm the shapes
        seconds: dict[str, list[float]] = {"full": [], "plan": []}
        share: dict[str, float] = {}
        vecs: dict[str, np.ndarray] = {}
        for _ in range(args.rounds):
            for name, planner in (("full", full), ("plan", planned)):
                took, share[name], vecs[name] = run(enc, requests, planner)
                seconds[name].append(took)
        rate = {name: size * args.requests / statistics.median(s) for name, s in seconds.items()}
        diff = float(np.abs(vecs["full"] - vecs["plan"]).max())
        print(
            f"| {size} | {rate['full']:.0f} | {share['full']:.0%} | {rate['plan']:.0f} | {share['plan']:.0%} "
            f"| {rate['plan'] / rate['full']:.2f}× | {diff:.1e} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
