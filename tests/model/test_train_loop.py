"""The DAP training job end to end: a tiny model for exact resume and torchrun, the real one for quality."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.encoder import Encoder
from model.train.config import Interrupted, TrainConfig
from model.train.loop import Trainer
from tests.conftest import SHARED

PARALLEL = SHARED / "data" / "parallel"
LANGS = ("de", "fr", "es")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A slice of the shared parallel data: 400 training and 30 dev pairs per language."""
    out = tmp_path_factory.mktemp("parallel")
    (out / "dev").mkdir()
    for lang in LANGS:
        with gzip.open(PARALLEL / f"{lang}-en.tsv.gz", "rt", encoding="utf-8") as fh:
            lines = [next(fh) for _ in range(400)]
        with gzip.open(out / f"{lang}-en.tsv.gz", "wt", encoding="utf-8") as fh:
            fh.writelines(lines)
        dev = (PARALLEL / "dev" / f"{lang}-en.tsv").read_text(encoding="utf-8").splitlines(keepends=True)[:30]
        (out / "dev" / f"{lang}-en.tsv").write_text("".join(dev), encoding="utf-8")
    return out


def config(data_dir: Path, model_dir: Path, out: Path, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "data": data_dir,
        "out": out,
        "model_dir": model_dir,
        "steps": 6,
        "batch_size": 8,
        "lr": 1e-3,
        "warmup": 2,
        "eval_every": 3,
        "eval_pairs": 10,
        "save_every": 3,
        "log_every": 1,
        "max_length": 16,
        "device": "cpu",
    }
    return TrainConfig(**(base | kw))


def losses(history: list[dict[str, Any]]) -> dict[int, float]:
    return {int(h["step"]): float(h["loss"]) for h in history if "loss" in h}


