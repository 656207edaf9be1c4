"""The torch side of the encoder: load a built directory, pool, normalise.

Only building, exporting and training import this module; serving on ONNX never does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.artifact import Pooling


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Mean over real tokens (specials included, as e5 does) or the first token (CLS / <s>)."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class SentenceEmbedder(nn.Module):
    """Transformer + pooling + L2 normalisation; the exact graph that is exported to ONNX."""

    def __init__(self, encoder: nn.Module, pooling: Pooling) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling: Pooling = pooling

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        hidden: torch.Tensor = out.last_hidden_state
        return hidden

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = pool(self.hidden_states(input_ids, attention_mask), attention_mask, self.pooling)
        return nn.functional.normalize(pooled, p=2.0, dim=-1)


def load_transformer(model_dir: Path, attn_implementation: str = "eager") -> nn.Module:
    """Load the bare encoder (no pooler) from a built directory, offline."""
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    kwargs: dict[str, Any] = {"local_files_only": True, "attn_implementation": attn_implementation}
    if config.model_type in {"bert", "xlm-roberta", "roberta"}:
        kwargs["add_pooling_layer"] = False
    model: nn.Module = AutoModel.from_pretrained(model_dir, config=config, **kwargs)
    return model.eval()


def load_embedder(model_dir: Path, pooling: Pooling) -> SentenceEmbedder:
    return SentenceEmbedder(load_transformer(model_dir), pooling).eval()
