"""The network being trained: the encoder with its RTL head, the training tokenizer, freezing,
dropout, and its P@1 on the dev pairs (for model selection).

The training tokenizer is not ``model.encoder.TextTokenizer``: training needs the mask id, the
special tokens and the paper's pair filter on token counts, at the training length, besides
prefixing; serving needs none of them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.errors import InputError
from model.artifact import Manifest, Pooling
from model.torch_model import pool
from model.train.config import Kind, TrainConfig
from model.train.corpus import Pair
from model.train.dev import retrieval_p1
from model.train.pair_filter import PairFilter
from model.train.rtl import RTLHead


class Tokenizer:
    """The model's tokenizer at the training length, with the manifest's prefix on every sentence."""

    def __init__(self, model_dir: Path, manifest: Manifest, max_length: int) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self._tok = HFTokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tok.no_padding()
        self._tok.enable_truncation(max_length)
        # e5: "query: " on both sides for symmetric tasks; "passage: " may be asked for on the English side.
        self.prefixes: dict[str, str] = {
            "query": manifest.prefix("query"),
            "passage": manifest.prefix("passage"),
        }
        pad = self._tok.token_to_id("<pad>")
        self.pad_id = int(pad) if pad is not None else 0
        mask = self._tok.token_to_id("<mask>")
        if mask is None:
            mask = self._tok.token_to_id("[MASK]")
        if mask is None:
            raise InputError("the tokenizer has no <mask> or [MASK] token, which the RTL head needs")
        self.mask_id = int(mask)
        self.specials = [
            int(i)
            for i in (self._tok.token_to_id(t) for t in ("</s>", "[SEP]", "<unk>", "[UNK]"))
            if i is not None
        ]

    def encode(
        self, texts: Sequence[str], device: torch.device, kind: Kind = "query"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        prefix = self.prefixes[kind]
        rows = [e.ids for e in self._tok.encode_batch([prefix + t for t in texts])]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        return ids.to(device), mask.to(device)

    def encode_batch(self, texts: list[str], kind: Kind = "query") -> list[list[int]]:
        prefix = self.prefixes[kind]
        return [e.ids for e in self._tok.encode_batch([prefix + t for t in texts])]

    def pair_filter(self) -> PairFilter:
        return PairFilter.from_tokenizer(self._tok)  # counts on an untruncated copy


class DapModel(nn.Module):
    """Encoder + pooling, and during training the RTL head (dropped when the model is saved)."""

    def __init__(self, encoder: nn.Module, pooling: Pooling, rtl: RTLHead | None) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling: Pooling = pooling
        self.rtl = rtl

    def embed(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden: torch.Tensor = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return pool(hidden, mask, self.pooling), hidden


def set_dropout(module: nn.Module, p: float) -> None:
    """Dropout's random masks take a sixth of a CPU step (profiled); 0 removes them. The saved
    config keeps the model's own value (dropout does nothing at inference)."""
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = p


def freeze(encoder: nn.Module, cfg: TrainConfig) -> None:
    base: Any = encoder
    if cfg.freeze_embeddings:
        base.embeddings.word_embeddings.weight.requires_grad_(False)
    if cfg.train_layers is not None:
        layers = base.encoder.layer
        keep = set(range(len(layers) - cfg.train_layers, len(layers)))
        for i, layer in enumerate(layers):
            if i not in keep:
                layer.requires_grad_(False)
        base.embeddings.requires_grad_(False)
    if cfg.frozen_top is not None:  # the lower layers learn the alignment under the base's own head
        for layer in base.encoder.layer[len(base.encoder.layer) - cfg.frozen_top :]:
            layer.requires_grad_(False)


@torch.no_grad()
def dev_accuracy(
    model: DapModel, tokenizer: Tokenizer, dev: dict[str, list[Pair]], device: torch.device, batch: int = 128
) -> dict[str, Any]:
    """P@1 xx→en and en→xx per language (nearest neighbour by cosine among that language's pairs)."""
    was_training = model.training
    model.eval()
    per_lang: dict[str, dict[str, float]] = {}
    try:
        for lang, pairs in dev.items():
            src = _embed_all(model, tokenizer, [p.src for p in pairs], device, batch)
            en = _embed_all(model, tokenizer, [p.en for p in pairs], device, batch)
            xx2en, en2xx = retrieval_p1(src.cpu().numpy(), en.cpu().numpy())
            per_lang[lang] = {"xx2en": xx2en, "en2xx": en2xx}
    finally:
        model.train(was_training)
    xx2en = float(np.mean([v["xx2en"] for v in per_lang.values()]))
    en2xx = float(np.mean([v["en2xx"] for v in per_lang.values()]))
    return {"xx2en": xx2en, "en2xx": en2xx, "avg": (xx2en + en2xx) / 2, "per_lang": per_lang}


def _embed_all(
    model: DapModel, tokenizer: Tokenizer, texts: list[str], device: torch.device, batch: int
) -> torch.Tensor:
    out = []
    for start in range(0, len(texts), batch):
        ids, mask = tokenizer.encode(texts[start : start + batch], device)
        emb, _ = model.embed(ids, mask)
        out.append(nn.functional.normalize(emb.float(), dim=-1))
    return torch.cat(out)
