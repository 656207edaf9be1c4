"""The training data on real files: discovery, the paper's filters, the resumable mixed stream, the vocab."""

from __future__ import annotations

import gzip
import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from core.errors import InputError
from model.train.corpus import Pair, find_parallel_files, read_dev, read_pairs
from model.train.pair_filter import REASONS, PairFilter
from model.train.rtl import EnglishVocab
from model.train.stream import ParallelStream
from tests.conftest import SHARED


def write_tsv(path: Path, lines: list[str], trailing_newline: bool = True) -> Path:
    """A TSV file, gzip when the name ends in .gz."""
    text = "\n".join(lines) + ("\n" if trailing_newline else "")
    data = text.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data, mtime=0))
    else:
        path.write_bytes(data)
    return path


def synthetic(lang: str, n: int) -> list[str]:
    return [f"{lang} satz nummer {i}\tenglish sentence {lang} {i}" for i in range(n)]


def corpus(tmp_path: Path, sizes: dict[str, int]) -> dict[str, Path]:
    """One file per language of distinct synthetic pairs (gzip and plain mixed)."""
    files = {}
    for k, (lang, n) in enumerate(sizes.items()):
        name = f"{lang}-en.tsv.gz" if k % 2 == 0 else f"{lang}-en.tsv"
        files[lang] = write_tsv(tmp_path / name, synthetic(lang, n))
    return files


def take(stream: ParallelStream, n: int) -> list[Pair]:
    return list(itertools.islice(stream, n))


@pytest.fixture(scope="module")
def e5_tokenizer(real_model_dir: Path) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(real_model_dir / "tokenizer.json"))


# --------------------------------------------------------------------------- files


