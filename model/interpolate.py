"""Weight interpolation with the base model: θ = α·θ_trained + (1 − α)·θ_base.

Fine-tuning on translation pairs moves the encoder away from what it was pre-trained for
(question → passage search); averaging the weights with the starting point keeps part of the
gain and gives back part of what was lost (WiSE-FT, Wortsman et al. 2022). α is chosen on dev.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from core.errors import InputError
from model.artifact import WEIGHTS, Manifest, read_manifest

_COPIED = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def interpolate_states(
    base: dict[str, np.ndarray], trained: dict[str, np.ndarray], alpha: float
) -> dict[str, np.ndarray]:
    if set(base) != set(trained):
        raise InputError(
            "the two models have different tensors; interpolate a run with the model it started from"
        )
    out: dict[str, np.ndarray] = {}
    for key in sorted(base):
        a, b = trained[key], base[key]
        if a.shape != b.shape:
            raise InputError(f"{key}: shapes {a.shape} and {b.shape} differ")
        if np.issubdtype(a.dtype, np.floating):
            out[key] = (alpha * a.astype(np.float64) + (1 - alpha) * b.astype(np.float64)).astype(a.dtype)
        else:
            out[key] = a  # integer buffers (position ids) are the same in both
    return out


def interpolate(
    base_dir: Path, trained_dir: Path, alpha: float, out_dir: Path, force: bool = False
) -> Manifest:
    """A built model directory whose weights mix ``trained_dir`` (α) with ``base_dir`` (1 − α)."""
    from safetensors.numpy import load_file, save_file

    from model.build import build_from_checkpoint

    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"--alpha must be between 0 and 1, not {alpha}")
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
        provenance["interpolation"] = f"{alpha:g} x {trained_m.id} + {1 - alpha:g} x {base_m.id}"
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
