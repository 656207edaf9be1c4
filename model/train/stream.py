"""The resumable mixed stream of training pairs.

It is built for a long multi-GPU run: it never loads a corpus into memory (except a dedupe set
of 8-byte hashes and a one-byte-per-line cache of filter decisions), it mixes languages the way
the paper's concatenate-and-shuffle does, it is a pure function of ``(files, filter, seed)`` so
every rank sees the same global order, and it can resume exactly from a ``state_dict`` stored in
a checkpoint.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, closing
from pathlib import Path

import numpy as np

from core.errors import InputError
from model.train.corpus import Pair, count_lines, parse_line, raw_lines
from model.train.pair_filter import REASONS, PairFilter


def rank_slice(batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of this rank's contiguous share of a global batch, after checking both fit."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise InputError(f"rank {rank} is not in a world of {world_size} processes")
    if batch_size < 1 or batch_size % world_size:
        raise InputError(f"batch size {batch_size} must be a positive multiple of {world_size} processes")
    per = batch_size // world_size
    return rank * per, (rank + 1) * per


def pair_key(src: str, en: str) -> int:
    """8-byte hash of a pair, case- and edge-whitespace-insensitive (dedupe and exclusion)."""
    text = f"{src.strip().lower()}\t{en.strip().lower()}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def side_key(text: str) -> int:
    """8-byte hash of one side of a pair, case- and edge-whitespace-insensitive."""
    return int.from_bytes(hashlib.blake2b(text.strip().lower().encode(), digest_size=8).digest(), "little")


_UNKNOWN = 255  # decision cache: not yet judged
_KEEP = 0  # else 1 + REASONS.index(reason)
_CHUNK = 512  # pairs judged per keep_batch call


def _rng(seed: int, epoch: int, purpose: str) -> random.Random:
    """Python's Mersenne Twister seeded from a string (SHA-512 of it): the same on every machine."""
    return random.Random(f"dapsearch-parallel/{seed}/{epoch}/{purpose}")


def _kept(probability: float, seed: int, epoch: int, file: int, line: int) -> bool:
    """A line of a down-weighted source is used in an epoch with this probability, decided by a
    hash so the decision does not depend on the order lines are read in."""
    if probability >= 1.0:
        return True
    digest = hashlib.blake2b(f"{seed}/{epoch}/{file}/{line}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") < probability * 2.0**64


def _below(rng: random.Random, n: int) -> int:
    """Uniform in [0, n), from ``random()`` only, whose output Python guarantees across versions."""
    return min(int(rng.random() * n), n - 1)


