"""Evaluation harness: cross-lingual retrieval and BUCC-style mining, several models side by side.

(a) Tatoeba-style retrieval: for each language, every dev sentence's nearest neighbour by cosine
among that language's dev pairs, P@1 in both directions. (b) BUCC-style mining: the gold pairs of
one half of the dev set are hidden among unrelated sentences in both languages (taken from
disjoint rows of the training file, so distractors are not translations of each other), pairs are
mined with the ratio margin and the max strategy, the F1-best threshold is tuned on that half and
applied to the other half, whose precision, recall and F1 are reported. Tuning on one corpus and
testing on another is what a user does with a new corpus, so it is the honest number.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from index.mining import best_threshold, evaluate, mine
from model.artifact import Backend
from model.encoder import Encoder
from model.errors import InputError
from model.train.data import Pair, find_parallel_files, read_dev, read_pairs


@dataclass
class LanguageScores:
    xx2en: float
    en2xx: float
    mining_precision: float | None = None
    mining_recall: float | None = None
    mining_f1: float | None = None
    threshold: float | None = None
    mining_oracle_f1: float | None = None  # threshold tuned on the test half itself (BUCC "oracle")


@dataclass
class ModelReport:
    model: str
    path: str
    languages: dict[str, LanguageScores] = field(default_factory=dict)

    def average(self, key: str) -> float | None:
        values = [getattr(s, key) for s in self.languages.values() if getattr(s, key) is not None]
        return float(np.mean(values)) if values else None


@dataclass
class MiningSet:
    """One half of a language's dev set diluted with distractors: sentences and gold (src, tgt) rows."""

    source: list[str]
    target: list[str]
    gold: list[tuple[int, int]]


def retrieval_p1(src: np.ndarray, en: np.ndarray) -> tuple[float, float]:
    """P@1 (%) xx→en and en→xx for aligned rows of L2-normalised vectors."""
    sims = src @ en.T
    gold = np.arange(len(src))
    return float((sims.argmax(axis=1) == gold).mean() * 100), float(
        (sims.argmax(axis=0) == gold).mean() * 100
    )


