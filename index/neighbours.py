"""Exact and approximate k-nearest-neighbour search between two sets of embeddings, both ways.

What bitext mining (``index.mining``) spends its time on. On L2-normalised embeddings the inner
product is the cosine. Margins need both directions (each source's neighbours among the targets
and each target's among the sources); :func:`knn_both` takes both from the same similarity tiles,
so the dominant cost, the n x m dot products, is paid once instead of twice. Memory is the two
embedding matrices, one tile and O((n + m)·k) results; the n x m similarity matrix never exists.
Blocks of the search merge exactly (``BlockMerge``), which is what lets ``index.ray_mining`` run
it on a cluster; ``IvfSearch`` approximates it for corpora too large for the exact search.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import faiss
import numpy as np
import numpy.typing as npt

from core.errors import InputError

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


def matrices(
    first: tuple[str, npt.ArrayLike], second: tuple[str, npt.ArrayLike], chunk_size: int
) -> tuple[F32, F32]:
    """Two checked matrices of the same dimension."""
    a, b = _matrix(*first, chunk_size), _matrix(*second, chunk_size)
    if a.shape[1] != b.shape[1]:
        raise InputError(f"dimension mismatch: {first[0]} dim {a.shape[1]}, {second[0]} dim {b.shape[1]}")
    return a, b


def positive_int(name: str, value: int) -> int:
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
    k = positive_int("k", k)
    chunk_size = positive_int("chunk_size", chunk_size)
    q, b = matrices(("queries", queries), ("base", base), chunk_size)
    return exact_knn(q, b, k, chunk_size)


def exact_knn(q: F32, b: F32, k: int, chunk_size: int) -> tuple[F32, I64]:
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
    k = positive_int("k", k)
    chunk_size = positive_int("chunk_size", chunk_size)
    x, y = matrices(("source", source), ("target", target), chunk_size)
    return exact_knn_both(x, y, k, chunk_size, progress)


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


def exact_knn_both(
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
    f_sims, f_ids, b_sims, b_ids = exact_knn_both(x[r0:r1], y[c0:c1], k, chunk_size, None)
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
        sims[short], ids[short] = exact_knn(np.ascontiguousarray(queries[short]), base, k, chunk_size)
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
