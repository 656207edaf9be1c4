"""Parallel X↔English files: finding them, reading pairs, counting lines, the dev pairs.

Layout (see ``shared/data/parallel/README.md``): ``<data>/xx-en.tsv[.gz]`` holds one pair per line,
``<non-English>\\t<English>``, UTF-8; ``<data>/dev/xx-en.tsv`` holds held-out pairs.
"""

from __future__ import annotations

import gzip
import itertools
import re
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from core.errors import InputError

_T = TypeVar("_T")
_FILE_RE = re.compile(r"(?P<lang>[A-Za-z0-9_]+)-en\.tsv(?P<gz>\.gz)?")


@dataclass(frozen=True, slots=True)
class Pair:
    """One translation pair; ``lang`` is the ISO code of the non-English side."""

    lang: str
    src: str
    en: str


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


def raw_lines(path: Path) -> Generator[bytes, None, None]:
    """Lines split on ``\\n`` only, the same way ``count_lines`` counts them."""
    with _open_binary(path) as fh:
        try:
            yield from fh
        except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
            raise InputError(f"{path} is corrupt: {exc}") from exc


def parse_line(raw: bytes, lang: str, path: Path, line_no: int) -> Pair | None:
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
    for line_no, raw in enumerate(raw_lines(path)):
        pair = parse_line(raw, lang, path, line_no)
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
