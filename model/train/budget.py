"""A wall-time budget for a training run: the run measures itself and fits its last step to the time.

The CPUs a recipe meets differ by about 3x per step (bf16 on AMX against fp32 on AVX2), so a
fixed step count either overruns the budget on the slow machine or wastes the fast one. With a
budget, the run times its first steps after each (re)start and each dev evaluation, and sets the
step where the learning rate reaches zero so that training, the evaluations still due and the
final save end inside the budget. ``--steps`` stays the upper bound.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

PROBE_STEPS = 3  # steps timed after a (re)start before the first fit: the first is slow (warm-up)
FINAL_SAVE_S = 30.0  # writing OUT/best as a built model directory


@dataclass
class Budget:
    """What the fit needs to know about the run; durations come from :meth:`record`."""

    seconds: float
    upper: int
    eval_every: int
    save_every: int
    step_times: deque[float] = field(default_factory=lambda: deque(maxlen=20))
    eval_s: float = 0.0
    save_s: float = 0.0

    def record_step(self, seconds: float) -> None:
        self.step_times.append(seconds)

    def fit(self, step: int, elapsed: float) -> int:
        """The last step: as many more as the time left pays for, at least one, at most ``upper``."""
        if not self.step_times:
            return self.upper
        per_step = statistics.median(self.step_times)
        per_step += self.eval_s / self.eval_every + self.save_s / self.save_every
        left = self.seconds - elapsed - FINAL_SAVE_S - self.eval_s  # the last evaluation is due too
        more = int(left // per_step) if per_step > 0 else self.upper
        return max(step + 1, min(self.upper, step + more))


def scaled_warmup(warmup: int, steps: int, planned: int) -> int:
    """Warm-up keeps its share of the run when the budget shortens it (at least one step)."""
    if warmup == 0 or planned >= steps:
        return warmup
    return max(1, round(warmup * planned / steps))
