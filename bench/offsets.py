"""Language-offset removal at inference: does subtracting a per-language mean shift help?

Why: a multilingual encoder places each language's sentences around its own centre, so part of
what separates a sentence from its translation is a constant per-language vector. Removing it
(e(x) − μ_lang + μ_en, renormalised; μ from training text, never dev) is a serving-protocol change
(every text needs its language, which collections detect at ingest), so it is measured here as a
row apart from the model rows. μ is computed per prefix (``query:`` and ``passage:``) from the
training pairs' two sides.

Rows, for each model given: dev and dev-short P@1 both ways (X side shifted), search-dev mono
(questions and paragraphs of one language, both shifted), cross (X questions shifted → English
paragraphs) and en→en (unchanged), with and without the shift. Run from the repository root:

    nice .venv/bin/python bench/offsets.py --model var/models/multilingual-e5-small-dap
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from machine import cpu_flags, cpu_model

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from evaluation.search import rank_metrics, read_search_dev  # noqa: E402
from model.encoder import Encoder, Kind  # noqa: E402
from model.train.corpus import read_dev  # noqa: E402
from model.train.dev import retrieval_p1  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def training_sample(lang: str, n: int) -> list[tuple[str, str]]:
    """The first ``n`` training pairs of ``lang`` (files are shuffled with a fixed seed)."""
    pairs: list[tuple[str, str]] = []
    for folder in ("parallel", "parallel-extra"):
        path = SHARED / folder / f"{lang}-en.tsv.gz"
        if not path.is_file():
            continue
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                src, _, en = line.rstrip("\n").partition("\t")
                if src and en:
                    pairs.append((src, en))
                if len(pairs) >= n:
                    return pairs
    return pairs


class Shifted:
    """Embeddings with the language offset removed, offsets computed on first use per (lang, kind)."""

    def __init__(self, encoder: Encoder, sample: int) -> None:
        self.encoder = encoder
        self.sample = sample
        self.offsets: dict[tuple[str, Kind], np.ndarray] = {}

    def offset(self, lang: str, kind: Kind) -> np.ndarray:
        if (lang, kind) not in self.offsets:
            pairs = training_sample(lang, self.sample)
            if not pairs:  # no training text in this language (search-dev's ro): nothing to remove
                self.offsets[(lang, kind)] = np.zeros(self.encoder.manifest.dim, dtype=np.float32)
                return self.offsets[(lang, kind)]
            src = self.encoder.embed([p[0] for p in pairs], kind)
            en = self.encoder.embed([p[1] for p in pairs], kind)
            self.offsets[(lang, kind)] = src.mean(axis=0) - en.mean(axis=0)
        return self.offsets[(lang, kind)]

    def embed(self, texts: Sequence[str], lang: str, kind: Kind, shift: bool) -> np.ndarray:
        vectors = self.encoder.embed(list(texts), kind)
        if not shift or lang == "en":
            return vectors
        moved = vectors - self.offset(lang, kind)
        return np.asarray(moved / np.linalg.norm(moved, axis=1, keepdims=True), dtype=np.float32)


def measure(shifted: Shifted, shift: bool, limit: int) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name in ("dev", "dev-short"):
        folder = SHARED / ("parallel" if name == "dev" else "parallel-extra") / name
        scores = []
        for lang, pairs in read_dev(folder, None, limit).items():
            src = shifted.embed([p.src for p in pairs], lang, "query", shift)
            en = shifted.embed([p.en for p in pairs], "en", "query", shift)
            scores.append(retrieval_p1(src, en))
        row[name] = [float(np.mean([s[i] for s in scores])) for i in (0, 1)]
    data = read_search_dev(SHARED / "search-dev")
    english = data["en"]
    en_passages = shifted.embed(english.passages, "en", "passage", shift)
    mono, cross = [], []
    for lang, item in data.items():
        queries = shifted.embed(item.queries, lang, "query", shift)
        passages = shifted.embed(item.passages, lang, "passage", shift)
        mono.append(rank_metrics(queries, passages, item.answers)[0])
        if lang != "en":
            position = {pid: i for i, pid in enumerate(english.passage_ids)}
            answers = [position[item.passage_ids[a]] for a in item.answers]
            cross.append(rank_metrics(queries, en_passages, answers)[0])
    langs = list(data)
    row["search_mono"] = float(np.mean([m for lang, m in zip(langs, mono, strict=True) if lang != "en"]))
    row["search_cross"] = float(np.mean(cross))
    row["search_en"] = mono[langs.index("en")]
    row["mono_en"] = float(np.mean(mono))
    return row


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, action="append", required=True, help="built model directory")
    p.add_argument("--sample", type=int, default=500, help="training pairs per language for each offset")
    p.add_argument("--limit", type=int, default=None, help="dev pairs per language [default: all]")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--shifted-only", action="store_true", help="skip the rows without the shift")
    args = p.parse_args(argv)
    print(f"cpu: {cpu_model()}; flags: {cpu_flags()}")
    results = []
    for model_dir in args.model:
        encoder = Encoder.load(model_dir, backend="torch", batch_size=64)
        shifted = Shifted(encoder, args.sample)
        for shift in (True,) if args.shifted_only else (False, True):
            started = time.perf_counter()
            row = measure(shifted, shift, args.limit)
            row.update(model=encoder.model_id, shift=shift, seconds=round(time.perf_counter() - started, 1))
            results.append(row)
            print(json.dumps(row), flush=True)
    print(
        "\n| model | offset removed | dev xx→en | dev en→xx | dev-short xx→en | dev-short en→xx "
        "| search mono R@1 | cross R@1 | en→en R@1 | mono+en |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['model']} | {'yes' if r['shift'] else 'no'} | {r['dev'][0]:.1f} | {r['dev'][1]:.1f} "
            f"| {r['dev-short'][0]:.1f} | {r['dev-short'][1]:.1f} | {r['search_mono']:.1f} "
            f"| {r['search_cross']:.1f} | {r['search_en']:.1f} | {r['mono_en']:.1f} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
