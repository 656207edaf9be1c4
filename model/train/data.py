"""Parallel X↔English pairs for DAP training: files, the paper's filters, a resumable mixed stream.

Layout (see ``shared/data/parallel/README.md``): ``<data>/xx-en.tsv[.gz]`` holds one pair per line,
``<non-English>\\t<English>``, UTF-8; ``<data>/dev/xx-en.tsv`` holds held-out pairs.

The stream is built for a long multi-GPU run: it never loads a corpus into memory (except a
dedupe set of 8-byte hashes and a one-byte-per-line cache of filter decisions), it mixes
languages the way the paper's concatenate-and-shuffle does, it is a pure function of
``(files, filter, seed)`` so every rank sees the same global order, and it can resume exactly
from a ``state_dict`` stored in a checkpoint.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import random
import re
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar, overload

import numpy as np

from core.errors import InputError
from core.files import atomic_write_text

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100  # torch.nn.functional.cross_entropy's default ignore_index
REASONS: tuple[str, ...] = ("url", "identical", "length", "ratio", "overlap")
_T = TypeVar("_T")
_FILE_RE = re.compile(r"(?P<lang>[A-Za-z0-9_]+)-en\.tsv(?P<gz>\.gz)?")


@dataclass(frozen=True, slots=True)
class Pair:
    """One translation pair; ``lang`` is the ISO code of the non-English side."""

    lang: str
    src: str
    en: str


# --------------------------------------------------------------------------- files


def _lang_files(directory: Path, langs: Sequence[str] | None, what: str) -> dict[str, Path]:
    """``xx-en.tsv[.gz]`` directly in ``directory``, keyed by ``xx`` and sorted; never opens them."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{what} directory {directory} does not exist")
    found: dict[str, Path] = {}
    for path in directory.iterdir():
        match = _FILE_RE.fullmatch(path.name)
        if match is None or not path.is_file() or match["lang"] == "en":
            continue
        lang = match["lang"]
        if lang in found:
            raise InputError(f"both {found[lang].name} and {path.name} in {directory}; keep one")
        found[lang] = path
    if not found:
        raise InputError(f"no xx-en.tsv or xx-en.tsv.gz files in {what} directory {directory}")
    return select_languages(found, langs, f"{what} file", str(directory))


def select_languages(
    found: dict[str, _T], langs: Sequence[str] | None, what: str, where: str
) -> dict[str, _T]:
    """``found`` restricted to ``langs`` (every one must be there), sorted by language."""
    if langs is not None:
        missing = [lang for lang in langs if lang not in found]
        if missing:
            raise InputError(
                f"no {what} for language(s) {', '.join(missing)} in {where} "
                f"(found: {', '.join(sorted(found))})"
            )
        found = {lang: found[lang] for lang in langs}
    return {lang: found[lang] for lang in sorted(found)}


def find_parallel_files(data_dir: Path, langs: Sequence[str] | None = None) -> dict[str, Path]:
    """Training files in ``data_dir`` (``dev/`` is not looked into), keyed by language, sorted."""
    return _lang_files(data_dir, langs, "training data")


def _open_binary(path: Path) -> BinaryIO | gzip.GzipFile:
    try:
        if path.suffix == ".gz":
            return gzip.open(path, "rb")
        return open(path, "rb")
    except OSError as exc:
        raise InputError(f"cannot open {path}: {exc}") from exc


def _raw_lines(path: Path) -> Generator[bytes, None, None]:
    """Lines split on ``\\n`` only, the same way ``count_lines`` counts them."""
    with _open_binary(path) as fh:
        try:
            yield from fh
        except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
            raise InputError(f"{path} is corrupt: {exc}") from exc


def _parse(raw: bytes, lang: str, path: Path, line_no: int) -> Pair | None:
    """A pair, or None for a line without exactly one tab or with an empty side."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}:{line_no + 1} is not UTF-8: {exc}") from exc
    parts = line.rstrip("\r\n").split("\t")
    if len(parts) != 2:
        return None
    src, en = parts[0].strip(), parts[1].strip()
    if not src or not en:
        return None
    return Pair(lang, src, en)


def read_pairs(path: Path, lang: str) -> Iterator[Pair]:
    """Stream one file's pairs (gzip when the name ends in .gz); malformed lines are skipped."""
    path = Path(path)
    for line_no, raw in enumerate(_raw_lines(path)):
        pair = _parse(raw, lang, path, line_no)
        if pair is not None:
            yield pair


_LINE_COUNTS: dict[tuple[str, int, int], int] = {}