class ParallelStream:
    """Shuffled, language-mixed, deterministic, streaming stream of filtered pairs, resumable exactly.

    One epoch: the per-language files are read in parallel and interleaved at random, each
    next line drawn from a file with probability proportional to its remaining lines (so the
    interleaving is a uniform random merge and every stretch of the stream has about the
    corpus's language proportions, like the paper's concatenate-and-shuffle); malformed lines,
    filtered, excluded and (within the epoch) duplicate pairs are dropped; the rest go through a
    reservoir shuffle buffer. Both random generators are seeded from ``(seed, epoch)``, so each
    epoch has its own order and the sequence depends only on the files' contents and ``seed``.

    Memory: the shuffle buffer; the dedupe set, O(pairs per epoch) Python ints of 8-byte
    hashes (about 70 bytes per pair with the set's overhead); the exclusion set (the same per
    excluded pair); a filter-decision cache of 1 byte per line, so epochs after the first do
    not tokenize again.

    Every ``iter()`` continues from the current state: it replays the current epoch from its
    start and skips the pairs already yielded (exact, and cheap after the first epoch thanks
    to the decision cache). Only one iterator of a stream should be in use at a time: all of
    them advance the same state.

    ``stats`` counts, cumulatively, what this object has read, replays included: ``kept``
    (pairs that entered the shuffle buffer, so up to ``shuffle_buffer`` ahead of what was
    yielded), ``malformed``, one counter per filter reason, ``duplicates`` and ``excluded``.
    """

    def __init__(
        self,
        files: Mapping[str, Path],
        pair_filter: PairFilter | None,
        seed: int,
        shuffle_buffer: int = 10_000,
        dedupe: bool = True,
        exclude: Iterable[tuple[str, str]] = (),
        lang: str | None = None,
        keep_probability: Mapping[str, np.ndarray] | None = None,
        exclude_sides: Iterable[str] = (),
    ) -> None:
        if not files:
            raise InputError("ParallelStream needs at least one file")
        if shuffle_buffer < 1:
            raise InputError(f"shuffle_buffer must be >= 1, not {shuffle_buffer}")
        self.files: dict[str, Path] = {lang: Path(files[lang]) for lang in sorted(files)}
        self.pair_filter = pair_filter
        self.seed = int(seed)
        self.shuffle_buffer = shuffle_buffer
        self.dedupe = dedupe
        self._exclude: set[int] = {pair_key(src, en) for src, en in exclude}
        self._exclude_sides: set[int] = {side_key(side) for side in exclude_sides}
        self.lang = lang
        self._counts = [count_lines(path) for path in self.files.values()]
        keep = keep_probability or {}
        self._keep: list[np.ndarray | None] = []
        for key, n in zip(self.files, self._counts, strict=True):
            probs = keep.get(key)
            if probs is not None and len(probs) != n:
                raise InputError(f"{len(probs)} keep probabilities for the {n} lines of {self.files[key]}")
            self._keep.append(None if probs is None else np.asarray(probs, dtype=np.float64))
        self._decisions = [bytearray([_UNKNOWN]) * n for n in self._counts]
        self._epoch = 0
        self._consumed = 0
        self._epoch_size: int | None = None
        self.stats: dict[str, int] = dict.fromkeys(
            ("kept", "malformed", *REASONS, "duplicates", "excluded", "downweighted"), 0
        )

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, int]:
        """Where the stream is: the epoch, pairs yielded in it so far, and the seed."""
        return {"epoch": self._epoch, "consumed": self._consumed, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue exactly after the last pair yielded when ``state`` was taken (the seed is adopted)."""
        try:
            epoch, consumed, seed = int(state["epoch"]), int(state["consumed"]), int(state["seed"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"not a ParallelStream state: {dict(state)!r}") from exc
        if epoch < 0 or consumed < 0:
            raise InputError(f"not a ParallelStream state: {dict(state)!r}")
        self._epoch, self._consumed, self.seed = epoch, consumed, seed

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[Pair]:
        """Infinite: epoch after epoch, starting at the current state."""
        while True:
            epoch, skip = self._epoch, self._consumed
            if skip and skip == self._epoch_size:  # at the end of an epoch: no need to replay it
                self._epoch, self._consumed = epoch + 1, 0
                continue
            produced = 0
            for pair in self._shuffled(epoch):
                produced += 1
                if produced <= skip:
                    continue
                self._consumed = produced
                yield pair
            if produced == 0:
                raise InputError("no pair in the training files survives the filters")
            if produced < skip:
                raise InputError(
                    f"cannot resume at pair {skip} of epoch {epoch}: it has only {produced} pairs "
                    "(were the training files, the filter or the exclusions changed?)"
                )
            self._epoch, self._consumed = epoch + 1, 0

    def batches(self, batch_size: int, rank: int = 0, world_size: int = 1) -> Iterator[list[Pair]]:
        """This rank's contiguous slice of each global batch of ``batch_size`` pairs."""
        return self._batches(batch_size, *rank_slice(batch_size, rank, world_size))

    def _batches(self, batch_size: int, start: int, stop: int) -> Iterator[list[Pair]]:
        pairs = iter(self)
        while True:
            batch = list(itertools.islice(pairs, batch_size))
            yield batch[start:stop]

    def _mixed(self, epoch: int) -> Iterator[tuple[int, int, Pair]]:
        """(file index, line number, pair) of well-formed lines, files merged at random."""
        rng = _rng(self.seed, epoch, "mix")
        paths = list(self.files.values())
        langs = [self.lang or key for key in self.files]
        remaining = list(self._counts)
        position = [0] * len(paths)
        total = sum(remaining)
        with ExitStack() as stack:  # the files close when the epoch ends or is abandoned
            readers = [stack.enter_context(closing(raw_lines(p))) for p in paths]
            while total:
                r = _below(rng, total)
                i = 0
                while r >= remaining[i]:
                    r -= remaining[i]
                    i += 1
                remaining[i] -= 1
                total -= 1
                line_no = position[i]
                position[i] += 1
                raw = next(readers[i], None)
                if raw is None:
                    raise InputError(f"{paths[i]} changed while being read (it has fewer lines than counted)")
                pair = parse_line(raw, langs[i], paths[i], line_no)
                if pair is None:
                    self.stats["malformed"] += 1
                    continue
                yield i, line_no, pair

    def _judged(self, chunk: list[tuple[int, int, Pair]]) -> list[int]:
        """Filter decisions for a chunk, from the cache or (batched) from the filter."""
        codes = [self._decisions[i][n] for i, n, _ in chunk]
        todo = [k for k, code in enumerate(codes) if code == _UNKNOWN]
        if todo and self.pair_filter is not None:
            reasons = self.pair_filter.keep_batch([chunk[k][2] for k in todo])
            for k, reason in zip(todo, reasons, strict=True):
                codes[k] = _KEEP if reason is None else 1 + REASONS.index(reason)
                i, n, _ = chunk[k]
                self._decisions[i][n] = codes[k]
        elif todo:
            for k in todo:
                codes[k] = _KEEP
        return codes

    def _filtered(self, epoch: int) -> Iterator[Pair]:
        """Mixed pairs that pass the filter, are not excluded and (per epoch) not seen before."""
        seen: set[int] = set()
        mixed = self._mixed(epoch)
        while chunk := list(itertools.islice(mixed, _CHUNK)):
            for (i, n, pair), code in zip(chunk, self._judged(chunk), strict=True):
                if code != _KEEP:
                    self.stats[REASONS[code - 1]] += 1
                    continue
                keep = self._keep[i]
                if keep is not None and not _kept(keep[n], self.seed, epoch, i, n):
                    self.stats["downweighted"] += 1
                    continue
                if self._exclude_sides and (
                    side_key(pair.src) in self._exclude_sides or side_key(pair.en) in self._exclude_sides
                ):
                    self.stats["excluded"] += 1
                    continue
                if self._exclude or self.dedupe:
                    key = pair_key(pair.src, pair.en)
                    if key in self._exclude:
                        self.stats["excluded"] += 1
                        continue
                    if self.dedupe:
                        if key in seen:
                            self.stats["duplicates"] += 1
                            continue
                        seen.add(key)
                self.stats["kept"] += 1
                yield pair

    def _shuffled(self, epoch: int) -> Iterator[Pair]:
        """One epoch through a reservoir shuffle buffer."""
        rng = _rng(self.seed, epoch, "shuffle")
        size = self.shuffle_buffer
        buffer: list[Pair] = []
        total = 0
        for pair in self._filtered(epoch):
            total += 1
            if len(buffer) < size:
                buffer.append(pair)
                continue
            j = _below(rng, size)
            out, buffer[j] = buffer[j], pair
            yield out
        self._epoch_size = total  # the same every epoch (one pair per kept key): see __iter__
        for i in range(len(buffer) - 1, 0, -1):  # Fisher-Yates on what is left
            j = _below(rng, i + 1)
            buffer[i], buffer[j] = buffer[j], buffer[i]
        yield from buffer
