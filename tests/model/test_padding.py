"""The batch plan: every text once, the limits kept, and the cheapest cut there is."""

from __future__ import annotations

import itertools
import random

import pytest

from model.padding import ATTENTION_WIDTH, PASS_TOKENS, full_batches, plan


def cost(groups: list[list[int]], lengths: list[int]) -> float:
    total = 0.0
    for group in groups:
        width = max(lengths[i] for i in group)
        total += PASS_TOKENS + len(group) * width * (1 + width / ATTENTION_WIDTH)
    return total


def brute_force(lengths: list[int], batch_size: int, max_tokens: int) -> float:
    """The cheapest cut of the longest-first order into contiguous groups, by trying them all."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    best = float("inf")
    for cuts in itertools.product([False, True], repeat=len(order) - 1):
        groups, start = [], 0
        for end, cut in enumerate(cuts, start=1):
            if cut:
                groups.append(order[start:end])
                start = end
        groups.append(order[start:])
        fits = all(
            len(g) <= batch_size and (len(g) == 1 or len(g) * lengths[g[0]] <= max_tokens) for g in groups
        )
        if fits:
            best = min(best, cost(groups, lengths))
    return best


def test_equal_lengths_give_full_batches() -> None:
    groups = plan([12] * 70, batch_size=32, max_tokens=2048)
    assert [len(g) for g in groups] == [32, 32, 6]
    assert sorted(i for g in groups for i in g) == list(range(70))


def test_mixed_lengths_are_cut_where_padding_costs_more_than_a_pass() -> None:
    lengths = [40, 9, 9, 38, 8, 9, 10, 37, 8, 9]
    groups = plan(lengths, batch_size=32, max_tokens=2048)
    assert sorted(sorted(g) for g in groups) == [[0, 3, 7], [1, 2, 4, 5, 6, 8, 9]]
    assert cost(groups, lengths) < cost(full_batches(lengths, 32, 2048), lengths)


@pytest.mark.parametrize("seed", range(40))
def test_the_plan_is_the_cheapest_cut_and_keeps_the_limits(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.choice([rng.randint(3, 20), rng.randint(20, 120)]) for _ in range(rng.randint(1, 11))]
    batch_size, max_tokens = rng.choice([2, 4, 32]), rng.choice([64, 256, 2048])
    groups = plan(lengths, batch_size, max_tokens)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for group in groups:
        widths = [lengths[i] for i in group]
        assert widths == sorted(widths, reverse=True)
        assert len(group) <= batch_size
        assert len(group) == 1 or len(group) * widths[0] <= max_tokens
    assert cost(groups, lengths) == pytest.approx(brute_force(lengths, batch_size, max_tokens))


def test_a_text_over_the_token_budget_runs_alone() -> None:
    assert plan([300, 5, 5], batch_size=32, max_tokens=256) == [[0], [1, 2]]


def test_plans_are_windowed_yet_complete() -> None:
    lengths = [random.Random(3).randint(1, 60) for _ in range(2500)]
    groups = plan(lengths, batch_size=32, max_tokens=2048)
    assert sorted(i for g in groups for i in g) == list(range(2500))
    assert all(len(g) <= 32 for g in groups)
