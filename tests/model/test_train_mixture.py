"""The training mixture: folders merged per language, source weights, p ∝ n^alpha, one-language batches."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import pytest

from core.errors import InputError
from model.train.mixture import MixtureStream, find_corpora, language_shares
from model.train.pair_filter import PairFilter


def write(path: Path, pairs: list[tuple[str, str]], sources: list[str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.writelines(f"{a}\t{b}\n" for a, b in pairs)
    if sources is not None:
        src = path.parent / "sources" / path.name.replace(".tsv.gz", ".source.gz")
        src.parent.mkdir(exist_ok=True)
        with gzip.open(src, "wt", encoding="utf-8") as fh:
            fh.writelines(f"{s}\n" for s in sources)


def pairs(lang: str, n: int, tag: str = "") -> list[tuple[str, str]]:
    return [(f"{lang}{tag} satz nummer {i} hier", f"{lang}{tag} sentence number {i} here") for i in range(n)]


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    main, extra = tmp_path / "parallel", tmp_path / "extra"
    write(main / "de-en.tsv.gz", pairs("de", 400))
    write(main / "sw-en.tsv.gz", pairs("sw", 25))
    sources = ["ui" if i % 2 else "story" for i in range(100)]
    write(extra / "sw-en.tsv.gz", pairs("sw", 100, "x"), sources)
    write(extra / "jv-en.tsv.gz", pairs("jv", 25))
    return main, extra


def stream(folders: tuple[Path, Path], **kw: object) -> MixtureStream:
    return MixtureStream(find_corpora(list(folders)), PairFilter(lambda s: len(s.split())), seed=3, **kw)  # type: ignore[arg-type]


def test_folders_merge_per_language_and_sources_files_are_found(folders: tuple[Path, Path]) -> None:
    corpora = find_corpora(list(folders))
    assert list(corpora) == ["de", "jv", "sw"]
    assert [c.path.parent.name for c in corpora["sw"]] == ["parallel", "extra"]
    assert corpora["sw"][0].sources is None and corpora["sw"][1].sources is not None
    with pytest.raises(InputError, match="xx"):
        find_corpora(list(folders), ["de", "xx"])


def test_language_shares_follow_n_to_the_alpha() -> None:
    sizes = {"a": 400.0, "b": 100.0}
    assert language_shares(sizes, 1.0) == pytest.approx({"a": 0.8, "b": 0.2})
    assert language_shares(sizes, 0.5) == pytest.approx({"a": 2 / 3, "b": 1 / 3})
    assert language_shares(sizes, 0.0) == pytest.approx({"a": 0.5, "b": 0.5})


def test_drawn_languages_match_the_shares(folders: tuple[Path, Path]) -> None:
    s = stream(folders, alpha=0.5)
    assert s.sizes == {"de": 400, "jv": 25, "sw": 125}
    counts: Counter[str] = Counter()
    batches = s.batches(50)
    for _ in range(40):
        counts.update(p.lang for p in next(batches))
    total = sum(counts.values())
    for lang, share in s.shares.items():
        assert counts[lang] / total == pytest.approx(share, abs=0.03), (lang, counts)
    # Small languages cycle through more epochs instead of running dry.
    assert counts["jv"] > 25


def test_one_language_batches(folders: tuple[Path, Path]) -> None:
    batches = stream(folders, batch_languages="one").batches(16)
    langs = [{p.lang for p in next(batches)} for _ in range(30)]
    assert all(len(b) == 1 for b in langs)
    assert {next(iter(b)) for b in langs} == {"de", "jv", "sw"}


def test_source_weights_thin_out_a_source(folders: tuple[Path, Path]) -> None:
    weighted = stream(folders, alpha=1.0, source_weights={"ui": 0.0})
    assert weighted.sizes["sw"] == 25 + 50  # half the extra file is "ui"
    seen = [p for _ in range(60) for p in next(weighted.batches(20)) if p.lang == "sw"]
    ui = {f"swx satz nummer {i} hier" for i in range(1, 100, 2)}
    assert seen and not any(p.src in ui for p in seen)
    assert weighted.stats["downweighted"] > 0
    with pytest.raises(InputError, match="between 0 and 1"):
        stream(folders, source_weights={"ui": 2.0})


def test_resume_continues_exactly_and_ranks_take_slices(folders: tuple[Path, Path]) -> None:
    straight = stream(folders, alpha=0.5)
    it = straight.batches(12)
    first = [next(it) for _ in range(7)]
    state = straight.state_dict()
    after = [next(it) for _ in range(5)]
    resumed = stream(folders, alpha=0.5)
    resumed.load_state_dict(state)
    assert [next(resumed.batches(12)) for _ in range(5)] == after
    halves = [stream(folders, alpha=0.5).batches(12, rank, 2) for rank in (0, 1)]
    for batch in first:
        assert next(halves[0]) + next(halves[1]) == batch
    with pytest.raises(InputError, match="languages"):
        other = MixtureStream(find_corpora([folders[0]]), None, seed=3)
        other.load_state_dict(state)


def test_excluded_pairs_never_appear(folders: tuple[Path, Path]) -> None:
    banned = [(f"{lang} satz nummer 5 hier", f"{lang} sentence number 5 here") for lang in ("de", "jv")]
    s = stream(folders, alpha=0.0, exclude=banned)
    seen = {(p.src, p.en) for _ in range(50) for p in next(s.batches(20))}
    assert not seen & set(banned)


def test_pairs_sharing_a_side_with_dev_are_excluded(folders: tuple[Path, Path]) -> None:
    """A dev pair's English side can recur paired with another language: that pair is dev text too."""
    dev_pair = ("jv satz nummer 3 hier", "de sentence number 3 here")  # shares only de's English side
    s = stream(folders, alpha=0.0, exclude_sides=dev_pair)
    seen = {p.en for _ in range(60) for p in next(s.batches(20))}
    assert "de sentence number 3 here" not in seen and "de sentence number 4 here" in seen
    assert s.stats["excluded"] > 0
