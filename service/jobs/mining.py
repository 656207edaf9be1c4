"""The mining job: two collections' stored vectors in, a TSV of scored pairs out."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from core.errors import InputError
from index.collection import Collection
from index.mining import mine
from index.pairs import write_pairs
from index.ray_mining import RaySearch
from service.jobs.models import JobProgress, MineParams
from service.jobs.running import RunningJob, fraction
from service.settings import Settings


def run_mine(
    run: RunningJob, params: MineParams, settings: Settings, model_id: str, out: Path
) -> dict[str, Any]:
    """Mine ``params.source`` against ``params.target``; the pairs go to ``out``. Returns the result."""
    root = settings.collections_dir
    with Collection.open(root, params.source, model_id, readonly=True) as src:
        src_ids, src_texts, src_vecs = src.vectors()
    run.check()
    with Collection.open(root, params.target, model_id, readonly=True) as tgt:
        tgt_ids, tgt_texts, tgt_vecs = tgt.vectors()
    for name, ids in ((params.source, src_ids), (params.target, tgt_ids)):
        if not ids:
            raise InputError(f"collection {name!r} is empty; mining needs documents on both sides")
    total = len(src_ids)
    rows = 0
    with run.lock:
        run.job.progress = JobProgress(docs=0, fraction=0.0)
    run.save()

    def progress(n: int) -> None:
        nonlocal rows
        rows += n
        with run.lock:
            run.job.progress = JobProgress(docs=rows, fraction=fraction(rows, total))
        run.save_soon()
        run.check()

    options = replace(settings.ray(), interrupt=run.check)  # a cancel stops the wait for the cluster
    search = RaySearch(options) if params.engine == "ray" else None
    mined = mine(
        src_vecs,
        tgt_vecs,
        params.k,
        params.score,
        params.strategy,
        params.threshold,
        progress=progress,
        search=search,
    )
    run.check()
    write_pairs(out, mined.pairs, src_ids, tgt_ids, src_texts, tgt_texts)
    with run.lock:
        run.job.progress = JobProgress(docs=total, fraction=1.0)
    return {
        "pairs": len(mined),
        "download": f"/admin/jobs/{run.id}/pairs",
        "source_documents": total,
        "target_documents": len(tgt_ids),
        "k": mined.k,
        "score": mined.score,
        "strategy": mined.strategy,
        "threshold": mined.threshold,
    }
