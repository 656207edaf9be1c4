"""Retrieval P@1 on aligned translation pairs, numpy only.

Training selects its best step by this number, and must not pull in index/ or evaluation/ (faiss,
mining) to get it; `dapsearch eval` reuses it from here.
"""

from __future__ import annotations

import numpy as np


def retrieval_p1(src: np.ndarray, en: np.ndarray) -> tuple[float, float]:
    """P@1 (%) xx→en and en→xx for aligned rows of L2-normalised vectors."""
    sims = src @ en.T
    gold = np.arange(len(src))
    return float((sims.argmax(axis=1) == gold).mean() * 100), float(
        (sims.argmax(axis=0) == gold).mean() * 100
    )
