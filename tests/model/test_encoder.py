"""Encoder mechanics on a tiny random BERT: batching, truncation, prefixes, backends, stale exports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.errors import InputError
from model.artifact import BACKENDS, MANIFEST, Backend, read_manifest
from model.encoder import Encoder
from tests.sentences import ORDINARY

# The nodes between an int8 weight or a quantised activation and the MatMul that uses it in an
# OpenVINO IR.
DEQUANTIZE = {"Convert", "Subtract", "Multiply", "Reshape", "Transpose"}

LONG = "word " * 200


@pytest.mark.parametrize("backend", BACKENDS)
def test_shape_norm_and_dtype(tiny_model_dir: Path, backend: str) -> None:
    enc = Encoder.load(tiny_model_dir, backend=backend)  # type: ignore[arg-type]
    vectors = enc.embed(ORDINARY[:7])
    assert vectors.shape == (7, 32)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_length_sorted_padded_batches_equal_one_at_a_time(tiny_model_dir: Path, backend: str) -> None:
    enc = Encoder.load(tiny_model_dir, backend=backend, batch_size=4)  # type: ignore[arg-type]
    texts = [*ORDINARY[:9], "a", LONG, "short one"]
    batched = enc.embed(texts)
    single = np.stack([enc.embed([t])[0] for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)


@pytest.mark.parametrize("batch_size", [4, 32])
@pytest.mark.parametrize("backend", ["openvino", "openvino-int8"])
def test_openvino_gives_the_onnx_vectors(tiny_model_dir: Path, backend: Backend, batch_size: int) -> None:
    """The same vectors as ONNX Runtime's fp32 graph, alone or in a padded batch (small batches
    run 32 tokens wide, larger ones up a ladder of widths, so that shapes repeat), and the result
    survives the next call (OpenVINO reuses its output buffer)."""
    reference = Encoder.load(tiny_model_dir, backend="onnx").embed(ORDINARY)
    enc = Encoder.load(tiny_model_dir, backend=backend, batch_size=batch_size)
    assert [enc.backend.run_width(rows, 13) for rows in (1, 4, 5, 32)] == [32, 32, 16, 16]
    assert [enc.backend.run_width(32, w) for w in (17, 32, 33, 65, 129, 500)] == [20, 32, 40, 80, 160, 512]
    first = enc.embed(ORDINARY)
    enc.embed([LONG, "something else"])
    floor = 0.9999 if backend == "openvino" else 0.98
    assert np.sum(reference * first, axis=1).min() >= floor
    single = np.stack([enc.embed([t])[0] for t in ORDINARY])
    assert np.sum(single * first, axis=1).min() >= 0.999


def test_ids_handed_in_give_the_same_vectors_and_truncation(tiny_model_dir: Path) -> None:
    """The service tokenises a request once and hands the ids on: same result as from texts."""
    enc = Encoder.load(tiny_model_dir, backend="onnx")
    texts = [*ORDINARY[:3], LONG, "short one"]
    tokenized = enc.tokenizer.tokenize(texts, "passage")
    assert tokenized.truncated == [3]
    direct = enc.encode(texts, "passage")
    handed = enc.encode(texts, "passage", tokenized=tokenized)
    np.testing.assert_array_equal(handed.vectors, direct.vectors)
    assert (handed.truncated, handed.lengths) == (direct.truncated, direct.lengths)
    part = tokenized.take([4, 3])
    assert part.ids == [tokenized.ids[4], tokenized.ids[3]] and part.truncated == [1]
    with pytest.raises(ValueError, match="5 token rows for 2 texts"):
        enc.encode(texts[:2], "passage", tokenized=tokenized)


def test_batches_are_sorted_by_length_and_restore_order(tiny_model_dir: Path) -> None:
    enc = Encoder.load(tiny_model_dir, backend="onnx")
    texts = ["a", "a b c d e f g h i j k l m n o p", "a b c", "a b", "a b c d e f g h i j k l m n o"]
    ids = enc.tokenizer.tokenize(texts, "query").ids
    batches = list(enc.tokenizer.batches(ids, 2))
    assert batches[0].order == [1, 4] and all(len(b.order) <= 2 for b in batches)  # longest first
    assert sorted(i for b in batches for i in b.order) == list(range(len(texts)))
    for batch in batches:
        assert batch.input_ids.shape == (len(batch.order), len(ids[batch.order[0]]))  # its own longest
        for row, i in enumerate(batch.order):
            assert batch.attention_mask[row].sum() == len(ids[i])
            assert (batch.input_ids[row][len(ids[i]) :] == enc.tokenizer.pad_id).all()
    one = [len(b.order) for b in enc.tokenizer.batches(ids, 32)]
    assert one == [2, 3]  # two long texts apart from three short ones: less padding than one batch
    np.testing.assert_allclose(enc.embed(texts), np.stack([enc.embed([t])[0] for t in texts]), atol=1e-5)


def test_truncation_is_explicit_and_reported(tiny_model_dir: Path) -> None:
    enc = Encoder.load(tiny_model_dir, backend="onnx")
    result = enc.encode(["short", LONG, "also short", LONG + " more"], "passage")
    assert result.truncated == [1, 3]
    ids = enc.tokenizer.tokenize([LONG], "passage").ids[0]
    assert len(ids) == enc.manifest.max_length == 16
    assert ids[0] == 0 and ids[-1] == 2  # <s> ... </s> survive truncation
    assert result.tokens == sum(len(i) for i in enc.tokenizer.tokenize(result_texts(), "passage").ids)


def result_texts() -> list[str]:
    return ["short", LONG, "also short", LONG + " more"]


def test_prefix_applied_per_kind(tiny_model_dir: Path) -> None:
    enc = Encoder.load(tiny_model_dir, backend="onnx")
    q = enc.tokenizer.tokenize(["hello"], "query").ids[0]
    p = enc.tokenizer.tokenize(["hello"], "passage").ids[0]
    assert q != p
    assert enc.tokenizer.tokenize(["query: hello"], "passage").ids[0][1:] != q[1:]
    assert not np.allclose(enc.embed(["hello"], "query"), enc.embed(["hello"], "passage"))
    # trailing whitespace is dropped (sentencepiece behaviour), leading spaces collapse
    np.testing.assert_array_equal(enc.embed(["hello  "]), enc.embed(["hello"]))


def test_bad_kind_and_backend(tiny_model_dir: Path) -> None:
    enc = Encoder.load(tiny_model_dir, backend="onnx")
    with pytest.raises(InputError, match="kind"):
        enc.encode(["x"], "document")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="unknown backend"):
        Encoder.load(tiny_model_dir, backend="tensorrt")  # type: ignore[arg-type]


def test_empty_input_gives_empty_matrix(tiny_model_dir: Path) -> None:
    enc = Encoder.load(tiny_model_dir, backend="onnx")
    assert enc.embed([]).shape == (0, 32)


def test_stale_onnx_export_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["id"] = "tiny@0000000000000000"  # the weights changed after export
    (copy / MANIFEST).write_text(json.dumps(manifest))
    for backend in ("onnx-int8", "openvino-int8", "openvino"):
        with pytest.raises(InputError, match="not exported from model"):
            Encoder.load(copy, backend=backend)
    (copy / "model.onnx").unlink()
    with pytest.raises(InputError, match="does not exist"):
        Encoder.load(copy, backend="onnx")


def test_manifest_records_export_provenance(tiny_model_dir: Path) -> None:
    manifest = read_manifest(tiny_model_dir)
    assert manifest.pooling == "mean"
    assert manifest.onnx["onnx"].opset == 17
    assert manifest.onnx["onnx-int8"].quantization == "static-int8-qdq-per-channel-7bit-ffn-out-fp32"
    assert manifest.onnx["onnx-int8"].rejected == []
    assert manifest.onnx["onnx-int8"].source_model_id == manifest.id
    assert manifest.onnx["openvino-int8"].quantization == "nncf-static-int8-transformer-attention-f32"
    assert (tiny_model_dir / manifest.onnx["openvino-int8"].file).with_suffix(".bin").is_file()
    assert manifest.id.startswith("tiny@")


def test_int8_weights_fit_in_seven_bits(tiny_model_dir: Path) -> None:
    """Every quantised weight lies in [-64, 64]: a u8 activation times such a weight, summed in
    pairs, stays below 32,767, so the AVX2 kernels (16-bit pair sums) cannot saturate and give
    what VNNI CPUs give."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(tiny_model_dir / "model.int8.onnx")).graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    quantised = [
        weights[n.input[0]]
        for n in graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in weights and weights[n.input[0]].dtype == np.int8
    ]
    assert len(quantised) >= 4  # q, k, v, attention output and feed-forward input per layer
    assert max(int(np.abs(w.astype(np.int16)).max()) for w in quantised) <= 64