def test_find_parallel_files_selects_sorts_and_ignores_dev(tmp_path: Path) -> None:
    write_tsv(tmp_path / "fr-en.tsv", synthetic("fr", 2))
    write_tsv(tmp_path / "de-en.tsv.gz", synthetic("de", 2))
    (tmp_path / "ja-en.tsv.gz").write_bytes(b"not gzip at all")  # never opened
    write_tsv(tmp_path / "dev" / "it-en.tsv", synthetic("it", 2))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "en-de.tsv").write_text("x")
    (tmp_path / "ko-en.tsv.gz").mkdir()  # not a file

    files = find_parallel_files(tmp_path)
    assert list(files) == ["de", "fr", "ja"]
    assert files["de"] == tmp_path / "de-en.tsv.gz"
    assert files["fr"] == tmp_path / "fr-en.tsv"
    assert list(find_parallel_files(tmp_path, ["ja", "de"])) == ["de", "ja"]

    with pytest.raises(InputError, match=r"\bit\b"):  # only in dev/
        find_parallel_files(tmp_path, ["de", "it"])
    with pytest.raises(InputError, match="does not exist"):
        find_parallel_files(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no xx-en"):
        find_parallel_files(empty)
    write_tsv(tmp_path / "de-en.tsv", synthetic("de", 2))
    with pytest.raises(InputError, match="both"):
        find_parallel_files(tmp_path)


def test_read_pairs_streams_gzip_and_plain_and_skips_malformed(tmp_path: Path) -> None:
    lines = [
        "Guten Tag\tGood day",
        "no tab here",
        "a\tb\tc",
        "\tmissing source",
        "missing english\t  ",
        "",
        "  Leerzeichen  \t  spaces  \r",
        "Ende\tEnd",  # last line without a newline
    ]
    expected = [
        Pair("de", "Guten Tag", "Good day"),
        Pair("de", "Leerzeichen", "spaces"),
        Pair("de", "Ende", "End"),
    ]
    for name in ("de-en.tsv.gz", "de-en.tsv"):
        path = write_tsv(tmp_path / name, lines, trailing_newline=False)
        assert list(read_pairs(path, "de")) == expected

    stream = ParallelStream({"de": tmp_path / "de-en.tsv.gz"}, None, seed=0)
    assert sorted(take(stream, 3), key=lambda p: p.src) == sorted(expected, key=lambda p: p.src)
    assert stream.stats["malformed"] == 5
    assert stream.state_dict() == {"epoch": 0, "consumed": 3, "seed": 0}

    bad = tmp_path / "xx-en.tsv"
    bad.write_bytes(b"ok\tok\n\xff\xfe\tbroken\n")
    with pytest.raises(InputError, match=r"xx-en.tsv:2 is not UTF-8"):
        list(read_pairs(bad, "xx"))


def test_read_dev_limits_and_selects(tmp_path: Path) -> None:
    write_tsv(tmp_path / "dev" / "de-en.tsv", synthetic("de", 20))
    write_tsv(tmp_path / "dev" / "fr-en.tsv", synthetic("fr", 5))
    dev = read_dev(tmp_path / "dev", limit=10)
    assert list(dev) == ["de", "fr"]
    assert [p.src for p in dev["de"]] == [f"de satz nummer {i}" for i in range(10)]
    assert len(dev["fr"]) == 5
    assert list(read_dev(tmp_path / "dev", ["fr"])) == ["fr"]
    with pytest.raises(InputError, match="ja"):
        read_dev(tmp_path / "dev", ["ja"])


@pytest.mark.skipif(not (SHARED / "data" / "parallel" / "dev").is_dir(), reason="no shared dev data")
def test_read_dev_on_the_real_dev_split() -> None:
    dev_dir = SHARED / "data" / "parallel" / "dev"
    dev = read_dev(dev_dir, ["ja", "de"], limit=100)
    assert list(dev) == ["de", "ja"]
    assert all(len(pairs) == 100 for pairs in dev.values())
    first = (dev_dir / "de-en.tsv").read_text(encoding="utf-8").split("\n", 1)[0].split("\t")
    assert (dev["de"][0].src, dev["de"][0].en) == (first[0].strip(), first[1].strip())
    assert all(p.lang == "de" for p in dev["de"])

    full = read_dev(dev_dir)
    assert len(full) >= 30
    assert all(0 < len(pairs) <= 500 for pairs in full.values())


# --------------------------------------------------------------------------- filters


HAND_MADE: list[tuple[str, str, str | None]] = [
    ("Schreiben Sie an info@example.com für Details", "Write to info@example.com for details", "url"),
    ("Mehr unter http://example.org zu lesen", "Read more at http://example.org", "url"),
    ("Preis: N/A für dieses Produkt", "Price: N/A for this product", "url"),
    ("Das ist ein guter Tag heute", "Das ist ein guter Tag heute", "identical"),
    ("Danke", "Thanks", "length"),
    (
        " ".join(["Die Katze sitzt auf der Matte und schaut aus dem Fenster."] * 7),
        " ".join(["The cat sits on the mat and looks out of the window."] * 7),
        "length",
    ),
    (
        "Er schläft.",
        "He has been sleeping soundly in the small wooden cabin by the lake for the whole afternoon "
        "while the rain kept falling on the roof and the children were playing quietly.",
        "ratio",
    ),
    (
        "Barack Obama besuchte Berlin, Paris und London im Jahr 2015.",
        "Barack Obama visited Berlin, Paris and London in 2015.",
        "overlap",
    ),
    ("Ja, bitte.", "Yes, please.", None),
    ("Wie geht es dir?", "How are you doing?", None),
    (
        "Der Hund schläft im warmen Garten unter dem alten Baum.",
        "The dog is sleeping in the warm garden under the old tree.",
        None,
    ),
]


@pytest.mark.parametrize(
    ("src", "en", "reason"), HAND_MADE, ids=[f"{r}-{i}" for i, (_, _, r) in enumerate(HAND_MADE)]
)
def test_each_filter_reason_with_the_e5_tokenizer(
    e5_tokenizer: Any, src: str, en: str, reason: str | None
) -> None:
    f = PairFilter.from_tokenizer(e5_tokenizer)
    assert f.keep(Pair("de", src, en)) == reason


def test_filter_preconditions_hold_for_the_hand_made_pairs(e5_tokenizer: Any) -> None:
    """The pairs above test what they claim: token counts sit on the intended side of each limit."""

    def n(text: str) -> int:
        return len(e5_tokenizer.encode(text, add_special_tokens=False).ids)

    by_reason = {r: (s, e) for s, e, r in HAND_MADE if r is not None}
    src, en = by_reason["ratio"]
    assert n(src) > 3 and n(en) > 32 and n(en) > 2 * n(src)
    src, en = HAND_MADE[5][:2]
    assert min(n(src), n(en)) > 64 and max(n(src), n(en)) <= 2 * min(n(src), n(en))
    src, en = by_reason["overlap"]
    assert n(src) > 5 and n(en) > 5
    assert n("Ja, bitte.") == 4  # the smallest length kept: > 3 tokens


def test_keep_batch_agrees_with_keep_and_tokenizes_each_sentence_once(e5_tokenizer: Any) -> None:
    class Counting:
        """The real tokenizer, counting the sentences it encodes."""

        truncation = None
        padding = None

        def __init__(self) -> None:
            self.sentences = 0

        def encode(self, text: str, add_special_tokens: bool = True) -> Any:
            self.sentences += 1
            return e5_tokenizer.encode(text, add_special_tokens=add_special_tokens)

        def encode_batch(self, texts: list[str], add_special_tokens: bool = True) -> Any:
            self.sentences += len(texts)
            return e5_tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)

    counting = Counting()
    f = PairFilter.from_tokenizer(counting)
    pairs = [Pair("de", s, e) for s, e, _ in HAND_MADE]
    assert [f.keep(p) for p in pairs] == [r for _, _, r in HAND_MADE]
    tokenized = [p for p, (_, _, r) in zip(pairs, HAND_MADE, strict=True) if r not in ("url", "identical")]
    assert counting.sentences == 2 * len(tokenized)  # count + overlap share one encode per side
    counting.sentences = 0
    assert f.keep_batch(pairs) == [r for _, _, r in HAND_MADE]
    assert counting.sentences == 2 * len(tokenized)


