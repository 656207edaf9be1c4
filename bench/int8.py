"""int8 schemes side by side on one model: dev P@1, cosine to fp32, batch invariance, speed.

Why: the served graph is int8, so its accuracy against the model's own fp32 graph, and whether a
text's vector depends on what else is in its batch, decide which quantisation ships. Schemes:
dynamic (ONNX Runtime's per-batch activation scales, per-channel weights, 7-bit range: the old
default), and static QDQ calibrated on the shipped training text (``model/dap/calibration.jsonl``)
on every MatMul, on weight MatMuls only, on weight MatMuls but the feed-forward outputs, that
one with 7-bit weights (the served default: no u8*s8 saturation on CPUs without VNNI, so every
CPU computes the same vectors), that one with float MatMul outputs (no output Q/DQ, so ONNX Runtime
runs MatMulIntegerToFloat), and with per-tensor weight scales; every weight MatMul static after
SmoothQuant on the feed-forward outputs (their inputs' per-channel ranges moved into the weights,
α = 0.5, from the calibration text: Xiao et al. 2023). Also ONNX Runtime's transformer
fusions (Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization) alone in fp32 and
followed by dynamic int8.

    .venv/bin/python bench/int8.py --model-dir var/models/multilingual-e5-small --pairs 200
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from machine import cpu_flags, cpu_model, version

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
LANGS = "ar,de,hi,ja,ru,sw,tr,zh"
SCHEMES = (
    "dynamic",
    "static-all",
    "static-weights",
    "static-weights-ffn-fp32",
    "static-weights-ffn-fp32-7bit",
    "static-weights-ffn-fp32-7bit-float-out",
    "static-per-tensor-ffn-fp32",
    "static-weights-smooth-ffn-7bit-float-out",
    "fused-fp32",
    "fused-dynamic",
)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=REPO / "var" / "models" / "multilingual-e5-small")
    p.add_argument("--dev", type=Path, default=SHARED / "parallel" / "dev")
    p.add_argument("--langs", default=LANGS)
    p.add_argument("--pairs", type=int, default=200, help="dev pairs per language")
    p.add_argument("--schemes", default=",".join(SCHEMES))
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def quantize(scheme: str, fp32: Path, out: Path, model_dir: Path) -> None:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    from model.artifact import read_manifest
    from model.calibration import read_calibration
    from model.export import _Feeds, _ffn_output_matmuls, _weight_matmuls

    ffn = _ffn_output_matmuls(fp32)
    if scheme.startswith("fused-"):
        fused = out if scheme == "fused-fp32" else out.with_suffix(".fused.onnx")
        fuse(fp32, fused, model_dir)
        if scheme == "fused-dynamic":
            quantize_dynamic(
                str(fused),
                str(out),
                per_channel=True,
                reduce_range=True,
                weight_type=QuantType.QInt8,
                extra_options={"DefaultTensorType": 1},  # FLOAT: fused ops have no type inference
            )
        return
    if scheme == "dynamic":
        quantize_dynamic(
            str(fp32), str(out), per_channel=True, reduce_range=True, weight_type=QuantType.QInt8
        )
        return
    source = fp32
    if "-smooth-ffn" in scheme:
        source = out.with_suffix(".smooth.onnx")
        smooth(fp32, source, ffn, model_dir)
        ffn = []
    quantize_static(
        str(source),
        str(out),
        _Feeds(model_dir, read_manifest(model_dir), read_calibration()),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        nodes_to_quantize=None if scheme == "static-all" else _weight_matmuls(source),
        nodes_to_exclude=ffn if "ffn-fp32" in scheme else [],
        per_channel="per-tensor" not in scheme,
        reduce_range="-7bit" in scheme,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={
            "WeightSymmetric": True,
            "ActivationSymmetric": False,
            "OpTypesToExcludeOutputQuantization": ["MatMul"] if scheme.endswith("-float-out") else [],
        },
    )


def smooth(fp32: Path, out: Path, matmuls: list[str], model_dir: Path, alpha: float = 0.5) -> None:
    """SmoothQuant on ``matmuls``: X·W = (X / s)·(s W) with s_k = max|X_k|^α / max|W_k|^(1-α) per
    input channel k, the activation maxima read from the calibration text; the graph computes the
    same function, with an input range int8 can hold."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from model.artifact import read_manifest
    from model.calibration import read_calibration
    from model.export import _Feeds

    model = onnx.load(str(fp32))
    graph = model.graph
    nodes = {n.name: n for n in graph.node}
    inputs = [nodes[name].input[0] for name in matmuls]
    probe = onnx.load(str(fp32))
    for name in inputs:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(probe, str(path))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        reader = _Feeds(model_dir, read_manifest(model_dir), read_calibration())
        peaks: list[np.ndarray] = []
        while (feeds := reader.get_next()) is not None:
            got = session.run(inputs, feeds)
            batch = [np.abs(x).reshape(-1, x.shape[-1]).max(axis=0) for x in got]
            peaks = batch if not peaks else [np.maximum(a, b) for a, b in zip(peaks, batch, strict=True)]
    weights = {i.name: i for i in graph.initializer}
    for name, x_name, peak in zip(matmuls, inputs, peaks, strict=True):
        node = nodes[name]
        w_init = weights[node.input[1]]
        w = numpy_helper.to_array(w_init)  # (in, out)
        scale = np.maximum(peak, 1e-5) ** alpha / np.maximum(np.abs(w).max(axis=1), 1e-5) ** (1 - alpha)
        scale = np.maximum(scale, 1e-5).astype(np.float32)
        w_init.CopyFrom(numpy_helper.from_array((w * scale[:, None]).astype(np.float32), w_init.name))
        inv = numpy_helper.from_array((1.0 / scale).astype(np.float32), f"{name}/smooth_inv")
        graph.initializer.append(inv)
        smoothed = f"{x_name}/smoothed"
        graph.node.append(onnx.helper.make_node("Mul", [x_name, inv.name], [smoothed], name=f"{name}/smooth"))
        node.input[0] = smoothed
    onnx.save(_sorted(model), str(out))