def mining_sets(
    pairs: Sequence[Pair], train_file: Path, lang: str, distractors_per_gold: int, seed: int
) -> tuple[MiningSet, MiningSet]:
    """Two halves (tune, test) of ``pairs``, each among ``distractors_per_gold`` unrelated sentences
    per gold pair on both sides."""
    half = len(pairs) // 2
    halves = (list(pairs[:half]), list(pairs[half:]))
    gold_text = {p.src for p in pairs} | {p.en for p in pairs}
    need = distractors_per_gold * len(pairs) * 2
    pool: list[Pair] = []
    for pair in read_pairs(train_file, lang):
        if pair.src not in gold_text and pair.en not in gold_text:
            pool.append(pair)
            if len(pool) >= need:
                break
    if len(pool) < need:
        raise InputError(f"{train_file} has too few sentences to dilute {len(pairs)} {lang} dev pairs")
    rng = random.Random(seed)
    out = []
    for i, gold_pairs in enumerate(halves):
        n = distractors_per_gold * len(gold_pairs)
        chunk = pool[i * need // 2 : (i + 1) * need // 2]
        # Non-English distractors from the first rows, English ones from other rows: never translations.
        source = [p.src for p in gold_pairs] + [p.src for p in chunk[:n]]
        target = [p.en for p in gold_pairs] + [p.en for p in chunk[n : 2 * n]]
        order = list(range(len(target)))
        rng.shuffle(order)
        position = {old: new for new, old in enumerate(order)}
        out.append(
            MiningSet(source, [target[j] for j in order], [(g, position[g]) for g in range(len(gold_pairs))])
        )
    return out[0], out[1]


def evaluate_model(
    model_dir: Path,
    dev: dict[str, list[Pair]],
    mining: dict[str, tuple[MiningSet, MiningSet]],
    backend: Backend = "torch",
    batch_size: int = 64,
    progress: Callable[[str], None] | None = None,
) -> ModelReport:
    encoder = Encoder.load(model_dir, backend=backend, batch_size=batch_size)
    report = ModelReport(encoder.model_id, str(model_dir))
    for lang, pairs in dev.items():
        if progress is not None:
            progress(f"{encoder.model_id}: {lang}")
        # "query" on both sides: e5's prefix for symmetric tasks, and what training uses.
        src = encoder.embed([p.src for p in pairs], "query")
        en = encoder.embed([p.en for p in pairs], "query")
        scores = LanguageScores(*retrieval_p1(src, en))
        if lang in mining:
            tune, test = mining[lang]
            tuned = best_threshold(_mine(encoder, tune), tune.gold)
            mined = _mine(encoder, test)
            result = evaluate(mined, test.gold, tuned.threshold)
            scores.mining_precision = result.precision * 100
            scores.mining_recall = result.recall * 100
            scores.mining_f1 = result.f1 * 100
            scores.threshold = tuned.threshold
            # Ranking quality alone: separates a bad ranking from a threshold that did not transfer.
            scores.mining_oracle_f1 = best_threshold(mined, test.gold).f1 * 100
        report.languages[lang] = scores
    return report


def _mine(encoder: Encoder, data: MiningSet) -> Any:
    return mine(encoder.embed(data.source, "query"), encoder.embed(data.target, "query"), strategy="max")


def run_evaluation(
    model_dirs: Sequence[Path],
    dev_dir: Path,
    langs: Sequence[str] | None = None,
    train_dir: Path | None = None,
    limit: int | None = None,
    distractors_per_gold: int = 4,
    backend: Backend = "torch",
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[ModelReport]:
    """Every model on the same dev pairs and mining sets (mining only where a training file exists)."""
    if not model_dirs:
        raise InputError("give at least one --model")
    dev = read_dev(dev_dir, langs, limit)
    if not dev:
        raise InputError(f"no dev pairs found in {dev_dir}")
    mining: dict[str, tuple[MiningSet, MiningSet]] = {}
    if train_dir is not None:
        files = find_parallel_files(train_dir, None)
        for lang, pairs in dev.items():
            if lang in files and len(pairs) >= 4:
                mining[lang] = mining_sets(pairs, files[lang], lang, distractors_per_gold, seed)
    return [evaluate_model(Path(d), dev, mining, backend, progress=progress) for d in model_dirs]


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def markdown(reports: Sequence[ModelReport]) -> str:
    """One table: a row per language (and the average), for each model xx→en, en→xx, mining F1
    (transferred threshold) and oracle mining F1."""
    langs = sorted({lang for r in reports for lang in r.languages})
    header = ["lang"]
    for r in reports:
        header += [f"{r.model} xx→en", "en→xx", "mining F1", "oracle F1"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for lang in langs:
        row = [lang]
        for r in reports:
            s = r.languages.get(lang)
            row += (
                [_fmt(s.xx2en), _fmt(s.en2xx), _fmt(s.mining_f1), _fmt(s.mining_oracle_f1)]
                if s
                else ["", "", "", ""]
            )
        lines.append("| " + " | ".join(row) + " |")
    avg = ["**average**"]
    for r in reports:
        avg += [
            f"**{_fmt(r.average(k))}**" if r.average(k) is not None else ""
            for k in ("xx2en", "en2xx", "mining_f1", "mining_oracle_f1")
        ]
    lines.append("| " + " | ".join(avg) + " |")
    return "\n".join(lines)


def to_json(reports: Sequence[ModelReport]) -> str:
    payload = []
    for r in reports:
        item: dict[str, Any] = asdict(r)
        item["average"] = {
            k: r.average(k)
            for k in ("xx2en", "en2xx", "mining_precision", "mining_recall", "mining_f1", "mining_oracle_f1")
        }
        payload.append(item)
    return json.dumps(payload, indent=2)
