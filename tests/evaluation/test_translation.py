"""The evaluation harness on the dummy encoder: identical texts are exact translations of each
other there, so every score is known in advance, and a broken metric shows."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.memo import EmbeddingMemo
from evaluation.report import markdown, summary_markdown
from evaluation.run import ModelReport
from evaluation.translation import language_scores, mining_sets
from model.encoder import Encoder
from model.train.corpus import Pair
from model.train.dev import retrieval_p1


def test_retrieval_p1_counts_each_direction() -> None:
    eye = np.eye(3, dtype=np.float32)
    assert retrieval_p1(eye, eye) == (100.0, 100.0)
    swapped = eye[[1, 0, 2]]
    assert retrieval_p1(eye, swapped) == pytest.approx((100 / 3, 100 / 3))


def test_mining_sets_hide_the_gold_pairs_among_distractors() -> None:
    pairs = [Pair("de", f"satz {i}", f"sentence {i}") for i in range(8)]
    pool = [Pair("de", f"anders {i}", f"other {i}") for i in range(32)]
    tune, test = mining_sets(pairs, pool, distractors_per_gold=2, seed=0)
    for half, gold in ((tune, pairs[:4]), (test, pairs[4:])):
        assert len(half.source) == len(half.target) == 12
        assert [(half.source[s], half.target[t]) for s, t in half.gold] == [(p.src, p.en) for p in gold]


def test_scores_on_exact_translations_are_perfect_and_the_tables_show_them() -> None:
    memo = EmbeddingMemo(Encoder.dummy(dim=64))
    # On the dummy encoder a text's translation is the text itself.
    pairs = [Pair("de", f"text {i}", f"text {i}") for i in range(12)]
    pool = [Pair("de", f"noise {i}", f"other {i}") for i in range(48)]
    scores = language_scores(memo, pairs, mining_sets(pairs, pool, 2, seed=1))
    assert (scores.xx2en, scores.en2xx) == (100.0, 100.0)
    assert scores.mining_f1 == 100.0 and scores.mining_oracle_f1 == 100.0
    report = ModelReport("dummy", "-", languages={"de": scores}, dev_sets={"dev": {"de": scores}})
    assert "| de | 100.0 | 100.0 | 100.0 | 100.0 |" in markdown([report])
    assert "| dummy | 100.0 | 100.0 | 100.0 |" in summary_markdown([report])
