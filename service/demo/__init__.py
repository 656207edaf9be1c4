"""The bundled demo collection: a small multilingual sample so a fresh service can search."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from index.collection import Collection, list_collections
from index.ingest import ingest
from model.encoder import Encoder

DEMO_NAME = "demo"
log = logging.getLogger("dapsearch")


def demo_documents() -> Path:
    return Path(str(resources.files(__package__).joinpath("documents.jsonl")))


def ensure_demo_collection(collections_dir: Path, encoder: Encoder) -> bool:
    """Create and fill ``demo`` once, when the service has no collections at all; True if it did.

    Only on an empty home: an operator who deleted the demo or runs real collections never gets
    it back. An interrupted first fill resumes on the next start (ingest is resumable).
    """
    names = list_collections(collections_dir)
    if names and names != [DEMO_NAME]:
        return False
    if DEMO_NAME in names:
        coll = Collection.open(collections_dir, DEMO_NAME)
        if coll.manifest.model_id != encoder.model_id:  # made by an earlier model: leave it alone
            coll.close()
            return False
    else:
        coll = Collection.create(collections_dir, DEMO_NAME, encoder.model_id, encoder.dim)
    with coll:
        report = ingest(coll, encoder, demo_documents(), "jsonl", chunk_size=64)
        if report.documents:
            coll.checkpoint()
            log.info("created the demo collection: %d documents", len(coll))
    return bool(report.documents)
