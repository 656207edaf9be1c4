"""Which FAISS index a collection uses: the accepted factory strings, and what ``auto`` and an
untrainable IVF become for a given number of documents.

Kept apart from the store and the snapshots because it is policy: it changes when the index
choices do, and the service publishes its syntax (``INDEX_PATTERN``) to clients.
"""

from __future__ import annotations

import re
from typing import Any, Literal, get_args

import faiss
import numpy as np

from core.errors import InputError

IndexKind = Literal["Flat", "HNSW", "IVF"]  # the kinds of index a collection may search with
INDEX_KINDS: tuple[IndexKind, ...] = get_args(IndexKind)

AUTO = "auto"
AUTO_HNSW_AT = 200_000  # documents; below this exact search answers in a few milliseconds
AUTO_LARGE = "HNSW32"
TRAIN_POINTS_PER_LIST = 39  # FAISS's own minimum for k-means training
MAX_TRAIN_POINTS = 256_000
# The index strings a collection accepts, checked in full before FAISS sees them: FAISS accepts
# strings it then cannot run (HNSW0 aborts the process on the first add), so its parser is not
# the check. HNSW<M>[,Flat|,SQfp16] with 4 <= M <= 128; IVF<n>,<codec> with 1 <= n <= 65536 and codec Flat,
# SQ8, SQfp16 or PQ<m>[x<bits>] (m divides the dimension, 4 <= bits <= 8).
_HNSW_SYNTAX = r"HNSW(?P<m>[1-9][0-9]{0,3})(?:,(?:Flat|SQfp16))?"  # SQ8 would need training
_IVF_SYNTAX = (
    r"IVF(?P<lists>[1-9][0-9]{0,5}),(?:Flat|SQ8|SQfp16|PQ(?P<pq>[1-9][0-9]{0,3})(?:x(?P<bits>[0-9]{1,2}))?)"
)
_HNSW_GRAMMAR = re.compile(_HNSW_SYNTAX)
_IVF_GRAMMAR = re.compile(_IVF_SYNTAX)
# The same syntax as a JSON-schema pattern (anchored, no Python-only named groups), published in the
# OpenAPI document so that clients and schema-driven tools see it; the ranges are checked on use.
INDEX_PATTERN = "^(?:{}|{}|{}|{})$".format(
    AUTO, "Flat", *(re.sub(r"\(\?P<\w+>", "(", syntax) for syntax in (_HNSW_SYNTAX, _IVF_SYNTAX))
)
HNSW_M = (4, 128)
IVF_LISTS = (1, 65_536)
PQ_BITS = (4, 8)
INDEX_HELP = (
    "auto, Flat, HNSW<M> (M 4-128, optionally ,SQfp16) or IVF<lists>,<codec> "
    "(lists 1-65536; codec Flat, SQ8, SQfp16 or PQ<m>[x<bits>], m dividing the dimension)"
)


def check_index_factory(factory: str, dim: int) -> str:
    """The factory string if a collection of dimension ``dim`` can build, fill and search it."""
    if factory in (AUTO, "Flat"):
        return factory
    hnsw, ivf = _HNSW_GRAMMAR.fullmatch(factory), _IVF_GRAMMAR.fullmatch(factory)
    if hnsw is not None and HNSW_M[0] <= int(hnsw["m"]) <= HNSW_M[1]:
        return factory
    if ivf is not None and IVF_LISTS[0] <= int(ivf["lists"]) <= IVF_LISTS[1]:
        if ivf["pq"] is None:
            return factory
        bits = int(ivf["bits"] or 8)
        if dim % int(ivf["pq"]) == 0 and PQ_BITS[0] <= bits <= PQ_BITS[1]:
            return factory
    raise InputError(f"index {factory[:80]!r} is not one a collection can use; use {INDEX_HELP}")


def effective_factory(factory: str, count: int) -> str:
    """The index to build for ``count`` documents.

    ``auto`` is exact (Flat) while small and HNSW once large. An IVF index needs enough points
    to train its coarse quantizer, so until then the collection searches exactly.
    """
    if factory == AUTO:
        return "Flat" if count < AUTO_HNSW_AT else AUTO_LARGE
    match = _IVF_GRAMMAR.fullmatch(factory)
    if match is not None:
        needed = TRAIN_POINTS_PER_LIST * int(match["lists"])
        if match["pq"] is not None:  # and the product quantizer's 2^bits centroids per sub-vector
            needed = max(needed, TRAIN_POINTS_PER_LIST * 2 ** int(match["bits"] or 8))
        if count < needed:
            return "Flat"
    return factory


def kind_of_factory(factory: str) -> IndexKind:
    """The kind a factory string builds, to tell whether an open index has grown out of date."""
    return "HNSW" if "HNSW" in factory else "IVF" if factory.startswith("IVF") else "Flat"


def kind_of_index(index: Any) -> IndexKind:
    """The kind of a built index (inside its IDMap2): what search parameters it takes."""
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexHNSW):
        return "HNSW"
    return "IVF" if isinstance(inner, faiss.IndexIVF) else "Flat"


def make_index(factory: str, dim: int) -> faiss.Index:
    """An empty index under an IDMap2, so that FAISS ids are the store's row ids."""
    factory = AUTO_LARGE if factory == AUTO else factory
    try:
        index = faiss.index_factory(dim, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:  # FAISS's message names its C++ sources: not for the user
        raise InputError(f"index {factory[:80]!r} is not one a collection can use; use {INDEX_HELP}") from exc
    return index


def search_params(
    index: faiss.Index, allowed: np.ndarray | None, hidden: set[int], k: int, nprobe: int, ef_search: int
) -> faiss.SearchParameters | None:
    """FAISS parameters of one search: the ids it may return (``allowed`` by a filter, none of
    ``hidden``) and the search depth of the index's kind."""
    keep: list[Any] = []
    if allowed is not None:
        keep.append(faiss.IDSelectorBatch(allowed))
    if hidden:
        keep.append(faiss.IDSelectorBatch(np.fromiter(hidden, dtype=np.int64)))
        keep.append(faiss.IDSelectorNot(keep[-1]))
    sel = None
    if allowed is not None and hidden:
        sel = faiss.IDSelectorAnd(keep[0], keep[-1])
        keep.append(sel)
    elif keep:
        sel = keep[-1]
    kind = kind_of_index(index)
    if sel is None and kind == "Flat":
        return None
    params: Any
    if kind == "HNSW":  # the default efSearch (16) loses recall at k=10, more so past rejected nodes
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(ef_search, 4 * k)
    elif kind == "IVF":
        params = faiss.SearchParametersIVF()
        params.nprobe = nprobe
    else:
        params = faiss.SearchParameters()
    if sel is not None:
        params.sel = sel
    params._dapsearch_keep = keep  # selectors must outlive the search call
    return params


def use_search_threads(threads: int) -> None:
    """FAISS's OpenMP threads for searches from this thread (a server gets its parallelism from
    concurrent requests: measured, exact search over 100k vectors took 6 ms on one thread and
    44 ms on two while other requests ran)."""
    faiss.omp_set_num_threads(threads)
