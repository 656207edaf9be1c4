"""Evaluation harness: cross-lingual retrieval and BUCC-style mining, several models side by side.

(a) Tatoeba-style retrieval: for each language, every dev sentence's nearest neighbour by cosine
among that language's dev pairs, P@1 in both directions. (b) BUCC-style mining: the gold pairs of
one half of the dev set are hidden among unrelated sentences in both languages (by default the
dev rows not used as gold: text no model was trained on; the non-English and English distractors
come from different rows, so they are not translations of each other), pairs are mined with the
ratio margin and the max strategy, the F1-best threshold is tuned on that half and applied to the
other half, whose precision, recall and F1 are reported, beside the oracle F1 (threshold tuned on
the test half itself). Tuning on one corpus and testing on another is what a user does with a new
corpus, so it is the honest number.

Distractors from training files (``train_dir``) give bigger sets but are biased against models
trained on them: measured on 12 languages, a DAP model's oracle mining F1 was 3 points below its
base with them (94.0 vs 97.3 on four of them) and level with it with held-out distractors (98.8 vs
98.9).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InputError
from index.mining import best_threshold, evaluate, mine
from model.artifact import Backend
from model.encoder import Encoder, Kind
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
class SearchScores:
    """Question → paragraph retrieval for one language: R@1 and MRR@10 (%), as /search ranks them."""

    mono_r1: float
    mono_mrr10: float
    cross_r1: float | None  # X questions → English paragraphs (None for English itself)
    cross_mrr10: float | None


@dataclass
class ModelReport:
    model: str
    path: str
    languages: dict[str, LanguageScores] = field(default_factory=dict)
    dev_sets: dict[str, dict[str, LanguageScores]] = field(default_factory=dict)
    search: dict[str, SearchScores] = field(default_factory=dict)

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
    pairs: Sequence[Pair], pool: Sequence[Pair], distractors_per_gold: int, seed: int
) -> tuple[MiningSet, MiningSet]:
    """Two halves (tune, test) of ``pairs``, each among ``distractors_per_gold`` unrelated sentences
    per gold pair on both sides, taken from ``pool`` (pairs disjoint from ``pairs``)."""
    half = len(pairs) // 2
    halves = (list(pairs[:half]), list(pairs[half:]))
    need = distractors_per_gold * len(pairs) * 2
    if len(pool) < need:
        raise InputError(
            f"{len(pool)} spare pairs cannot dilute {len(pairs)} gold pairs {distractors_per_gold}:1 "
            f"(needs {need}); lower --limit or --distractors"
        )
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


class _Memo:
    """Embeds each distinct text once per model (the mining sets reuse the retrieval sentences)."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self._vectors: dict[tuple[str, str], np.ndarray] = {}

    def embed(self, texts: Sequence[str], kind: Kind = "query") -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if (kind, t) not in self._vectors))
        if todo:
            for text, vector in zip(todo, self.encoder.embed(todo, kind), strict=True):
                self._vectors[(kind, text)] = vector
        return np.stack([self._vectors[(kind, t)] for t in texts])


def _language_scores(
    memo: _Memo, pairs: Sequence[Pair], mining: tuple[MiningSet, MiningSet] | None
) -> LanguageScores:
    # "query" on both sides: e5's prefix for symmetric tasks, and what training uses.
    scores = LanguageScores(
        *retrieval_p1(memo.embed([p.src for p in pairs]), memo.embed([p.en for p in pairs]))
    )
    if mining is not None:
        tune, test = mining
        tuned = best_threshold(_mine(memo, tune), tune.gold)
        mined = _mine(memo, test)
        result = evaluate(mined, test.gold, tuned.threshold)
        scores.mining_precision = result.precision * 100
        scores.mining_recall = result.recall * 100
        scores.mining_f1 = result.f1 * 100
        scores.threshold = tuned.threshold
        # Ranking quality alone: separates a bad ranking from a threshold that did not transfer.
        scores.mining_oracle_f1 = best_threshold(mined, test.gold).f1 * 100
    return scores


def evaluate_model(
    model_dir: Path,
    sets: dict[str, DevSet],
    backend: Backend = "torch",
    batch_size: int = 64,
    progress: Callable[[str], None] | None = None,
    search: dict[str, SearchLanguage] | None = None,
) -> ModelReport:
    """Scores of one model: every dev set (the first is ``languages``) and search-dev when given."""
    encoder = Encoder.load(model_dir, backend=backend, batch_size=batch_size)
    memo = _Memo(encoder)
    report = ModelReport(encoder.model_id, str(model_dir))
    for name, dev_set in sets.items():
        scores: dict[str, LanguageScores] = {}
        for lang, pairs in dev_set.pairs.items():
            if progress is not None:
                progress(f"{encoder.model_id}: {name} {lang}")
            scores[lang] = _language_scores(memo, pairs, dev_set.mining.get(lang))
        report.dev_sets[name] = scores
    if sets:
        report.languages = next(iter(report.dev_sets.values()))
    if search:
        report.search = search_scores(memo, search, progress)
    return report


