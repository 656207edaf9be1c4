"""Bitext mining's neighbour search on a Ray cluster: blocks of the similarity matrix as tasks.

Both sides' matrices go once into the object store; each task takes one block (source rows ×
target columns), finds both directions' top-k inside it, and the driver merges the blocks'
heaps (``index.neighbours.BlockMerge``), in whatever order they finish, into the exact result of
the local search: the same neighbours and pairs, similarities equal to the last bit or two
(BLAS sums in another order with another thread count). With ``ivf``, each side gets an IVF
index trained on a sample (the stopes shape at scale) and tasks search it per shard of
queries: approximate, with its recall measured.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from index.cluster import RayOptions, connect
from index.neighbours import (
    DEFAULT_CHUNK,
    F32,
    I64,
    TILE_COLUMNS,
    BlockMerge,
    IvfSearch,
    exact_block,
    ivf_knn,
)

ROW_BLOCK = 16 * DEFAULT_CHUNK  # source rows per task
COLUMN_BLOCK = 8 * TILE_COLUMNS  # target columns per task
IN_FLIGHT_PER_CPU = 2  # tasks queued per cluster CPU: results stream back, memory stays bounded


def _ivf_shard(
    index_bytes: np.ndarray, base: F32, queries: F32, rows: tuple[int, int], k: int, nprobe: int, chunk: int
) -> Any:
    index = faiss.deserialize_index(index_bytes)
    return ivf_knn(index, base, np.ascontiguousarray(queries[rows[0] : rows[1]]), k, nprobe, chunk)


@dataclass(frozen=True)
class RaySearch:
    """``index.mining.mine(search=RaySearch(options))``: the same pairs as the local search."""

    options: RayOptions
    ivf: IvfSearch | None = None  # approximate, per shard; None: exact
    row_block: int = ROW_BLOCK
    column_block: int = COLUMN_BLOCK

    def __call__(
        self, x: F32, y: F32, k: int, chunk_size: int, progress: Callable[[int], None] | None
    ) -> tuple[F32, I64, F32, I64]:
        ray = connect(self.options)
        cpus = self.options.cpus_per_actor
        limit = max(1, int(ray.cluster_resources().get("CPU", 1)) * IN_FLIGHT_PER_CPU // cpus)
        if self.ivf is not None:
            return self._ivf(ray, x, y, k, chunk_size, limit, progress)
        rows_per = max(chunk_size, self.row_block // chunk_size * chunk_size)  # whole local row tiles
        task = ray.remote(num_cpus=cpus)(exact_block)
        x_ref, y_ref = ray.put(x), ray.put(y)
        merged = BlockMerge(len(x), len(y), k)
        row_tiles = [(r, min(r + rows_per, len(x))) for r in range(0, len(x), rows_per)]
        col_tiles = [(c, min(c + self.column_block, len(y))) for c in range(0, len(y), self.column_block)]
        left = {rows: len(col_tiles) for rows in row_tiles}
        blocks = ((rows, cols) for rows in row_tiles for cols in col_tiles)
        calls = ((rows, cols, task.remote(x_ref, y_ref, rows, cols, k, chunk_size)) for rows, cols in blocks)
        for (rows, cols), result in _bounded(ray, calls, limit):
            merged.add(rows, cols, result)
            left[rows] -= 1
            if progress is not None and left[rows] == 0:
                progress(rows[1] - rows[0])
        return merged.result()

    def _ivf(
        self, ray: Any, x: F32, y: F32, k: int, chunk: int, limit: int, progress: Callable[[int], None] | None
    ) -> tuple[F32, I64, F32, I64]:
        assert self.ivf is not None
        task = ray.remote(num_cpus=self.options.cpus_per_actor)(_ivf_shard)
        out: list[tuple[F32, I64]] = []
        for queries, base, report in ((x, y, progress), (y, x, None)):
            index_ref = ray.put(faiss.serialize_index(self.ivf.index_over(base)))
            base_ref, queries_ref = ray.put(base), ray.put(queries)
            sims = np.empty((len(queries), min(k, len(base))), dtype=np.float32)
            ids = np.empty(sims.shape, dtype=np.int64)
            shards = [
                (r, min(r + self.row_block, len(queries))) for r in range(0, len(queries), self.row_block)
            ]
            calls = (
                (rows, None, task.remote(index_ref, base_ref, queries_ref, rows, k, self.ivf.nprobe, chunk))
                for rows in shards
            )
            for (rows, _), (s, i) in _bounded(ray, calls, limit):
                sims[rows[0] : rows[1]], ids[rows[0] : rows[1]] = s, i
                if report is not None:
                    report(rows[1] - rows[0])
            out.append((sims, ids))
        return *out[0], *out[1]


def _bounded(
    ray: Any, calls: Iterator[tuple[Any, Any, Any]], limit: int
) -> Iterator[tuple[tuple[Any, Any], Any]]:
    """Results of ``calls`` (key, key, object ref) as they finish, at most ``limit`` in flight.
    A task whose worker or node died is run again by Ray itself (tasks are retried)."""
    inflight: dict[Any, tuple[Any, Any]] = {}
    for first, second, ref in calls:
        inflight[ref] = (first, second)
        while len(inflight) >= limit:
            done, _ = ray.wait(list(inflight), num_returns=1)
            yield inflight.pop(done[0]), ray.get(done[0])
    while inflight:
        done, _ = ray.wait(list(inflight), num_returns=1)
        yield inflight.pop(done[0]), ray.get(done[0])
