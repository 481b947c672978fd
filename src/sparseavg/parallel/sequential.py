"""The reference executor: one job after another in this process."""

from __future__ import annotations

import time
from collections.abc import Sequence

from torch import nn

from ..training import DivergenceError, TrainState
from .base import Hooks, Job, Outcome, Tracker, Trainer, Work


def train_job(
    model: nn.Module, trainer: Trainer, work: Work, job: Job, hooks: Hooks, tracker: Tracker
) -> Outcome:
    """Train one job with ``trainer`` (resuming its checkpoint) and turn the result into an
    outcome through ``hooks.finish`` or ``hooks.diverged``."""
    checkpoint = hooks.resume(job)
    resume, before = checkpoint if checkpoint is not None else (None, 0.0)
    if resume is not None:
        hooks.message(f"cycle {work.cycle} ingredient {job.index}: resuming at step {resume.step}")
    t0 = time.perf_counter()

    def save(state: TrainState) -> None:
        hooks.checkpoint(job, state, before + time.perf_counter() - t0)

    try:
        result = trainer(model, work, job, resume, save, tracker)
    except DivergenceError as err:
        return hooks.diverged(job, err)
    return hooks.finish(job, result, before + time.perf_counter() - t0)


class Sequential:
    """Trains the jobs one after another in this process: the reference every other executor
    is tested against."""

    name = "sequential"

    def run(
        self, model: nn.Module, trainer: Trainer, work: Work, jobs: Sequence[Job], hooks: Hooks
    ) -> dict[int, Outcome]:
        outcomes: dict[int, Outcome] = {}
        for job in jobs:
            tracker = hooks.track([job])
            try:
                outcome = train_job(model, trainer, work, job, hooks, tracker)
            finally:
                tracker.close()
            hooks.save(job, outcome)
            outcomes[job.index] = outcome
        return outcomes
