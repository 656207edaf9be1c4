"""The bundled demo collection: made once on an empty home, made again when the served model changes."""

from __future__ import annotations

import json
from pathlib import Path

from index.collection import Collection
from index.store import Document
from model.build import build_from_checkpoint
from model.encoder import Encoder
from service.demo import DEMO_NAME, demo_documents, ensure_demo_collection


def _other_model(tiny_checkpoint: Path, tmp_path: Path) -> Encoder:
    """The tiny model under another name: another model id, as after the default changed."""
    out = tmp_path / "models" / "tiny-next"
    build_from_checkpoint(
        tiny_checkpoint,
        out,
        "mean",
        name="tiny-next",
        query_prefix="query: ",
        passage_prefix="passage: ",
        max_length=16,
    )
    return Encoder.load(out, backend="torch")


def test_the_demo_is_re_embedded_for_a_new_model_while_it_is_the_bundled_sample(
    tiny_model_dir: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    home = tmp_path / "collections"
    old, new = Encoder.load(tiny_model_dir, backend="torch"), _other_model(tiny_checkpoint, tmp_path)
    assert old.model_id != new.model_id
    assert ensure_demo_collection(home, old)
    assert not ensure_demo_collection(home, old)  # once
    assert ensure_demo_collection(home, new)
    bundled = len(demo_documents().read_text(encoding="utf-8").splitlines())
    with Collection.open(home, DEMO_NAME, new.model_id) as coll:
        assert len(coll) == bundled
        first = json.loads(demo_documents().read_text(encoding="utf-8").splitlines()[0])
        start, end = coll.passage_spans(first["id"])[0]  # the tiny model cuts at 16 tokens
        hit = coll.search(new.encode([first["text"][start:end]], "passage").vectors, k=1)[0][0]
        assert hit.id == first["id"] and hit.score > 0.999  # vectors of the new model
    assert not [p for p in home.iterdir() if p.name.startswith(".")]  # the old files are gone


def test_a_demo_holding_an_operators_documents_is_left_alone(
    tiny_model_dir: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    home = tmp_path / "collections"
    old, new = Encoder.load(tiny_model_dir, backend="torch"), _other_model(tiny_checkpoint, tmp_path)
    ensure_demo_collection(home, old)
    with Collection.open(home, DEMO_NAME, old.model_id) as coll:
        doc = Document("mine-1", "an operator's own document")
        coll.upsert([doc], old.encode([doc.text], "passage").vectors)
        coll.checkpoint()
    assert not ensure_demo_collection(home, new)
    with Collection.open(home, DEMO_NAME) as coll:
        assert coll.manifest.model_id == old.model_id and coll.get("mine-1") is not None