def test_from_tokenizer_ignores_truncation_and_leaves_the_callers_tokenizer_alone(e5_tokenizer: Any) -> None:
    from tokenizers import Tokenizer

    truncating = Tokenizer.from_str(e5_tokenizer.to_str())
    truncating.enable_truncation(8)
    long_pair = HAND_MADE[5]
    assert PairFilter.from_tokenizer(truncating).keep(Pair("de", long_pair[0], long_pair[1])) == "length"
    assert truncating.truncation is not None and truncating.truncation["max_length"] == 8


def test_filter_limits_on_word_counts() -> None:
    """Boundaries of each rule, with whitespace words as tokens (the fallback when no tokenizer)."""
    f = PairFilter(count_tokens=lambda s: len(s.split()))

    def words(n: int, tag: str) -> str:
        return " ".join(f"{tag}{i}" for i in range(n))

    def reason(n1: int, n2: int) -> str | None:
        return f.keep(Pair("xx", words(n1, "a"), words(n2, "b")))

    assert reason(3, 4) == "length"
    assert reason(4, 4) is None
    assert reason(10, 32) is None  # the ratio rule allows up to 32 tokens whatever the other side
    assert reason(10, 33) == "ratio"
    assert reason(20, 40) is None
    assert reason(20, 41) == "ratio"
    assert reason(64, 64) is None
    assert reason(65, 65) == "length"
    shared3 = "x y z " + words(3, "a")
    assert f.keep(Pair("xx", shared3, "x y z " + words(3, "b"))) == "overlap"  # 3 of 6 = 50 %
    assert f.keep(Pair("xx", "x y " + words(4, "a"), "x y " + words(4, "b"))) is None  # 2 of 6
    assert f.keep(Pair("xx", "a b c d e", "e d c b a")) is None  # 5 tokens: no overlap test
    assert set(REASONS) == {"url", "identical", "length", "ratio", "overlap"}


def test_stream_applies_the_filter_and_counts_reasons(tmp_path: Path, e5_tokenizer: Any) -> None:
    good = [(s, e) for s, e, r in HAND_MADE if r is None]
    lines = [f"{s}\t{e}" for s, e, _ in HAND_MADE] + ["not a pair"]
    files = {"de": write_tsv(tmp_path / "de-en.tsv.gz", lines)}
    stream = ParallelStream(files, PairFilter.from_tokenizer(e5_tokenizer), seed=1)
    first = take(stream, len(good))
    assert sorted((p.src, p.en) for p in first) == sorted(good)
    expected = Counter(r for _, _, r in HAND_MADE if r is not None)
    assert {r: stream.stats[r] for r in REASONS} == {r: expected[r] for r in REASONS}
    assert stream.stats["kept"] == len(good) and stream.stats["malformed"] == 1
    second = take(stream, len(good))  # the next epoch uses the cached decisions
    assert sorted((p.src, p.en) for p in second) == sorted(good)
    assert stream.stats["overlap"] == 2 * expected["overlap"]


# --------------------------------------------------------------------------- the stream

SIZES = {"de": 600, "fr": 300, "ja": 100}


def test_same_seed_same_sequence_other_seed_other_order(tmp_path: Path) -> None:
    files = corpus(tmp_path, SIZES)
    a = take(ParallelStream(files, None, seed=7, shuffle_buffer=64), 500)
    b = take(ParallelStream(files, None, seed=7, shuffle_buffer=64), 500)
    c = take(ParallelStream(files, None, seed=8, shuffle_buffer=64), 500)
    assert a == b
    assert a != c
    assert [p.lang for p in a] != [p.lang for p in c]