def _sorted(model: Any) -> Any:
    """Nodes in topological order again (the Mul nodes were appended at the end)."""
    graph = model.graph
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise RuntimeError("graph has a cycle or a missing input")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
    return model


def fuse(fp32: Path, out: Path, model_dir: Path) -> None:
    """ONNX Runtime's BERT fusions, with the head count and width from the model's config."""
    from onnxruntime.transformers import optimizer

    config = json.loads((model_dir / "config.json").read_text())
    fused = optimizer.optimize_model(
        str(fp32),
        model_type="bert",
        num_heads=config["num_attention_heads"],
        hidden_size=config["hidden_size"],
        opt_level=1,
    )
    fused.save_model_to_file(str(out))


def measure(
    encoder: Any, dev: dict[str, Any], ref: dict[str, tuple[np.ndarray, np.ndarray]] | None
) -> dict[str, Any]:
    from model.train.dev import retrieval_p1

    p1, cosines, vectors = [], [], {}
    started = time.perf_counter()
    for lang, pairs in dev.items():
        src, en = encoder.embed([p.src for p in pairs]), encoder.embed([p.en for p in pairs])
        vectors[lang] = (src, en)
        p1.append(retrieval_p1(src, en))
        if ref is not None:
            cosines += [np.sum(src * ref[lang][0], axis=1), np.sum(en * ref[lang][1], axis=1)]
    seconds = time.perf_counter() - started
    texts = [p.src for p in dev[next(iter(dev))][:31]] + ["Kedi kanepede uyuyor."]
    alone = np.stack([encoder.embed([t])[0] for t in texts])
    long = ["Zahlen 1234567 89 " * 60, *texts]
    invariance = min(
        float(np.sum(alone * encoder.embed(texts), axis=1).min()),
        float(np.sum(alone * encoder.embed(long)[1:], axis=1).min()),
    )
    cos = np.concatenate(cosines) if cosines else np.ones(1)
    xx2en, en2xx = np.mean(p1, axis=0)
    sentences = 2 * sum(len(p) for p in dev.values())
    return {
        "xx2en": float(xx2en),
        "en2xx": float(en2xx),
        "mean_cos": float(cos.mean()),
        "min_cos": float(cos.min()),
        "invariance": invariance,
        "sentences_per_s": sentences / seconds,
        "vectors": vectors,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    sys.path.insert(0, str(REPO))
    from model.artifact import read_manifest
    from model.encoder import Encoder, OnnxBackend, TextTokenizer
    from model.train.corpus import read_dev

    logging.getLogger().setLevel(logging.ERROR)
    model_dir = args.model_dir
    manifest = read_manifest(model_dir)
    fp32 = model_dir / "model.onnx"
    if not fp32.is_file():
        raise SystemExit(f"{fp32} is missing: run dapsearch model export --model-dir {model_dir}")
    tok = TextTokenizer(model_dir / "tokenizer.json", manifest)
    dev = read_dev(args.dev, args.langs.split(","), args.pairs)
    print(
        f"CPU: {cpu_model()} ({os.cpu_count()} logical cores, {cpu_flags()}), "
        f"onnxruntime {version('onnxruntime')}"
    )
    print(f"model {manifest.id}; dev {sum(len(p) for p in dev.values())} pairs in {len(dev)} languages")

    def encoder(path: Path, name: str) -> Encoder:
        return Encoder(manifest, tok, OnnxBackend(path, name, args.threads), 32)  # type: ignore[arg-type]

    ref = measure(encoder(fp32, "onnx"), dev, None)
    rows = [("fp32", ref)]
    with tempfile.TemporaryDirectory() as tmp:
        for scheme in args.schemes.split(","):
            out = Path(tmp) / f"{scheme}.onnx"
            started = time.perf_counter()
            quantize(scheme, fp32, out, model_dir)
            result = measure(encoder(out, "onnx-int8"), dev, ref["vectors"])
            result["quantize_s"] = time.perf_counter() - started
            rows.append((scheme, result))
            print(
                json.dumps({"scheme": scheme, **{k: v for k, v in result.items() if k != "vectors"}}),
                flush=True,
            )
    base = (ref["xx2en"] + ref["en2xx"]) / 2
    print(
        "\n| graph | xx→en | en→xx | Δ mean P@1 vs fp32 | mean cos | min cos "
        "| alone vs batch (min cos) | sent/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows:
        delta = (r["xx2en"] + r["en2xx"]) / 2 - base
        print(
            f"| {name} | {r['xx2en']:.2f} | {r['en2xx']:.2f} | {delta:+.2f} | {r['mean_cos']:.4f} | "
            f"{r['min_cos']:.4f} | {r['invariance']:.7f} | {r['sentences_per_s']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
