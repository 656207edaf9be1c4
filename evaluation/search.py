"""Question → paragraph search (search-dev): the guard that translation training must not make
search worse. Questions are embedded as ``query``, paragraphs as ``passage``, as /search does."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import InputError
from evaluation.memo import EmbeddingMemo


@dataclass
class SearchScores:
    """Question → paragraph retrieval for one language: R@1 and MRR@10 (%), as /search ranks them."""

    mono_r1: float
    mono_mrr10: float
    cross_r1: float | None  # X questions → English paragraphs (None for English itself)
    cross_mrr10: float | None


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


def rank_metrics(queries: np.ndarray, passages: np.ndarray, answers: Sequence[int]) -> tuple[float, float]:
    """R@1 and MRR@10 (%) of the right paragraph among all of them, by cosine."""
    sims = queries @ passages.T
    gold = np.asarray(answers)
    rank = (sims > sims[np.arange(len(gold)), gold][:, None]).sum(axis=1)  # 0 = first
    r1 = float((rank == 0).mean() * 100)
    mrr = float(np.where(rank < 10, 1.0 / (rank + 1), 0.0).mean() * 100)
    return r1, mrr


def search_scores(
    memo: EmbeddingMemo, data: dict[str, SearchLanguage], progress: Callable[[str], None] | None = None
) -> dict[str, SearchScores]:
    """Per language: mono (X → X paragraphs) and cross (X → English paragraphs); en is mono only."""
    en = data["en"]
    en_passages = memo.embed(en.passages, "passage")
    out: dict[str, SearchScores] = {}
    for lang, item in data.items():
        if progress is not None:
            progress(f"{memo.encoder.model_id}: search {lang}")
        queries = memo.embed(item.queries, "query")
        mono = rank_metrics(queries, memo.embed(item.passages, "passage"), item.answers)
        cross: tuple[float | None, float | None] = (None, None)
        if lang != "en":
            position = {pid: i for i, pid in enumerate(en.passage_ids)}
            answers = [position[item.passage_ids[a]] for a in item.answers]
            cross = rank_metrics(queries, en_passages, answers)
        out[lang] = SearchScores(mono[0], mono[1], cross[0], cross[1])
    return out