@dataclass
class DevSet:
    """One dev folder's retrieval pairs per language and, where there are enough spare rows, mining sets."""

    pairs: dict[str, list[Pair]]
    mining: dict[str, tuple[MiningSet, MiningSet]]


@dataclass
class SearchLanguage:
    """search-dev for one language: its paragraphs and questions, with the index of each answer."""

    passage_ids: list[str]
    passages: list[str]
    queries: list[str]
    answers: list[int]


def read_search_dev(directory: Path, langs: Sequence[str] | None = None) -> dict[str, SearchLanguage]:
    """``xquad-dev.<lang>.jsonl`` files (see shared/data/search-dev/README.md); English is required."""
    directory = Path(directory)
    files = {p.name.split(".")[1]: p for p in sorted(directory.glob("xquad-dev.*.jsonl"))}
    if "en" not in files:
        raise InputError(
            f"no xquad-dev.en.jsonl in {directory}: cross-lingual rows need the English paragraphs"
        )
    if langs is not None:
        files = {lang: files[lang] for lang in files if lang in langs or lang == "en"}
    out: dict[str, SearchLanguage] = {}
    for lang, path in files.items():
        ids: list[str] = []
        passages: list[str] = []
        queries: list[tuple[str, str]] = []
        try:
            for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if row["type"] == "passage":
                    ids.append(str(row["id"]))
                    passages.append(str(row["text"]))
                elif row["type"] == "query":
                    queries.append((str(row["text"]), str(row["passage"])))
                else:
                    raise InputError(f"{path}:{line_no}: unknown type {row['type']!r}")
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"cannot read {path}: {exc}") from exc
        index = {pid: i for i, pid in enumerate(ids)}
        missing = [pid for _, pid in queries if pid not in index]
        if missing:
            raise InputError(f"{path}: questions point at unknown paragraphs {missing[:3]}")
        out[lang] = SearchLanguage(ids, passages, [q for q, _ in queries], [index[pid] for _, pid in queries])
    return out


def _rank_metrics(queries: np.ndarray, passages: np.ndarray, answers: Sequence[int]) -> tuple[float, float]:
    """R@1 and MRR@10 (%) of the right paragraph among all of them, by cosine."""
    sims = queries @ passages.T
    gold = np.asarray(answers)
    rank = (sims > sims[np.arange(len(gold)), gold][:, None]).sum(axis=1)  # 0 = first
    r1 = float((rank == 0).mean() * 100)
    mrr = float(np.where(rank < 10, 1.0 / (rank + 1), 0.0).mean() * 100)
    return r1, mrr


def search_scores(
    memo: _Memo, data: dict[str, SearchLanguage], progress: Callable[[str], None] | None = None
) -> dict[str, SearchScores]:
    """Per language: mono (X → X paragraphs) and cross (X → English paragraphs); en is mono only."""
    en = data["en"]
    en_passages = memo.embed(en.passages, "passage")
    out: dict[str, SearchScores] = {}
    for lang, item in data.items():
        if progress is not None:
            progress(f"{memo.encoder.model_id}: search {lang}")
        queries = memo.embed(item.queries, "query")
        mono = _rank_metrics(queries, memo.embed(item.passages, "passage"), item.answers)
        cross: tuple[float | None, float | None] = (None, None)
        if lang != "en":
            position = {pid: i for i, pid in enumerate(en.passage_ids)}
            answers = [position[item.passage_ids[a]] for a in item.answers]
            cross = _rank_metrics(queries, en_passages, answers)
        out[lang] = SearchScores(mono[0], mono[1], cross[0], cross[1])
    return out


def training_pool(train_file: Path, lang: str, exclude: Sequence[Pair], need: int) -> list[Pair]:
    """Distractors from a training file: only for models that were not trained on it (a model
    that was has seen these sentences with their translations, which biases mining against it)."""
    gold_text = {p.src for p in exclude} | {p.en for p in exclude}
    pool: list[Pair] = []
    for pair in read_pairs(train_file, lang):
        if pair.src not in gold_text and pair.en not in gold_text:
            pool.append(pair)
            if len(pool) >= need:
                break
    return pool


def _mine(memo: _Memo, data: MiningSet) -> Any:
    return mine(memo.embed(data.source), memo.embed(data.target), strategy="max")


