"""Token-level DAP objective: Representation Translation Learning (RTL, DAP §3.2).

A small throw-away head "translates" the non-English sentence's last-layer token states into the
English sentence's token ids, all target positions at once, so the encoder's token representations are
pushed towards cross-lingual alignment without TLM's second forward pass. It follows the DAP code
(``train.py:428-452`` and ``core/models.py:128-138, 201-255``, ``rtl_pattern='target'``,
``rtl_probability=1``):

* the head is a separate copy of the encoder's embedding module and of its last K (= 2) layers, with a
  vocabulary prediction head restricted to the English token ids;
* the input is ``[h_src ; E([MASK]) repeated L_tgt times]``, passed through the head's embedding module
  once more (positions 0..Ls+Lt-1, token type 0, LayerNorm, dropout), then the copied layers;
* no position can attend to the source CLS or the target CLS placeholder, and the target CLS is not
  scored; cross-entropy is averaged over the remaining target tokens.

e5 has no MLM head, so the transform (dense, GELU, LayerNorm) starts fresh and the decoder starts from the
encoder's word-embedding rows of the English ids (where BERT's MLM decoder is tied), bias 0.

One deliberate difference from a literal deep copy: the head's word-embedding table keeps only the two
rows it ever reads (``<pad>`` and ``[MASK]``). The second embedding pass takes ``inputs_embeds``, so no
other row is used; the outputs and gradients are identical and ~96M parameters (plus their optimiser
state) of a 250k-token table are not duplicated.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from core.errors import InputError
from core.files import atomic_write_text
from model.train.corpus import Pair, read_pairs

if TYPE_CHECKING:
    from transformers import BertModel

IGNORE_INDEX = -100
_PAD_ROW, _MASK_ROW = 0, 1  # rows of the head's reduced word-embedding table


def make_to_compact(en_vocab_ids: torch.Tensor, vocab_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function mapping full-vocabulary ids to indices into ``en_vocab_ids`` (-100 for any other id)."""
    ids = _check_vocab_ids(en_vocab_ids, vocab_size)
    table = torch.full((vocab_size,), IGNORE_INDEX, dtype=torch.long)
    table[ids] = torch.arange(len(ids))
    tables = {table.device: table}  # one copy per device, made on first use

    def to_compact(full: torch.Tensor) -> torch.Tensor:
        lookup = tables.setdefault(full.device, table.to(full.device))
        inside = (full >= 0) & (full < vocab_size)
        return torch.where(inside, lookup[full.clamp(0, vocab_size - 1)], IGNORE_INDEX)

    return to_compact


