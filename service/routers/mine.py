"""``POST /mine-bitext``: translation pairs between two lists of sentences (margin scoring)."""

from __future__ import annotations

from functools import partial

import anyio
from fastapi import APIRouter

from index.mining import mine
from service.deps import EmbedderDep, SettingsDep
from service.errors import APIError
from service.schemas import MinedPair, MineRequest, MineResponse
from service.validation import check_texts

router = APIRouter(tags=["mining"])


@router.post("/mine-bitext", response_model=MineResponse)
async def mine_bitext(body: MineRequest, embedder: EmbedderDep, settings: SettingsDep) -> MineResponse:
    """Synchronous up to DAPSEARCH_MINE_MAX_SENTENCES per side; larger corpora: index them as
    collections and start an admin mining job (POST /admin/mine)."""
    limit = settings.mine_max_sentences
    for side, texts in (("source", body.source), ("target", body.target)):
        if len(texts) > limit:
            raise APIError(
                413,
                f"{side} has {len(texts)} sentences; /mine-bitext handles at most {limit} per side. "
                "For larger corpora ingest both sides into collections and POST /admin/mine.",
                side,
            )
        check_texts(texts, settings, side, max_count=limit)
    source = (await embedder.embed(body.source, body.kind, "source")).vectors
    target = (await embedder.embed(body.target, body.kind, "target")).vectors
    result = await anyio.to_thread.run_sync(
        partial(
            mine, source, target, k=body.k, score=body.score, strategy=body.strategy, threshold=body.threshold
        )
    )
    return MineResponse(
        model=embedder.model_id,
        pairs=[MinedPair(source_index=s, target_index=t, score=v) for s, t, v in result],
        threshold=body.threshold,
        score=body.score,
        strategy=body.strategy,
        k=body.k,
    )
