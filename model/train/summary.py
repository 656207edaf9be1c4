"""What a run trains on and selects by, in the lines printed when it starts."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from model.train.budget import PROBE_STEPS
from model.train.config import TrainConfig


def describe_run(
    cfg: TrainConfig,
    corpora: Mapping[str, list[Any]],
    shares: Mapping[str, float],
    dev: Mapping[str, Any],
    dev_dirs: list[Path],
    bf16: bool,
    device: torch.device,
) -> list[str]:
    """The data and its language shares, the objective, the dev sets, the precision and the budget."""
    files = sum(len(c) for c in corpora.values())
    ordered = sorted(shares.items(), key=lambda kv: -kv[1])
    lines = [
        f"data: {files} files in {', '.join(str(d) for d in cfg.data)}; "
        f"{len(corpora)} languages sampled p ∝ n^{cfg.lang_alpha:g} "
        f"({cfg.batch_languages} batches): "
        + ", ".join(f"{lang} {share * 100:.1f}%" for lang, share in ordered),
    ]
    if cfg.source_weights:
        weights = ", ".join(f"{k}={v:g}" for k, v in sorted(cfg.source_weights.items()))
        lines.append(f"source weights: {weights}")
    rtl = f" + RTL (weight {cfg.rtl_weight:g})" if cfg.rtl and cfg.rtl_weight > 0 else ""
    if cfg.objective == "locked":
        lines.append(
            f"objective: locked English tower (λ {cfg.ranking_weight:g}, τ {cfg.temperature:g}){rtl}; "
            f"{cfg.passage_share:.0%} of batches under passage:, {cfg.paragraph_share:.0%} of those as "
            f"pseudo-paragraphs of {cfg.paragraph_pairs} pairs"
        )
    else:
        distill = f" + distillation (weight {cfg.distill_weight:g})" if cfg.distill_weight > 0 else ""
        lines.append(
            f"objective: translation ranking ({cfg.tr_direction}, τ {cfg.temperature:g}){rtl}{distill}"
        )
    if dev:
        sets = "; ".join(
            f"{d} ({len(dev[d.name])} languages, up to {cfg.eval_pairs} pairs each)"
            for d in dev_dirs
            if d.name in dev
        )
        lines.append(f"dev (model selection: mean P@1 over the sets): {sets}")
    else:
        lines.append("no dev set: the final model is written to OUT/best")
    lines.append(f"precision: {'bf16 autocast' if bf16 else 'fp32'} on {device}")
    if cfg.time_budget is not None:
        lines.append(
            f"time budget: {cfg.time_budget:g} min (the last step is fitted after "
            f"{PROBE_STEPS} steps and after each evaluation; at most {cfg.steps} steps)"
        )
    return lines