def test_run_writes_a_built_model_a_log_and_a_checkpoint(
    data_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = Trainer(config(data_dir, tiny_model_dir, out)).run()
    assert result.steps == 6 and result.best_step is not None
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "train"] == [1, 2, 3, 4, 5, 6]
    evals = [r for r in records if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [0, 3, 6]
    assert set(evals[0]["per_lang"]) == set(LANGS)
    train = [r for r in records if r["event"] == "train"]
    assert all(r["rtl"] > 0 and r["tr"] > 0 for r in train)
    assert (out / "checkpoint" / "state.pt").is_file() and (out / "en_vocab.txt").is_file()
    # best/ is a complete built model: the encoder alone, loadable and exportable like any other.
    encoder = Encoder.load(out / "best", backend="torch")
    assert encoder.manifest.pooling == "mean" and encoder.manifest.query_prefix == "query: "
    assert encoder.model_id.startswith("tiny-dap@")
    assert encoder.manifest.provenance["source"] == "dapsearch train"
    vectors = encoder.embed(["ein Satz", "a sentence"])
    assert vectors.shape == (2, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_resume_reproduces_the_uninterrupted_loss_curve(
    data_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    straight = Trainer(config(data_dir, tiny_model_dir, tmp_path / "a")).run()

    def stop_at_4(step: int, _: dict[str, float]) -> None:
        if step == 4:
            raise KeyboardInterrupt

    cut = config(data_dir, tiny_model_dir, tmp_path / "b")
    with pytest.raises(Interrupted, match="interrupted at step 4"):
        Trainer(cut, progress=stop_at_4).run()
    resumed = Trainer(cut).run(resume=True)
    expected = losses(straight.history)
    got = losses(resumed.history)
    assert sorted(got) == [5, 6]
    for step in (5, 6):
        assert got[step] == pytest.approx(expected[step], abs=1e-5), (step, got, expected)


def _trained_parameters(cfg: TrainConfig) -> tuple[Trainer, set[str], Any]:
    """Run ``cfg``; the trainer, the names of the encoder's parameters that changed, the encoder."""
    trainer = Trainer(cfg)
    encoder: Any = trainer.model.encoder
    before = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    trainer.run()
    changed = {n for n, p in encoder.named_parameters() if not bool((p.detach() == before[n]).all())}
    return trainer, changed, encoder


def test_tr_only_ablation_and_frozen_layers(data_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = config(data_dir, tiny_model_dir, tmp_path / "tr", rtl=False, train_layers=1, steps=2, eval_every=10)
    trainer, changed, _ = _trained_parameters(cfg)
    assert trainer.model.rtl is None
    assert changed and all(n.startswith("encoder.layer.1.") for n in changed), sorted(changed)


def test_frozen_top_layers_stay_the_base(data_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    """--frozen-top 1: the top layer stays the base's, the layers under it learn."""
    cfg = config(data_dir, tiny_model_dir, tmp_path / "top", rtl=False, frozen_top=1, steps=2, eval_every=10)
    _, changed, encoder = _trained_parameters(cfg)
    top = f"encoder.layer.{len(encoder.encoder.layer) - 1}."
    assert any(n.startswith("encoder.layer.0.") for n in changed), sorted(changed)
    assert not any(n.startswith(top) for n in changed), sorted(changed)


def test_two_processes_under_torchrun(data_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    """The CLI under `torchrun --nproc-per-node 2` (gloo): one run, rank 0 writes, both ranks step."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--standalone",
        "-m",
        "cli",
        "train",
        "--data",
        str(data_dir),
        "--out",
        str(out),
        "--model-dir",
        str(tiny_model_dir),
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--eval-every",
        "3",
        "--eval-pairs",
        "10",
        "--max-length",
        "16",
        "--device",
        "cpu",
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trained 3 steps" in result.stdout
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "train"] == [1, 2, 3]  # rank 0 only
    assert (out / "best" / "manifest.json").is_file()


def test_cli_refuses_to_overwrite_a_run_and_bad_options(
    data_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    (out / "checkpoint").mkdir(parents=True)
    base = [
        sys.executable,
        "-m",
        "cli",
        "train",
        "--data",
        str(data_dir),
        "--model-dir",
        str(tiny_model_dir),
    ]
    cases = [
        ([*base, "--out", str(out)], "already holds a run"),
        ([*base, "--out", str(tmp_path / "new"), "--resume"], "nothing to resume"),
        ([*base, "--out", str(tmp_path / "x"), "--tr-direction", "sideways"], "--tr-direction"),
        ([*base, "--out", str(tmp_path / "y"), "--langs", "xx"], "xx"),
    ]
    for cmd, message in cases:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, (cmd, result.stderr[-2000:])
        assert message in result.stderr


@pytest.mark.real_model
def test_short_real_run_does_not_break_dev_accuracy(
    data_dir: Path, real_model_dir: Path, tmp_path: Path
) -> None:
    """The real encoder, a few CPU steps of the DAP recipe: dev P@1 must not fall (it usually rises)."""
    cfg = config(
        data_dir,
        real_model_dir,
        tmp_path / "real",
        steps=12,
        batch_size=16,
        lr=2e-5,
        warmup=2,
        eval_every=12,
        eval_pairs=30,
        max_length=32,
        save_every=12,
    )
    result = Trainer(cfg).run()
    evals = [h for h in result.history if "eval" in h or "avg" in h]
    first = evals[0]["avg"]
    last = evals[-1].get("eval", evals[-1].get("avg"))
    assert last >= first - 1.0, (first, last)


def test_trained_model_exports_and_evaluates_beside_its_base(
    data_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """OUT/best goes through `model export` and `dapsearch eval` like any built model."""
    from model.export import export_all

    out = tmp_path / "run"
    Trainer(config(data_dir, tiny_model_dir, out, steps=2, eval_every=2)).run()
    export_all(out / "best")
    assert Encoder.load(out / "best", backend="onnx-int8").embed(["hallo"]).shape == (1, 32)
    report = tmp_path / "eval.json"
    cmd = [
        sys.executable,
        "-m",
        "cli",
        "eval",
        "--model",
        str(tiny_model_dir),
        "--model",
        str(out / "best"),
        "--data",
        str(data_dir / "dev"),
        "--train-data",
        str(data_dir),
        "--limit",
        "20",
        "--distractors",
        "2",
        "--backend",
        "onnx",
        "--json",
        str(report),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout
    assert "tiny@" in table and "tiny-dap@" in table and "**average**" in table
    assert all(f"| {lang} |" in table for lang in LANGS)
    payload = json.loads(report.read_text())
    assert len(payload) == 2
    for model in payload:
        assert set(model["languages"]) == set(LANGS)
        for scores in model["languages"].values():
            assert 0 <= scores["xx2en"] <= 100 and 0 <= scores["en2xx"] <= 100
            assert scores["mining_f1"] is not None and scores["threshold"] is not None
            assert scores["mining_oracle_f1"] >= scores["mining_f1"] - 1e-9
    # Default: distractors from the spare dev rows (10 gold of 30 pairs, 20 spare rows, 1:1).
    held_out = subprocess.run(
        [*cmd[:8], "--data", str(data_dir / "dev"), "--backend", "onnx", "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert held_out.returncode == 0, held_out.stderr[-3000:]
    for model in json.loads(report.read_text()):
        assert all(s["mining_f1"] is not None for s in model["languages"].values())
    bad = subprocess.run(
        [*cmd[:4], "--model", str(tmp_path / "nope"), "--data", str(data_dir / "dev")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "no built model" in bad.stderr
