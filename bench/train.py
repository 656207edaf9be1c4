"""DAP training throughput on this CPU: pairs/s in fp32 and in bf16 autocast, TR+RTL and TR only.

Why: the CPU recipe's step budget (``dapsearch train --preset cpu``) comes from these numbers,
and bf16 is used only where the CPU has it natively (AMX or AVX512-BF16); elsewhere it is
emulated and slower than fp32. Each configuration runs in its own subprocess on the same
batches of real training pairs, a few warm-up steps first.

    .venv/bin/python bench/train.py --steps 8 --batch-size 128
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from machine import cpu_flags, cpu_model, main_for, peak_rss_mb, version

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CONFIGS = ("fp32/TR+RTL", "bf16/TR+RTL", "fp32/TR", "bf16/TR")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=REPO / "var" / "models" / "multilingual-e5-small")
    p.add_argument("--data", type=Path, action="append", default=None, help="training folders")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=8, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def worker(args: argparse.Namespace) -> int:
    import torch

    sys.path.insert(0, str(REPO))
    from model.train.config import TrainConfig
    from model.train.loop import Trainer

    precision, losses = args.worker.split("/")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            data=args.data or [SHARED / "parallel", SHARED / "parallel-extra"],
            out=Path(tmp),
            model_dir=args.model_dir,
            steps=args.warmup + args.steps,
            batch_size=args.batch_size,
            rtl=losses == "TR+RTL",
            select=False,
            lang_alpha=0.5,
            precision=precision,
            device="cpu",
        )
        trainer = Trainer(cfg)
        batches = trainer.stream.batches(cfg.batch_size)
        data = [next(batches) for _ in range(cfg.steps)]
        for batch in data[: args.warmup]:
            trainer.train_step(batch)
        started = time.perf_counter()
        for batch in data[args.warmup :]:
            trainer.train_step(batch)
        seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "config": args.worker,
                "pairs_per_s": args.steps * args.batch_size / seconds,
                "s_per_step": seconds / args.steps,
                "threads": torch.get_num_threads(),
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    )
    return 0


def parent(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from model.train.config import cpu_has_native_bf16

    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores, {cpu_flags()})")
    print(f"torch {version('torch')}, native bf16: {cpu_has_native_bf16()}")
    print(f"batch {args.batch_size} pairs, max length 32, {args.steps} timed steps after {args.warmup}")
    rows = []
    for config in args.configs.split(","):
        if config.startswith("bf16") and not cpu_has_native_bf16():
            print(f"{config}: not run, this CPU has no native bf16")
            continue
        out = subprocess.run(
            [sys.executable, *argv, "--worker", config], capture_output=True, text=True, check=False
        )
        if out.returncode != 0:
            print(f"{config}: failed\n{out.stderr[-2000:]}")
            return 1
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    ref = {r["config"].split("/")[1]: r["pairs_per_s"] for r in rows if r["config"].startswith("fp32")}
    print("\n| config | pairs/s | s/step | vs fp32 | peak RSS MB |\n|---|---:|---:|---:|---:|")
    for r in rows:
        base = ref.get(r["config"].split("/")[1])
        ratio = f"{r['pairs_per_s'] / base:.2f}×" if base else ""
        rate, step, rss = f"{r['pairs_per_s']:.1f}", f"{r['s_per_step']:.2f}", f"{r['peak_rss_mb']:.0f}"
        print(f"| {r['config']} | {rate} | {step} | {ratio} | {rss} |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main_for(parse_args, worker, parent))
