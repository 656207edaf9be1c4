"""The wall-time budget: the last step is fitted to measured speed, and a run stops in time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.train.budget import FINAL_SAVE_S, Budget, scaled_warmup
from model.train.loop import Trainer
from tests.model.test_train_loop import config, data_dir  # noqa: F401  (fixture)


def test_the_fit_pays_for_steps_evaluations_and_saves_out_of_the_time_left() -> None:
    budget = Budget(seconds=1000, upper=900, eval_every=100, save_every=50)
    assert budget.fit(0, 0.0) == 900  # nothing measured yet: the upper bound
    for seconds in (9.0, 2.0, 2.0):  # the first step after a start is slow; the median ignores it
        budget.record_step(seconds)
    budget.eval_s, budget.save_s = 10.0, 5.0
    per_step = 2.0 + 10.0 / 100 + 5.0 / 50
    left = 1000 - 100 - FINAL_SAVE_S - 10.0
    assert budget.fit(3, 100.0) == 3 + int(left // per_step)
    assert budget.fit(3, 990.0) == 4  # over budget: stop after the next step
    assert Budget(1e9, 900, 100, 50, step_times=budget.step_times).fit(3, 0.0) == 900


def test_the_warm_up_keeps_its_share_of_a_shortened_run() -> None:
    assert scaled_warmup(45, 900, 300) == 15
    assert scaled_warmup(45, 900, 900) == 45
    assert scaled_warmup(45, 900, 5) == 1
    assert scaled_warmup(0, 900, 300) == 0


def test_a_run_over_its_budget_stops_with_the_schedule_at_zero_and_a_model(
    data_dir: Path,  # noqa: F811
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    # 0.06 s: spent before the first step (loading the model and the data), so the first fit,
    # after three timed steps, ends the run one step later.
    cfg = config(data_dir, tiny_model_dir, out, steps=200, time_budget=0.001, eval_every=100)
    result = Trainer(cfg).run()
    assert result.steps == 4 and result.wall_time_s > 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    plans = [r for r in records if r["event"] == "plan"]
    assert len(plans) == 1 and plans[0]["step"] == 3 and plans[0]["planned"] == 4
    train = [r for r in records if r["event"] == "train"]
    assert [r["planned"] for r in train] == [200, 200, 200, 4]
    assert train[-1]["lr"] == pytest.approx(0.0)  # the decay was moved to the fitted last step
    assert [r["step"] for r in records if r["event"] == "eval"] == [0, 4]
    manifest = json.loads((out / "best" / "manifest.json").read_text())
    assert int(manifest["provenance"]["wall_time_s"]) >= 0
