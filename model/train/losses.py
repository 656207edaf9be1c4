"""Sentence-level DAP objective: in-batch translation ranking (TR) with global negatives.

DAP (§3.1, ``core/models.py``) scores every non-English CLS embedding against every English one in the
*global* batch (all ranks' embeddings are all-gathered), cosine / τ with τ = 0.05, cross-entropy on the
diagonal. The DAP code gathers without gradient and puts the local tensor back into its own slot, so
the other ranks' rows are constants; here the gather itself is differentiable, so each rank also sends
gradient to the rows it borrowed. With gradients averaged across ranks (as DDP does) that makes a
distributed step exactly the single-process step on the global batch.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
import torch.distributed as dist
from torch.nn import functional as F

Direction = Literal["xx2en", "en2xx", "both"]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` concatenated along dim 0 (rank order), with gradient flowing back to every rank.

    Returns ``x`` itself when torch.distributed is not initialised or has a single process. Every rank
    must pass the same shape.
    """
    if not _distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():
        # torch 2.13 marks it deprecated in favour of a private API; it is still the public, gloo- and
        # nccl-capable autograd all-gather.
        warnings.filterwarnings("ignore", message=r".*all_gather is deprecated", category=FutureWarning)
        parts: tuple[torch.Tensor, ...] = all_gather(x)  # type: ignore[no-untyped-call]
    return torch.cat(parts, dim=0)


def _ranking(
    queries: torch.Tensor, candidates: torch.Tensor, labels: torch.Tensor, temperature: float, margin: float
) -> torch.Tensor:
    sims = F.normalize(queries, dim=-1) @ F.normalize(candidates, dim=-1).T
    if margin:
        rows = torch.arange(len(labels), device=sims.device)
        sims = sims.index_put((rows, labels), sims[rows, labels] - margin)
    return F.cross_entropy(sims / temperature, labels)


def translation_ranking_loss(
    src: torch.Tensor,
    en: torch.Tensor,
    temperature: float = 0.05,
    direction: Direction = "both",
    margin: float = 0.0,
) -> torch.Tensor:
    """InfoNCE over cosine/τ between aligned ``src`` (non-English) and ``en`` rows, global in-batch negatives.

    ``src`` and ``en`` are this rank's (b, d) embeddings (normalised inside). "xx2en" ranks all English
    candidates for each non-English query (the paper's Eq. 5 and DAP's default ``cl_dir='fwd'``), "en2xx"
    the reverse, "both" averages the two. Mean over this rank's rows, so the mean over ranks equals the
    single-process loss on the concatenated global batch. ``margin`` is subtracted from each
    true pair's cosine before scaling (the additive margin of LaBSE, which uses 0.3): the true
    translation must win by that much.
    """
    if src.ndim != 2 or src.shape != en.shape:
        raise ValueError(
            f"src and en must be equal (b, d) tensors, got {tuple(src.shape)} and {tuple(en.shape)}"
        )
    if direction not in ("xx2en", "en2xx", "both"):
        raise ValueError(f"unknown direction {direction!r}")
    b = src.shape[0]
    rank = dist.get_rank() if _distributed() else 0
    src_all = gather_with_grad(src)
    en_all = gather_with_grad(en)
    if src_all.shape[0] % b or en_all.shape[0] != src_all.shape[0]:
        raise ValueError("every rank must hold the same number of pairs")
    labels = torch.arange(b, device=src.device) + rank * b
    if direction == "xx2en":
        return _ranking(src, en_all, labels, temperature, margin)
    if direction == "en2xx":
        return _ranking(en, src_all, labels, temperature, margin)
    return (
        _ranking(src, en_all, labels, temperature, margin)
        + _ranking(en, src_all, labels, temperature, margin)
    ) / 2
