"""The two ways a job trains (:class:`~.base.Trainer`): the built-in loop over a data set, and
a user's own training function."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from ..data import BatchSource
from ..pruning import Lockstep
from ..training import TrainResult, TrainState, steps_per_epoch, train, train_together
from ..training.custom import TrainFn, run_user_loop
from ..training.evaluate import model_device
from .base import Job, Tracker, Work


@dataclass(frozen=True)
class LoopTrainer:
    """:func:`~sparseavg.train` on ``data``, the training split: epoch checkpoints, resume at
    any epoch boundary, and the only trainer :class:`~.stacked.Stacked` can stack."""

    data: BatchSource

    def __call__(
        self,
        model: nn.Module,
        work: Work,
        job: Job,
        resume: TrainState | None,
        on_epoch_end: Callable[[TrainState], None] | None,
        tracker: Tracker | None,
    ) -> TrainResult:
        model.load_state_dict(work.start)
        return train(
            model,
            self.data,
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

    def together(
        self,
        model: nn.Module,
        work: Work,
        jobs: Sequence[Job],
        resume: Sequence[TrainState] | None,
        on_epoch_end: Callable[[int, TrainState], None] | None,
        tracker: Tracker | None,
    ) -> list[TrainResult]:
        """:func:`~sparseavg.training.train_together` on ``model`` and a copy of it for each
        further job; under :class:`~sparseavg.pruning.Lockstep` the jobs take the first
        job's batches for its ``together`` share of the steps."""
        lockstep = work.during
        if not isinstance(lockstep, Lockstep):
            raise ValueError("jobs train together only under a Lockstep mask schedule")
        first = jobs[0].settings
        total = first.epochs * steps_per_epoch(self.data, first.batch_size, first.drop_last)
        models = [model] + [copy.deepcopy(model) for _ in jobs[1:]]
        for m in models:
            m.load_state_dict(work.start)
        return train_together(
            models,
            self.data,
            [job.settings for job in jobs],
            seeds=[job.seed for job in jobs],
            mask=work.mask.to(model_device(model)),
            mask_schedule=lockstep,
            start_step=work.start_step,
            shared_steps=lockstep.together_steps(total),
            shared=lockstep.shared,
            resume=resume,
            on_epoch_end=on_epoch_end,
            progress=tracker,
            compile=work.compile,
        )

    def epoch_ends(self, job: Job, start_step: int) -> int:
        """:func:`~sparseavg.train` calls ``on_epoch_end`` at every full epoch boundary it
        crosses."""
        spe = steps_per_epoch(self.data, job.settings.batch_size, job.settings.drop_last)
        epochs = job.settings.epochs
        if start_step >= epochs * spe:
            return 0
        return epochs - start_step // spe


@dataclass(frozen=True)
class FunctionTrainer:
    """A user's ``train_fn(model, mask, seed, settings)`` (see :mod:`sparseavg.training.custom`):
    steps are epochs, ``work.start_step`` is the first epoch, and there are no epoch
    checkpoints (an interrupted ingredient trains again from its start)."""

    train_fn: TrainFn

    def __call__(
        self,
        model: nn.Module,
        work: Work,
        job: Job,
        resume: TrainState | None,
        on_epoch_end: Callable[[TrainState], None] | None,
        tracker: Tracker | None,
    ) -> TrainResult:
        model.load_state_dict(work.start)
        return run_user_loop(
            self.train_fn,
            model,
            work.mask.to(model_device(model)),
            job.seed,
            job.settings,
            start_epoch=work.start_step,
            cycle=work.cycle,
            index=job.index,
            progress=tracker,
            mask_schedule=work.during,
        )

    def together(
        self,
        model: nn.Module,
        work: Work,
        jobs: Sequence[Job],
        resume: Sequence[TrainState] | None,
        on_epoch_end: Callable[[int, TrainState], None] | None,
        tracker: Tracker | None,
    ) -> list[TrainResult]:
        raise ValueError("models that share a mask schedule's decisions need the built-in loop")

    def epoch_ends(self, job: Job, start_step: int) -> int:
        return 0
