"""Which texts share a forward pass: groups of similar length, so that little work goes to padding.

A batch is padded to its longest text, and on CPU a padded token costs what a real one does:
requests of 32 dev sentences (natural lengths, 37 languages) were 44 % padding as one batch, 3 to
8 % cut into groups of similar length, at the price of one fixed cost per forward pass (the
graph's small shape operations and the thread pool's start, worth some tokens of work). ``plan``
chooses the cuts that minimise that total: texts sorted longest first, then a dynamic programme
over where each group ends. Equal lengths give full batches, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

# The width a backend really runs a batch of ``rows`` texts padded to ``width`` at (OpenVINO pads
# small batches further, to repeat shapes it has planned).
Widening = Callable[[int, int], int]

# The fixed cost of one forward pass, in tokens of work. bench/padding.py fits it on the served
# graph; on a 2-core VM the fits ranged from 5 to 82 tokens between runs and graphs, so 20 is a
# compromise, and every run planned faster than full batches (bench/RESULTS.md, "Batches cut by
# length").
PASS_TOKENS = 20
# Attention grows with the square of the width: per token, L / ATTENTION_WIDTH more work than the
# weight matrices (4 * L * 384 against 2 * 1.77 M multiply-adds per layer in e5-small).
ATTENTION_WIDTH = 2300
# Texts planned together: the plan costs O(WINDOW * batch_size) per window, and a window's edge
# adds at most one pass per WINDOW texts to the plan over everything.
WINDOW = 1024


def plan(
    lengths: Sequence[int],
    batch_size: int,
    max_tokens: int,
    pass_tokens: float = PASS_TOKENS,
    widening: Widening | None = None,
) -> list[list[int]]:
    """Groups of indices into ``lengths``, longest texts first: each group at most ``batch_size``
    texts and (beyond one text) ``max_tokens`` padded tokens, the total padded work (at the width
    ``widening`` says the backend runs) plus ``pass_tokens`` per group as small as it can be."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    groups: list[list[int]] = []
    for start in range(0, len(order), WINDOW):
        window = order[start : start + WINDOW]
        widths = [max(1, lengths[i]) for i in window]
        groups.extend(_cuts(window, widths, batch_size, max_tokens, pass_tokens, widening))
    return groups


def _cuts(
    order: list[int],
    widths: list[int],
    batch_size: int,
    max_tokens: int,
    pass_tokens: float,
    widening: Widening | None,
) -> list[list[int]]:
    """The optimal cut of ``order`` (its ``widths`` descending) into contiguous groups."""
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest plan of the first j texts
    cut = [0] * (n + 1)  # where the last group of that plan starts
    for j in range(1, n + 1):
        for i in range(j - 1, max(0, j - batch_size) - 1, -1):
            width = widths[i]  # the group i..j-1 pads to its first, widest text
            rows = j - i
            if rows > 1 and rows * width > max_tokens:
                break  # a longer group (smaller i) only grows wider
            run = widening(rows, width) if widening else width
            cost = best[i] + pass_tokens + rows * run * (1 + run / ATTENTION_WIDTH)
            if cost < best[j] - 1e-6:  # ties (rounding aside) keep the later cut: full batches first
                best[j], cut[j] = cost, i
    groups: list[list[int]] = []
    j = n
    while j:
        groups.append(order[cut[j] : j])
        j = cut[j]
    groups.reverse()
    return groups


def full_batches(lengths: Sequence[int], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Longest first, each batch as full as ``batch_size`` and ``max_tokens`` allow, never cut for
    padding: the int8 graphs' calibration reads its text this way, and its activation ranges (the
    padded positions included) are part of the shipped graphs."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    groups: list[list[int]] = []
    start = 0
    while start < len(order):
        rows = max(1, min(batch_size, max_tokens // max(1, lengths[order[start]])))
        groups.append(order[start : start + rows])
        start += rows
    return groups
