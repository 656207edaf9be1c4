"""Calibration text for static int8: training sentences shipped in the package, never dev text.

Static quantisation fixes every activation scale ahead of time, so a text's vector no longer
depends on what else is in its batch (dynamic quantisation scales each batch by its own range).
The scales come from running the fp32 graph over this text. It must exist where the product is
installed, without the project's data folders, so a small file of training sentences ships in
``model/dap/calibration.jsonl``, from sources whose licences allow it: news sentences of
NTREX-128 (CC BY-SA 4.0; its training rows are the English sentences that ``parallel/`` pairs
with 25 or more languages, its 500 dev rows are not in the training files) and short everyday
sentences of ``parallel-extra`` (see ``SOURCES``). Measured on the base model (bench/int8.py),
the variants tried (these two, either alone, short sentences joined into paragraphs, mixed
training lines) were within 0.3 P@1 of each other, the noise of 1,600 dev pairs; joined
paragraphs widened the ranges and were the worst.

Rebuild it with ``python -m model.calibration SHARED/data/parallel SHARED/data/parallel-extra``.
"""

from __future__ import annotations

import gzip
import json
import sys
from collections import Counter
from importlib import resources
from pathlib import Path

from core.errors import InputError

# parallel-extra sources whose licences allow redistribution with attribution (its README):
# XCOPA CC BY 4.0, xSID CC BY-SA 4.0, TruthfulQA Apache-2.0, NusaX CC BY-SA 4.0,
# KorSTS CC BY-SA 4.0, Django's catalogs BSD-3-Clause.
SOURCES = {"xcopa": 6, "xsid": 6, "truthfulqa": 6, "nusax": 6, "korsts": 6, "django": 3}
NTREX_LANGUAGES = 25  # an English sentence paired with this many languages is an NTREX row
NTREX_PER_LANGUAGE = 8
CALIBRATION_FILE = "calibration.jsonl"


def calibration_path() -> Path:
    return Path(str(resources.files("model.dap").joinpath(CALIBRATION_FILE)))


def read_calibration(path: Path | None = None) -> list[str]:
    """The calibration texts."""
    path = path or calibration_path()
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the int8 calibration text {path}: {exc}") from exc
    return [str(row["text"]) for row in rows]


def _pairs(path: Path) -> list[tuple[str, str]]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [(x, en) for x, _, en in (line.rstrip("\n").partition("\t") for line in fh)]


def _dev_sides(folders: list[Path]) -> set[str]:
    """Both sides of every dev pair: an English sentence of one language's dev pair can sit in
    another language's training file (the sources are n-way parallel); it is still dev text."""
    sides: set[str] = set()
    for folder in folders:
        for path in sorted(folder.glob("*-en.tsv")):
            for line in path.read_text(encoding="utf-8").splitlines():
                sides.update(side.strip() for side in line.split("\t"))
    return sides


def make_calibration(parallel_dir: Path, extra_dir: Path) -> list[dict[str, str]]:
    """Rows ``{"lang", "source", "text"}``, both sides of each pair: the first NTREX training
    pairs of each language, then the first lines of each allowed parallel-extra source; no pair
    with a side that is also a side of any dev pair (``parallel/dev``, ``dev-short``)."""
    rows: list[dict[str, str]] = []
    dev = _dev_sides([Path(parallel_dir) / "dev", Path(extra_dir) / "dev-short"])
    files = {p.name.split("-")[0]: _pairs(p) for p in sorted(Path(parallel_dir).glob("*-en.tsv.gz"))}
    languages_per_english = Counter(en for pairs in files.values() for en in {en for _, en in pairs})
    for lang, pairs in files.items():
        ntrex = [
            (x, en)
            for x, en in pairs
            if languages_per_english[en] >= NTREX_LANGUAGES and x not in dev and en not in dev
        ]
        for x, en in ntrex[:NTREX_PER_LANGUAGE]:
            rows += [
                {"lang": lang, "source": "ntrex", "text": x},
                {"lang": "en", "source": "ntrex", "text": en},
            ]
    for data in sorted(Path(extra_dir).glob("*-en.tsv.gz")):
        lang = data.name.split("-")[0]
        sources = Path(extra_dir) / "sources" / f"{lang}-en.source.gz"
        taken = dict.fromkeys(SOURCES, 0)
        with gzip.open(sources, "rt", encoding="utf-8") as src:
            names = [line.strip() for line in src]
        for (x, en), name in zip(_pairs(data), names, strict=True):
            if name in SOURCES and taken[name] < SOURCES[name] and x not in dev and en not in dev:
                taken[name] += 1
                rows += [
                    {"lang": lang, "source": name, "text": x},
                    {"lang": "en", "source": name, "text": en},
                ]
    return rows


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m model.calibration SHARED/data/parallel SHARED/data/parallel-extra")
    out = calibration_path()
    rows = make_calibration(Path(sys.argv[1]), Path(sys.argv[2]))
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {out}")
