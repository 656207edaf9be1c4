"""Several models on the same dev sets and search-dev questions: ``dapsearch eval``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import InputError
from evaluation.memo import EmbeddingMemo
from evaluation.search import SearchLanguage, SearchScores, read_search_dev, search_scores
from evaluation.translation import DevSet, LanguageScores, dev_set, language_scores
from model.artifact import Backend
from model.encoder import Encoder


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
    memo = EmbeddingMemo(encoder)
    report = ModelReport(encoder.model_id, str(model_dir))
    for name, one_set in sets.items():
        scores: dict[str, LanguageScores] = {}
        for lang, pairs in one_set.pairs.items():
            if progress is not None:
                progress(f"{encoder.model_id}: {name} {lang}")
            scores[lang] = language_scores(memo, pairs, one_set.mining.get(lang))
        report.dev_sets[name] = scores
    if sets:
        report.languages = next(iter(report.dev_sets.values()))
    if search:
        report.search = search_scores(memo, search, progress)
    return report


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
