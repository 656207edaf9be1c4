"""The options of one training run, validated, and the small records a run reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from model.cpu import cpu_features
from model.train.mixture import BatchLanguages

Direction = Literal["xx2en", "en2xx", "both"]
Precision = Literal["auto", "fp32", "bf16"]
Kind = Literal["query", "passage"]
Objective = Literal["dap", "locked"]
DEV_FOLDERS = ("dev", "dev-short")  # looked for in every --data folder when no --dev is given


class TrainConfig(BaseModel):
    """Every option of a run; saved next to its checkpoints so a resume uses the same ones."""

    model_config = ConfigDict(extra="forbid")

    data: list[Path] = Field(description="Folders of xx-en.tsv[.gz] files (merged per language).")
    out: Path = Field(description="Run directory: checkpoint/, best/, log.jsonl, config.json.")
    model_dir: Path = Field(description="Built model to start from (manifest.json + Hugging Face files).")
    dev: list[Path] | None = Field(
        None, description="Dev folders (xx-en.tsv); default every dev/ and dev-short/ in the data folders."
    )
    select: bool = Field(True, description="False: no dev evaluation, the final model is the run's model.")
    langs: list[str] | None = Field(None, description="Languages to train on; default every file in data.")
    lang_alpha: float = Field(1.0, ge=0, le=1, description="Language sampling p ∝ lines^α.")
    source_weights: dict[str, float] = Field(
        default_factory=dict, description="Probability of using a line of a source (sources/ files)."
    )
    batch_languages: BatchLanguages = Field("mixed", description="mixed, or one language per batch.")
    steps: int = Field(1000, ge=1, description="Optimiser steps (with a time budget: the most).")
    time_budget: float | None = Field(
        None, gt=0, description="Wall-time budget in minutes: the last step is fitted to it as the run goes."
    )
    batch_size: int = Field(64, ge=2, description="Global batch (pairs); split across processes.")
    lr: float = Field(5e-5, gt=0)
    warmup: int = Field(100, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    temperature: float = Field(0.05, gt=0)
    objective: Objective = Field(
        "dap",
        description="dap: translation ranking both ways (+ RTL, + distillation); locked: every language "
        "moved onto the frozen base's English embeddings (model/train/locked.py), + RTL.",
    )
    # 0.02, not LiT's 0.2: e5's cosines sit close together, so at τ 0.05 the ranking terms' pull
    # is ~20x the cosine terms'; at 0.2 they moved X away from t(en) (bench/RESULTS.md).
    ranking_weight: float = Field(0.02, ge=0, description="locked: λ of the ranking terms against t(en).")
    passage_share: float = Field(0.5, ge=0, le=1, description="locked: share of batches under passage:.")
    paragraph_share: float = Field(
        0.5, ge=0, le=1, description="locked: share of the passage: batches joined into pseudo-paragraphs."
    )
    paragraph_pairs: int = Field(4, ge=2, description="locked: pairs of one language per pseudo-paragraph.")
    tr_direction: Direction = "both"
    margin: float = Field(0.0, ge=0, description="Additive margin on the true pair's cosine (LaBSE: 0.3).")
    distill_weight: float = Field(0.0, ge=0, description="Weight of 1 - cos(embedding, frozen base's).")
    en_kind: Kind = Field("query", description="Prefix of the English side; the other side is 'query'.")
    precision: Precision = Field("auto", description="auto: bf16 autocast where the CPU/GPU has native bf16.")
    rtl: bool = True
    rtl_weight: float = Field(0.1, ge=0)
    rtl_layers: int = Field(2, ge=1)
    max_length: int = Field(32, ge=4)
    freeze_embeddings: bool = True
    dropout: float | None = Field(
        None, ge=0, lt=1, description="Dropout in the encoder and RTL head; default the model's own (0.1)."
    )
    train_layers: int | None = Field(None, ge=1, description="Train only the top N transformer layers.")
    frozen_top: int | None = Field(
        None, ge=1, description="Keep the top N transformer layers at the base's weights (they hold search)."
    )
    eval_every: int = Field(100, ge=1)
    eval_pairs: int = Field(200, ge=2, description="Dev pairs per language for periodic evaluation.")
    save_every: int = Field(100, ge=1)
    log_every: int = Field(1, ge=1, description="Steps between train records in log.jsonl.")
    seed: int = 0
    device: str = Field("auto", description="auto, cpu or cuda.")
    name: str | None = Field(None, description="Name of the trained model; default <base>-dap.")

    @field_validator("data", "dev", mode="before")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        return [value] if isinstance(value, str | Path) else value


@dataclass
class StepStats:
    loss: float
    tr: float
    rtl: float
    distill: float = 0.0
    english: float = 0.0  # locked: 1 - cos(s(en), t(en))
    transfer: float = 0.0  # locked: 1 - cos(s(xx), t(en))


def distillation_loss(student: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """Mean 1 - cos between each sentence's embedding and the frozen base model's: keeps what the
    base does well (query → passage search) while translation ranking pulls translations together."""
    return (1 - nn.functional.cosine_similarity(student, base, dim=-1)).mean()


def cpu_has_native_bf16() -> bool:
    """AMX-BF16 or AVX512-BF16, read at run time: bf16 on other CPUs is emulated and slower than fp32."""
    return cpu_features().native_bf16


@dataclass
class RunResult:
    steps: int
    best_score: float | None
    best_step: int | None
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_time_s: float = 0.0


class Interrupted(Exception):
    """Raised after Ctrl-C once the checkpoint is saved."""