def test_languages_are_mixed_in_proportion_to_file_sizes(tmp_path: Path) -> None:
    files = corpus(tmp_path, SIZES)
    for buffer in (64, 10_000):
        first = take(ParallelStream(files, None, seed=3, shuffle_buffer=buffer), 500)
        counts = Counter(p.lang for p in first)
        assert abs(counts["de"] - 300) < 40, counts
        assert abs(counts["fr"] - 150) < 35, counts
        assert abs(counts["ja"] - 50) < 20, counts
        assert len({p.lang for p in first[:30]}) >= 2


def test_epochs_wrap_reshuffle_and_yield_each_kept_pair_once(tmp_path: Path) -> None:
    de = [*synthetic("de", 40), "de satz nummer 3\tenglish sentence de 3", "broken line"]
    fr = [*synthetic("fr", 25), "DE SATZ NUMMER 5 \tEnglish sentence de 5"]  # duplicates across files
    files = {
        "de": write_tsv(tmp_path / "de-en.tsv.gz", de),
        "fr": write_tsv(tmp_path / "fr-en.tsv", fr),
        "ja": write_tsv(tmp_path / "ja-en.tsv.gz", synthetic("ja", 15)),
    }
    expected = {
        (ln.split("\t")[0], ln.split("\t")[1])
        for ln in synthetic("de", 40) + synthetic("fr", 25) + synthetic("ja", 15)
    }
    stream = ParallelStream(files, None, seed=11, shuffle_buffer=16)
    epochs: list[list[tuple[str, str]]] = [[], [], []]
    it = iter(stream)
    for _ in range(3 * 80):
        pair = next(it)
        epochs[stream.state_dict()["epoch"]].append((pair.src.lower(), pair.en.lower()))
    assert stream.state_dict() == {"epoch": 2, "consumed": 80, "seed": 11}
    for got in epochs:
        assert len(got) == len(expected) == 80
        assert set(got) == {(s.lower(), e.lower()) for s, e in expected}
    assert epochs[0] != epochs[1] != epochs[2]
    assert (stream.stats["duplicates"], stream.stats["malformed"], stream.stats["kept"]) == (3 * 2, 3, 3 * 80)
    next(it)
    assert stream.state_dict() == {"epoch": 3, "consumed": 1, "seed": 11}


@pytest.mark.parametrize("buffer", [32, 10_000])
def test_exact_resume_also_across_an_epoch_boundary(tmp_path: Path, buffer: int) -> None:
    files = corpus(tmp_path, {"de": 80, "fr": 50, "ja": 20})  # 150 pairs an epoch
    reference = take(ParallelStream(files, None, seed=5, shuffle_buffer=buffer), 450)
    for done in (0, 137, 149, 150, 151, 290):
        first = ParallelStream(files, None, seed=5, shuffle_buffer=buffer)
        assert take(first, done) == reference[:done]
        state = first.state_dict()
        assert state["seed"] == 5 and state["epoch"] * 150 + state["consumed"] == done  # 150: (0, 150)
        resumed = ParallelStream(files, None, seed=999, shuffle_buffer=buffer)
        resumed.load_state_dict(dict(state))
        assert take(resumed, 50) == reference[done : done + 50], done
        assert take(first, 50) == reference[done : done + 50]
    with pytest.raises(InputError):
        ParallelStream(files, None, seed=5).load_state_dict({"epoch": 0})


def test_resume_between_batches(tmp_path: Path) -> None:
    files = corpus(tmp_path, {"de": 80, "fr": 50, "ja": 20})
    reference = list(itertools.islice(ParallelStream(files, None, seed=2, shuffle_buffer=32).batches(16), 14))
    stream = ParallelStream(files, None, seed=2, shuffle_buffer=32)
    batches = stream.batches(16)
    assert [next(batches) for _ in range(9)] == reference[:9]
    state = stream.state_dict()
    assert state == {"epoch": 0, "consumed": 144, "seed": 2}
    resumed = ParallelStream(files, None, seed=2, shuffle_buffer=32)
    resumed.load_state_dict(state)
    assert list(itertools.islice(resumed.batches(16), 5)) == reference[9:14]  # 10th batch spans two epochs


