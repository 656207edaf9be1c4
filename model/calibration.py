"""Calibration text for static int8: training sentences shipped in the package, never dev text.

Static quantisation fixes every activation scale ahead of time, so a text's vector no longer
depends on what else is in its batch (dynamic quantisation scales each batch by its own range).
The scales come from running the fp32 graph over this text. It must exist where the product is
installed, without the project's data folders, so a small file of training sentences ships in
``model/dap/calibration.jsonl``, from sources whose licences allow it (see ``SOURCES``); texts of
one language are also joined into paragraph-length texts so long inputs are covered too.

Rebuild it from ``shared/data/parallel-extra`` with ``python -m model.calibration DIR``.
"""

from __future__ import annotations

import gzip
import itertools
import json
import sys
from importlib import resources
from pathlib import Path

from model.errors import InputError

# parallel-extra sources whose licences allow redistribution with attribution (its README):
# XCOPA CC BY 4.0, xSID CC BY-SA 4.0, TruthfulQA Apache-2.0, NusaX CC BY-SA 4.0,
# KorSTS CC BY-SA 4.0, Django's catalogs BSD-3-Clause.
SOURCES = {"xcopa": 6, "xsid": 6, "truthfulqa": 6, "nusax": 6, "korsts": 6, "django": 3}
CALIBRATION_FILE = "calibration.jsonl"
PARAGRAPH_SENTENCES = 12


def calibration_path() -> Path:
    return Path(str(resources.files("model.dap").joinpath(CALIBRATION_FILE)))


def read_calibration(path: Path | None = None) -> list[str]:
    """The calibration texts: every sentence, then the joined paragraphs."""
    path = path or calibration_path()
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the int8 calibration text {path}: {exc}") from exc
    return [str(row["text"]) for row in rows]


def make_calibration(extra_dir: Path) -> list[dict[str, str]]:
    """Rows ``{"lang", "source", "text"}``: the first lines of each allowed source per language
    (both sides), then one paragraph per language of its non-English sentences."""
    rows: list[dict[str, str]] = []
    paragraphs: list[dict[str, str]] = []
    for data in sorted(Path(extra_dir).glob("*-en.tsv.gz")):
        lang = data.name.split("-")[0]
        sources = Path(extra_dir) / "sources" / f"{lang}-en.source.gz"
        taken = dict.fromkeys(SOURCES, 0)
        own: list[str] = []
        with (
            gzip.open(data, "rt", encoding="utf-8") as pairs,
            gzip.open(sources, "rt", encoding="utf-8") as src,
        ):
            for line, source in zip(pairs, src, strict=True):
                name = source.strip()
                if name not in SOURCES or taken[name] >= SOURCES[name]:
                    continue
                taken[name] += 1
                xx, en = line.rstrip("\n").split("\t")
                rows += [
                    {"lang": lang, "source": name, "text": xx},
                    {"lang": "en", "source": name, "text": en},
                ]
                own.append(xx)
        if len(own) >= 3:
            text = " ".join(itertools.islice(itertools.cycle(own), PARAGRAPH_SENTENCES))
            paragraphs.append({"lang": lang, "source": "joined", "text": text})
    return rows + paragraphs


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m model.calibration SHARED/data/parallel-extra")
    out = calibration_path()
    out.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in make_calibration(Path(sys.argv[1]))),
        encoding="utf-8",
    )
    print(f"wrote {out}")
