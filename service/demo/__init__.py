"""The bundled demo collection: a small multilingual sample so a fresh service can search."""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path

from index.collection import Collection
from index.ingest import ingest
from index.manifest import drop_collection, list_collections
from model.encoder import Encoder

DEMO_NAME = "demo"
log = logging.getLogger("dapsearch")


def demo_documents() -> Path:
    return Path(str(resources.files(__package__).joinpath("documents.jsonl")))


def ensure_demo_collection(collections_dir: Path, encoder: Encoder) -> bool:
    """Create and fill ``demo`` once, when the service has no collections at all; True if it did.

    Only on an empty home: an operator who deleted the demo or runs real collections never gets
    it back. An interrupted first fill resumes on the next start (ingest is resumable). A demo
    embedded by another model (the served default changed) is embedded again, if it still holds
    exactly the bundled sample.
    """
    names = list_collections(collections_dir)
    if names and names != [DEMO_NAME]:
        return False
    if DEMO_NAME in names:
        coll = Collection.open(collections_dir, DEMO_NAME)
        if coll.manifest.model_id != encoder.model_id:  # made by another model
            untouched = _is_the_bundled_sample(coll)
            coll.close()
            if not untouched:  # an operator's documents in it: theirs to re-index
                log.warning(
                    "the demo collection holds vectors of %s and documents of its own; it is left as "
                    "it is (dapsearch index reindex demo --to NEW re-embeds it)",
                    coll.manifest.model_id,
                )
                return False
            drop_collection(collections_dir, DEMO_NAME)
            log.info("re-embedding the demo collection for %s", encoder.model_id)
            coll = Collection.create(collections_dir, DEMO_NAME, encoder.model_id, encoder.dim)
    else:
        coll = Collection.create(collections_dir, DEMO_NAME, encoder.model_id, encoder.dim)
    with coll:
        report = ingest(coll, encoder, demo_documents(), "jsonl", chunk_size=64)
        if report.documents:
            coll.checkpoint()
            log.info("created the demo collection: %d documents", len(coll))
    return bool(report.documents)


def _is_the_bundled_sample(coll: Collection) -> bool:
    """Every document in the collection is a bundled one with its text unchanged."""
    with open(demo_documents(), encoding="utf-8") as fh:
        bundled = {row["id"]: row["text"] for row in map(json.loads, fh)}
    held = {doc.id: doc.text for doc in coll.documents()}
    return held.items() <= bundled.items()  # a first fill cut short holds part of it
