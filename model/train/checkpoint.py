"""What a checkpoint needs besides tensors: every RNG's state (so a resumed run draws the same
numbers), replacing a directory whole (a crash never leaves half a checkpoint), and the run's
best model written as a built model directory."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.artifact import Manifest
from model.train.config import TrainConfig


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def replace_dir(staging: Path, final: Path) -> None:
    """Swap a fully written directory into place; a crash leaves either the old or the new one."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def write_best(
    encoder: Any,
    cfg: TrainConfig,
    manifest: Manifest,
    step: int,
    best_score: float | None,
    elapsed_s: float,
) -> None:
    """The encoder alone (no RTL head) as a complete built model directory: ``cfg.out / best``."""
    from model.build import build_from_checkpoint

    out = cfg.out
    raw = out / "best.hf.tmp"
    shutil.rmtree(raw, ignore_errors=True)
    encoder.save_pretrained(raw, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (cfg.model_dir / name).is_file():
            shutil.copy2(cfg.model_dir / name, raw / name)
    losses = "TR+RTL" if cfg.rtl else "TR"
    if cfg.objective == "locked":
        losses = "locked English tower" + (" + RTL" if cfg.rtl else "")
    build_from_checkpoint(
        raw,
        out / "best",
        manifest.pooling,
        name=cfg.name or f"{manifest.name}-dap",
        query_prefix=manifest.query_prefix,
        passage_prefix=manifest.passage_prefix,
        max_length=manifest.max_length,
        force=True,
        provenance={
            "source": "dapsearch train",
            "base_model": manifest.id,
            "run": str(out.resolve()),
            "step": str(step),
            "dev_p1": f"{best_score:.2f}" if best_score is not None else "",
            "losses": losses,
            "wall_time_s": f"{elapsed_s:.0f}",
        },
    )
    shutil.rmtree(raw, ignore_errors=True)
