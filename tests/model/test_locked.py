"""The locked English tower: its loss, the shapes of its batches, and a run that trains with it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from model.train.corpus import Pair
from model.train.locked import batch_shape, locked_loss, pseudo_paragraphs
from model.train.loop import Trainer
from tests.model.test_train_loop import config, data_dir, losses  # noqa: F401  (fixture)


def test_the_loss_is_least_when_both_sides_sit_on_the_english_target() -> None:
    torch.manual_seed(0)
    target = torch.nn.functional.normalize(torch.randn(16, 8), dim=-1)
    on_target = locked_loss(target.clone(), target.clone(), target, 0.05, 0.2)
    assert on_target.english == pytest.approx(0, abs=1e-6) and on_target.transfer == pytest.approx(
        0, abs=1e-6
    )
    moved = locked_loss(target + 0.3 * torch.randn(16, 8), target.clone(), target, 0.05, 0.2)
    assert moved.transfer > 0.01 and moved.total > on_target.total
    # Ranking against locked targets: translations at their target rank first, so the term is low;
    # with λ = 0 it does not count at all.
    assert on_target.ranking < 0.01
    no_ranking = locked_loss(target + 0.3, target, target, 0.05, 0.0)
    assert float(no_ranking.total) == pytest.approx(no_ranking.english + no_ranking.transfer, abs=1e-5)


def test_no_gradient_reaches_the_locked_target() -> None:
    src = torch.randn(4, 8, requires_grad=True)
    en = torch.randn(4, 8, requires_grad=True)
    target = torch.randn(4, 8, requires_grad=True)
    locked_loss(src, en, target, 0.05, 0.2).total.backward()  # type: ignore[no-untyped-call]
    assert src.grad is not None and en.grad is not None and target.grad is None


def test_batch_shapes_follow_the_shares_and_repeat_exactly() -> None:
    shapes = [batch_shape(0, step, 0.5, 0.5) for step in range(2000)]
    counts = Counter((s.kind, s.paragraphs) for s in shapes)
    assert 900 < counts[("query", False)] < 1100
    assert 400 < counts[("passage", True)] < 600 and 400 < counts[("passage", False)] < 600
    assert ("query", True) not in counts  # paragraphs are passages
    assert shapes == [batch_shape(0, step, 0.5, 0.5) for step in range(2000)]  # resume-safe
    assert {batch_shape(0, s, 0.0, 1.0).kind for s in range(100)} == {"query"}
    assert all(batch_shape(0, s, 1.0, 1.0).paragraphs for s in range(100))


def test_pseudo_paragraphs_join_one_language_in_the_same_order_on_both_sides() -> None:
    batch = [Pair("de", f"Satz {i}.", f"Sentence {i}.") for i in range(5)] + [
        Pair("zh", "句一。", "One."),
        Pair("zh", "句二。", "Two."),
    ]
    joined = pseudo_paragraphs(batch, 2)
    assert [p.lang for p in joined] == ["de", "de", "de", "zh"]
    assert joined[0] == Pair("de", "Satz 0. Satz 1.", "Sentence 0. Sentence 1.")
    assert joined[2] == Pair("de", "Satz 4.", "Sentence 4.")  # the remainder
    assert joined[3] == Pair("zh", "句一。句二。", "One. Two.")  # no space between Chinese sentences
    one = [Pair("de", "a", "b"), Pair("de", "c", "d")]
    assert pseudo_paragraphs(one, 4) == one  # a single paragraph would leave the ranking no negative


def test_a_locked_run_trains_against_the_frozen_base_and_resumes_exactly(
    data_dir: Path,  # noqa: F811
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    locked = {"objective": "locked", "passage_share": 0.5, "paragraph_share": 0.5, "paragraph_pairs": 3}
    straight = Trainer(config(data_dir, tiny_model_dir, tmp_path / "a", **locked))
    assert straight.teacher is not None  # the locked targets come from the frozen base
    result = straight.run()
    train = [h for h in result.history if "loss" in h]
    assert all(h["english"] >= 0 and h["transfer"] > 0 and h["tr"] > 0 for h in train)
    assert train[0]["english"] < train[0]["transfer"]  # English starts on its target, X does not
    assert any(h["rtl"] > 0 for h in train) and any(h["rtl"] == 0 for h in train)  # none on paragraphs
    assert (tmp_path / "a" / "best" / "manifest.json").is_file()

    def stop_at_4(step: int, _: dict[str, float]) -> None:
        if step == 4:
            raise KeyboardInterrupt

    cut = config(data_dir, tiny_model_dir, tmp_path / "b", **locked)
    with pytest.raises(Exception, match="interrupted at step 4"):
        Trainer(cut, progress=stop_at_4).run()
    resumed = Trainer(cut).run(resume=True)
    expected, got = losses(result.history), losses(resumed.history)
    for step in (5, 6):
        assert got[step] == pytest.approx(expected[step], abs=1e-5), (step, got, expected)
