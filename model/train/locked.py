"""The locked English tower: move every language onto the frozen base's English embeddings.

Symmetric translation ranking moves both sides of a pair, so English (and with it every query and
passage the base embedded well) drifts away from the base. Here the frozen base's embedding of
the English side, t(en), is the target; the student s keeps English on it and moves the other
language onto it (Reimers & Gurevych 2020, the multilingual-distillation recipe), with a ranking
term against the locked targets (LiT, LASER3) so translations also win over the rest of the batch:

    loss = (1 − cos(s(en), t(en))) + (1 − cos(s(xx), t(en)))
           + λ·InfoNCE(s(xx) → t(en)) + λ·InfoNCE(t(en) → s(xx))

Both sides of a pair carry the same prefix, ``query:`` or ``passage:``; part of the ``passage:``
batches join a few pairs of one language into pseudo-paragraphs so that passages move with
queries. t(en) is computed per batch (no gradient) rather than precomputed: a 2-hour CPU run sees
about a fifth of the corpus, so embedding all of it once would cost more than it saves.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from model.train.config import Kind
from model.train.corpus import Pair
from model.train.losses import translation_ranking_loss

# Scripts written without spaces between words: their sentences are joined without one.
_UNSPACED = frozenset({"zh", "ja", "th"})


@dataclass(frozen=True)
class BatchShape:
    """How one step's pairs are shown to the model: the prefix, and whether pairs are joined."""

    kind: Kind
    paragraphs: bool


def batch_shape(seed: int, step: int, passage_share: float, paragraph_share: float) -> BatchShape:
    """The shape of step ``step``'s batch, a pure function of (seed, step) so a resumed run
    repeats it exactly: ``passage_share`` of the batches under ``passage:``, and of those
    ``paragraph_share`` as pseudo-paragraphs."""
    draw = random.Random(seed * 1_000_003 + step)
    if draw.random() >= passage_share:
        return BatchShape("query", False)
    return BatchShape("passage", draw.random() < paragraph_share)


def pseudo_paragraphs(batch: list[Pair], size: int) -> list[Pair]:
    """Pairs of one language joined ``size`` at a time, in batch order (both sides in the same
    order, so the joined texts are translations of each other); a language's remainder forms a
    shorter paragraph. At least two paragraphs come back so the ranking term has a negative."""
    by_lang: dict[str, list[Pair]] = {}
    for pair in batch:
        by_lang.setdefault(pair.lang, []).append(pair)
    out: list[Pair] = []
    for lang, pairs in by_lang.items():
        glue = "" if lang in _UNSPACED else " "
        for start in range(0, len(pairs), size):
            group = pairs[start : start + size]
            out.append(Pair(lang, glue.join(p.src for p in group), " ".join(p.en for p in group)))
    if len(out) < 2:
        return batch
    return out


@dataclass
class LockedLoss:
    total: torch.Tensor
    english: float  # 1 - cos(s(en), t(en))
    transfer: float  # 1 - cos(s(xx), t(en))
    ranking: float  # the two InfoNCE terms, summed


def locked_loss(
    src: torch.Tensor,
    en: torch.Tensor,
    target: torch.Tensor,
    temperature: float,
    ranking_weight: float,
) -> LockedLoss:
    """The objective above for (b, d) student embeddings ``src``, ``en`` and the frozen base's
    ``target`` = t(en) (no gradient flows into it)."""
    target = target.detach()
    english = (1 - F.cosine_similarity(en, target, dim=-1)).mean()
    transfer = (1 - F.cosine_similarity(src, target, dim=-1)).mean()
    # "both" averages s(xx)→t(en) and t(en)→s(xx); the objective sums them.
    ranking = 2 * translation_ranking_loss(src, target, temperature, "both")
    total = english + transfer + ranking_weight * ranking
    return LockedLoss(total, float(english.detach()), float(transfer.detach()), float(ranking.detach()))