def test_rank_slices_make_up_the_global_batch(tmp_path: Path) -> None:
    files = corpus(tmp_path, {"de": 80, "fr": 50, "ja": 20})
    world1 = list(itertools.islice(ParallelStream(files, None, seed=4, shuffle_buffer=32).batches(8), 30))
    rank0 = list(
        itertools.islice(ParallelStream(files, None, seed=4, shuffle_buffer=32).batches(8, 0, 2), 30)
    )
    rank1 = list(
        itertools.islice(ParallelStream(files, None, seed=4, shuffle_buffer=32).batches(8, 1, 2), 30)
    )
    for whole, a, b in zip(world1, rank0, rank1, strict=True):
        assert len(whole) == 8 and len(a) == len(b) == 4
        assert a + b == whole
    stream = ParallelStream(files, None, seed=4)
    with pytest.raises(InputError, match="multiple"):
        stream.batches(7, 0, 2)
    with pytest.raises(InputError, match="rank"):
        stream.batches(8, 2, 2)


def test_dedupe_and_exclude(tmp_path: Path) -> None:
    files = {
        "de": write_tsv(
            tmp_path / "de-en.tsv",
            ["Hallo Welt\tHello world", "  hallo welt \tHELLO WORLD", "Guten Morgen\tGood morning"],
        ),
        "fr": write_tsv(
            tmp_path / "fr-en.tsv.gz", ["Hallo Welt\tHello world", "Bonjour le monde\tHello world!"]
        ),
    }
    stream = ParallelStream(files, None, seed=0)
    one_epoch = take(stream, 3)
    assert sorted(p.en.lower() for p in one_epoch) == ["good morning", "hello world", "hello world!"]
    assert stream.stats["duplicates"] == 2

    all_copies = take(ParallelStream(files, None, seed=0, dedupe=False), 5)
    assert sum(p.en.lower() == "hello world" for p in all_copies) == 3

    excluding = ParallelStream(files, None, seed=0, exclude=[("bonjour le monde", "Hello World!")])
    two_epochs = take(excluding, 4)
    assert all(p.src != "Bonjour le monde" for p in two_epochs)
    assert sorted(p.en.lower() for p in two_epochs[:2]) == ["good morning", "hello world"]
    assert excluding.stats["excluded"] == 2 and excluding.stats["kept"] >= 4


def test_a_corpus_with_nothing_left_raises_instead_of_spinning(tmp_path: Path) -> None:
    files = {"de": write_tsv(tmp_path / "de-en.tsv", ["no tab", "also\tbad\tline"])}
    with pytest.raises(InputError, match="survives"):
        take(ParallelStream(files, None, seed=0), 1)


# --------------------------------------------------------------------------- English vocabulary


def test_english_vocab_collect_compact_full_save_load(tmp_path: Path, e5_tokenizer: Any) -> None:
    def encode_batch(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in e5_tokenizer.encode_batch(texts)]

    pairs = [Pair("de", s, e) for s, e, _ in HAND_MADE]
    eos = e5_tokenizer.token_to_id("</s>")
    unk = e5_tokenizer.token_to_id("<unk>")
    vocab = EnglishVocab.collect(iter(pairs), encode_batch, always=[unk], batch_size=3)
    english = {i for p in pairs for i in e5_tokenizer.encode(p.en).ids}
    assert vocab.ids.dtype == np.int64
    assert vocab.ids.tolist() == sorted(english | {unk})
    assert eos in vocab.ids
    german_only = sorted({i for p in pairs for i in e5_tokenizer.encode(p.src).ids} - english - {unk})
    assert german_only

    full = np.array(
        [[vocab.ids[0], german_only[0], vocab.ids[-1]], [eos, 1, german_only[-1]]], dtype=np.int64
    )
    compact = vocab.to_compact(full)
    assert compact.tolist() == [[0, -100, len(vocab) - 1], [int(np.searchsorted(vocab.ids, eos)), -100, -100]]
    known = compact != -100
    assert (vocab.to_full(compact) == np.where(known, full, -100)).all()
    assert (vocab.ids[compact[known]] == full[known]).all()

    as_tensor = vocab.to_compact(torch.from_numpy(full))
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.long
    assert as_tensor.tolist() == compact.tolist()
    with pytest.raises(InputError):
        vocab.to_full(np.array([len(vocab)]))

    path = tmp_path / "en_vocab.txt"
    vocab.save(path)
    assert path.read_text().splitlines()[0] == str(vocab.ids[0])
    loaded = EnglishVocab.load(path)
    assert np.array_equal(loaded.ids, vocab.ids)
    path.write_text("12\nnot-an-id\n")
    with pytest.raises(InputError):
        EnglishVocab.load(path)

    empty = EnglishVocab(np.array([], dtype=np.int64))
    assert empty.to_compact(np.array([5])).tolist() == [-100]
