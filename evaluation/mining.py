"""How good mined pairs are against gold pairs: precision, recall and F1 at a threshold, the
threshold that maximises F1 (BUCC's protocol), and a histogram of the scores.

Apart from the mining itself (``index.mining``): it needs gold pairs, which only dev sets have.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from core.errors import InputError
from index.mining import MiningResult, above
from index.neighbours import F32, I64, positive_int


@dataclass(frozen=True)
class Evaluation:
    """Precision/recall/F1 of the pairs with score > ``threshold`` against gold pairs."""

    threshold: float | None
    precision: float
    recall: float
    f1: float
    n_extracted: int
    n_correct: int
    n_gold: int


def _pair_arrays(pairs: MiningResult | Iterable[tuple[int, int, float]]) -> tuple[I64, I64, F32]:
    if isinstance(pairs, MiningResult):
        return pairs.source, pairs.target, pairs.scores
    rows = list(pairs)
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    try:
        arr = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"pairs must be (source_index, target_index, score) triples: {e}") from None
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise InputError(f"pairs must be (source_index, target_index, score) triples, got shape {arr.shape}")
    return arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64), arr[:, 2].astype(np.float32)


def _gold_array(gold: Iterable[tuple[int, int]]) -> I64:
    g = np.asarray(list(gold), dtype=np.int64)
    if g.size == 0:
        raise InputError("gold is empty: need at least one (source_index, target_index) pair")
    if g.ndim != 2 or g.shape[1] != 2:
        raise InputError(f"gold must be (source_index, target_index) pairs, got shape {g.shape}")
    if (g < 0).any():
        raise InputError("gold indices must be non-negative")
    return g


def _correct(
    pairs: MiningResult | Iterable[tuple[int, int, float]], gold: Iterable[tuple[int, int]]
) -> tuple[F32, npt.NDArray[np.bool_], int]:
    """Unique candidate pairs (best score per pair) as (scores descending, is-gold flags, gold size)."""
    src, tgt, val = _pair_arrays(pairs)
    if (src < 0).any() or (tgt < 0).any():
        raise InputError("pair indices must be non-negative")
    g = _gold_array(gold)
    # Pairs become single int64 keys so that membership is one vectorised np.isin.
    width = max(int(tgt.max(initial=-1)), int(g[:, 1].max())) + 1
    gold_keys = np.unique(g[:, 0] * width + g[:, 1])
    keys = src * width + tgt
    order = np.lexsort((-val, keys))  # per key, best score first
    keys, val = keys[order], val[order]
    first = np.ones(keys.shape[0], dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    keys, val = keys[first], val[first]
    desc = np.argsort(-val, kind="stable")
    return val[desc], np.isin(keys[desc], gold_keys), int(gold_keys.shape[0])


def _prf(n_correct: int, n_extracted: int, n_gold: int) -> tuple[float, float, float]:
    precision = n_correct / n_extracted if n_extracted else 0.0
    recall = n_correct / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def evaluate(
    pairs: MiningResult | Iterable[tuple[int, int, float]],
    gold: Iterable[tuple[int, int]],
    threshold: float | None = None,
) -> Evaluation:
    """Precision, recall and F1 of the pairs scoring > ``threshold`` (None: all) against ``gold``."""
    scores, correct, n_gold = _correct(pairs, gold)
    keep = np.ones(scores.shape[0], dtype=bool) if threshold is None else above(scores, threshold)
    n_extracted = int(keep.sum())
    n_correct = int(correct[keep].sum())
    return Evaluation(threshold, *_prf(n_correct, n_extracted, n_gold), n_extracted, n_correct, n_gold)


def best_threshold(
    pairs: MiningResult | Iterable[tuple[int, int, float]], gold: Iterable[tuple[int, int]]
) -> Evaluation:
    """The threshold that maximises F1 against ``gold`` (LASER's BuccOptimize, vectorised).

    Cuts are tried between every two distinct consecutive scores and the threshold is their
    midpoint, so it sits as far as possible from the pairs on either side when applied to new data.
    Ties never straddle a cut. Below the lowest score the threshold is just under it (keep all).
    """
    scores, correct, n_gold = _correct(pairs, gold)
    if scores.shape[0] == 0:
        return Evaluation(None, 0.0, 0.0, 0.0, 0, 0, n_gold)
    s = scores.astype(np.float64)
    n_correct = np.cumsum(correct)
    n_extracted = np.arange(1, s.shape[0] + 1)
    cut = np.ones(s.shape[0], dtype=bool)
    cut[:-1] = s[:-1] > s[1:]
    precision = n_correct / n_extracted
    recall = n_correct / n_gold
    with np.errstate(invalid="ignore"):
        f1 = np.where(n_correct > 0, 2 * precision * recall / (precision + recall), 0.0)
    f1 = np.where(cut, f1, -1.0)
    i = int(np.argmax(f1))  # first maximum: highest threshold reaching the best F1
    if f1[i] <= 0:  # no gold pair among the candidates: keep nothing
        return Evaluation(float(s[0]), 0.0, 0.0, 0.0, 0, 0, n_gold)
    # Thresholds are compared with float32 scores: a threshold must be strictly between them there too.
    threshold = float(np.nextafter(s[i], -np.inf)) if i == s.shape[0] - 1 else float((s[i] + s[i + 1]) / 2)
    return Evaluation(
        threshold,
        float(precision[i]),
        float(recall[i]),
        float(f1[i]),
        int(n_extracted[i]),
        int(n_correct[i]),
        n_gold,
    )


def score_histogram(
    scores: MiningResult | npt.ArrayLike, bins: int = 20, width: int = 50, threshold: float | None = None
) -> str:
    """A printable text histogram of pair scores, to pick a threshold without gold pairs.

    Real translations form a separate high-score mode (for the ratio margin usually above ~1.05);
    the valley between it and the bulk of unrelated pairs is where the threshold belongs. Bins
    containing ``threshold`` are marked with ``<``.
    """
    bins = positive_int("bins", bins)
    width = positive_int("width", width)
    values = np.asarray(scores.scores if isinstance(scores, MiningResult) else scores, dtype=np.float64)
    values = values.ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return "(no scores)"
    counts, edges = np.histogram(values, bins=bins)
    peak = max(int(counts.max()), 1)
    summary = f"min {values.min():.4f}, median {np.median(values):.4f}, max {values.max():.4f}"
    lines = [f"{values.size} scores, {summary}"]
    for i, count in enumerate(counts.tolist()):
        lo, hi = float(edges[i]), float(edges[i + 1])
        bar = "#" * (round(count / peak * width) if count else 0)
        if count and not bar:
            bar = "."
        mark = " <" if threshold is not None and lo <= threshold < hi else ""
        lines.append(f"[{lo:8.4f}, {hi:8.4f})  {count:9d}  {bar}{mark}")
    return "\n".join(lines)
