"""The reference executor: one job after another in this process."""

from __future__ import annotations

import time
from collections.abc import Sequence

from torch import nn

from ..pruning import Lockstep
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


def train_together(
    model: nn.Module, trainer: Trainer, work: Work, jobs: Sequence[Job], hooks: Hooks
) -> dict[int, Outcome]:
    """Train ``jobs`` in lock step (``work.during`` is a
    :class:`~sparseavg.pruning.Lockstep`) with ``trainer.together``, resuming their
    checkpoints when all are at one step; save and return their outcomes. Checkpoints at
    different steps (a run stopped while it wrote one epoch's) are set aside: the jobs train
    together again from the start, which gives the same result."""
    found = [hooks.resume(job) for job in jobs]
    present = [c for c in found if c is not None]
    if present and (len(present) < len(found) or len({s.step for s, _ in present}) > 1):
        hooks.message(
            f"cycle {work.cycle}: the ingredients trained together have checkpoints at "
            "different steps; training them together again from the start"
        )
        found = [None] * len(jobs)
    resume = [c[0] for c in found if c is not None] or None
    before = [c[1] if c is not None else 0.0 for c in found]
    if resume is not None:
        hooks.message(f"cycle {work.cycle} ingredients: resuming at step {resume[0].step}")
    t0 = time.perf_counter()

    def save(i: int, state: TrainState) -> None:
        hooks.checkpoint(jobs[i], state, before[i] + time.perf_counter() - t0)

    tracker = hooks.track(jobs)
    try:
        results = trainer.together(model, work, jobs, resume, save, tracker)
    except DivergenceError as err:
        outcomes = {job.index: hooks.diverged(job, err) for job in jobs}
    else:
        seconds = time.perf_counter() - t0
        outcomes = {
            job.index: hooks.finish(job, result, before[i] + seconds)
            for i, (job, result) in enumerate(zip(jobs, results, strict=True))
        }
    finally:
        tracker.close()
    for job in jobs:
        hooks.save(job, outcomes[job.index])
    return outcomes


class Sequential:
    """Trains the jobs one after another in this process: the reference every other executor
    is tested against. Jobs that share a mask schedule's decisions
    (:class:`~sparseavg.pruning.Lockstep`) train together, in lock step."""

    name = "sequential"

    def run(
        self, model: nn.Module, trainer: Trainer, work: Work, jobs: Sequence[Job], hooks: Hooks
    ) -> dict[int, Outcome]:
        if isinstance(work.during, Lockstep):
            return train_together(model, trainer, work, jobs, hooks)
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
