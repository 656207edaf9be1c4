"""The training levers beside TR and RTL: distillation to the frozen base, bf16 autocast, presets."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from core.errors import InputError
from model.train import loop
from model.train.config import cpu_has_native_bf16, distillation_loss
from model.train.loop import Trainer
from tests.model.test_train_loop import config, data_dir  # noqa: F401  (fixture)


def test_distillation_loss_is_zero_for_the_base_and_grows_with_distance() -> None:
    torch.manual_seed(0)
    base = torch.randn(5, 8)
    assert float(distillation_loss(base, base)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(base + 0.5 * torch.randn(5, 8), base)) > 0.01
    assert float(distillation_loss(-base, base)) == pytest.approx(2.0, abs=1e-5)


def test_native_bf16_is_read_from_the_cpu_flags() -> None:
    flags = next(
        (line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), ""
    ).split()
    assert cpu_has_native_bf16() == bool({"amx_bf16", "avx512_bf16"} & set(flags))


def test_precision_auto_follows_the_cpu_and_bf16_is_refused_without_it(
    data_dir: Path,  # noqa: F811
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = config(data_dir, tiny_model_dir, tmp_path / "a", steps=1)
    assert Trainer(cfg).bf16 == cpu_has_native_bf16()
    assert Trainer(config(data_dir, tiny_model_dir, tmp_path / "b", precision="fp32")).bf16 is False
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: False)  # a CPU without AMX/AVX512-BF16
    assert Trainer(config(data_dir, tiny_model_dir, tmp_path / "c")).bf16 is False
    with pytest.raises(InputError, match="native bf16"):
        Trainer(config(data_dir, tiny_model_dir, tmp_path / "d", precision="bf16"))


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16 (AMX or AVX512-BF16)")
def test_a_bf16_step_gives_nearly_the_fp32_loss(
    data_dir: Path,  # noqa: F811
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    losses = {}
    for precision in ("fp32", "bf16"):
        trainer = Trainer(config(data_dir, tiny_model_dir, tmp_path / precision, precision=precision))
        trainer.model.eval()  # no dropout: the same function in both precisions
        batch = next(trainer.stream.batches(8))
        losses[precision] = trainer.train_step(batch)
    assert losses["bf16"].tr == pytest.approx(losses["fp32"].tr, rel=0.02)
    assert losses["bf16"].rtl == pytest.approx(losses["fp32"].rtl, rel=0.02)


def test_distillation_keeps_a_frozen_teacher(
    data_dir: Path,  # noqa: F811
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    trainer = Trainer(config(data_dir, tiny_model_dir, tmp_path / "kd", distill_weight=1.0, steps=3))
    assert trainer.teacher is not None
    before = {n: p.detach().clone() for n, p in trainer.teacher.named_parameters()}
    result = trainer.run()
    records = [h for h in result.history if "distill" in h]
    assert len(records) == 3 and all(r["distill"] >= 0 for r in records)
    assert records[-1]["distill"] > 0  # the student has moved away from the base
    assert all(torch.equal(p, before[n]) for n, p in trainer.teacher.named_parameters())
    assert not any(p.requires_grad for p in trainer.teacher.parameters())


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "train", *args], capture_output=True, text=True, timeout=600
    )


def test_no_dev_set_leaves_the_final_model(
    data_dir: Path,  # noqa: F811
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    """A --data folder without dev/ once ended with 'model in OUT/best' and no OUT/best."""
    bare = tmp_path / "bare"
    shutil.copytree(data_dir, bare, ignore=shutil.ignore_patterns("dev"))
    out = tmp_path / "run"
    base = ["--data", str(bare), "--model-dir", str(tiny_model_dir), "--steps", "2", "--batch-size", "8"]
    result = _cli(*base, "--out", str(out), "--max-length", "16", "--device", "cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no dev set" in result.stderr and "no dev set, final model" in result.stdout
    manifest = json.loads((out / "best" / "manifest.json").read_text())
    assert manifest["provenance"]["step"] == "2"
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=False)["model"]
    from safetensors.torch import load_file

    saved = load_file(out / "best" / "model.safetensors")
    key = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(saved[key], state[f"encoder.{key}"])


def test_several_dev_sets_are_reported_and_both_select(
    data_dir: Path,  # noqa: F811
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    short = tmp_path / "dev-short"
    short.mkdir()
    de = (data_dir / "dev" / "de-en.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    (short / "de-en.tsv").write_text("".join(de[10:30]), encoding="utf-8")
    out = tmp_path / "run"
    args = ["--data", str(data_dir), "--dev", str(data_dir / "dev"), "--dev", str(short)]
    result = _cli(
        *args,
        *("--model-dir", str(tiny_model_dir), "--out", str(out), "--steps", "2", "--batch-size", "8"),
        *("--eval-every", "2", "--eval-pairs", "10", "--max-length", "16", "--device", "cpu"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{data_dir / 'dev'} (3 languages" in result.stderr and f"{short} (1 languages" in result.stderr
    evals = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if '"eval"' in x]
    assert set(evals[-1]["sets"]) == {"dev", "dev-short"}
    mean = (evals[-1]["sets"]["dev"]["avg"] + evals[-1]["sets"]["dev-short"]["avg"]) / 2
    assert evals[-1]["avg"] == pytest.approx(mean)
    missing = _cli(*args[:2], "--dev", str(tmp_path / "nope"), "--out", str(tmp_path / "x"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_cpu_preset_fills_what_the_command_line_leaves_out(
    data_dir: Path,  # noqa: F811
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    result = _cli(
        *("--data", str(data_dir), "--model-dir", str(tiny_model_dir), "--out", str(out)),
        *("--preset", "cpu", "--steps", "1", "--batch-size", "8", "--no-dev", "--max-length", "16"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    cfg: dict[str, Any] = json.loads((out / "config.json").read_text())
    assert (cfg["steps"], cfg["batch_size"]) == (1, 8)  # given on the command line
    assert cfg["lang_alpha"] == 0.5 and cfg["warmup"] == 45 and cfg["source_weights"]["weblate"] == 0.2
    assert cfg["time_budget"] == 115.0  # minutes: the preset finishes in time on any 2-core CPU
    bad = _cli("--data", str(data_dir), "--out", str(tmp_path / "y"), "--preset", "gpu")
    assert bad.returncode == 2 and "preset" in bad.stderr


def test_dropout_can_be_switched_off_for_training(
    data_dir: Path,  # noqa: F811
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    trainer = Trainer(config(data_dir, tiny_model_dir, tmp_path / "nodrop", dropout=0.0))
    probabilities = {m.p for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout)}
    assert probabilities == {0.0}
    batch = next(trainer.stream.batches(8))
    with torch.no_grad():  # no dropout: two forward passes in training mode agree exactly
        ids, mask = trainer.tokenizer.encode([p.src for p in batch], trainer.device)
        first, _ = trainer.model.embed(ids, mask)
        second, _ = trainer.model.embed(ids, mask)
    assert torch.equal(first, second)
    default = Trainer(config(data_dir, tiny_model_dir, tmp_path / "drop"))
    assert {m.p for m in default.model.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}
