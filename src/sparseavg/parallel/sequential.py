"""The reference executor: one job after another in this process."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from torch import nn

from ..data import BatchSource
from ..training import DivergenceError, TrainResult, TrainState, train
from ..training.evaluate import model_device
from .base import Hooks, Job, Outcome, Tracker, Work


def train_from(
    model: nn.Module,
    data: BatchSource,
    work: Work,
    job: Job,
    resume: TrainState | None,
    on_epoch_end: Callable[[TrainState], None] | None,
    tracker: Tracker | None,
) -> TrainResult:
    """:func:`~sparseavg.train` of one job from ``work.start`` under ``work.mask`` (or from
    its checkpoint ``resume``); raises :class:`~sparseavg.training.DivergenceError`."""
    model.load_state_dict(work.start)
    return train(
        model,
        data,
        job.settings,
        seed=job.seed,
        mask=work.mask.to(model_device(model)),
        start_step=work.start_step,
        resume=resume,
        on_epoch_end=on_epoch_end,
        progress=tracker,
        mask_schedule=work.during,
        compile=work.compile,
    )


def train_job(
    model: nn.Module, data: BatchSource, work: Work, job: Job, hooks: Hooks, tracker: Tracker
) -> Outcome:
    """Train one job with :func:`~sparseavg.train` (resuming its checkpoint) and turn the
    result into an outcome through ``hooks.finish`` or ``hooks.diverged``."""
    checkpoint = hooks.resume(job)
    resume, before = checkpoint if checkpoint is not None else (None, 0.0)
    if resume is not None:
        hooks.message(f"cycle {work.cycle} ingredient {job.index}: resuming at step {resume.step}")
    t0 = time.perf_counter()

    def save(state: TrainState) -> None:
        hooks.checkpoint(job, state, before + time.perf_counter() - t0)

    try:
        result = train_from(model, data, work, job, resume, save, tracker)
    except DivergenceError as err:
        return hooks.diverged(job, err)
    return hooks.finish(job, result, before + time.perf_counter() - t0)


class Sequential:
    """Trains the jobs one after another in this process: the reference every other executor
    is tested against."""

    name = "sequential"

    def run(
        self, model: nn.Module, data: BatchSource, work: Work, jobs: Sequence[Job], hooks: Hooks
    ) -> dict[int, Outcome]:
        outcomes: dict[int, Outcome] = {}
        for job in jobs:
            tracker = hooks.track([job])
            try:
                outcome = train_job(model, data, work, job, hooks, tracker)
            finally:
                tracker.close()
            hooks.save(job, outcome)
            outcomes[job.index] = outcome
        return outcomes