def dev_set(
    dev_dir: Path,
    langs: Sequence[str] | None,
    train_dir: Path | None,
    limit: int | None,
    distractors_per_gold: int,
    seed: int,
) -> DevSet:
    """Retrieval pairs (the first ``limit`` of each language, default all) and mining sets: gold
    pairs from the start of the file, hidden among the rows after them (or training-file rows)."""
    full = read_dev(dev_dir, langs, None)
    if not full:
        raise InputError(f"no dev pairs found in {dev_dir}")
    files = find_parallel_files(train_dir, None) if train_dir is not None else {}
    pairs: dict[str, list[Pair]] = {}
    mining: dict[str, tuple[MiningSet, MiningSet]] = {}
    for lang, rows in full.items():
        pairs[lang] = rows[:limit] if limit else rows
        spare_share = 0 if train_dir is not None else 2 * distractors_per_gold
        n_gold = min(limit or len(rows), len(rows) // (1 + spare_share))
        if n_gold < 4 or distractors_per_gold == 0:
            continue
        need = distractors_per_gold * n_gold * 2
        if train_dir is None:
            pool = rows[n_gold:]
        elif lang in files:
            pool = training_pool(files[lang], lang, rows, need)
        else:
            continue
        mining[lang] = mining_sets(rows[:n_gold], pool, distractors_per_gold, seed)
    return DevSet(pairs, mining)


def run_evaluation(
    model_dirs: Sequence[Path],
    dev_dirs: Sequence[Path],
    langs: Sequence[str] | None = None,
    train_dir: Path | None = None,
    limit: int | None = None,
    distractors_per_gold: int = 1,
    backend: Backend = "torch",
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    search_dir: Path | None = None,
) -> list[ModelReport]:
    """Every model on the same dev pairs, mining sets and search-dev questions.

    Retrieval P@1 ranks each language's first ``limit`` dev pairs (default: all). Mining gold
    pairs are the first rows of each language, as many as leave enough spare rows; distractors
    come from the remaining dev rows, which no model was trained on; with ``train_dir`` they come
    from the training files instead (larger sets, but biased against any model trained on them).
    """
    if not model_dirs:
        raise InputError("give at least one --model")
    names = [Path(d).name for d in dev_dirs]
    if len(set(names)) != len(names):
        raise InputError(f"dev folders need distinct names, got {', '.join(names)}")
    sets = {
        Path(d).name: dev_set(Path(d), langs, train_dir, limit, distractors_per_gold, seed) for d in dev_dirs
    }
    search = read_search_dev(search_dir) if search_dir is not None else None
    return [evaluate_model(Path(d), sets, backend, progress=progress, search=search) for d in model_dirs]


def search_average(report: ModelReport, key: str) -> float | None:
    """mono / cross: over the non-English languages; en: English mono; guard: mono of all 12
    languages together (the non-English ones and en→en), the number that must not fall."""
    s = report.search
    if not s:
        return None
    if key == "en":
        return s["en"].mono_r1 if "en" in s else None
    if key == "guard":
        return float(np.mean([v.mono_r1 for v in s.values()]))
    values = [getattr(v, f"{key}_r1") for lang, v in s.items() if lang != "en"]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def set_average(report: ModelReport, name: str, key: str) -> float | None:
    scores = report.dev_sets.get(name, {})
    values = [getattr(v, key) for v in scores.values() if getattr(v, key) is not None]
    return float(np.mean(values)) if values else None


def summary_markdown(reports: Sequence[ModelReport], labels: Sequence[str] | None = None) -> str:
    """One row per model: P@1 both ways per dev set, mining F1 (transferred threshold) per set,
    and search-dev R@1 (mono, cross, en→en, and the 12-language mono guard)."""
    names = sorted({n for r in reports for n in r.dev_sets}, key=lambda n: (n != "dev", n))
    header = ["model"]
    for n in names:
        header += [f"{n} xx→en", f"{n} en→xx", f"{n} mining F1"]
    has_search = any(r.search for r in reports)
    if has_search:
        header += ["search mono R@1", "cross R@1", "en→en R@1", "mono+en (guard)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, r in enumerate(reports):
        row = [labels[i] if labels else r.model]
        for n in names:
            row += [_fmt(set_average(r, n, k)) for k in ("xx2en", "en2xx", "mining_f1")]
        if has_search:
            row += [_fmt(search_average(r, k)) for k in ("mono", "cross", "en", "guard")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


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
    keys = ("xx2en", "en2xx", "mining_precision", "mining_recall", "mining_f1", "mining_oracle_f1")
    for r in reports:
        item: dict[str, Any] = asdict(r)
        item["average"] = {k: r.average(k) for k in keys}
        item["set_average"] = {n: {k: set_average(r, n, k) for k in keys} for n in r.dev_sets}
        item["search_average"] = {k: search_average(r, k) for k in ("mono", "cross", "en", "guard")}
        payload.append(item)
    return json.dumps(payload, indent=2)
