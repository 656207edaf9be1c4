"""What every ``dapsearch`` sub-command shares: the Typer apps, settings, progress bars."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from tqdm import tqdm

from core.errors import InputError
from index.cluster import RayOptions, embed_texts, parse_engine
from model.artifact import BACKENDS, Backend, default_model_dir, read_manifest
from model.backend_choice import choose_backend
from model.cpu import cpu_features
from model.encoder import Encoder, Kind
from service.settings import Settings

ModelDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--model-dir", help="Built model directory [default: the bundled model in $DAPSEARCH_HOME/models]."
    ),
]


EngineOpt = Annotated[
    str,
    typer.Option("--engine", help="local (this process) or ray (a Ray cluster: the dapsearch[ray] extra)."),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="Ray cluster: auto or HOST:PORT of a node's Ray "
        "[default: DAPSEARCH_RAY_ADDRESS, else a local Ray with this machine's CPUs].",
    ),
]
ActorsOpt = Annotated[
    int | None,
    typer.Option(
        "--actors", min=1, help="Embedding actors on Ray [default: DAPSEARCH_RAY_ACTORS, else one per CPU]."
    ),
]


def ray_options(
    engine: str, address: str | None, actors: int | None, shard_bytes: int | None = None
) -> RayOptions | None:
    """The Ray settings of a command run with ``--engine ray``; None for the local engine."""
    if parse_engine(engine) == "local":
        if address is not None or actors is not None:
            raise InputError("--ray-address and --actors need --engine ray")
        return None
    return load_settings().ray(address, actors, shard_bytes)


def embed_lines(
    encoder: Encoder, lines: list[str], kind: Kind, ray: RayOptions | None, desc: str = "embedding"
) -> tuple[np.ndarray, list[int]]:
    """Vectors of ``lines`` and the indices of those cut at the model's length, behind a progress
    bar: here, or on Ray's actors (the cut ones are then counted by the local tokenizer)."""
    with bar(desc, total=len(lines), unit="text") as progress:
        if ray is None:
            result = encoder.encode(lines, kind, progress=progress.update)
            return result.vectors, result.truncated
        vectors = embed_texts(encoder, lines, kind, ray, progress.update)
    return vectors, encoder.tokenizer.tokenize(lines, kind).truncated


def load_settings() -> Settings:
    return Settings()


def model_dir_or_default(model_dir: Path | None) -> Path:
    return model_dir if model_dir is not None else load_settings().resolved_model_dir


def base_model_dir() -> Path:
    """The untrained base encoder's directory (what training starts from), in DAPSEARCH_HOME."""
    return default_model_dir(load_settings().home, "base")


def parse_backend(value: str) -> Backend:
    if value not in BACKENDS:
        raise InputError(f"unknown backend {value!r}; choose one of {', '.join(BACKENDS)}")
    return value


def bar(desc: str, total: int | None = None, unit: str = "it", **kwargs: Any) -> Any:
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False, **kwargs)


def load_encoder(
    model_dir: Path | None, backend: str | None = None, batch_size: int | None = None
) -> Encoder:
    """The Encoder a command uses: options first, then DAPSEARCH_* settings (where ``auto`` picks)."""
    cfg = load_settings()
    directory = model_dir_or_default(model_dir)
    if backend is not None:  # an explicit option runs that backend or fails
        chosen = parse_backend(backend)
    else:
        choice = choose_backend(cfg.backend, directory, read_manifest(directory), cpu_features())
        choice.log_fallback()
        chosen = choice.backend
    return Encoder.load(directory, chosen, cfg.threads, batch_size or cfg.batch_size)


def dequant_progress(names: Iterable[str]) -> Iterable[str]:
    items = list(names)
    return tqdm(items, desc="dequantising tensors", unit="tensor", file=sys.stderr, leave=False)
