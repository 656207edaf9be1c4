"""The tables and the JSON that ``dapsearch eval`` prints: one row per language, one per model."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from evaluation.run import ModelReport


def search_average(report: ModelReport, key: str) -> float | None:
    """mono / cross: over the non-English languages; en: English mono; guard: mono of all 12
    languages together (the non-English ones and en→en), the number that must not fall."""
    s = report.search
    if not s:
        return None
    if key == "en":
        return s["en"].mono_r1 if "en" in s else None
    if key == "guard":
        return float(np.mean([v.mono_r1 for v in s.values()]))
    values = [getattr(v, f"{key}_r1") for lang, v in s.items() if lang != "en"]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def set_average(report: ModelReport, name: str, key: str) -> float | None:
    scores = report.dev_sets.get(name, {})
    values = [getattr(v, key) for v in scores.values() if getattr(v, key) is not None]
    return float(np.mean(values)) if values else None


def summary_markdown(reports: Sequence[ModelReport], labels: Sequence[str] | None = None) -> str:
    """One row per model: P@1 both ways per dev set, mining F1 (transferred threshold) per set,
    and search-dev R@1 (mono, cross, en→en, and the 12-language mono guard)."""
    names = sorted({n for r in reports for n in r.dev_sets}, key=lambda n: (n != "dev", n))
    header = ["model"]
    for n in names:
        header += [f"{n} xx→en", f"{n} en→xx", f"{n} mining F1"]
    has_search = any(r.search for r in reports)
    if has_search:
        header += ["search mono R@1", "cross R@1", "en→en R@1", "mono+en (guard)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, r in enumerate(reports):
        row = [labels[i] if labels else r.model]
        for n in names:
            row += [_fmt(set_average(r, n, k)) for k in ("xx2en", "en2xx", "mining_f1")]
        if has_search:
            row += [_fmt(search_average(r, k)) for k in ("mono", "cross", "en", "guard")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def markdown(reports: Sequence[ModelReport]) -> str:
    """One table: a row per language (and the average), for each model xx→en, en→xx, mining F1
    (transferred threshold) and oracle mining F1."""
    langs = sorted({lang for r in reports for lang in r.languages})
    header = ["lang"]
    for r in reports:
        header += [f"{r.model} xx→en", "en→xx", "mining F1", "oracle F1"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for lang in langs:
        row = [lang]
        for r in reports:
            s = r.languages.get(lang)
            row += (
                [_fmt(s.xx2en), _fmt(s.en2xx), _fmt(s.mining_f1), _fmt(s.mining_oracle_f1)]
                if s
                else ["", "", "", ""]
            )
        lines.append("| " + " | ".join(row) + " |")
    avg = ["**average**"]
    for r in reports:
        avg += [
            f"**{_fmt(r.average(k))}**" if r.average(k) is not None else ""
            for k in ("xx2en", "en2xx", "mining_f1", "mining_oracle_f1")
        ]
    lines.append("| " + " | ".join(avg) + " |")
    return "\n".join(lines)


def to_json(reports: Sequence[ModelReport]) -> str:
    payload = []
    keys = ("xx2en", "en2xx", "mining_precision", "mining_recall", "mining_f1", "mining_oracle_f1")
    for r in reports:
        item: dict[str, Any] = asdict(r)
        item["average"] = {k: r.average(k) for k in keys}
        item["set_average"] = {n: {k: set_average(r, n, k) for k in keys} for n in r.dev_sets}
        item["search_average"] = {k: search_average(r, k) for k in ("mono", "cross", "en", "guard")}
        payload.append(item)
    return json.dumps(payload, indent=2)
