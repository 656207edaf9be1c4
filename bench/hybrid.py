"""Search quality of the collection's search modes (dense, lexical, hybrid) on search-dev, and what
cutting long documents into passages buys.

Why: collections now cut documents into passages and keep a BM25 index beside the vectors, so a
search can be dense, lexical or hybrid (cosine + weight × normalised BM25, index.retrieval). This
measures, through the real index code (``Collection.create`` / ``upsert`` / ``search``):

1. Paragraph retrieval, one collection per language holding its 120 paragraphs: mono (X questions
   → X paragraphs, 11 languages), cross (X questions → English paragraphs, 11 languages), en→en,
   and mono+en (the 11 mono numbers and en→en), as R@1 and MRR@10, for each mode and hybrid weight.
2. Long documents: each article's paragraphs joined into one document (passages cut
   automatically). Article R@1 for all questions and for "late" ones (answered by the 4th
   paragraph of the article or later), X → X over the 12 languages, dense and hybrid, beside the
   paragraph-level R@1 of the same questions and one vector per article from its first 512 tokens
   (what a collection without passages stores).

The model is the served one (var/models/multilingual-e5-small-dap) on the backend the server
would choose here. Run from the repository root:

    nice .venv/bin/python bench/hybrid.py --json /tmp/hybrid.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from machine import cpu_flags, cpu_model, version

from evaluation.search import SearchLanguage, read_search_dev
from index.collection import Collection
from index.cutting import Cutter, lexicon_of
from index.retrieval import Mode, Query
from index.store import Document
from model.artifact import read_manifest
from model.backend_choice import choose_backend
from model.cpu import cpu_features
from model.encoder import Encoder

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / "var" / "models" / "multilingual-e5-small-dap"
DATA = REPO.parent / "shared" / "data" / "search-dev"
WEIGHTS = "0.1,0.15,0.2,0.3,0.5"
LATE = 3  # a question is "late" when its answer is this paragraph of its article (0-based) or later
PARAGRAPH_ID = re.compile(r"(?P<article>.+)p(?P<n>\d+)")
Setting = tuple[Mode, float]  # (mode, hybrid weight)


@dataclass
class Lang:
    """One language of search-dev, its questions embedded once (vector and lexical terms)."""

    code: str
    data: SearchLanguage
    queries: list[Query]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=MODEL_DIR)
    p.add_argument("--backend", default="auto", help="as the server's setting: auto picks per CPU")
    p.add_argument("--data", type=Path, default=DATA, help="the search-dev folder")
    p.add_argument("--weights", default=WEIGHTS, help="hybrid lexical weights, comma-separated")
    p.add_argument("--long-weight", type=float, default=0.2, help="hybrid weight of the long-document part")
    p.add_argument("--k", type=int, default=10, help="hits per search (MRR@k)")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    return p.parse_args(argv)


def label(setting: Setting) -> str:
    """A row name: ``dense``, ``lexical`` or ``hybrid 0.2``."""
    mode, weight = setting
    return f"hybrid {weight:g}" if mode == "hybrid" else mode


def r1(ranks: np.ndarray) -> float:
    """Recall@1 (%) of 0-based ranks."""
    return float((ranks == 0).mean() * 100) if len(ranks) else float("nan")


def mrr(ranks: np.ndarray, k: int) -> float:
    """MRR@k (%) of 0-based ranks (k or more: not found)."""
    return float(np.where(ranks < k, 1.0 / (ranks + 1), 0.0).mean() * 100) if len(ranks) else float("nan")


def split_id(paragraph_id: str) -> tuple[str, int]:
    """``a00p03`` → (``a00``, 3)."""
    found = PARAGRAPH_ID.fullmatch(paragraph_id)
    if found is None:
        raise SystemExit(f"unexpected paragraph id {paragraph_id!r} (want like a00p03)")
    return found["article"], int(found["n"])


def search_ranks(coll: Collection, lang: Lang, gold: Sequence[str], setting: Setting, k: int) -> np.ndarray:
    """The 0-based rank of each question's gold document id among the top k (k: not found)."""
    mode, weight = setting
    hits = coll.search(lang.queries, k=k, mode=mode, weight=weight)
    out = np.full(len(gold), k, dtype=np.int64)
    for i, (found, want) in enumerate(zip(hits, gold, strict=True)):
        ids = [h.id for h in found]
        if want in ids:
            out[i] = ids.index(want)
    return out


