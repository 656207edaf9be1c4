"""Margin-based bitext mining (Artetxe & Schwenk 2019, the LASER recipe the DAP paper uses for BUCC).

Why a margin and not plain cosine: in a multilingual space some sentences ("hubs") are close to
everything, so a fixed cosine threshold either floods the output with hub pairs or misses real
translations in sparse regions. Dividing (``ratio``) or subtracting (``distance``) the average
similarity of both sentences to their ``k`` nearest neighbours makes scores comparable across the
space, so one threshold works for a whole corpus.

Everything here works on numpy arrays of L2-normalised embeddings (inner product = cosine); the
neighbour search is ``index.neighbours``'s, and scoring mined pairs against gold ones is
``evaluation.mining``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from core.errors import InputError
from index.neighbours import (
    DEFAULT_CHUNK,
    F32,
    I64,
    NeighbourSearch,
    exact_knn,
    exact_knn_both,
    matrices,
    positive_int,
)

Score = Literal["ratio", "distance", "absolute"]
Strategy = Literal["forward", "backward", "intersect", "max"]
SCORES: tuple[Score, ...] = get_args(Score)
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
DEFAULT_K = 4


def margin(cos: npt.ArrayLike, source_mean: npt.ArrayLike, target_mean: npt.ArrayLike, score: Score) -> F32:
    """Score candidate pairs from their cosine and each side's mean k-NN cosine (broadcasting).

    ``ratio``: cos / ((source_mean + target_mean) / 2); ``distance``: cos - that average;
    ``absolute``: cos. The ratio assumes positive neighbourhood means, which holds for real
    sentence embeddings (nearest neighbours are never anti-correlated on average).
    """
    c = np.asarray(cos, dtype=np.float32)
    if score == "absolute":
        return c
    average = (np.asarray(source_mean, dtype=np.float32) + np.asarray(target_mean, dtype=np.float32)) / 2
    if score == "ratio":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.asarray(c / average, dtype=np.float32)
    if score == "distance":
        return np.asarray(c - average, dtype=np.float32)
    raise InputError(f"score must be one of {', '.join(SCORES)}; got {score!r}")


@dataclass(frozen=True)
class MiningResult:
    """Mined pairs, best first, and how they were mined (so a threshold can be reported with them)."""

    source: I64  # source row index of each pair
    target: I64  # target row index of each pair
    scores: F32  # margin score of each pair, descending
    k: int  # neighbourhood size requested
    k_source: int  # neighbours actually used for source rows (k clipped to the number of targets)
    k_target: int  # neighbours actually used for target rows (k clipped to the number of sources)
    score: Score
    strategy: Strategy
    threshold: float | None
    n_source: int
    n_target: int

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def __iter__(self) -> Iterator[tuple[int, int, float]]:
        return zip(self.source.tolist(), self.target.tolist(), self.scores.tolist(), strict=True)

    @property
    def pairs(self) -> list[tuple[int, int, float]]:
        """(source_index, target_index, score) tuples, score descending."""
        return list(self)

    def with_threshold(self, threshold: float | None) -> MiningResult:
        """Keep pairs with score > ``threshold``: re-thresholding without mining again.

        Only meaningful when ``threshold`` is at least the one mined with, since pairs below that
        are already gone; for ``max``, filtering after the greedy 1:1 pass equals filtering before
        because candidates are taken in score order.
        """
        if threshold is None:
            return self
        keep = above(self.scores, threshold)
        return MiningResult(
            self.source[keep],
            self.target[keep],
            self.scores[keep],
            self.k,
            self.k_source,
            self.k_target,
            self.score,
            self.strategy,
            threshold if self.threshold is None else max(threshold, self.threshold),
            self.n_source,
            self.n_target,
        )


def mine(
    source: npt.ArrayLike,
    target: npt.ArrayLike,
    k: int = DEFAULT_K,
    score: Score = "ratio",
    strategy: Strategy = "max",
    threshold: float | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    progress: Callable[[int], None] | None = None,
    search: NeighbourSearch | None = None,
) -> MiningResult:
    """Find translation pairs between two sets of L2-normalised sentence embeddings.

    Candidates are each source's best target and/or each target's best source among their ``k``
    nearest neighbours, best by ``score`` (not raw cosine, as in LASER). ``strategy``:
    ``forward`` keeps every source's best target, ``backward`` every target's best source,
    ``intersect`` only mutual bests, ``max`` (LASER's default) both lists merged by score then
    taken greedily so each sentence is used at most once. Pairs with score > ``threshold`` are
    kept (``None`` keeps all), sorted by score descending. ``progress`` is called with the number
    of source rows searched as the neighbour search advances. ``search`` finds the neighbours in
    both directions (default: exact, here; ``index.ray_mining`` runs it on a cluster, and
    ``IvfSearch`` approximates it).
    """
    _check_options(score, strategy, threshold)
    k = positive_int("k", k)
    chunk_size = positive_int("chunk_size", chunk_size)
    x, y = matrices(("source", source), ("target", target), chunk_size)
    # Both directions are needed for the margins (each side's neighbourhood mean) except for a
    # plain-cosine forward search.
    need_backward = score != "absolute" or strategy != "forward" or search is not None
    x2y_sim, x2y_ind, y2x_sim, y2x_ind = _neighbours(x, y, k, chunk_size, need_backward, progress, search)
    x_mean = x2y_sim.mean(axis=1, dtype=np.float32)
    y_mean = y2x_sim.mean(axis=1, dtype=np.float32)

    # The kNN similarities already are the candidates' cosines: no second dot product needed.
    fwd_best, fwd_score = _best(margin(x2y_sim, x_mean[:, None], y_mean[x2y_ind], score), x2y_ind)
    if need_backward:
        bwd_best, bwd_score = _best(margin(y2x_sim, x_mean[y2x_ind], y_mean[:, None], score), y2x_ind)

    src: I64
    tgt: I64
    val: F32
    if strategy == "forward":
        src, tgt, val = np.arange(x.shape[0], dtype=np.int64), fwd_best, fwd_score
    elif strategy == "backward":
        src, tgt, val = bwd_best, np.arange(y.shape[0], dtype=np.int64), bwd_score
    elif strategy == "intersect":
        tgt = np.flatnonzero(fwd_best[bwd_best] == np.arange(y.shape[0])).astype(np.int64)
        src = bwd_best[tgt]
        val = fwd_score[src]
    else:
        src = np.concatenate([np.arange(x.shape[0], dtype=np.int64), bwd_best])
        tgt = np.concatenate([fwd_best, np.arange(y.shape[0], dtype=np.int64)])
        val = np.concatenate([fwd_score, bwd_score])

    if threshold is not None:
        keep = above(val, threshold)
        src, tgt, val = src[keep], tgt[keep], val[keep]
    order = _by_score(src, tgt, val)
    src, tgt, val = src[order], tgt[order], val[order]
    if strategy == "max":
        # Filtering before the greedy pass equals LASER's filtering after it: candidates are taken
        # in descending score order, so those below the threshold could never block one above.
        taken = _greedy_one_to_one(src, tgt, x.shape[0], y.shape[0])
        src, tgt, val = src[taken], tgt[taken], val[taken]
    return MiningResult(
        src,
        tgt,
        val,
        k,
        x2y_sim.shape[1],
        y2x_sim.shape[1] if need_backward else min(k, x.shape[0]),
        score,
        strategy,
        None if threshold is None else float(threshold),
        x.shape[0],
        y.shape[0],
    )


def _check_options(score: Score, strategy: Strategy, threshold: float | None) -> None:
    if score not in SCORES:
        raise InputError(f"score must be one of {', '.join(SCORES)}; got {score!r}")
    if strategy not in STRATEGIES:
        raise InputError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, int | float | np.floating | np.integer)
    ):
        raise InputError(f"threshold must be a number or None, got {threshold!r}")
    if threshold is not None and not np.isfinite(threshold):
        raise InputError(f"threshold must be finite, got {threshold!r}")


def _neighbours(
    x: F32,
    y: F32,
    k: int,
    chunk_size: int,
    both: bool,
    progress: Callable[[int], None] | None,
    search: NeighbourSearch | None,
) -> tuple[F32, I64, F32, I64]:
    """Each source's k nearest targets and, if ``both``, each target's k nearest sources."""
    if search is not None:
        return search(x, y, k, chunk_size, progress)
    if both:
        return exact_knn_both(x, y, k, chunk_size, progress)
    x2y_sim, x2y_ind = exact_knn(x, y, k, chunk_size)
    if progress is not None:
        progress(x.shape[0])
    return (
        x2y_sim,
        x2y_ind,
        np.zeros((y.shape[0], 1), dtype=np.float32),
        np.zeros((y.shape[0], 1), dtype=np.int64),
    )


def above(scores: F32, threshold: float) -> npt.NDArray[np.bool_]:
    """score > threshold in float64: numpy would otherwise round a Python-float threshold to float32,
    and a midpoint between two close float32 scores could round onto one of them."""
    return np.asarray(scores, dtype=np.float64) > np.float64(threshold)


def _best(scores: F32, ids: I64) -> tuple[I64, F32]:
    """Per row, the neighbour with the highest score and that score."""
    rows = np.arange(scores.shape[0])
    col = np.argmax(scores, axis=1)
    return ids[rows, col], scores[rows, col]


def _by_score(src: I64, tgt: I64, val: F32) -> I64:
    """Score descending, ties by source then target index, so results are deterministic."""
    return np.lexsort((tgt, src, -val)).astype(np.int64)


def _greedy_one_to_one(src: I64, tgt: I64, n_source: int, n_target: int) -> I64:
    """Positions of candidates (already sorted best first) kept when each side may be used once.

    One pass with two boolean arrays: O(len(src)) time, O(n + m) memory.
    """
    used_src = bytearray(n_source)  # bytearray: far cheaper per-item access than numpy from a Python loop
    used_tgt = bytearray(n_target)
    taken: list[int] = []
    for pos, (s, t) in enumerate(zip(src.tolist(), tgt.tolist(), strict=True)):
        if not used_src[s] and not used_tgt[t]:
            used_src[s] = 1
            used_tgt[t] = 1
            taken.append(pos)
    return np.asarray(taken, dtype=np.int64)