def test_openvino_int8_quantises_only_weight_matmuls(tiny_model_dir: Path) -> None:
    """In NNCF's IR every MatMul with int8 inputs has a weight operand: the attention's MatMuls of
    two activations stay f32. In int8 their products saturated on CPUs without VNNI (cosine 0.97
    to fp32 with oneDNN capped to AVX2)."""
    import openvino as ov

    def source(node: Any) -> Any:
        """The node behind a chain of conversions, reshapes and scalings."""
        while node.get_type_name() in DEQUANTIZE:
            node = node.input_value(0).get_node()
        return node

    model = ov.Core().read_model(str(tiny_model_dir / "model.int8.openvino.xml"))
    int8, activation_pairs = 0, 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul":
            continue
        inputs = [source(op.input_value(i).get_node()) for i in range(2)]
        quantised = any(n.get_type_name() == "FakeQuantize" for n in inputs)
        weighted = any(n.get_type_name() == "Constant" for n in inputs)
        int8 += quantised and weighted
        activation_pairs += not weighted
        assert weighted or not quantised, op.get_friendly_name()
    assert int8 >= 4 and activation_pairs >= 2  # both kinds are there, and told apart


def test_cls_pooling_checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A paper-style checkpoint uses the first token's state, in torch and in the exported graph."""
    import torch

    from model.build import build_from_checkpoint
    from model.export import export_onnx
    from model.torch_model import load_transformer

    out = tmp_path / "cls"
    build_from_checkpoint(tiny_checkpoint, out, "cls", max_length=16)
    export_onnx(out)
    enc = Encoder.load(out, backend="onnx")
    batch = enc.tokenizer.pad(enc.tokenizer.tokenize(["hello world"], "query").ids, [0])
    with torch.inference_mode():
        hidden = load_transformer(out)(
            input_ids=torch.from_numpy(batch.input_ids), attention_mask=torch.from_numpy(batch.attention_mask)
        ).last_hidden_state
    cls = torch.nn.functional.normalize(hidden[:, 0], dim=-1).numpy()
    np.testing.assert_allclose(enc.embed(["hello world"]), cls, atol=1e-5)