def store(coll: Collection, enc: Encoder, docs: list[Document]) -> int:
    """Cut, embed and store ``docs``; returns how many passages they made."""
    cutter = Cutter(enc.tokenizer, coll.cut_options)
    prepared, vectors = cutter.embed(enc, docs)
    if prepared.refused:
        raise SystemExit(f"{coll.name}: documents refused: {prepared.refused[:3]}")
    coll.upsert(prepared.docs, vectors, passages=prepared.passages)
    return prepared.passage_count


def load_langs(enc: Encoder, data_dir: Path) -> dict[str, Lang]:
    """search-dev, with every language's questions embedded in one call."""
    lex = lexicon_of(enc.tokenizer)
    out: dict[str, Lang] = {}
    for code, data in sorted(read_search_dev(data_dir).items()):
        vectors = enc.embed(data.queries, "query")
        queries = [Query(v, lex.query_terms(q)) for v, q in zip(vectors, data.queries, strict=True)]
        out[code] = Lang(code, data, queries)
    return out


def paragraph_ranks(
    enc: Encoder, langs: dict[str, Lang], home: Path, settings: list[Setting], k: int
) -> dict[tuple[str, str, str], np.ndarray]:
    """Part 1: ranks keyed (setting label, question language, "mono" or "cross")."""
    colls: dict[str, Collection] = {}
    for code, lang in langs.items():
        coll = colls[code] = Collection.create(home, f"para-{code}", enc.model_id, enc.dim)
        docs = [Document(i, t, code) for i, t in zip(lang.data.passage_ids, lang.data.passages, strict=True)]
        passages = store(coll, enc, docs)
        print(f"  para-{code}: {len(docs)} paragraphs, {passages} passages", file=sys.stderr, flush=True)
    out: dict[tuple[str, str, str], np.ndarray] = {}
    for setting in settings:
        for code, lang in langs.items():
            gold = [lang.data.passage_ids[a] for a in lang.data.answers]
            out[label(setting), code, "mono"] = search_ranks(colls[code], lang, gold, setting, k)
            if code != "en":
                out[label(setting), code, "cross"] = search_ranks(colls["en"], lang, gold, setting, k)
        print(f"  searched {label(setting)}", file=sys.stderr, flush=True)
    for coll in colls.values():
        coll.close()
    return out


def paragraph_table(
    ranks: dict[tuple[str, str, str], np.ndarray], langs: Sequence[str], settings: list[Setting], k: int
) -> dict[str, dict[str, dict[str, float]]]:
    """Per setting and metric: mono, cross, en→en and mono+en, each averaged over languages."""
    others = [c for c in langs if c != "en"]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for setting in settings:
        name = label(setting)
        row: dict[str, dict[str, float]] = {}
        for metric, fn in (("R@1", r1), (f"MRR@{k}", lambda r: mrr(r, k))):
            mono = [fn(ranks[name, c, "mono"]) for c in others]
            en = fn(ranks[name, "en", "mono"])
            row[metric] = {
                "mono": float(np.mean(mono)),
                "cross": float(np.mean([fn(ranks[name, c, "cross"]) for c in others])),
                "en→en": en,
                "mono+en": float(np.mean([*mono, en])),
            }
        out[name] = row
    return out


def print_paragraph_tables(table: dict[str, dict[str, dict[str, float]]], k: int, langs: int) -> None:
    """Part 1 as two markdown tables, R@1 and MRR@k."""
    columns = ("mono", "cross", "en→en", "mono+en")
    for metric in ("R@1", f"MRR@{k}"):
        counts = f"mono, cross: {langs - 1}; mono+en: {langs}"
        print(f"\nParagraph retrieval, {metric} (%), mean over languages ({counts})\n")
        print(f"| mode | {' | '.join(columns)} |")
        print("|---|" + "---:|" * len(columns))
        for name, row in table.items():
            print(f"| {name} | " + " | ".join(f"{row[metric][c]:.1f}" for c in columns) + " |")


@dataclass
class Articles:
    """One language's articles: documents (paragraphs joined), and per question its article and
    whether it is late."""

    docs: list[Document]
    gold: list[str]
    late: np.ndarray  # bool per question


