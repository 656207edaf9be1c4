"""``dapsearch index create|ingest|search|delete|stats|reindex|list``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import (
    ActorsOpt,
    EngineOpt,
    ModelDirOpt,
    RayAddressOpt,
    bar,
    load_encoder,
    load_settings,
    model_dir_or_default,
    ray_options,
)
from core.errors import InputError
from index.collection import Collection
from index.cutting import lexicon_of
from index.filters import Filter
from index.ingest import ShardCounts, ingest, resume_point
from index.manifest import list_collections
from index.ray_ingest import ingest_on_ray
from index.reindex import reindex
from index.retrieval import DEFAULT_WEIGHT, MODES, Mode, Query
from model.artifact import BACKENDS

index_app = typer.Typer(help="Create, fill and query collections of documents.", no_args_is_help=True)

BackendOpt = Annotated[str | None, typer.Option("--backend", help=", ".join(BACKENDS))]
ChunkOpt = Annotated[int, typer.Option(min=1, help="Documents embedded and committed together.")]


def _open(name: str, model_id: str | None = None, readonly: bool = False) -> Collection:
    return Collection.open(load_settings().collections_dir, name, model_id, readonly=readonly)


@index_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Collection name: letters, digits, '_', '-', '.'.")],
    index: Annotated[
        str,
        typer.Option("--index", help="auto (Flat, then HNSW32 past 200k), Flat, HNSW<M> or IVF<n>,Flat|SQ8."),
    ] = "auto",
    lexical: Annotated[
        bool,
        typer.Option(
            "--lexical/--no-lexical", help="Keep a lexical (BM25) index for lexical and hybrid search."
        ),
    ] = True,
    model_dir: ModelDirOpt = None,
) -> None:
    """Create an empty collection bound to the model that will embed its documents; documents are
    cut into passages as DAPSEARCH_PASSAGE_TOKENS, _OVERLAP and DAPSEARCH_MAX_PASSAGES say."""
    from model.artifact import read_manifest

    manifest = read_manifest(model_dir_or_default(model_dir))
    settings = load_settings()
    coll = Collection.create(
        settings.collections_dir, name, manifest.id, manifest.dim, index, settings.passage_options(), lexical
    )
    coll.close()
    typer.echo(f"created collection {name!r} ({index}, {'lexical, ' if lexical else ''}model {manifest.id})")


@index_app.command("list")
def list_cmd() -> None:
    """List collections."""
    for name in list_collections(load_settings().collections_dir):
        typer.echo(name)


@index_app.command("ingest")
def ingest_cmd(
    name: Annotated[str, typer.Argument(help="Collection to fill.")],
    source: Annotated[Path, typer.Argument(help="JSONL (id, text, lang?, metadata?) or TSV file.")],
    fmt: Annotated[
        str | None, typer.Option("--format", help="jsonl or tsv [default: from the suffix].")
    ] = None,
    chunk_size: ChunkOpt = 256,
    strict: Annotated[bool, typer.Option("--strict", help="Stop at the first malformed line.")] = False,
    model_dir: ModelDirOpt = None,
    backend: BackendOpt = None,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    actors: ActorsOpt = None,
    shard_bytes: Annotated[
        int | None,
        typer.Option(
            min=1024, help="On Ray: input bytes per shard [default: DAPSEARCH_RAY_SHARD_BYTES, 4 MiB]."
        ),
    ] = None,
) -> None:
    """Embed and upsert documents; resumes after the last committed chunk (on Ray: shard) if interrupted."""
    ray = ray_options(engine, ray_address, actors, shard_bytes)
    if not source.is_file():
        raise InputError(f"input file not found: {source}")
    encoder = load_encoder(model_dir, backend)
    with _open(name, encoder.model_id) as coll:
        total = source.stat().st_size
        start = resume_point(coll, source).offset
        with bar("ingesting", total=total, unit="B", unit_scale=True, initial=min(start, total)) as progress:
            docs = 0

            passages = 0

            def advance(n: int, offset: int, cut: int) -> None:
                nonlocal docs, passages
                docs, passages = docs + n, passages + cut
                progress.update(offset - progress.n)
                progress.set_postfix(docs=docs, passages=passages)

            if ray is None:
                report = ingest(coll, encoder, source, fmt, chunk_size, strict, advance)
            else:

                def shards(counts: ShardCounts) -> None:
                    progress.set_postfix(docs=docs, shards=f"{counts.merged}/{counts.total}")

                report = ingest_on_ray(coll, encoder, source, fmt, strict, ray, advance, shards)
        coll.checkpoint()
        count = len(coll)
    for err in report.errors[:20]:
        typer.echo(f"{source}:{err.line}: skipped: {err.reason}", err=True)
    if report.error_count > 20:
        typer.echo(f"... and {report.error_count - 20} more malformed lines", err=True)
    resumed = f" (resumed after line {report.resumed_from_line})" if report.resumed_from_line else ""
    if report.shards is not None:
        counts = report.shards
        typer.echo(
            f"{counts.total} shards: {counts.embedded} embedded on Ray, {counts.reused} found written"
            + (f", {counts.retried} run again after a lost worker" if counts.retried else ""),
            err=True,
        )
    typer.echo(
        f"ingested {report.documents} documents ({report.passages} passages) into {name!r}{resumed}; "
        f"{report.error_count} malformed lines skipped; {count} documents, version {report.version}"
    )


def _parse_meta(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--meta takes KEY=VALUE, not {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@index_app.command("search")
def search_cmd(
    name: Annotated[str, typer.Argument(help="Collection to search.")],
    query: Annotated[str, typer.Argument(help="Query text, in any language.")],
    k: Annotated[int, typer.Option("-k", min=1, max=1000, help="Hits to return.")] = 10,
    lang: Annotated[str | None, typer.Option(help="Only documents in this language.")] = None,
    meta: Annotated[
        list[str] | None, typer.Option("--meta", help="KEY=VALUE metadata filter (repeatable).")
    ] = None,
    mode: Annotated[
        str | None, typer.Option(help="dense, lexical or hybrid [default: hybrid where the collection can].")
    ] = None,
    weight: Annotated[
        float, typer.Option(min=0.0, help="The lexical weight of hybrid search.")
    ] = DEFAULT_WEIGHT,
    model_dir: ModelDirOpt = None,
    backend: BackendOpt = None,
) -> None:
    """Search a collection; prints JSON lines (id, score, lang, text, metadata, the best passage)."""
    if mode is not None and mode not in MODES:
        raise InputError(f"--mode must be one of {', '.join(MODES)}, not {mode!r}")
    encoder = load_encoder(model_dir, backend)
    with _open(name, encoder.model_id, readonly=True) as coll:
        chosen: Mode = "hybrid" if "hybrid" in coll.manifest.modes else "dense"
        chosen = next((m for m in MODES if m == mode), chosen)
        flt = Filter(lang=lang, metadata=_parse_meta(meta or []))
        vector = encoder.embed([query], "query")[0] if chosen != "lexical" else None
        terms = lexicon_of(encoder.tokenizer).query_terms(query)
        hits = coll.search([Query(vector, terms)], k, flt, chosen, weight)[0]
    for hit in hits:
        row = {
            "id": hit.id,
            "score": round(hit.score, 6),
            "lang": hit.lang,
            "text": hit.text,
            "metadata": hit.metadata,
            "passage": {"start": hit.start, "end": hit.end, "text": hit.text[hit.start : hit.end]},
        }
        sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")


@index_app.command("delete")
def delete_cmd(
    name: Annotated[str, typer.Argument(help="Collection.")],
    ids: Annotated[list[str], typer.Argument(help="Document ids to delete.")],
) -> None:
    """Delete documents by id."""
    with _open(name) as coll:
        removed = coll.delete(ids)
        coll.checkpoint()
    typer.echo(f"deleted {removed} of {len(ids)} ids from {name!r}")


@index_app.command("stats")
def stats_cmd(name: Annotated[str, typer.Argument(help="Collection.")]) -> None:
    """Counts, languages, index type and the model a collection belongs to (JSON)."""
    with _open(name, readonly=True) as coll:
        typer.echo(json.dumps(dict(coll.stats()), indent=2, ensure_ascii=False))


@index_app.command("reindex")
def reindex_cmd(
    name: Annotated[str, typer.Argument(help="Collection to copy from.")],
    target: Annotated[str, typer.Argument(help="New collection, embedded with the chosen model.")],
    index: Annotated[
        str | None, typer.Option("--index", help="FAISS factory [default: the source's].")
    ] = None,
    chunk_size: ChunkOpt = 256,
    model_dir: ModelDirOpt = None,
    backend: BackendOpt = None,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    actors: ActorsOpt = None,
) -> None:
    """Re-embed every stored text with the chosen model into a new collection (model upgrade).

    Each chunk commits with its position in the source, so running the same command again after
    an interruption continues where it stopped. Pause writes to the source meanwhile: deletions
    made to it during a re-index are not carried over.
    """
    ray = ray_options(engine, ray_address, actors)
    encoder = load_encoder(model_dir, backend)
    home = load_settings().collections_dir
    with _open(name, readonly=True) as src, bar("re-embedding", total=len(src), unit="doc") as progress:
        started = False

        def advance(done: int, total: int) -> None:
            nonlocal started
            if not started and done:
                typer.echo(f"resuming: {done} documents already re-indexed into {target!r}")
            started = True
            progress.total = total
            progress.update(done - progress.n)

        report = reindex(src, home, target, encoder, index, chunk_size, advance, ray)
        count = report.count
    if report.refused:
        typer.echo(
            f"{report.refused} documents have more passages than DAPSEARCH_MAX_PASSAGES allows and "
            "were not carried over",
            err=True,
        )
    typer.echo(f"re-indexed {count} documents from {name!r} into {target!r} ({encoder.model_id})")
