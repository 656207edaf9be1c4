"""sentence-transformers' backends as bench/embed.py's peer engines, each in its own venv (bench/peers.py).

Each peer runs on its own export of the model, quantised by its own helper, as its documentation
advises (https://sbert.net/docs/sentence_transformer/usage/efficiency.html):

* ``st-onnx`` / ``st-onnx-int8``: the ONNX backend, fp32 and its dynamic int8 for this CPU;
* ``st-openvino`` / ``st-openvino-int8``: the OpenVINO backend, fp32 and its static int8 (NNCF
  post-training quantisation), calibrated on *training* sentences of the parallel data (never dev:
  dev is what the tables measure), since its default calibration set lives on a hub.

Every export is written once into the peer's copy of the model (``peers.peer_model_copy``) and reused.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

QUERY_PREFIX = "query: "
EmbedFn = Callable[[list[str]], np.ndarray]
ST_ENGINES = ("st-onnx", "st-onnx-int8", "st-openvino", "st-openvino-int8")
CALIBRATION_SENTENCES = 300  # optimum-intel's default sample count for static quantisation
ST_OPENVINO_INT8_SUFFIX = "qint8_quantized"  # the helper's own default


def load_st_engine(
    engine: str, model_dir: Path, batch_size: int, train_data: Path
) -> tuple[EmbedFn, EmbedFn]:
    """(embed a batch, embed one query) for one of ``ST_ENGINES``."""
    if engine in ("st-onnx", "st-onnx-int8"):
        return st_callables(_sentence_transformers_onnx(model_dir, engine == "st-onnx-int8"), batch_size)
    if engine in ("st-openvino", "st-openvino-int8"):
        st = _sentence_transformers_openvino(model_dir, engine == "st-openvino-int8", train_data)
        return st_callables(st, batch_size)
    raise ValueError(f"not a sentence-transformers peer: {engine!r}")


def st_quantization() -> str:
    """sentence-transformers' own dynamic int8 config for this CPU, as its docs advise choosing it."""
    from model.cpu import cpu_features

    flags = cpu_features().flags
    return "avx512_vnni" if "avx512_vnni" in flags else "avx512" if "avx512f" in flags else "avx2"


def _sentence_transformers_onnx(model_dir: Path, int8: bool) -> Any:
    """The ONNX backend on its own export and, for int8, its dynamic quantisation for this CPU."""
    from peers import peer_model_copy
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    folder = str(peer_model_copy(model_dir))
    st = SentenceTransformer(folder, backend="onnx", device="cpu", local_files_only=True)
    if not (Path(folder) / "onnx" / "model.onnx").exists():
        st.save_pretrained(folder)  # keep its fp32 export for the next run
    if not int8:
        return st
    config = st_quantization()
    # Its file name says the weight type the config chose: quint8 for avx2, qint8 otherwise.
    made = sorted((Path(folder) / "onnx").glob(f"model_q*int8_{config}.onnx"))
    if not made:
        export_dynamic_quantized_onnx_model(st, config, folder)
        made = sorted((Path(folder) / "onnx").glob(f"model_q*int8_{config}.onnx"))
    return SentenceTransformer(
        folder, backend="onnx", device="cpu", local_files_only=True, model_kwargs={"file_name": made[0].name}
    )


def _sentence_transformers_openvino(model_dir: Path, int8: bool, train_data: Path) -> Any:
    """The OpenVINO backend on its own IR and, for int8, its static quantisation helper."""
    from peers import peer_model_copy
    from sentence_transformers import SentenceTransformer, export_static_quantized_openvino_model

    folder = peer_model_copy(model_dir)
    st = SentenceTransformer(str(folder), backend="openvino", device="cpu", local_files_only=True)
    if not (folder / "openvino" / "openvino_model.xml").exists():
        st.save_pretrained(str(folder))  # keep its fp32 IR for the next run
    if not int8:
        return st
    name = f"openvino/openvino_model_{ST_OPENVINO_INT8_SUFFIX}.xml"
    if not (folder / name).exists():
        calibration = _calibration_dataset(train_data, folder / "calibration")
        export_static_quantized_openvino_model(
            st,
            None,  # its default OVQuantizationConfig (int8 weights and activations)
            str(folder),
            dataset_name=str(calibration),
            dataset_config_name="default",
            dataset_split="train",
            column_name="sentence",
            file_suffix=ST_OPENVINO_INT8_SUFFIX,
        )
    return SentenceTransformer(
        str(folder), backend="openvino", device="cpu", local_files_only=True, model_kwargs={"file_name": name}
    )


def _calibration_dataset(train_data: Path, out: Path) -> Path:
    """A local ``datasets`` folder of training sentences, both sides of every language, prefixed as
    queries are: what the model will see, and nothing the benchmark measures."""
    files = sorted(train_data.glob("*-en.tsv.gz"))
    if not files:
        raise FileNotFoundError(f"no *-en.tsv.gz training files in {train_data} to calibrate on")
    rng = random.Random(0)
    sentences: list[str] = []
    per_file = CALIBRATION_SENTENCES // len(files) + 1
    for path in files:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            rows = [line.rstrip("\n").split("\t") for _, line in zip(range(2000), handle, strict=False)]
        pairs = [row for row in rows if len(row) >= 2]
        for row in rng.sample(pairs, min(per_file, len(pairs))):
            sentences.append(QUERY_PREFIX + row[rng.randrange(2)])
    rng.shuffle(sentences)
    out.mkdir(parents=True, exist_ok=True)
    lines = (json.dumps({"sentence": s}, ensure_ascii=False) for s in sentences[:CALIBRATION_SENTENCES])
    (out / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def st_callables(st: Any, batch_size: int) -> tuple[EmbedFn, EmbedFn]:
    """(embed a batch, embed one query) with a SentenceTransformer, whatever its backend."""

    def st_encode(texts: list[str], bs: int) -> np.ndarray:
        out = st.encode(
            [QUERY_PREFIX + t for t in texts],
            batch_size=bs,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float32)

    return (lambda texts: st_encode(texts, batch_size)), (lambda texts: st_encode(texts, 1))
