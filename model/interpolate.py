"""Weight interpolation with the base model: θ = α·θ_trained + (1 − α)·θ_base.

Fine-tuning on translation pairs moves the encoder away from what it was pre-trained for
(question → passage search); averaging the weights with the starting point keeps part of the
gain and gives back part of what was lost (WiSE-FT, Wortsman et al. 2022). α is chosen on dev,
one for the whole model or one per group of layers (``MERGE_GROUPS``): the lower layers hold
more of what every language shares, the upper ones more of the task, so they may keep different
shares of the run.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from core.errors import InputError
from model.artifact import WEIGHTS, Manifest, read_manifest

_COPIED = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# The groups a per-module merge weighs separately (12-layer encoders): the embeddings (position,
# type, LayerNorm; the word table is frozen in training), layers 1-4, 5-8 and 9-12 (1-based).
MERGE_GROUPS = ("embeddings", "1-4", "5-8", "9-12")
_LAYER = re.compile(r"(?:^|\.)layer\.(\d+)\.")


def merge_group(key: str, layers: int = 12) -> str:
    """The group of tensor ``key``: its third of the ``layers`` (named for 12), or ``embeddings``."""
    match = _LAYER.search(key)
    if match is None:
        return "embeddings"
    per = max(1, layers // 3)
    index = min(int(match.group(1)) // per, 2)
    return MERGE_GROUPS[1 + index]


def parse_alphas(text: str) -> dict[str, float]:
    """``embeddings=0.5,1-4=0.4,5-8=0.3,9-12=0.2`` (every group named once) as a mapping."""
    alphas: dict[str, float] = {}
    for item in text.split(","):
        name, sep, number = item.strip().partition("=")
        try:
            value = float(number)
        except ValueError:
            value = -1.0
        if not sep or name not in MERGE_GROUPS or not 0.0 <= value <= 1.0 or name in alphas:
            raise InputError(
                f"--alphas {text!r}: expected {','.join(g + '=A' for g in MERGE_GROUPS)} "
                "with each A from 0 to 1"
            )
        alphas[name] = value
    if set(alphas) != set(MERGE_GROUPS):
        raise InputError(f"--alphas needs every group: {', '.join(MERGE_GROUPS)}")
    return alphas


def describe_alphas(alpha: float | Mapping[str, float]) -> str:
    if isinstance(alpha, int | float):
        return f"{alpha:g}"
    return ",".join(f"{group}={alpha[group]:g}" for group in MERGE_GROUPS)


def _shares(alpha: float | Mapping[str, float]) -> Mapping[str, float]:
    """α per group: one number stands for every group."""
    return dict.fromkeys(MERGE_GROUPS, float(alpha)) if isinstance(alpha, int | float) else alpha


def interpolate_states(
    base: dict[str, np.ndarray], trained: dict[str, np.ndarray], alpha: float | Mapping[str, float]
) -> dict[str, np.ndarray]:
    """θ = α·θ_trained + (1 − α)·θ_base per tensor, α one number or one per ``MERGE_GROUPS``."""
    if set(base) != set(trained):
        raise InputError(
            "the two models have different tensors; interpolate a run with the model it started from"
        )
    found = [int(m.group(1)) for m in map(_LAYER.search, base) if m is not None]
    layers = max(found) + 1 if found else 12
    shares = _shares(alpha)
    out: dict[str, np.ndarray] = {}
    for key in sorted(base):
        a, b = trained[key], base[key]
        if a.shape != b.shape:
            raise InputError(f"{key}: shapes {a.shape} and {b.shape} differ")
        share = shares[merge_group(key, layers)]
        if np.issubdtype(a.dtype, np.floating):
            out[key] = (share * a.astype(np.float64) + (1 - share) * b.astype(np.float64)).astype(a.dtype)
        else:
            out[key] = a  # integer buffers (position ids) are the same in both
    return out


def interpolate(
    base_dir: Path,
    trained_dir: Path,
    alpha: float | Mapping[str, float],
    out_dir: Path,
    force: bool = False,
) -> Manifest:
    """A built model directory whose weights mix ``trained_dir`` (α) with ``base_dir`` (1 − α)."""
    from safetensors.numpy import load_file, save_file

    from model.build import build_from_checkpoint

    if not all(0.0 <= a <= 1.0 for a in _shares(alpha).values()):
        raise InputError(f"--alpha must be between 0 and 1, not {describe_alphas(alpha)}")
    base_m, trained_m = read_manifest(base_dir), read_manifest(trained_dir)
    if (base_m.architecture, base_m.dim) != (trained_m.architecture, trained_m.dim):
        raise InputError(f"{base_m.id} and {trained_m.id} are different architectures")
    state = interpolate_states(
        load_file(str(Path(base_dir) / WEIGHTS)), load_file(str(Path(trained_dir) / WEIGHTS)), alpha
    )
    Path(out_dir).parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=Path(out_dir).parent, prefix=".interpolate-"))
    try:
        for name in _COPIED:
            if (Path(trained_dir) / name).is_file():
                shutil.copy2(Path(trained_dir) / name, staging / name)
        save_file(state, str(staging / WEIGHTS), {"format": "pt"})
        provenance = dict(trained_m.provenance)
        provenance["interpolation"] = (
            f"{describe_alphas(alpha)} x {trained_m.id} + the rest x {base_m.id}"
            if not isinstance(alpha, int | float)
            else f"{alpha:g} x {trained_m.id} + {1 - alpha:g} x {base_m.id}"
        )
        return build_from_checkpoint(
            staging,
            Path(out_dir),
            trained_m.pooling,
            name=trained_m.name,
            query_prefix=trained_m.query_prefix,
            passage_prefix=trained_m.passage_prefix,
            max_length=trained_m.max_length,
            force=force,
            provenance=provenance,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
