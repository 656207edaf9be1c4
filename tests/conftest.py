"""Shared fixtures: a tiny random BERT for fast tests, the real model built once and cached."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from model.artifact import default_model_dir
from model.encoder import Encoder

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for servers the tests start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def data_home() -> Path:
    """DAPSEARCH_HOME as the product resolves it; the real model is cached there across runs."""
    return Path(os.environ.get("DAPSEARCH_HOME", REPO / "var"))


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    """The base model with both int8 graphs, so ``auto`` serves what it serves on this CPU."""
    from model.backend_choice import default_export
    from model.build import ensure_model
    from model.cpu import cpu_features

    directory = default_model_dir(data_home())
    for backend in {"onnx-int8", default_export(cpu_features())}:
        ensure_model(directory, backend)
    return directory


@pytest.fixture(scope="session")
def dap_model_dir() -> Path:
    """The served default, multilingual-e5-small-dap, with both int8 graphs (``auto`` serves one
    of them, by CPU)."""
    from model.build import ensure_model

    directory = default_model_dir(data_home(), "dap")
    for backend in ("onnx-int8", "openvino-int8"):
        ensure_model(directory, backend, bundled="dap")
    return directory


@pytest.fixture(scope="session")
def real_encoders(real_model_dir: Path) -> dict[str, Encoder]:
    """One encoder per backend, plus ``served``: the one ``auto`` picks here (what the API runs)."""
    from model.artifact import read_manifest
    from model.backend_choice import choose_backend
    from model.cpu import cpu_features

    encoders = {b: Encoder.load(real_model_dir, backend=b) for b in ("torch", "onnx", "onnx-int8")}
    served = choose_backend("auto", real_model_dir, read_manifest(real_model_dir), cpu_features()).backend
    encoders["served"] = encoders.get(served) or Encoder.load(real_model_dir, backend=served)
    return encoders


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BERT with the real multilingual tokenizer, saved like a user's checkpoint."""
    import torch
    from transformers import BertConfig, BertModel

    from model.weights import build_tokenizer, bundled_weights_path, parse_bin

    src = tmp_path_factory.mktemp("tiny-bert-src")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=250037,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=1,
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(src)
    build_tokenizer(parse_bin(bundled_weights_path()).vocab).save(str(src / "tokenizer.json"))  # type: ignore[attr-defined]
    return src


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from model.build import build_from_checkpoint
    from model.export import export_all

    out = tmp_path_factory.mktemp("tiny-home") / "models" / "tiny"
    build_from_checkpoint(
        tiny_checkpoint,
        out,
        "mean",
        name="tiny",
        query_prefix="query: ",
        passage_prefix="passage: ",
        max_length=16,
    )
    export_all(out)
    yield out


RAY_CPUS = 2


def start_local_ray() -> None:
    """A new local Ray of the tests' own ("local"), never a cluster another test or `ray start`
    left running here: connecting to one refuses num_cpus."""
    import ray

    ray.init(address="local", num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False)


@pytest.fixture(scope="session")
def local_ray() -> Iterator[None]:
    """The test session's one local Ray: two CPUs, no dashboard (started on first use)."""
    import ray

    if not ray.is_initialized():
        start_local_ray()
    yield
    ray.shutdown()


def parallel_sentences(n: int, langs: tuple[str, ...] = ("de", "fr", "ru", "zh")) -> list[str]:
    """``n`` real sentences, both sides of the shared parallel data, in file order."""
    import gzip

    out: list[str] = []
    per = -(-n // (2 * len(langs)))
    for lang in langs:
        with gzip.open(SHARED / "data" / "parallel" / f"{lang}-en.tsv.gz", "rt", encoding="utf-8") as fh:
            for _, line in zip(range(per), fh, strict=False):
                out.extend(line.rstrip("\n").split("\t")[:2])
    return out[:n]
