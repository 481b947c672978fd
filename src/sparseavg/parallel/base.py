"""The parallel layer's one interface: train some ingredients of one cycle, return outcomes.

The engine hands an :class:`Executor` the ingredients of a cycle that still need training
(:class:`Job` s), what they share (:class:`Work`: the start state, the first step, the mask)
and its :class:`Hooks` (checkpoints, progress, what to do with a finished or diverged model,
where to save it). Executors differ only in *where* and *how at once* the jobs train; each
calls the same hooks for every job, so resume, the divergence policy, progress and the run
directory behave alike under all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from torch import nn

from ..pruning import Mask, MaskSchedule
from ..training import DivergenceError, TrainResult, TrainSettings, TrainState
from ..utils.state import State


@dataclass(frozen=True)
class Outcome:
    """One trained ingredient: its final state (``None`` if it diverged and was dropped), its
    info (``dropped``, ``seconds``, ``steps``, ``seed``, ``lr``, ...) and, when a mask
    schedule changed the mask during training, the final mask. Under error feedback (DPF),
    whose ``state`` holds ``w ⊙ m``, ``dense`` holds the dense weights ``w`` of the mask's
    tensors (``None`` otherwise). All tensors on the CPU."""

    state: State | None
    info: dict[str, Any]
    mask: Mask | None = None
    dense: State | None = None


@dataclass(frozen=True)
class Job:
    """One ingredient to train.

    Attributes:
        index: its index among the cycle's ingredients (0-based).
        seed: the seed of its batch order and augmentation (see :func:`~sparseavg.train`).
        settings: its hyperparameters.
    """

    index: int
    seed: int
    settings: TrainSettings


@dataclass(frozen=True)
class Work:
    """What the jobs of one call share.

    Attributes:
        cycle: the cycle (IMP level) they belong to.
        lineage: the lineage they belong to (0 unless the recipe runs several).
        start: the state every job starts from, on the CPU.
        start_step: the global step the schedule starts at (the rewind step, or 0).
        mask: the mask every job trains under, on the CPU.
        during: a schedule that changes the mask while training (gradual pruning), or ``None``.
        compile: run each model's forward through ``torch.compile`` (``execution.compile``).
    """

    cycle: int
    lineage: int
    start: State
    start_step: int
    mask: Mask
    during: MaskSchedule | None = None
    compile: bool = False


class Tracker(Protocol):
    """A progress display for the jobs trained together: ``(step, total, loss or None)``
    after every step (``loss`` at epoch ends), then :meth:`close`."""

    def __call__(self, step: int, total: int, loss: float | None) -> None: ...

    def close(self) -> None: ...


class Trainer(Protocol):
    """How one job trains: the built-in loop over a data set
    (:class:`~.trainers.LoopTrainer`) or a user's own training function
    (:class:`~.trainers.FunctionTrainer`). Executors call it and never ask which, except that
    :class:`~.stacked.Stacked` can stack only the built-in loop."""

    def __call__(
        self,
        model: nn.Module,
        work: Work,
        job: Job,
        resume: TrainState | None,
        on_epoch_end: Callable[[TrainState], None] | None,
        tracker: Tracker | None,
    ) -> TrainResult:
        """Train ``job`` on ``model`` (scratch space on the training device) from
        ``work.start`` under ``work.mask``, or from its checkpoint ``resume``; calls
        ``on_epoch_end`` with a checkpoint at epoch ends where it can resume from one.

        Raises:
            DivergenceError: the loss or the weights became NaN/inf.
        """
        ...

    def together(
        self,
        model: nn.Module,
        work: Work,
        jobs: Sequence[Job],
        resume: Sequence[TrainState] | None,
        on_epoch_end: Callable[[int, TrainState], None] | None,
        tracker: Tracker | None,
    ) -> list[TrainResult]:
        """Train ``jobs`` in lock step, sharing the decisions of ``work.during`` (a
        :class:`~sparseavg.pruning.Lockstep`), from ``work.start`` or from their
        checkpoints ``resume`` (one per job, at one step); ``model`` is scratch space for the
        first job. Calls ``on_epoch_end(i, state)`` for job ``jobs[i]`` at epoch ends; returns
        one result per job, in order.

        Raises:
            DivergenceError: a job's loss became NaN/inf (all stop: they share decisions).
            ValueError: the trainer cannot train jobs together (a user's training function).
        """
        ...

    def epoch_ends(self, job: Job, start_step: int) -> int:
        """How many times a run of ``job`` from global step ``start_step`` calls
        ``on_epoch_end`` (the distributed executor matches its collectives to it)."""
        ...


class Hooks(Protocol):
    """What the engine does around each job. ``finish`` runs where the job trained; under the
    distributed executor the others run in the process that owns the run directory."""

    def resume(self, job: Job) -> tuple[TrainState, float] | None:
        """The job's last epoch checkpoint and the training seconds spent up to it."""
        ...

    def checkpoint(self, job: Job, state: TrainState, seconds: float) -> None:
        """Keep an epoch checkpoint (``seconds``: training time so far, resumes included)."""
        ...

    def track(self, jobs: Sequence[Job]) -> Tracker:
        """A progress display for ``jobs``, trained together."""
        ...

    def finish(self, job: Job, result: TrainResult, seconds: float) -> Outcome:
        """The outcome of a job that trained to the end (BatchNorm recalibrated as the run
        asks, its info filled in)."""
        ...

    def diverged(self, job: Job, error: DivergenceError) -> Outcome:
        """The outcome of a job whose loss became NaN/inf: a dropped one, or raise to stop."""
        ...

    def save(self, job: Job, outcome: Outcome) -> None:
        """Keep a job's outcome (which marks it finished)."""
        ...

    def message(self, text: str) -> None:
        """Tell the user something (e.g. why an executor fell back to another)."""
        ...


class Executor(Protocol):
    """Trains a cycle's pending ingredients; see the module docstring."""

    name: str

    def run(
        self, model: nn.Module, trainer: Trainer, work: Work, jobs: Sequence[Job], hooks: Hooks
    ) -> dict[int, Outcome]:
        """Train ``jobs`` from ``work.start`` under ``work.mask``; save each outcome through
        ``hooks.save`` as it is known and return them by job index.

        Args:
            model: a model of the run's architecture on the training device; its weights are
                overwritten (it is scratch space).
            trainer: how one job trains.
            work: what the jobs share.
            jobs: the ingredients to train, in index order.
            hooks: the engine's side of every job.
        """
        ...
