"""Passages and the lexical channel, on the real model's tokenizer: cutting, replacing and
deleting passages, lexical matching in many scripts, hostile text, and collections made before
passages."""

from __future__ import annotations

import itertools
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from core.errors import Conflict
from index.collection import MANIFEST, Collection, CollectionManifest
from index.cutting import CutOptions, Cutter, lexicon_of
from index.ingest import ingest
from index.passages import PassageOptions
from index.retrieval import Query
from index.store import DOCS, Document, Store
from model.artifact import read_manifest
from model.encoder import TextTokenizer


@pytest.fixture(scope="module")
def tokenizer(real_model_dir: Path) -> TextTokenizer:
    return TextTokenizer(real_model_dir / "tokenizer.json", read_manifest(real_model_dir))


def _random_vectors(n: int, dim: int = 384, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    out: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def _store(coll: Collection, tokenizer: TextTokenizer, docs: list[Document]) -> None:
    """Documents cut as an ingest cuts them, with random vectors (lexical tests need no model)."""
    prepared = Cutter(tokenizer, coll.cut_options).prepare(docs)
    assert not prepared.refused, prepared.refused
    coll.upsert(prepared.docs, _random_vectors(prepared.passage_count), passages=prepared.passages)


def _lexical(coll: Collection, tokenizer: TextTokenizer, query: str, k: int = 3) -> list[str]:
    terms = lexicon_of(tokenizer).query_terms(query)
    return [h.id for h in coll.search([Query(None, terms)], k, mode="lexical")[0]]


def _essay(words: int) -> str:
    sentences = []
    for i in range(words // 10):
        sentences.append(f"Sentence {i} of the long report talks about topic number {i} in detail.")
    return " ".join(sentences)


def test_a_long_document_is_cut_into_passages_the_model_takes_whole(tokenizer: TextTokenizer) -> None:
    options = PassageOptions(tokens=256, overlap=32)
    text = _essay(3000)
    prepared = Cutter(tokenizer, CutOptions(options, lexical=True)).prepare([Document("long", text)])
    spans = prepared.passages[0].spans
    assert len(spans) >= 8
    assert spans[0].start == 0 and spans[-1].end == len(text)
    counts = [len(ids) for ids in tokenizer.tokenize([text[s.start : s.end] for s in spans], "passage").ids]
    assert (
        max(counts) <= 256
        and not tokenizer.tokenize([text[s.start : s.end] for s in spans], "passage").truncated
    )
    for before, after in itertools.pairwise(spans):
        assert after.start < before.end  # overlapping, never a gap
        assert text[after.start - 2 : after.start].endswith((". ", " ")), "cut at a word or sentence start"
    assert text[spans[0].end - 1] == "."  # the first cut ends a sentence


def test_a_document_is_found_by_a_sentence_from_its_end(tmp_path: Path, real_encoders: dict) -> None:  # type: ignore[type-arg]
    encoder = real_encoders["served"]
    coll = Collection.create(tmp_path, "c", encoder.model_id, encoder.dim)
    filler = [Document(f"f{i}", f"A short note number {i} about the weather in spring.") for i in range(20)]
    end = "The lighthouse keeper finally repaired the broken lamp with a copper wire."
    long = Document("long", _essay(3000) + " " + end)
    prepared, vectors = Cutter(encoder.tokenizer, coll.cut_options).embed(encoder, [long, *filler])
    coll.upsert(prepared.docs, vectors, passages=prepared.passages)
    assert len(coll.passage_spans("long")) >= 8
    query = encoder.embed(["Who fixed the lamp of the lighthouse?"], "query")
    hits = coll.search(query, k=3)[0]
    assert hits[0].id == "long"
    assert end in hits[0].text[hits[0].start : hits[0].end], "the hit shows the passage that matched"


def test_upsert_replaces_all_passages_and_delete_removes_them(
    tmp_path: Path, tokenizer: TextTokenizer
) -> None:
    coll = Collection.create(tmp_path, "c", "m@1", 384)
    _store(coll, tokenizer, [Document("a", _essay(1500)), Document("b", "the zebra crossing")])
    before = coll.stats()["passages"]
    assert len(coll.passage_spans("a")) > 2 and _lexical(coll, tokenizer, "topic number 42")[0] == "a"
    _store(coll, tokenizer, [Document("a", "a short text about a giraffe")])
    assert coll.passage_spans("a") == [(0, 28)] and coll.stats()["passages"] == 2 < before
    assert _lexical(coll, tokenizer, "topic number 42") == []
    assert _lexical(coll, tokenizer, "giraffe") == ["a"]
    assert coll.delete(["a"]) == 1
    with sqlite3.connect(tmp_path / "c" / DOCS) as db:
        assert db.execute("SELECT count(*) FROM passages").fetchone()[0] == 1
        assert db.execute("SELECT count(*) FROM lexical").fetchone()[0] == 1
    assert coll.stats()["index_vectors"] == 1 and _lexical(coll, tokenizer, "giraffe") == []


LEXICAL = {
    # language: (document, query): a word inside a compound, an inflected form, or unsegmented text
    "zh": ("北京是中华人民共和国的首都，也是全国的政治中心。", "首都"),
    "ja": ("東京スカイツリーは墨田区にある電波塔です。", "電波塔"),
    "th": ("กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย", "เมืองหลวง"),
    "hi": ("भारत की राजधानी नई दिल्ली है और यह एक बड़ा शहर है।", "राजधानी"),
    "ar": ("القاهرة هي عاصمة جمهورية مصر العربية وأكبر مدنها.", "عاصمة"),
    "fi": ("Helsingin rautatieasemalta lähtee junia kaikkialle Suomeen.", "rautatieasema"),
    "de": ("Der Hauptbahnhof liegt mitten in der Stadt.", "Bahnhof"),
}


def test_lexical_matching_works_in_every_script(tmp_path: Path, tokenizer: TextTokenizer) -> None:
    coll = Collection.create(tmp_path, "c", "m@1", 384)
    noise = [
        Document(f"n{i}", f"Unrelated filler text number {i} about nothing in particular.") for i in range(30)
    ]
    _store(coll, tokenizer, [Document(lang, text) for lang, (text, _) in LEXICAL.items()] + noise)
    for lang, (_, query) in LEXICAL.items():
        assert _lexical(coll, tokenizer, query, k=1) == [lang], lang
    # Languages were detected for documents that came without one, and marked so.
    doc = coll.get("th")
    assert doc is not None and doc.lang == "th" and doc.lang_detected


def test_highlights_are_the_query_terms_of_the_passage(tokenizer: TextTokenizer) -> None:
    lexicon = lexicon_of(tokenizer)
    text = "Der Hauptbahnhof liegt mitten in der Stadt."
    spans = lexicon.highlight(text, lexicon.query_terms("Bahnhof Stadt"))
    assert [text[a:b] for a, b in spans] == ["bahnhof", "Stadt"] or [text[a:b] for a, b in spans] == [
        "Bahnhof",
        "Stadt",
    ]


def test_hostile_text_is_text(tmp_path: Path, tokenizer: TextTokenizer) -> None:
    """Emoji and punctuation have no lexical terms (dense still answers); FTS syntax in a query
    is matched as text, never run as syntax."""
    coll = Collection.create(tmp_path, "c", "m@1", 384)
    _store(
        coll,
        tokenizer,
        [
            Document("emoji", "🎉🎉 !!! ... ???"),
            Document("syntax", 'NEAR(cats dogs) AND "quoted" - minus * star (paren)'),
            Document("plain", "cats and dogs live together"),
        ],
    )
    for query in ['"', "*", "NEAR(", "-cats", "(", ")", 'cats" OR "', "AND OR NOT", "🎉"]:
        terms = lexicon_of(tokenizer).query_terms(query)
        hits = coll.search([Query(_random_vectors(1)[0], terms)], 3, mode="hybrid")[0]
        assert len(hits) == 3  # dense answers even when nothing matches lexically
        coll.search([Query(None, terms)], 3, mode="lexical")  # never raises
    assert _lexical(coll, tokenizer, "NEAR")[0] == "syntax"


def test_a_document_over_the_passage_maximum_is_a_malformed_line(
    tmp_path: Path,
    real_encoders: dict,  # type: ignore[type-arg]
) -> None:
    encoder = real_encoders["served"]
    coll = Collection.create(tmp_path, "c", encoder.model_id, encoder.dim)
    src = tmp_path / "docs.jsonl"
    lines = [
        {"id": "ok", "text": "a short document"},
        {"id": "huge", "text": "word " * 1_000_000},  # 5 MB
        {"id": "ok2", "text": "another short document"},
    ]
    src.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = ingest(coll, encoder, src)
    assert report.documents == 2 and report.error_count == 1
    assert report.errors[0].line == 2 and "most passages" in report.errors[0].reason
    assert coll.get("huge") is None and coll.get("ok2") is not None


def test_a_collection_made_before_passages_keeps_serving_dense(tmp_path: Path) -> None:
    root = tmp_path / "old"
    root.mkdir()
    Store.initialise(root / DOCS, layout="documents")
    manifest = CollectionManifest(name="old", model_id="m@1", dim=384, index_factory="Flat", created="x")
    (root / MANIFEST).write_text(manifest.model_dump_json())
    coll = Collection.open(tmp_path, "old")
    vectors = _random_vectors(3)
    coll.upsert([Document(f"d{i}", f"text {i}") for i in range(3)], vectors)
    hit = coll.search(vectors[1:2], k=1)[0][0]
    assert hit.id == "d1" and (hit.start, hit.end) == (0, 6)
    assert coll.stats()["modes"] == ["dense"]
    with pytest.raises(Conflict, match="reindex"):
        coll.search([Query(vectors[0], [1, 2])], 1, mode="hybrid")
    assert coll.delete(["d1"]) == 1 and len(coll) == 2


def test_a_collection_opened_from_its_snapshot_matches_lexically(
    tmp_path: Path, tokenizer: TextTokenizer
) -> None:
    """A reader that opens a checkpointed collection (what the server does) knows its lexical
    index's size, so its lexical scores are those of the writer."""
    coll = Collection.create(tmp_path, "c", "m@1", 384)
    _store(coll, tokenizer, [Document("a", "the giraffe"), Document("b", "the zebra")])
    coll.checkpoint()
    before = coll.search([Query(None, lexicon_of(tokenizer).query_terms("giraffe"))], 1, mode="lexical")[0]
    coll.close()
    reader = Collection.open(tmp_path, "c", readonly=True)
    after = reader.search([Query(None, lexicon_of(tokenizer).query_terms("giraffe"))], 1, mode="lexical")[0]
    assert [(h.id, h.score) for h in after] == [(h.id, h.score) for h in before] and after[0].id == "a"


def test_lexical_scores_are_fts5_bm25_over_every_query_term(tmp_path: Path, tokenizer: TextTokenizer) -> None:
    """Candidates come from the rarest terms, but each is scored as FTS5's bm25() scores it with
    every term of the query."""
    from index.lexical import TABLE, LexicalQuery, totals

    coll = Collection.create(tmp_path, "c", "m@1", 384)
    words = [
        "river",
        "bridge",
        "station",
        "market",
        "harbour",
        "castle",
        "garden",
        "tower",
        "museum",
        "library",
        "forest",
        "mountain",
        "valley",
        "island",
        "desert",
        "village",
        "city",
        "street",
        "square",
        "church",
        "school",
        "hospital",
        "factory",
        "farm",
        "meadow",
        "lake",
        "ocean",
        "beach",
        "cliff",
        "cave",
        "glacier",
        "volcano",
        "canyon",
        "prairie",
        "swamp",
        "jungle",
        "orchard",
        "vineyard",
        "quarry",
        "mine",
        "port",
        "airport",
        "railway",
        "highway",
        "tunnel",
        "canal",
        "dam",
        "lighthouse",
        "windmill",
        "barn",
        "stable",
        "palace",
        "temple",
        "fortress",
        "monastery",
        "cathedral",
        "theatre",
        "stadium",
    ]
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(words, size=int(rng.integers(3, 30)))) for _ in range(1500)]
    _store(coll, tokenizer, [Document(f"d{i}", t, "en") for i, t in enumerate(texts)])
    terms = lexicon_of(tokenizer).query_terms("river castle museum")
    db = sqlite3.connect(tmp_path / "c" / DOCS)
    lq = LexicalQuery(db, terms, *totals(db))
    match = " OR ".join(f'"{t}"' for t in lq.weighted_terms())
    expected = dict(db.execute(f"SELECT rowid, -bm25({TABLE}) FROM {TABLE} WHERE {TABLE} MATCH ?", [match]))
    got = lq.scores(db, list(expected))
    assert got.keys() == expected.keys() and len(got) > 100
    for pid, score in expected.items():
        assert got[pid] == pytest.approx(score / lq.bound, rel=1e-9)
    assert [p for p, _ in lq.top(db, 20)] == sorted(expected, key=lambda p: -expected[p])[:20]
