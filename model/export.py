"""Export a built model to ONNX (fp32, pooling and normalisation in the graph) and int8, and, where
OpenVINO and NNCF are installed, to NNCF's int8 OpenVINO IR.

The legacy TorchScript exporter gives real opset 17 and was the fastest graph measured on
this model. int8 is static QDQ quantisation (see ``quantize_int8``): activation scales fixed by
calibration on training text, weights per channel, the feed-forward output projections kept in
fp32, so a text's vector is the same alone or in any batch. Weights use 7 of the 8 bits: on CPUs
without VNNI, ONNX Runtime's u8*s8 kernels (``vpmaddubsw``) saturate 16-bit sums of two products,
which 255 * 64 * 2 never reaches, so the same graph gives the same vectors on every CPU. Dynamic
quantisation (one activation scale per batch) remains the fallback for a model the static graph
does not fit.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.clock import now_iso
from core.errors import InputError
from core.files import file_sha256
from model.artifact import (
    INT8_SCHEME,
    INT8_SCHEME_FFN_FP32,
    INT8_STATIC,
    ONNX_FP32,
    ONNX_INT8,
    OPENVINO_INT8,
    OPENVINO_INT8_SCHEME,
    TOKENIZER,
    Backend,
    Manifest,
    OnnxFile,
    backend_file,
    read_manifest,
    write_manifest,
)
from model.backend_choice import can_make
from model.encoder import MAX_BATCH_TOKENS, OnnxBackend, OpenVinoBackend, TextTokenizer
from model.padding import full_batches


class ParityError(InputError):
    """An exported graph's vectors drift too far from the reference: it is discarded, not served."""


OPSET = 17
# The attention scores (Q·Kᵀ) and their weighted sum of values in the exported graph.
ATTENTION_MATMULS = r".*/attention/self/MatMul(_1)?$"
# Parity floors on the built-in sentences: below them an export is broken, not just lossy.
FP32_MIN_COSINE = 0.9999
INT8_MIN_COSINE = 0.98
# Short multilingual sentences for the post-export parity check.
PARITY_TEXTS = [
    "The cat is sleeping on the sofa.",
    "Die Katze schläft auf dem Sofa.",
    "El gato duerme en el sofá.",
    "Кошка спит на диване.",
    "猫在沙发上睡觉。",
    "القطة نائمة على الأريكة.",
    "बिल्ली सोफे पर सो रही है।",
    "Kedi kanepede uyuyor.",
    "How much protein should an adult eat every day to stay healthy and strong?",
    "Ngày mai trời sẽ mưa ở Hà Nội.",
]


@dataclass
class ExportReport:
    fp32: Path
    int8: Path | None
    fp32_min_cosine: float
    int8_mean_cosine: float | None
    int8_min_cosine: float | None
    openvino_int8: Path | None = None