def count_lines(path: Path) -> int:
    """Lines in a file (a last line without ``\\n`` counts), cached per (path, size, mtime)."""
    try:
        st = path.stat()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    cached = _LINE_COUNTS.get(key)
    if cached is not None:
        return cached
    count, last = 0, b"\n"
    with _open_binary(path) as fh:
        try:
            while chunk := fh.read(1 << 20):
                count += chunk.count(b"\n")
                last = chunk[-1:]
        except (OSError, EOFError) as exc:
            raise InputError(f"{path} is corrupt: {exc}") from exc
    if last != b"\n":
        count += 1
    _LINE_COUNTS[key] = count
    return count


def read_dev(
    dev_dir: Path, langs: Sequence[str] | None = None, limit: int | None = None
) -> dict[str, list[Pair]]:
    """Dev pairs per language, in file order, at most ``limit`` each (model selection, exclusion)."""
    files = _lang_files(dev_dir, langs, "dev")
    return {lang: list(itertools.islice(read_pairs(path, lang), limit)) for lang, path in files.items()}


# --------------------------------------------------------------------------- filters


@dataclass
class PairFilter:
    """The paper's filters (DAP code data/gen_sent_pair.py) on token counts of the given tokenizer.

    ``count_tokens`` gives the length of a sentence without special tokens; ``tokenize`` gives
    the tokens for the overlap test (when None, whitespace-separated lower-cased words are
    used). ``encode_batch`` is optional: when set, :meth:`keep_batch` tokenizes a whole chunk in
    one call (the Rust tokenizer parallelises it). Use :meth:`from_tokenizer` to get all three
    from a ``tokenizers.Tokenizer`` with each sentence tokenized once.
    """

    count_tokens: Callable[[str], int]
    tokenize: Callable[[str], list[int]] | None = None
    min_tokens: int = 3  # both sides need > min_tokens
    max_tokens: int = 64  # min(l1, l2) <= max_tokens
    max_ratio: float = 2.0  # max(l1, l2) <= max(max_ratio * min(l1, l2), ratio_free_tokens)
    max_overlap: float = 0.5  # drop when >= this share of either side's tokens occur in the other
    ratio_free_tokens: int = 32
    overlap_min_tokens: int = 5  # the overlap test runs only when both sides have more tokens
    encode_batch: Callable[[list[str]], list[list[int]]] | None = None

    @classmethod
    def from_tokenizer(cls, tok: Any, **kw: Any) -> PairFilter:
        """Filter on ``tok``'s tokens (no specials, no truncation); the caller's tokenizer is not changed."""
        if tok.truncation is not None or tok.padding is not None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_str(tok.to_str())  # a copy, so counts are never capped
            tok.no_truncation()
            tok.no_padding()
        cache: dict[str, list[int]] = {}  # the current pair: count and overlap share one encode

        def ids(text: str) -> list[int]:
            hit = cache.get(text)
            if hit is None:
                if len(cache) >= 4:
                    cache.clear()
                hit = cache[text] = list(tok.encode(text, add_special_tokens=False).ids)
            return hit

        def count(text: str) -> int:
            return len(ids(text))

        def encode_batch(texts: list[str]) -> list[list[int]]:
            return [list(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)]

        return cls(count_tokens=count, tokenize=ids, encode_batch=encode_batch, **kw)

    def _text_reason(self, pair: Pair) -> str | None:
        """Checks that need no tokens: URLs/e-mails/N/A, and copies."""
        for side in (pair.src, pair.en):
            if "@" in side or "http" in side or "N/A" in side:
                return "url"
        if pair.src == pair.en:
            return "identical"
        return None

    def _token_reason(
        self, l1: int, l2: int, tokens: Callable[[], tuple[Sequence[object], Sequence[object]]]
    ) -> str | None:
        short, long = min(l1, l2), max(l1, l2)
        if short <= self.min_tokens:
            return "length"
        if long > max(self.max_ratio * short, self.ratio_free_tokens):
            return "ratio"
        if short > self.max_tokens:
            return "length"
        if short <= self.overlap_min_tokens:
            return None
        t1, t2 = tokens()
        for mine, other in ((t1, t2), (t2, t1)):
            others = set(other)
            shared = sum(1 for t in mine if t in others)
            if shared >= self.max_overlap * len(mine):
                return "overlap"
        return None

    def _tokens(self, text: str) -> Sequence[object]:
        if self.tokenize is not None:
            return self.tokenize(text)
        return text.lower().split()

    def keep(self, pair: Pair) -> str | None:
        """None to keep the pair, else why it is dropped (one of ``REASONS``)."""
        reason = self._text_reason(pair)
        if reason is not None:
            return reason
        return self._token_reason(
            self.count_tokens(pair.src),
            self.count_tokens(pair.en),
            lambda: (self._tokens(pair.src), self._tokens(pair.en)),
        )

    def keep_batch(self, pairs: Sequence[Pair]) -> list[str | None]:
        """``[keep(p) for p in pairs]``, with one batched tokenizer call when ``encode_batch`` is set."""
        if self.encode_batch is None:
            return [self.keep(p) for p in pairs]
        reasons = [self._text_reason(p) for p in pairs]
        todo = [i for i, r in enumerate(reasons) if r is None]
        encoded = self.encode_batch([s for i in todo for s in (pairs[i].src, pairs[i].en)])
        for k, i in enumerate(todo):
            ids1, ids2 = encoded[2 * k], encoded[2 * k + 1]
            reasons[i] = self._token_reason(len(ids1), len(ids2), _given(ids1, ids2))
        return reasons