def rtl_labels(
    tgt_ids: torch.Tensor, tgt_mask: torch.Tensor, to_compact: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """RTL targets: compact English ids; -100 at padding, at the target CLS (position 0), for unknown ids."""
    labels = to_compact(tgt_ids).clone()
    labels[tgt_mask == 0] = IGNORE_INDEX
    labels[:, 0] = IGNORE_INDEX
    return labels


def attention_keep(src_mask: torch.Tensor, tgt_mask: torch.Tensor) -> torch.Tensor:
    """(B, Ls+Lt) bool: which positions may be attended to (real tokens, minus both CLS positions)."""
    keep = torch.cat([src_mask, tgt_mask], dim=1).bool()
    keep[:, 0] = False  # source CLS
    keep[:, src_mask.shape[1]] = False  # target CLS placeholder
    return keep


def _check_vocab_ids(en_vocab_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    ids = torch.as_tensor(en_vocab_ids, dtype=torch.long).flatten().cpu()
    if ids.numel() == 0:
        raise ValueError("en_vocab_ids is empty")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
        raise ValueError(f"en_vocab_ids must lie in [0, {vocab_size})")
    ordered = ids.sort().values
    if bool((ordered[1:] == ordered[:-1]).any()):
        raise ValueError("en_vocab_ids has duplicates")
    return ids


class RTLHead(nn.Module):
    """Representation Translation Learning head (DAP §3.2): reads the non-English last-layer token states and
    predicts the English token ids in parallel; thrown away after training."""

    def __init__(
        self, encoder: BertModel, en_vocab_ids: torch.Tensor, layers: int = 2, mask_token_id: int = 250001
    ) -> None:
        super().__init__()
        config = encoder.config
        source_layers = list(encoder.encoder.layer)
        if not 1 <= layers <= len(source_layers):
            raise ValueError(f"layers must be in [1, {len(source_layers)}], got {layers}")
        word: nn.Embedding = encoder.embeddings.word_embeddings
        ids = _check_vocab_ids(en_vocab_ids, word.num_embeddings)
        pad_id = config.pad_token_id if config.pad_token_id is not None else 0
        if not 0 <= mask_token_id < word.num_embeddings:
            raise ValueError(f"mask_token_id {mask_token_id} outside the vocabulary")

        # Copy the embedding module without its 250k-row table, then give it just the <pad> and [MASK] rows.
        device, dtype = word.weight.device, word.weight.dtype
        small = nn.Embedding(2, word.embedding_dim, padding_idx=_PAD_ROW, device=device, dtype=dtype)
        with torch.no_grad():
            small.weight.copy_(word.weight[[pad_id, mask_token_id]])
        self.embeddings: nn.Module = copy.deepcopy(encoder.embeddings, memo={id(word): small})
        self.layers = copy.deepcopy(nn.ModuleList(source_layers[-layers:]))
        for module in self.layers.modules():
            # The additive float mask below suits eager and sdpa attention, not flash/flex kernels.
            cfg = getattr(module, "config", None)
            if cfg is not None and getattr(cfg, "_attn_implementation", None) not in ("eager", "sdpa"):
                cfg._attn_implementation = "sdpa"

        hidden = config.hidden_size
        dense = nn.Linear(hidden, hidden, device=device, dtype=dtype)
        nn.init.normal_(dense.weight, std=config.initializer_range)  # BERT's initialisation
        nn.init.zeros_(dense.bias)
        self.transform = nn.Sequential(
            dense, nn.GELU(), nn.LayerNorm(hidden, eps=config.layer_norm_eps, device=device, dtype=dtype)
        )
        self.decoder = nn.Linear(hidden, len(ids), device=device, dtype=dtype)
        ids = ids.to(device)
        with torch.no_grad():
            self.decoder.weight.copy_(word.weight[ids])
            self.decoder.bias.zero_()
        self.en_vocab_ids: torch.Tensor
        self.register_buffer("en_vocab_ids", ids.clone())
        self.mask_token_id = mask_token_id
        self.max_positions = int(config.max_position_embeddings)

    def predict(
        self, src_states: torch.Tensor, src_mask: torch.Tensor, tgt_mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, Lt, |en vocab|) logits for every target position (the target ids themselves are never seen)."""
        logits: torch.Tensor = self.decoder(
            self.transform(self._target_states(src_states, src_mask, tgt_mask))
        )
        return logits

    def _target_states(
        self, src_states: torch.Tensor, src_mask: torch.Tensor, tgt_mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, Lt, H): the head's last-layer states at the target ([MASK] query) positions."""
        batch, src_len, _ = src_states.shape
        tgt_len = tgt_mask.shape[1]
        if src_mask.shape != (batch, src_len) or tgt_mask.shape[0] != batch:
            raise ValueError("src_states, src_mask and tgt_mask disagree on batch/length")
        if src_len + tgt_len > self.max_positions:
            raise ValueError(
                f"source + target length {src_len + tgt_len} exceeds {self.max_positions} positions"
            )
        device = src_states.device
        # One [MASK] query per target position (<pad> where the target is padding), as DAP builds them.
        query_rows = torch.where(tgt_mask.bool(), _MASK_ROW, _PAD_ROW)
        queries = self.embeddings(input_ids=query_rows, token_type_ids=torch.zeros_like(query_rows))
        x = torch.cat([src_states, queries.to(src_states.dtype)], dim=1)
        types = torch.zeros((batch, src_len + tgt_len), dtype=torch.long, device=device)
        x = self.embeddings(inputs_embeds=x, token_type_ids=types)

        keep = attention_keep(src_mask, tgt_mask)
        # transformers 5 BertLayer takes the expanded additive mask: (B, 1, Lq|1, Lk), 0 or dtype-min.
        additive = torch.zeros(keep.shape, dtype=x.dtype, device=device)
        additive = additive.masked_fill(~keep, torch.finfo(x.dtype).min)[:, None, None, :]
        for layer in self.layers:
            out = layer(x, additive)
            x = out[0] if isinstance(out, tuple) else out
        states: torch.Tensor = x[:, src_len:]
        return states

    def forward(
        self,
        src_states: torch.Tensor,
        src_mask: torch.Tensor,
        tgt_ids: torch.Tensor,
        tgt_mask: torch.Tensor,
        tgt_labels: torch.Tensor,
    ) -> torch.Tensor:
        """Scalar RTL loss: cross-entropy over the English vocabulary, mean over the scored target tokens.

        ``tgt_ids`` only fixes the target shape: the head must not see them (every target position is a
        [MASK] query). Padding and the target CLS are never scored, whatever ``tgt_labels`` holds there.
        A batch with nothing to score gives 0 (not NaN).
        """
        if tgt_ids.shape != tgt_mask.shape or tgt_labels.shape != tgt_mask.shape:
            raise ValueError("tgt_ids, tgt_mask and tgt_labels must have the same (B, Lt) shape")
        labels = tgt_labels.masked_fill(tgt_mask == 0, IGNORE_INDEX)
        labels[:, 0] = IGNORE_INDEX
        scored = labels != IGNORE_INDEX
        # Only scored positions reach the vocabulary projection (the costliest part of the head):
        # padding is a third of a typical batch, and it would be ignored by the loss anyway.
        states = self._target_states(src_states, src_mask, tgt_mask)[scored]
        logits = self.decoder(self.transform(states))
        total = F.cross_entropy(logits.float(), labels[scored], reduction="sum")
        count = scored.sum().clamp(min=1)
        return total / count


@dataclass(eq=False)
class EnglishVocab:
    """English token ids seen on the English side of the training data: the RTL head predicts only these."""

    ids: np.ndarray  # sorted unique full-vocabulary ids, int64
    _torch_ids: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        ids = np.unique(np.asarray(self.ids, dtype=np.int64).reshape(-1))
        if ids.size and ids[0] < 0:
            raise InputError(f"token ids must be >= 0, got {int(ids[0])}")
        self.ids = ids

    def __len__(self) -> int:
        return int(self.ids.size)

    @overload
    def to_compact(self, full_ids: np.ndarray) -> np.ndarray: ...

    @overload
    def to_compact(self, full_ids: torch.Tensor) -> torch.Tensor: ...

    def to_compact(self, full_ids: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Full id -> its index in ``ids``; ids outside the vocabulary -> -100 (ignored by the loss)."""
        if isinstance(full_ids, np.ndarray):
            full = full_ids.astype(np.int64, copy=False)
            if self.ids.size == 0:
                return np.full(full.shape, IGNORE_INDEX, dtype=np.int64)
            idx = np.minimum(np.searchsorted(self.ids, full), self.ids.size - 1)
            return np.where(self.ids[idx] == full, idx, IGNORE_INDEX).astype(np.int64)
        import torch

        full_t = full_ids.to(torch.long)
        if self.ids.size == 0:
            return torch.full_like(full_t, IGNORE_INDEX)
        key = str(full_t.device)
        ids: torch.Tensor | None = self._torch_ids.get(key)
        if ids is None:
            ids = self._torch_ids[key] = torch.from_numpy(self.ids).to(full_t.device)
        pos = torch.searchsorted(ids, full_t.contiguous()).clamp_(max=ids.numel() - 1)
        return torch.where(ids[pos] == full_t, pos, torch.full_like(pos, IGNORE_INDEX))

    def to_full(self, compact: np.ndarray) -> np.ndarray:
        """Compact index -> full id; -100 stays -100."""
        compact = np.asarray(compact, dtype=np.int64)
        ignored = compact == IGNORE_INDEX
        bad = ~ignored & ((compact < 0) | (compact >= self.ids.size))
        if bad.any():
            raise InputError(f"compact ids out of range [0, {self.ids.size}): {compact[bad][:5].tolist()}")
        out = np.full(compact.shape, IGNORE_INDEX, dtype=np.int64)
        out[~ignored] = self.ids[compact[~ignored]]
        return out

    def save(self, path: Path) -> None:
        """One id per line, written atomically."""
        atomic_write_text(Path(path), "".join(f"{int(i)}\n" for i in self.ids))

    @classmethod
    def load(cls, path: Path) -> EnglishVocab:
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").split()
        except OSError as exc:
            raise InputError(f"cannot read English vocabulary {path}: {exc}") from exc
        try:
            ids = [int(x) for x in lines]
        except ValueError as exc:
            raise InputError(f"{path} is not an English vocabulary (one token id per line): {exc}") from exc
        return cls(np.asarray(ids, dtype=np.int64))

    @classmethod
    def collect(
        cls,
        pairs: Iterable[Pair],
        encode_batch: Callable[[list[str]], list[list[int]]],
        always: Iterable[int] = (),
        batch_size: int = 4096,
    ) -> EnglishVocab:
        """Union of the ids of every English side (``pairs`` must be finite), plus ``always``."""
        seen: set[int] = {int(i) for i in always}
        it = iter(pairs)
        while batch := [p.en for p in itertools.islice(it, batch_size)]:
            for ids in encode_batch(batch):
                seen.update(ids)
        return cls(np.fromiter(sorted(seen), dtype=np.int64, count=len(seen)))


def run_english_vocab(
    path: Path,
    corpora: Mapping[str, Sequence[Any]],
    encode: Callable[[list[str]], list[list[int]]],
    always: Sequence[int],
    write: bool,
) -> EnglishVocab:
    """The English side's token ids over every training file (``corpora``: language → corpora with
    a ``path``), read from ``path`` when an earlier start of the run wrote it, else collected and
    written there (by one process: ``write``)."""
    if path.is_file():
        return EnglishVocab.load(path)
    texts = (pair for lang, found in corpora.items() for c in found for pair in read_pairs(c.path, lang))
    vocab = EnglishVocab.collect(texts, encode, always=always)
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        vocab.save(path)
    return vocab
