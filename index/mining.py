"""Margin-based bitext mining (Artetxe & Schwenk 2019, the LASER recipe the DAP paper uses for BUCC).

Why a margin and not plain cosine: in a multilingual space some sentences ("hubs") are close to
everything, so a fixed cosine threshold either floods the output with hub pairs or misses real
translations in sparse regions. Dividing (``ratio``) or subtracting (``distance``) the average
similarity of both sentences to their ``k`` nearest neighbours makes scores comparable across the
space, so one threshold works for a whole corpus.

Everything here works on numpy arrays of L2-normalised embeddings (inner product = cosine). The
k-nearest-neighbour searches are exact. Margins need both directions (each source's neighbours
among the targets and each target's among the sources); :func:`knn_both` takes both from the same
similarity tiles, so the dominant cost, the n x m dot products, is paid once instead of twice.
Memory is the two embedding matrices, one tile and O((n + m)·k) results; the n x m similarity
matrix never exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

import faiss
import numpy as np
import numpy.typing as npt

from core.errors import InputError

Score = Literal["ratio", "distance", "absolute"]
Strategy = Literal["forward", "backward", "intersect", "max"]
SCORES: tuple[Score, ...] = get_args(Score)
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)

DEFAULT_K = 4
# Query rows per search call (knn) and per similarity tile (knn_both): big enough for BLAS to run
# at full speed. knn_both's tile is DEFAULT_CHUNK x TILE_COLUMNS floats (32 MiB); smaller row tiles
# also mean fewer target columns to revisit per tile (see knn_both).
DEFAULT_CHUNK = 1024
TILE_COLUMNS = 8192

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


def _matrix(name: str, array: npt.ArrayLike, chunk_size: int) -> F32:
    """A C-contiguous float32 (n, d) view (copy only if needed) after rejecting what FAISS can't use."""
    a = np.asarray(array)
    if a.ndim != 2:
        raise InputError(f"{name} must be a 2-d array (n, dim), got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"{name} is empty (shape {a.shape}); mining needs at least one vector per side")
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise InputError(f"{name} must hold real numbers, got dtype {a.dtype}")
    out = np.ascontiguousarray(a, dtype=np.float32)
    # Chunked so that a 1M×384 input does not need a 384 MB boolean temporary.
    for start in range(0, out.shape[0], chunk_size):
        if not np.isfinite(out[start : start + chunk_size]).all():
            raise InputError(f"{name} contains NaN or infinite values")
    return out


def _matrices(
    first: tuple[str, npt.ArrayLike], second: tuple[str, npt.ArrayLike], chunk_size: int
) -> tuple[F32, F32]:
    """Two checked matrices of the same dimension."""
    a, b = _matrix(*first, chunk_size), _matrix(*second, chunk_size)
    if a.shape[1] != b.shape[1]:
        raise InputError(f"dimension mismatch: {first[0]} dim {a.shape[1]}, {second[0]} dim {b.shape[1]}")
    return a, b


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def knn(
    queries: npt.ArrayLike, base: npt.ArrayLike, k: int, chunk_size: int = DEFAULT_CHUNK
) -> tuple[F32, I64]:
    """Exact inner-product k nearest neighbours of each query row among the ``base`` rows.

    Returns (sims, ids), both (n, min(k, len(base))), best first. Queries are searched
    ``chunk_size`` rows at a time into preallocated outputs, so peak memory is the index (a
    copy of ``base``) plus the (n, k) results.
    """
    k = _positive_int("k", k)
    chunk_size = _positive_int("chunk_size", chunk_size)
    q, b = _matrices(("queries", queries), ("base", base), chunk_size)
    return _knn(q, b, k, chunk_size)


def _knn(q: F32, b: F32, k: int, chunk_size: int) -> tuple[F32, I64]:
    k = min(k, b.shape[0])
    index = faiss.IndexFlatIP(b.shape[1])
    index.add(b)
    sims = np.empty((q.shape[0], k), dtype=np.float32)
    ids = np.empty((q.shape[0], k), dtype=np.int64)
    for start in range(0, q.shape[0], chunk_size):
        stop = min(start + chunk_size, q.shape[0])
        index.search(q[start:stop], k, D=sims[start:stop], I=ids[start:stop])
    return sims, ids


def knn_both(
    source: npt.ArrayLike,
    target: npt.ArrayLike,
    k: int,
    chunk_size: int = DEFAULT_CHUNK,
    progress: Callable[[int], None] | None = None,
) -> tuple[F32, I64, F32, I64]:
    """Exact k nearest neighbours in both directions from one pass over the similarity tiles.

    Returns (source→target sims, ids, target→source sims, ids), best first, equal to ``knn`` run
    both ways. ``progress`` is called with the number of source rows finished after each row tile.
    """
    k = _positive_int("k", k)
    chunk_size = _positive_int("chunk_size", chunk_size)
    x, y = _matrices(("source", source), ("target", target), chunk_size)
    return _knn_both(x, y, k, chunk_size, progress)


class _TopK:
    """Per-row top-k of streamed similarity blocks, kept in FAISS's C++ min-heaps (no GIL, no sort)."""

    def __init__(self, rows: int, k: int) -> None:
        self.sims = np.empty((rows, k), dtype=np.float32)
        self.ids = np.empty((rows, k), dtype=np.int64)
        self._heaps = self._wrap(self.sims, self.ids)
        self._heaps.heapify()

    @staticmethod
    def _wrap(sims: F32, ids: I64) -> faiss.float_minheap_array_t:
        heaps = faiss.float_minheap_array_t()
        heaps.nh, heaps.k = sims.shape
        heaps.val = faiss.swig_ptr(sims)
        heaps.ids = faiss.swig_ptr(ids)
        return heaps

    def worst(self, start: int, stop: int) -> F32:
        """The k-th best similarity so far of rows start..stop (the heap roots)."""
        return self.sims[start:stop, 0]

    def add(self, block: F32, first_row: int, first_id: int) -> None:
        """Offer block[r, c] as neighbour ``first_id + c`` of row ``first_row + r``."""
        self._heaps.addn(block.shape[1], faiss.swig_ptr(block), first_id, first_row, block.shape[0])

    def add_rows(self, rows: I64, block: F32, first_id: int) -> None:
        """Like ``add`` for a scattered set of rows: their heaps are updated in a compact copy."""
        sims, ids, block = self.sims[rows], self.ids[rows], np.ascontiguousarray(block)
        self._wrap(sims, ids).addn(block.shape[1], faiss.swig_ptr(block), first_id, 0, block.shape[0])
        self.sims[rows], self.ids[rows] = sims, ids

    def merge(self, sims: F32, ids: I64, first_row: int = 0) -> None:
        """Offer rows first_row.. another top-k list each (a tile's, found elsewhere): the heaps
        keep the best k of both, so tiles merge, in any order, into one exact result."""
        sims, ids = np.ascontiguousarray(sims, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64)
        self._heaps.addn_with_ids(
            sims.shape[1], faiss.swig_ptr(sims), faiss.swig_ptr(ids), sims.shape[1], first_row, sims.shape[0]
        )

    def result(self) -> tuple[F32, I64]:
        self._heaps.reorder()
        return self.sims, self.ids


def _knn_both(
    x: F32, y: F32, k: int, chunk_size: int, progress: Callable[[int], None] | None
) -> tuple[F32, I64, F32, I64]:
    forward, backward = _TopK(x.shape[0], min(k, y.shape[0])), _TopK(y.shape[0], min(k, x.shape[0]))
    columns = min(TILE_COLUMNS, y.shape[0])
    buffer = np.empty(min(chunk_size, x.shape[0]) * columns, dtype=np.float32)
    for i0 in range(0, x.shape[0], chunk_size):
        rows = x[i0 : i0 + chunk_size]
        for j0 in range(0, y.shape[0], columns):
            cols = y[j0 : j0 + columns]
            tile = buffer[: rows.shape[0] * cols.shape[0]].reshape(rows.shape[0], cols.shape[0])
            np.matmul(rows, cols.T, out=tile)
            forward.add(tile, i0, j0)
            # Transposing the whole tile for the targets' heaps would cost as much as the product
            # itself. Only columns whose best entry beats their current k-th neighbour can change;
            # after the first few row tiles that is a small and shrinking share.
            changed = np.flatnonzero(tile.max(axis=0) > backward.worst(j0, j0 + cols.shape[0]))
            if changed.size:
                backward.add_rows(j0 + changed, tile.T[changed], i0)
        if progress is not None:
            progress(rows.shape[0])
    return *forward.result(), *backward.result()


class NeighbourSearch(Protocol):
    """Both directions' k nearest neighbours: (source→target sims, ids, target→source sims, ids)."""

    def __call__(
        self, x: F32, y: F32, k: int, chunk_size: int, progress: Callable[[int], None] | None
    ) -> tuple[F32, I64, F32, I64]: ...


def exact_block(
    x: F32, y: F32, rows: tuple[int, int], cols: tuple[int, int], k: int, chunk_size: int
) -> tuple[F32, I64, F32, I64]:
    """One block of the similarity matrix (source ``rows``, target ``cols``): each of its source
    rows' top-k among its targets and each target's among its rows, ids global, for merging."""
    r0, r1 = rows
    c0, c1 = cols
    f_sims, f_ids, b_sims, b_ids = _knn_both(x[r0:r1], y[c0:c1], k, chunk_size, None)
    return f_sims, f_ids + c0, b_sims, b_ids + r0


class BlockMerge:
    """Both directions' top-k, merged from blocks that arrive in any order: equal to one pass."""

    def __init__(self, n_source: int, n_target: int, k: int) -> None:
        self.forward = _TopK(n_source, min(k, n_target))
        self.backward = _TopK(n_target, min(k, n_source))

    def add(self, rows: tuple[int, int], cols: tuple[int, int], block: tuple[F32, I64, F32, I64]) -> None:
        f_sims, f_ids, b_sims, b_ids = block
        self.forward.merge(f_sims, f_ids, rows[0])
        self.backward.merge(b_sims, b_ids, cols[0])

    def result(self) -> tuple[F32, I64, F32, I64]:
        return *self.forward.result(), *self.backward.result()


def ivf_nlist(n: int) -> int:
    """FAISS's rule of thumb for an IVF list count: about 4·sqrt(n), at least 39 points per list."""
    return max(1, min(int(4 * np.sqrt(n)), n // 39))


def train_ivf(base: F32, nlist: int, sample: int = 100_000, seed: int = 0) -> faiss.Index:
    """An inner-product IVF index over ``base``, its centroids trained on a random sample."""
    quantizer = faiss.IndexFlatIP(base.shape[1])
    index = faiss.IndexIVFFlat(quantizer, base.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    rows = np.random.default_rng(seed).permutation(base.shape[0])[: max(sample, nlist * 39)]
    index.train(base[np.sort(rows)])
    index.add(base)
    return index


def ivf_knn(
    index: faiss.Index, base: F32, queries: F32, k: int, nprobe: int, chunk_size: int
) -> tuple[F32, I64]:
    """Approximate neighbours from ``index`` (over ``base``); the rare row whose probed lists held
    fewer than k points is searched exactly instead."""
    faiss.extract_index_ivf(index).nprobe = nprobe
    k = min(k, index.ntotal)
    sims = np.empty((queries.shape[0], k), dtype=np.float32)
    ids = np.empty((queries.shape[0], k), dtype=np.int64)
    for start in range(0, queries.shape[0], chunk_size):
        stop = min(start + chunk_size, queries.shape[0])
        index.search(queries[start:stop], k, D=sims[start:stop], I=ids[start:stop])
    short = np.flatnonzero((ids < 0).any(axis=1))
    if short.size:
        sims[short], ids[short] = _knn(np.ascontiguousarray(queries[short]), base, k, chunk_size)
    return sims, ids


@dataclass(frozen=True)
class IvfSearch:
    """Approximate neighbours both ways (the stopes shape at scale): an IVF index trained on a
    sample of each side, probed ``nprobe`` lists per query. Its recall against exact search is
    measured in bench/RESULTS.md; the exact search stays the default."""

    nlist: int | None = None  # default: ivf_nlist(n) of each side
    nprobe: int = 16
    sample: int = 100_000

    def index_over(self, base: F32) -> faiss.Index:
        """The IVF index one side is searched in."""
        return train_ivf(base, self.nlist or ivf_nlist(len(base)), self.sample)

    def __call__(
        self, x: F32, y: F32, k: int, chunk_size: int, progress: Callable[[int], None] | None
    ) -> tuple[F32, I64, F32, I64]:
        forward = ivf_knn(self.index_over(y), y, x, k, self.nprobe, chunk_size)
        if progress is not None:
            progress(x.shape[0])
        backward = ivf_knn(self.index_over(x), x, y, k, self.nprobe, chunk_size)
        return *forward, *backward


def recall(approximate: I64, exact: I64) -> float:
    """Share of the exact k nearest neighbours the approximate lists found."""
    k = exact.shape[1]
    found = sum(len(np.intersect1d(a, e)) for a, e in zip(approximate[:, :k], exact, strict=True))
    return found / exact.size


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
        keep = _above(self.scores, threshold)
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
    k = _positive_int("k", k)
    chunk_size = _positive_int("chunk_size", chunk_size)
    x, y = _matrices(("source", source), ("target", target), chunk_size)

    # Both directions are needed for the margins (each side's neighbourhood mean) except for a
    # plain-cosine forward search.
    need_backward = score != "absolute" or strategy != "forward" or search is not None
    if search is not None:
        x2y_sim, x2y_ind, y2x_sim, y2x_ind = search(x, y, k, chunk_size, progress)
    elif need_backward:
        x2y_sim, x2y_ind, y2x_sim, y2x_ind = _knn_both(x, y, k, chunk_size, progress)
    else:
        x2y_sim, x2y_ind = _knn(x, y, k, chunk_size)
        if progress is not None:
            progress(x.shape[0])
        y2x_sim = np.zeros((y.shape[0], 1), dtype=np.float32)
        y2x_ind = np.zeros((y.shape[0], 1), dtype=np.int64)
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
        keep = _above(val, threshold)
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


def _above(scores: F32, threshold: float) -> npt.NDArray[np.bool_]:
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
    keep = np.ones(scores.shape[0], dtype=bool) if threshold is None else _above(scores, threshold)
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
    bins = _positive_int("bins", bins)
    width = _positive_int("width", width)
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