def _parity_batch(model_dir: Path, manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
    tok = TextTokenizer(model_dir / TOKENIZER, manifest)
    ids = tok.tokenize(PARITY_TEXTS, "query").ids
    batch = tok.pad(ids, list(range(len(ids))))
    return batch.input_ids, batch.attention_mask


def export_onnx(model_dir: Path, opset: int = OPSET) -> tuple[Path, float]:
    """Trace ``SentenceEmbedder`` with dynamic batch and sequence axes; check it against torch."""
    import torch

    from model.torch_model import load_embedder

    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    module = load_embedder(model_dir, manifest.pooling)
    input_ids, mask = _parity_batch(model_dir, manifest)
    tids, tmask = torch.from_numpy(input_ids), torch.from_numpy(mask)
    target = model_dir / ONNX_FP32
    tmp = target.with_suffix(".onnx.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer notes
        torch.onnx.export(
            module,
            (tids[:2], tmask[:2]),
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=["input_ids", "attention_mask"],
            output_names=["sentence_embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "sentence_embedding": {0: "batch"},
            },
        )
    with torch.inference_mode():
        reference = module(tids, tmask).numpy()
    got = OnnxBackend(tmp, "onnx").forward(input_ids, mask)
    cosine = np.sum(reference * got, axis=1)
    for key in ("onnx-int8", "openvino-int8"):
        manifest.onnx.pop(key, None)  # any old int8 graph came from an older fp32 graph
    _accept(model_dir, manifest, "onnx", tmp, cosine, FP32_MIN_COSINE, None, opset)
    return target, float(cosine.min())


class _Feeds:
    """ONNX Runtime's CalibrationDataReader over tokenized calibration text, in length-sorted batches."""

    def __init__(self, model_dir: Path, manifest: Manifest, texts: list[str], batch_size: int = 16) -> None:
        tok = TextTokenizer(model_dir / TOKENIZER, manifest)
        ids = tok.tokenize(texts, "query").ids
        groups = full_batches([len(row) for row in ids], batch_size, MAX_BATCH_TOKENS)
        self._batches = iter([tok.pad(ids, rows) for rows in groups])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}

    def all(self) -> list[dict[str, np.ndarray]]:
        feeds = []
        while (feed := self.get_next()) is not None:
            feeds.append(feed)
        return feeds


def _quantize_static(fp32: Path, out: Path, model_dir: Path, manifest: Manifest, excluded: list[str]) -> None:
    """QDQ int8 with activation scales calibrated once on the shipped training text: fixed scales,
    so a text's vector is the same alone or in any batch."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from model.calibration import read_calibration

    reader = _Feeds(model_dir, manifest, read_calibration())
    quantize_static(
        str(fp32),
        str(out),
        reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        nodes_to_quantize=_weight_matmuls(fp32),
        per_channel=True,
        reduce_range=True,  # 7-bit weights: no saturation on AVX2 (see the module docstring)
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=excluded,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
    )


def quantize_int8(model_dir: Path) -> tuple[Path, float, float]:
    """int8 graph; returns (path, mean cosine, min cosine) against fp32.

    First choice: static QDQ int8 (activation scales calibrated on the shipped training text,
    weights per channel) on every weight MatMul except the feed-forward output projections,
    whose inputs (GELU outputs) have the widest range: measured on 1,600 dev pairs of 8
    languages, that keeps P@1 within 0.1 of fp32 with vectors independent of batch neighbours,
    where quantising every weight MatMul statically lost 1 to 2 points and dynamic int8 (one
    scale per batch) 0.4 to 0.8. Should the static graph drift below the parity floor, dynamic
    int8 is tried, then dynamic with fp32 feed-forward outputs; the manifest records the scheme.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    fp32 = model_dir / ONNX_FP32
    if "onnx" not in manifest.onnx or not fp32.is_file():
        raise InputError(f"{fp32} is missing; export fp32 first")
    target = model_dir / ONNX_INT8
    tmp = target.with_suffix(".onnx.tmp")
    input_ids, mask = _parity_batch(model_dir, manifest)
    ref = OnnxBackend(fp32, "onnx").forward(input_ids, mask)
    opset = manifest.onnx["onnx"].opset
    cosine = np.zeros(1, dtype=np.float32)
    chosen = INT8_STATIC
    ffn = _ffn_output_matmuls(fp32)
    rejected: list[str] = []
    for scheme, excluded in ((INT8_STATIC, ffn), (INT8_SCHEME, []), (INT8_SCHEME_FFN_FP32, ffn)):
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # ORT logs a pre-processing hint meant for CNNs
        try:
            if scheme == INT8_STATIC:
                _quantize_static(fp32, tmp, model_dir, manifest, excluded)
            else:
                quantize_dynamic(
                    str(fp32),
                    str(tmp),
                    per_channel=True,
                    reduce_range=True,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=excluded,
                )
        finally:
            root.setLevel(level)
        cosine = np.sum(ref * OnnxBackend(tmp, "onnx-int8").forward(input_ids, mask), axis=1)
        chosen = scheme
        if float(cosine.min()) >= INT8_MIN_COSINE:
            break
        rejected.append(scheme)
    _accept(model_dir, manifest, "onnx-int8", tmp, cosine, INT8_MIN_COSINE, chosen, opset, rejected)
    return target, float(cosine.mean()), float(cosine.min())


def quantize_openvino_int8(model_dir: Path) -> tuple[Path, float, float]:
    """NNCF's int8 IR of the fp32 graph, calibrated on the same shipped text as the ONNX int8
    graph; returns (path, mean cosine, min cosine) against fp32. On CPUs with VNNI and native
    bf16 it ran 2.28x the ONNX int8 graph, closer to fp32 (bench/RESULTS.md)."""
    import nncf
    import openvino as ov

    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    fp32 = model_dir / ONNX_FP32
    if "onnx" not in manifest.onnx or not fp32.is_file():
        raise InputError(f"{fp32} is missing; export fp32 first")
    from model.calibration import read_calibration

    feeds = _Feeds(model_dir, manifest, read_calibration()).all()
    nncf.set_log_level(logging.ERROR)
    quantized = nncf.quantize(
        ov.Core().read_model(str(fp32)),
        nncf.Dataset(feeds),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(feeds),
        # The attention's two activation-by-activation MatMuls stay f32, as in the ONNX graph: in
        # int8 their u8*s8 products saturate on CPUs without VNNI (16-bit pair sums), which gave
        # cosine 0.972 to fp32 with oneDNN capped to AVX2; f32 there gave 0.997, and 0.998 with
        # VNNI (0.998 before), at the same speed.
        ignored_scope=nncf.IgnoredScope(patterns=[ATTENTION_MATMULS]),
    )
    tmp = model_dir / f".{OPENVINO_INT8}.tmp.xml"
    ov.save_model(quantized, str(tmp), compress_to_fp16=False)
    input_ids, mask = _parity_batch(model_dir, manifest)
    ref = OnnxBackend(fp32, "onnx").forward(input_ids, mask)
    cosine = np.sum(ref * OpenVinoBackend(tmp, "openvino-int8").forward(input_ids, mask), axis=1)
    opset = manifest.onnx["onnx"].opset
    _accept(model_dir, manifest, "openvino-int8", tmp, cosine, INT8_MIN_COSINE, OPENVINO_INT8_SCHEME, opset)
    return model_dir / OPENVINO_INT8, float(cosine.mean()), float(cosine.min())


def _weight_matmuls(fp32: Path) -> list[str]:
    """MatMuls with a constant (weight) operand: attention scores and their weighted sums stay fp32."""
    import onnx

    graph = onnx.load(str(fp32), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and any(x in weights for x in n.input)]


def _ffn_output_matmuls(fp32: Path) -> list[str]:
    """Names of the feed-forward output projections (BERT's ``layer.N/output/dense``)."""
    import onnx

    graph = onnx.load(str(fp32), load_external_data=False).graph
    return [
        n.name
        for n in graph.node
        if n.op_type == "MatMul" and n.name.endswith("/output/dense/MatMul") and "/attention/" not in n.name
    ]


def _accept(
    model_dir: Path,
    manifest: Manifest,
    key: Backend,
    tmp: Path,
    cosine: np.ndarray,
    floor: float,
    quantization: str | None,
    opset: int,
    rejected: list[str] | None = None,
) -> None:
    """Move a checked graph into place and record it; a graph below ``floor`` is discarded.
    An OpenVINO IR's weights (the .bin beside the .xml) move first, so the .xml never names
    weights that are not there yet."""
    target = backend_file(model_dir, key)
    weights = [(tmp.with_suffix(".bin"), target.with_suffix(".bin"))] if key == "openvino-int8" else []
    if float(cosine.min()) < floor:
        for path in [tmp, *(src for src, _ in weights)]:
            path.unlink(missing_ok=True)
        hint = (
            " (serve this model with --backend onnx / DAPSEARCH_BACKEND=onnx)" if key.endswith("int8") else ""
        )
        raise ParityError(
            f"{key} graph rejected: min cosine {cosine.min():.4f} to its reference is below {floor}{hint}"
        )
    for src, dst in weights:
        src.replace(dst)
    tmp.replace(target)
    manifest.onnx[key] = OnnxFile(
        file=target.name,
        sha256=file_sha256(target),
        source_model_id=manifest.id,
        quantization=quantization,
        rejected=rejected or [],
        opset=opset,
        created=now_iso(),
    )
    write_manifest(model_dir, manifest)


def export_all(model_dir: Path, int8: bool = True, openvino: bool | None = None) -> ExportReport:
    """Every graph a backend may serve: fp32, ONNX int8 and (``openvino``; by default wherever
    OpenVINO and NNCF are installed) the int8 OpenVINO IR."""
    fp32, fp32_min = export_onnx(model_dir)
    if not int8:
        return ExportReport(fp32, None, fp32_min, None, None)
    path, mean_cos, min_cos = quantize_int8(model_dir)
    report = ExportReport(fp32, path, fp32_min, mean_cos, min_cos)
    if openvino if openvino is not None else can_make("openvino-int8"):
        report.openvino_int8 = quantize_openvino_int8(model_dir)[0]
    return report
