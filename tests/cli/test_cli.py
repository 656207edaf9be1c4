"""The ``dapsearch`` command line as a user runs it: real processes, exit codes, outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.encoder import Encoder


def run(*args: str, stdin: str | None = None, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cli", *args]
    env = dict(os.environ)
    if home is not None:
        env["DAPSEARCH_HOME"] = str(home)
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["embed", "/no/such/file.txt"], "input file not found"),
        (["model", "info", "--model-dir", "/no/such/dir"], "no built model"),
        (["model", "build", "--bin", "/no/such.bin", "--out", "/tmp/never"], "weights file not found"),
        (["embed", "-", "--kind", "document"], "--kind must be"),
        (["embed", "-", "--out", "vectors.csv"], "--out must end"),
        (["embed", "-", "--backend", "tensorrt"], "unknown backend"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = run(*args, stdin="hello\n")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1


def test_empty_and_corrupt_inputs(tmp_path: Path, real_model_dir: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    result = run("embed", str(empty), "--model-dir", str(real_model_dir))
    assert result.returncode == 2 and "no non-empty lines" in result.stderr
    corrupt = tmp_path / "corrupt.bin"
    corrupt.write_bytes(b"E5S1" + b"\x01\x00\x00\x00" + b"\x00" * 20)
    result = run("model", "build", "--bin", str(corrupt), "--out", str(tmp_path / "m"))
    assert result.returncode == 2 and "corrupt" in result.stderr
    assert not (tmp_path / "m").exists()
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café\n".encode("latin-1"))
    result = run("embed", str(latin1), "--model-dir", str(real_model_dir))
    assert result.returncode == 2 and "UTF-8" in result.stderr


@pytest.mark.real_model
def test_embed_to_npy_and_jsonl(
    tmp_path: Path, real_model_dir: Path, real_encoders: dict[str, Encoder]
) -> None:
    lines = ["Hello world", "Bonjour le monde", "", "Hallo Welt"]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n")
    npy = tmp_path / "out.npy"
    result = run("embed", str(src), "--out", str(npy), "--model-dir", str(real_model_dir))
    assert result.returncode == 0, result.stderr
    vectors = np.load(npy)
    expected = real_encoders["served"].embed(["Hello world", "Bonjour le monde", "Hallo Welt"], "passage")
    np.testing.assert_allclose(vectors, expected, atol=1e-6)

    result = run("embed", "-", "--kind", "query", "--model-dir", str(real_model_dir), stdin="Hello world\n")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 1 and rows[0]["text"] == "Hello world" and not rows[0]["truncated"]
    np.testing.assert_allclose(
        rows[0]["embedding"], real_encoders["served"].embed(["Hello world"])[0], atol=1e-6
    )


@pytest.mark.real_model
def test_model_info(real_model_dir: Path) -> None:
    result = run("model", "info", "--json", "--model-dir", str(real_model_dir))
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    assert manifest["dim"] == 384 and manifest["pooling"] == "mean"
    assert manifest["provenance"]["file_sha256"] == (
        "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"
    )
    assert {"onnx", "onnx-int8"} <= set(manifest["onnx"]) <= {"onnx", "onnx-int8", "openvino-int8"}


def test_build_from_checkpoint_via_cli(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "built"
    args = [
        "model",
        "build",
        "--from-checkpoint",
        str(tiny_checkpoint),
        "--out",
        str(out),
        "--pooling",
        "cls",
    ]
    result = run(*args)
    assert result.returncode == 0, result.stderr
    assert (out / "manifest.json").is_file()
    again = run(*args)
    assert again.returncode == 2 and "already exists" in again.stderr
    result = run("model", "export", "--model-dir", str(out), "--no-int8")
    assert result.returncode == 0, result.stderr
    assert (out / "model.onnx").is_file() and not (out / "model.int8.onnx").exists()
    result = run("embed", "-", "--backend", "onnx", "--model-dir", str(out), stdin="hi\n")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["embedding"]) == 32
    # without --out a checkpoint lands beside the default model, named after it, never over it
    home = tmp_path / "home"
    result = run("model", "build", "--from-checkpoint", str(tiny_checkpoint), "--name", "mine", home=home)
    assert result.returncode == 0, result.stderr
    assert (home / "models" / "mine" / "manifest.json").is_file()


@pytest.mark.real_model
def test_mine_text_files_with_gold(tmp_path: Path, real_model_dir: Path) -> None:
    from tests.sentences import GROUPS

    # one translation per group (a different language each time), all English sides distinct
    foreign = [[text for lang, text in g.items() if lang != "en"] for g in GROUPS]
    pairs = [
        (texts[i % len(texts)], g["en"]) for i, (texts, g) in enumerate(zip(foreign, GROUPS, strict=True))
    ]
    src = tmp_path / "src.txt"
    tgt = tmp_path / "tgt.txt"
    pairs[0] = (pairs[0][0].replace(" ", "\t", 1), pairs[0][1])  # a tab inside a sentence stays in its field
    src.write_text("\n".join(p[0] for p in pairs) + "\n")
    tgt.write_text("\n".join(p[1] for p in reversed(pairs)) + "\n")  # target in reverse order
    gold = tmp_path / "gold.tsv"
    gold.write_text("".join(f"{i + 1}\t{len(pairs) - i}\n" for i in range(len(pairs))))
    out = tmp_path / "pairs.tsv"
    result = run(
        "mine", str(src), str(tgt), "--out", str(out), "--gold", str(gold), "--model-dir", str(real_model_dir)
    )
    assert result.returncode == 0, result.stderr
    assert "best threshold" in result.stderr
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert rows and all(len(r) == 5 for r in rows)
    found = {(int(r[1]), int(r[2])) for r in rows}
    expected = {(i + 1, len(pairs) - i) for i in range(len(pairs))}
    assert len(found & expected) >= 0.9 * len(expected)
    assert all(float(r[0]) >= float(rows[-1][0]) for r in rows)
    bad = run(
        "mine",
        str(src),
        str(tgt),
        "--out",
        str(out),
        "--strategy",
        "best",
        "--model-dir",
        str(real_model_dir),
    )
    assert bad.returncode == 2 and "--strategy" in bad.stderr