def test_an_export_below_its_parity_floor_is_discarded(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A drifting graph is deleted and reported as a clear error, never recorded or served."""
    from model.artifact import INT8_SCHEME
    from model.export import INT8_MIN_COSINE, ParityError, _accept

    model_dir = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model_dir)
    before = (model_dir / MANIFEST).read_text()
    candidate = model_dir / "model.int8.onnx.tmp"
    candidate.write_bytes(b"not really a graph")
    cosine = np.array([0.999, 0.95], dtype=np.float32)
    with pytest.raises(ParityError, match=r"min cosine 0\.9500 .* below 0\.98.*DAPSEARCH_BACKEND=onnx"):
        _accept(
            model_dir,
            read_manifest(model_dir),
            "onnx-int8",
            candidate,
            cosine,
            INT8_MIN_COSINE,
            INT8_SCHEME,
            17,
        )
    assert not candidate.exists()
    assert (model_dir / MANIFEST).read_text() == before


def test_int8_falls_back_to_fp32_ffn_outputs_and_then_refuses(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All three schemes are tried before an export is refused; nothing is left behind."""
    from model import export

    model_dir = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model_dir)
    names = export._ffn_output_matmuls(model_dir / "model.onnx")
    assert names == [f"/encoder/encoder/layer.{i}/output/dense/MatMul" for i in range(2)]
    tried: list[dict[str, set[str]]] = []
    from model.encoder import OnnxBackend as real

    def spy(path: Path, name: str, threads: int | None = None) -> object:
        if name == "onnx-int8":
            import onnx

            graph = onnx.load(str(path)).graph
            dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
            tried.append(
                {
                    "fp32": {
                        n.name for n in graph.node if n.op_type == "MatMul" and not set(n.input) & dequantized
                    },
                    "qdq": {
                        n.name for n in graph.node if n.op_type == "MatMul" and set(n.input) & dequantized
                    },
                    "integer": {n.name for n in graph.node if n.op_type == "MatMulInteger"},
                }
            )
        return real(path, name, threads)  # type: ignore[arg-type]  # name is a Backend literal

    monkeypatch.setattr(export, "OnnxBackend", spy)
    monkeypatch.setattr(export, "INT8_MIN_COSINE", 1.01)  # unreachable: force every attempt
    with pytest.raises(export.ParityError):
        export.quantize_int8(model_dir)
    assert len(tried) == 3
    static, dynamic, dynamic_ffn = tried
    # Static: weight MatMuls through Q/DQ, the FFN outputs (and attention's own MatMuls) in fp32.
    assert set(names) <= static["fp32"] and static["qdq"] and not static["qdq"] & set(names)
    assert not static["integer"] and dynamic["integer"] and not dynamic["qdq"]
    assert not set(names) & dynamic["fp32"] and set(names) <= dynamic_ffn["fp32"]
    assert not (model_dir / "model.int8.onnx.tmp").exists()