def articles_of(lang: Lang) -> Articles:
    """Each article's paragraphs in paragraph order, joined by a blank line, as one document."""
    paragraphs: dict[str, list[tuple[int, str]]] = {}
    position: dict[str, tuple[str, int]] = {}
    for pid, text in zip(lang.data.passage_ids, lang.data.passages, strict=True):
        article, n = split_id(pid)
        paragraphs.setdefault(article, []).append((n, text))
    for article, items in paragraphs.items():
        items.sort()
        for i, (n, _) in enumerate(items):
            position[f"{article}p{n:02d}"] = (article, i)
    docs = [Document(a, "\n\n".join(t for _, t in items), lang.code) for a, items in paragraphs.items()]
    answers = [position[lang.data.passage_ids[a]] for a in lang.data.answers]
    return Articles(docs, [a for a, _ in answers], np.array([i >= LATE for _, i in answers], dtype=bool))


def first_512_ranks(enc: Encoder, lang: Lang, arts: Articles) -> np.ndarray:
    """Ranks with one vector per article from its first 512 tokens (the encoder truncates)."""
    vectors = enc.embed([d.text for d in arts.docs], "passage")
    queries = np.stack([q.vector for q in lang.queries if q.vector is not None])
    sims = queries @ vectors.T
    index = {d.id: i for i, d in enumerate(arts.docs)}
    gold = np.array([index[a] for a in arts.gold])
    ranks: np.ndarray = (sims > sims[np.arange(len(gold)), gold][:, None]).sum(axis=1)
    return ranks


def long_documents(
    enc: Encoder, langs: dict[str, Lang], home: Path, weight: float, k: int
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray], dict[str, dict[str, float]]]:
    """Part 2: per method and language the article ranks; per language the late mask and stats."""
    plain = enc.tokenizer.plain()
    ranks: dict[str, dict[str, np.ndarray]] = {}
    late: dict[str, np.ndarray] = {}
    stats: dict[str, dict[str, float]] = {}
    for code, lang in langs.items():
        arts = articles_of(lang)
        late[code] = arts.late
        coll = Collection.create(home, f"art-{code}", enc.model_id, enc.dim)
        passages = store(coll, enc, arts.docs)
        tokens = [len(plain.encode(d.text).ids) for d in arts.docs]
        stats[code] = {
            "articles": len(arts.docs),
            "mean_tokens": float(np.mean(tokens)),
            "max_tokens": float(max(tokens)),
            "over_512": float(np.mean([t > 512 for t in tokens]) * 100),
            "passages_per_article": passages / len(arts.docs),
            "late_questions": int(arts.late.sum()),
        }
        ranks.setdefault("first 512 tokens", {})[code] = first_512_ranks(enc, lang, arts)
        for setting in (("dense", 0.0), ("hybrid", weight)):
            ranks.setdefault(label(setting), {})[code] = search_ranks(coll, lang, arts.gold, setting, k)
        coll.close()
        print(f"  art-{code}: {len(arts.docs)} articles, {passages} passages", file=sys.stderr, flush=True)
    return ranks, late, stats


def long_table(
    art: dict[str, dict[str, np.ndarray]],
    para: dict[tuple[str, str, str], np.ndarray],
    late: dict[str, np.ndarray],
    weight: float,
) -> dict[str, dict[str, float]]:
    """R@1 (all, late) averaged over the languages, article- and paragraph-level."""
    hybrid = label(("hybrid", weight))
    rows: dict[str, dict[str, np.ndarray]] = {
        "article: one vector, first 512 tokens (today)": art["first 512 tokens"],
        "article: passages, dense": art["dense"],
        f"article: passages, {hybrid}": art[hybrid],
        "paragraph collection, dense": {c: para["dense", c, "mono"] for c in late},
        f"paragraph collection, {hybrid}": {c: para[hybrid, c, "mono"] for c in late},
    }
    return {
        name: {
            "all": float(np.mean([r1(by_lang[c]) for c in late])),
            "late": float(np.mean([r1(by_lang[c][late[c]]) for c in late])),
        }
        for name, by_lang in rows.items()
    }