def _given(a: list[int], b: list[int]) -> Callable[[], tuple[Sequence[object], Sequence[object]]]:
    return lambda: (a, b)


# --------------------------------------------------------------------------- the stream


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
            readers = [stack.enter_context(closing(_raw_lines(p))) for p in paths]
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
                pair = _parse(raw, langs[i], paths[i], line_no)
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


# --------------------------------------------------------------------------- English vocabulary


@dataclass(eq=False)
class EnglishVocab:
    """English token ids seen on the English side of the training data: the RTL head predicts only these."""

    ids: np.ndarray  # sorted unique full-vocabulary ids, int64
    _torch_ids: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        ids = np.unique(np.asarray(self.ids, dtype=np.int64).reshape(-1))
        if ids.size and ids[0] < 0:
            raise InputError(f"token ids must be >= 0, got {int(ids[0])}")
        self.ids = ids

    def __len__(self) -> int:
        return int(self.ids.size)

    @overload
    def to_compact(self, full_ids: np.ndarray) -> np.ndarray: ...

    @overload
    def to_compact(self, full_ids: torch.Tensor) -> torch.Tensor: ...

    def to_compact(self, full_ids: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Full id -> its index in ``ids``; ids outside the vocabulary -> -100 (ignored by the loss)."""
        if isinstance(full_ids, np.ndarray):
            full = full_ids.astype(np.int64, copy=False)
            if self.ids.size == 0:
                return np.full(full.shape, IGNORE_INDEX, dtype=np.int64)
            idx = np.minimum(np.searchsorted(self.ids, full), self.ids.size - 1)
            return np.where(self.ids[idx] == full, idx, IGNORE_INDEX).astype(np.int64)
        import torch

        full_t = full_ids.to(torch.long)
        if self.ids.size == 0:
            return torch.full_like(full_t, IGNORE_INDEX)
        key = str(full_t.device)
        ids: torch.Tensor | None = self._torch_ids.get(key)
        if ids is None:
            ids = self._torch_ids[key] = torch.from_numpy(self.ids).to(full_t.device)
        pos = torch.searchsorted(ids, full_t.contiguous()).clamp_(max=ids.numel() - 1)
        return torch.where(ids[pos] == full_t, pos, torch.full_like(pos, IGNORE_INDEX))

    def to_full(self, compact: np.ndarray) -> np.ndarray:
        """Compact index -> full id; -100 stays -100."""
        compact = np.asarray(compact, dtype=np.int64)
        ignored = compact == IGNORE_INDEX
        bad = ~ignored & ((compact < 0) | (compact >= self.ids.size))
        if bad.any():
            raise InputError(f"compact ids out of range [0, {self.ids.size}): {compact[bad][:5].tolist()}")
        out = np.full(compact.shape, IGNORE_INDEX, dtype=np.int64)
        out[~ignored] = self.ids[compact[~ignored]]
        return out

    def save(self, path: Path) -> None:
        """One id per line, written atomically."""
        atomic_write_text(Path(path), "".join(f"{int(i)}\n" for i in self.ids))

    @classmethod
    def load(cls, path: Path) -> EnglishVocab:
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").split()
        except OSError as exc:
            raise InputError(f"cannot read English vocabulary {path}: {exc}") from exc
        try:
            ids = [int(x) for x in lines]
        except ValueError as exc:
            raise InputError(f"{path} is not an English vocabulary (one token id per line): {exc}") from exc
        return cls(np.asarray(ids, dtype=np.int64))

    @classmethod
    def collect(
        cls,
        pairs: Iterable[Pair],
        encode_batch: Callable[[list[str]], list[list[int]]],
        always: Iterable[int] = (),
        batch_size: int = 4096,
    ) -> EnglishVocab:
        """Union of the ids of every English side (``pairs`` must be finite), plus ``always``."""
        seen: set[int] = {int(i) for i in always}
        it = iter(pairs)
        while batch := [p.en for p in itertools.islice(it, batch_size)]:
            for ids in encode_batch(batch):
                seen.update(ids)
        return cls(np.fromiter(sorted(seen), dtype=np.int64, count=len(seen)))
