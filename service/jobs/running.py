"""What a job's code may touch while it runs: its record, saving it, and the stop check.

Each job type (ingest, mine, snapshot, restore) lives in its own module and gets one of these from
the runner, so none of them reaches into the runner's queue, locks or files.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from service.jobs.models import Job


class Interrupted(Exception):
    """Raised from a progress callback to stop a job between chunks (cancel or shutdown)."""


@dataclass(frozen=True)
class RunningJob:
    """The job's record (read and changed under ``lock``) and the runner's hooks for it."""

    job: Job
    lock: threading.Lock
    save: Callable[[], None]  # persist now (a step the API must see at once)
    save_soon: Callable[[], None]  # persist at most twice a second (progress)
    check: Callable[[], None]  # raise Interrupted on cancel or shutdown, DiskFull on a full disk
    stopping: Callable[[], bool]  # the service is shutting down (the job resumes on the next start)
    cancelling: Callable[[], bool]  # a client asked to cancel this job

    @property
    def id(self) -> str:
        return self.job.id


def fraction(done: int, total: int | None) -> float:
    """Progress in [0, 1]; 0 while the total is unknown."""
    if not total:
        return 0.0
    return min(1.0, done / total)