def print_long(table: dict[str, dict[str, float]], stats: dict[str, dict[str, float]]) -> None:
    """Part 2: the article sizes, then R@1 for all and late questions."""
    print("\nArticles (each article's paragraphs joined; tokens without prefix or specials)\n")
    print("| lang | articles | mean tokens | max tokens | > 512 tokens (%) | passages/article | late qs |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for code, s in stats.items():
        print(
            f"| {code} | {s['articles']:.0f} | {s['mean_tokens']:.0f} | {s['max_tokens']:.0f} | "
            f"{s['over_512']:.0f} | {s['passages_per_article']:.2f} | {s['late_questions']:.0f} |"
        )
    mean_tokens = np.mean([s["mean_tokens"] for s in stats.values()])
    print(f"\nmean tokens per article over all languages: {mean_tokens:.0f}")
    print(
        f"\nLong documents, X → X, R@1 (%) over the {len(stats)} languages; late: answer in paragraph "
        f"{LATE + 1} or later of its article. Article rows rank articles, paragraph rows paragraphs.\n"
    )
    print("| retrieval | R@1 all | R@1 late |")
    print("|---|---:|---:|")
    for name, row in table.items():
        print(f"| {name} | {row['all']:.1f} | {row['late']:.1f} |")


def per_language(ranks: dict[Any, np.ndarray], k: int) -> dict[str, dict[str, float]]:
    """R@1 and MRR@k of every ranks entry, keyed by its parts joined with '/' (for the JSON)."""

    def key(parts: Any) -> str:
        """A ranks key as one string."""
        return "/".join(parts) if isinstance(parts, tuple) else str(parts)

    return {key(p): {"R@1": r1(r), f"MRR@{k}": mrr(r, k)} for p, r in ranks.items()}


def header(args: argparse.Namespace, enc: Encoder, choice_reason: str) -> None:
    """The machine, versions, model and backend: results from two machines are never mixed."""
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"cpu: {cpu_model()} ({os.cpu_count()} logical cores, {cpu_flags()})")
    print(
        f"python {platform.python_version()}, faiss {version('faiss-cpu')}, "
        f"onnxruntime {version('onnxruntime')}, openvino {version('openvino')}"
    )
    print(f"model {enc.model_id} ({args.model_dir}); backend {enc.backend.name} ({choice_reason})")
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Embed once, run both parts, print the tables (and write the JSON)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        """Record and log the time since ``since``."""
        now = time.perf_counter()
        timings[name] = now - since
        print(f"  {name}: {timings[name]:.1f} s", file=sys.stderr, flush=True)
        return now

    weights = [float(w) for w in args.weights.split(",") if w.strip()]
    choice = choose_backend(args.backend, args.model_dir, read_manifest(args.model_dir), cpu_features())
    enc = Encoder.load(args.model_dir, backend=choice.backend)
    header(args, enc, choice.reason)
    t = lap("load model", started)
    langs = load_langs(enc, args.data)
    t = lap("embed questions", t)
    settings: list[Setting] = [("dense", 0.0), ("lexical", 1.0), *(("hybrid", w) for w in weights)]
    extra: list[Setting] = [] if args.long_weight in weights else [("hybrid", args.long_weight)]
    with tempfile.TemporaryDirectory(prefix="hybrid-bench-") as tmp:
        para = paragraph_ranks(enc, langs, Path(tmp), settings + extra, args.k)
        t = lap("paragraphs: embed, store, search", t)
        art, late, stats = long_documents(enc, langs, Path(tmp), args.long_weight, args.k)
        t = lap("articles: embed, store, search", t)
    table1 = paragraph_table(para, list(langs), settings, args.k)
    print_paragraph_tables(table1, args.k, len(langs))
    table2 = long_table(art, para, late, args.long_weight)
    print_long(table2, stats)
    timings["total"] = time.perf_counter() - started
    print("\nwall times (s): " + ", ".join(f"{name} {s:.1f}" for name, s in timings.items()))
    if args.json is not None:
        result = {
            "cpu": cpu_model(),
            "cpu_flags": cpu_flags(),
            "model": enc.model_id,
            "backend": enc.backend.name,
            "k": args.k,
            "paragraphs": table1,
            "long": table2,
            "articles": stats,
            "paragraphs_per_language": per_language(para, args.k),
            "articles_per_language": per_language(
                {(m, c): r for m, d in art.items() for c, r in d.items()}, args.k
            ),
            "timings_s": timings,
        }
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
