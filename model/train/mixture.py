"""The training mixture: several corpus folders, per-source weights, language sampling p ∝ n^alpha.

A short CPU run sees a fraction of an epoch, so what it learns depends on which languages and
sources it is shown, not on how large each file is. Each language gets one :class:`ParallelStream`
over all its files (``shared/data/parallel`` and ``parallel-extra`` merge per language and are
deduplicated together); lines of down-weighted sources (``<dir>/sources/xx-en.source.gz``, one
source name per line) are used with their weight as probability; languages are drawn with
probability ∝ (effective lines)^alpha, per pair (mixed batches, the paper) or per batch (one language
per batch: harder in-batch negatives). Every draw is a hash of ``(seed, draw index)``, so the
state of the mixture is the number of draws plus each language's stream position, and a resume
continues exactly.
"""

from __future__ import annotations

import bisect
import gzip
import hashlib
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from core.errors import InputError
from model.train.corpus import Pair, count_lines, find_parallel_files, select_languages
from model.train.pair_filter import PairFilter
from model.train.stream import ParallelStream, rank_slice

BatchLanguages = Literal["mixed", "one"]


@dataclass(frozen=True)
class Corpus:
    """One training file and, when its folder has one, the file naming each line's source."""

    lang: str
    path: Path
    sources: Path | None


def find_corpora(data_dirs: Sequence[Path], langs: Sequence[str] | None = None) -> dict[str, list[Corpus]]:
    """Every ``xx-en.tsv[.gz]`` of every folder, grouped by language (sorted)."""
    found: dict[str, list[Corpus]] = {}
    for directory in data_dirs:
        for lang, path in find_parallel_files(Path(directory)).items():
            stem = path.name.removesuffix(".gz").removesuffix(".tsv")
            sources = Path(directory) / "sources" / f"{stem}.source.gz"
            found.setdefault(lang, []).append(Corpus(lang, path, sources if sources.is_file() else None))
    return select_languages(found, langs, "training file", ", ".join(str(d) for d in data_dirs))


def read_sources(path: Path) -> list[str]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            return [line.rstrip("\n") for line in fh]
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read sources file {path}: {exc}") from exc


def keep_probabilities(corpus: Corpus, lines: int, weights: Mapping[str, float]) -> np.ndarray | None:
    """Per-line probability of use from the source weights (1 for unlisted sources), or None if all 1."""
    if corpus.sources is None or not weights:
        return None
    names = read_sources(corpus.sources)
    if len(names) != lines:
        raise InputError(f"{corpus.sources} has {len(names)} lines but {corpus.path} has {lines}")
    probs = np.fromiter((weights.get(name, 1.0) for name in names), dtype=np.float64, count=lines)
    return None if bool((probs >= 1.0).all()) else probs


def language_shares(sizes: Mapping[str, float], alpha: float) -> dict[str, float]:
    """p ∝ n^alpha: 1 follows the data, 0 is uniform, in between lifts small languages."""
    raw = {lang: max(n, 0.0) ** alpha for lang, n in sizes.items() if n > 0}
    total = sum(raw.values())
    if not total:
        raise InputError("the training files hold no pairs")
    return {lang: v / total for lang, v in raw.items()}


def _uniform(seed: int, draw: int) -> float:
    digest = hashlib.blake2b(f"dapsearch-mixture/{seed}/{draw}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


class MixtureStream:
    """Batches drawn from per-language streams with fixed language shares; resumable exactly.

    ``stats`` adds up the per-language streams' counters (see :class:`ParallelStream`).
    """

    def __init__(
        self,
        corpora: Mapping[str, Sequence[Corpus]],
        pair_filter: PairFilter | None,
        seed: int,
        alpha: float = 1.0,
        source_weights: Mapping[str, float] | None = None,
        batch_languages: BatchLanguages = "mixed",
        exclude: Iterable[tuple[str, str]] = (),
        shuffle_buffer: int = 2000,
        exclude_sides: Iterable[str] = (),
    ) -> None:
        if not corpora:
            raise InputError("no training files")
        for name, weight in (source_weights or {}).items():
            if not 0.0 <= weight <= 1.0:
                raise InputError(f"source weight {name}={weight} must be between 0 and 1")
        self.seed = int(seed)
        self.batch_languages: BatchLanguages = batch_languages
        excluded = list(exclude)
        sides = list(exclude_sides)
        self.streams: dict[str, ParallelStream] = {}
        sizes: dict[str, float] = {}
        for lang in sorted(corpora):
            files = {f"{lang}:{i}": c.path for i, c in enumerate(corpora[lang])}
            keep: dict[str, np.ndarray] = {}
            size = 0.0
            for key, corpus in zip(files, corpora[lang], strict=True):
                lines = count_lines(corpus.path)
                probs = keep_probabilities(corpus, lines, source_weights or {})
                if probs is not None:
                    keep[key] = probs
                size += lines if probs is None else float(probs.sum())
            self.streams[lang] = ParallelStream(
                files,
                pair_filter,
                seed,
                shuffle_buffer,
                exclude=excluded,
                lang=lang,
                keep_probability=keep,
                exclude_sides=sides,
            )
            sizes[lang] = size
        self.sizes = sizes
        self.shares = language_shares(sizes, alpha)
        self._langs = sorted(self.shares)
        self._cumulative = list(itertools.accumulate(self.shares[lang] for lang in self._langs))
        self._draws = 0
        self._iters: dict[str, Iterator[Pair]] = {}

    @property
    def stats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for stream in self.streams.values():
            for key, value in stream.stats.items():
                total[key] = total.get(key, 0) + value
        return total

    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "draws": self._draws,
            "streams": {lang: s.state_dict() for lang, s in self.streams.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        try:
            seed, draws, streams = int(state["seed"]), int(state["draws"]), dict(state["streams"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError("not a MixtureStream state (was the run started by an older version?)") from exc
        if set(streams) != set(self.streams):
            raise InputError(
                "the checkpoint was trained on languages "
                f"{', '.join(sorted(streams))}, not {', '.join(sorted(self.streams))}"
            )
        self.seed, self._draws = seed, draws
        for lang, sub in streams.items():
            self.streams[lang].load_state_dict(sub)
        self._iters = {}  # each language replays its epoch up to its position on the next draw

    def _next_lang(self) -> str:
        u = _uniform(self.seed, self._draws)
        self._draws += 1
        return self._langs[min(bisect.bisect_right(self._cumulative, u), len(self._langs) - 1)]

    def _take(self, lang: str) -> Pair:
        it = self._iters.get(lang)
        if it is None:
            it = self._iters[lang] = iter(self.streams[lang])
        return next(it)

    def next_batch(self, batch_size: int) -> list[Pair]:
        """One global batch: a language per pair (mixed) or one language for the whole batch."""
        if self.batch_languages == "one":
            lang = self._next_lang()
            return [self._take(lang) for _ in range(batch_size)]
        return [self._take(self._next_lang()) for _ in range(batch_size)]

    def batches(self, batch_size: int, rank: int = 0, world_size: int = 1) -> Iterator[list[Pair]]:
        """This rank's contiguous slice of each global batch (every rank draws the same batches)."""
        start, stop = rank_slice(batch_size, rank, world_size)
        while True:
            yield self.next_batch(batch_size)[start:stop]
