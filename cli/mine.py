"""``dapsearch mine SRC TGT``: translation pairs between two corpora by margin scoring."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from cli.common import (
    ActorsOpt,
    EngineOpt,
    ModelDirOpt,
    RayAddressOpt,
    bar,
    embed_lines,
    load_encoder,
    load_settings,
    ray_options,
)
from cli.model import read_lines
from core.errors import InputError
from evaluation.mining import best_threshold, score_histogram
from index.cluster import RayOptions
from index.collection import Collection
from index.mining import DEFAULT_K, SCORES, STRATEGIES, Score, Strategy, mine
from index.neighbours import IvfSearch, NeighbourSearch
from index.pairs import write_pairs
from index.ray_mining import RaySearch
from model.encoder import Encoder

COLLECTION_PREFIX = "collection:"


def _side(
    spec: str, encoder: Encoder | None, batch_size: int, label: str, ray: RayOptions | None
) -> tuple[list[str], np.ndarray, Encoder | None]:
    """Texts and vectors of one side: a text file (embedded now) or a collection (stored vectors)."""
    if spec.startswith(COLLECTION_PREFIX):
        name = spec[len(COLLECTION_PREFIX) :]
        with Collection.open(load_settings().collections_dir, name, readonly=True) as coll:
            if encoder is not None and encoder.model_id != coll.manifest.model_id:
                raise InputError(
                    f"collection {name!r} was embedded by {coll.manifest.model_id}, not {encoder.model_id}"
                )
            _, texts, vectors = coll.vectors()
        if not texts:
            raise InputError(f"collection {name!r} is empty")
        return texts, vectors, encoder
    if encoder is None:
        encoder = load_encoder(None, batch_size=batch_size)
    lines = read_lines(spec)
    vectors, _ = embed_lines(encoder, lines, "passage", ray, f"embedding {label}")
    return lines, vectors, encoder


def _gold(path: Path) -> list[tuple[int, int]]:
    """Gold pairs as 1-based line numbers 'SRC_LINE<TAB>TGT_LINE', one pair per line."""
    if not path.is_file():
        raise InputError(f"gold file not found: {path}")
    pairs: list[tuple[int, int]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        try:
            src, tgt = int(cols[0]), int(cols[1])
        except (ValueError, IndexError):
            raise InputError(f"{path}:{number}: expected 'source line<TAB>target line' numbers") from None
        pairs.append((src - 1, tgt - 1))
    return pairs


def mine_cmd(
    source: Annotated[
        str, typer.Argument(help="Source sentences: a text file (one per line) or collection:NAME.")
    ],
    target: Annotated[str, typer.Argument(help="Target sentences: a text file or collection:NAME.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Pairs TSV: score, source line, target line, texts.")
    ],
    k: Annotated[int, typer.Option("-k", min=1, help="Neighbours in the margin.")] = DEFAULT_K,
    score: Annotated[str, typer.Option(help=f"{' | '.join(SCORES)}")] = "ratio",
    strategy: Annotated[str, typer.Option(help=f"{' | '.join(STRATEGIES)}")] = "max",
    threshold: Annotated[float | None, typer.Option(help="Keep pairs scoring above this.")] = None,
    gold: Annotated[
        Path | None, typer.Option(help="Gold pairs (1-based line numbers) to tune the threshold for best F1.")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per forward pass.")] = 32,
    model_dir: ModelDirOpt = None,
    knn: Annotated[
        str,
        typer.Option(
            help="exact, or ivf: an IVF index per side trained on a sample (approximate, at scale)."
        ),
    ] = "exact",
    nprobe: Annotated[int, typer.Option(min=1, help="With --knn ivf: lists probed per sentence.")] = 16,
    nlist: Annotated[
        int | None, typer.Option(min=1, help="With --knn ivf: lists per side [default: about 4·sqrt(n)].")
    ] = None,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    actors: ActorsOpt = None,
) -> None:
    """Mine translation pairs (ratio margin, k=4, LASER's max strategy by default)."""
    ray = ray_options(engine, ray_address, actors)
    if knn not in ("exact", "ivf"):
        raise InputError(f"--knn must be exact or ivf, not {knn!r}")
    ivf = IvfSearch(nlist=nlist, nprobe=nprobe) if knn == "ivf" else None
    search: NeighbourSearch | None = ivf if ray is None else RaySearch(ray, ivf=ivf)
    if score not in SCORES or strategy not in STRATEGIES:
        raise InputError(f"--score must be one of {SCORES} and --strategy one of {STRATEGIES}")
    chosen_score: Score = next(s for s in SCORES if s == score)
    chosen_strategy: Strategy = next(s for s in STRATEGIES if s == strategy)
    gold_pairs = _gold(gold) if gold is not None else None
    encoder = None
    if model_dir is not None:
        encoder = load_encoder(model_dir, batch_size=batch_size)
    src_texts, src_vecs, encoder = _side(source, encoder, batch_size, "source", ray)
    tgt_texts, tgt_vecs, encoder = _side(target, encoder, batch_size, "target", ray)
    with bar("neighbour search", total=len(src_texts), unit="sent") as progress:
        result = mine(
            src_vecs,
            tgt_vecs,
            k=k,
            score=chosen_score,
            strategy=chosen_strategy,
            progress=progress.update,
            search=search,
        )
    used = threshold
    if gold_pairs is not None:
        best = best_threshold(result, gold_pairs)
        typer.echo(
            f"best threshold {best.threshold:.6f}: precision {best.precision:.4f}, recall {best.recall:.4f}, "
            f"F1 {best.f1:.4f} ({best.n_correct} of {best.n_gold} gold pairs)",
            err=True,
        )
        used = best.threshold if threshold is None else threshold
    elif threshold is None:
        typer.echo("no --threshold: writing every candidate; score histogram to pick one:", err=True)
        typer.echo(score_histogram(result), err=True)
    kept = result.with_threshold(used)
    lines = [str(i + 1) for i in range(max(len(src_texts), len(tgt_texts)))]
    write_pairs(out, kept, lines, lines, src_texts, tgt_texts)
    typer.echo(
        f"wrote {len(kept)} pairs to {out}" + (f" (threshold {used:.6f})" if used is not None else ""),
        err=True,
    )
