"""What one training run does: :class:`TrainSettings`, a frozen, validated value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

Optimizer = Literal["sgd", "adam", "adamw"]
ScheduleKind = Literal["constant", "step", "cosine", "llr", "ft", "lrw", "slr", "clr"]
SwaSchedule = Literal["anneal", "switch"]
Precision = Literal["auto", "fp32", "bf16"]

OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
#: schedules of a training run from scratch (``train.schedule``)
SCHEDULES: tuple[str, ...] = ("constant", "step", "cosine", "llr")
#: the retraining schedules of the Sparse Model Soups code that derive from the original run's
#: schedule (``pruning.retrain_schedule``; ``llr`` is in :data:`SCHEDULES`). ``allr`` is ``llr``
#: with a peak chosen at the start of each cycle (see ``sparseavg.recipes``).
RETRAIN_SCHEDULES: tuple[str, ...] = ("ft", "lrw", "slr", "clr", "allr")
#: schedules that need :attr:`TrainSettings.original`
DERIVED_SCHEDULES: tuple[str, ...] = ("ft", "lrw", "slr", "clr")
SWA_SCHEDULES: tuple[str, ...] = get_args(SwaSchedule)
PRECISIONS: tuple[str, ...] = get_args(Precision)


@dataclass(frozen=True)
class TrainSettings:
    """Hyperparameters of one training run of one model under one mask.

    Attributes:
        epochs: passes over the training split.
        batch_size: samples per step.
        drop_last: skip each epoch's last partial batch; by default an epoch trains on it too
            (``ceil(samples / batch_size)`` steps, as the SMS code's and open_lth's loaders),
            and every schedule counts those steps.
        optimizer: ``"sgd"`` (momentum, optional Nesterov), ``"adam"`` or ``"adamw"``.
        lr: peak learning rate.
        momentum: SGD momentum (ignored by Adam, which uses its default betas).
        nesterov: Nesterov momentum for SGD.
        weight_decay: L2 penalty (decoupled for ``adamw``).
        schedule: ``"constant"``; ``"step"`` (multiply by ``gamma`` at each of ``milestones``);
            ``"cosine"`` (to 0, or to ``swa_lr`` when SWA anneals to it); ``"llr"`` (warm-up,
            then linear decay to 0: the SMS code's LLR). Retraining schedules of the Sparse
            Model Soups code, derived from :attr:`original` (see :mod:`.schedules`): ``"ft"``
            (constant at the original's smallest rate), ``"lrw"`` (the original's last
            ``epochs`` epochs), ``"slr"`` (the original compressed into ``epochs``), ``"clr"``
            (cosine from ``lr`` to the original's smallest rate).
        warmup: fraction of the (pre-SWA) steps spent warming up from 0 to ``lr``;
            ``int(warmup * steps)`` steps, linear for constant/step/cosine and a half cosine for
            llr/slr/clr (as the SMS code warms up its retraining); 0 is no warm-up, for every
            schedule (the recipes give a fine-tuning cycle's llr/slr/clr the SMS code's 0.1).
        milestones: for ``"step"``: fractions of the (pre-SWA) steps at which lr drops.
        gamma: lr factor at each milestone.
        swa_start: ``None`` for no SWA; else the fraction of epochs after which SWA begins. From
            then on the learning rate is the constant ``swa_lr`` and the weights are averaged once
            at the end of every epoch (the last ``1 - swa_start`` of the epochs).
        swa_lr: the constant learning rate during SWA.
        swa_schedule: with SWA, how the schedule treats the steps before ``swa_start``:
            ``"anneal"`` fits the whole schedule into them, decaying to ``swa_lr`` rather than 0
            (cosine and llr; step cannot and is refused); ``"switch"`` runs the schedule as if
            over all steps and replaces it by ``swa_lr`` from ``swa_start`` on.
        original: the settings of the run being retrained (the dense training), needed by the
            derived schedules ft, lrw, slr and clr.
        augment: apply the data set's augmentation to training batches.
        precision: ``"bf16"`` trains under ``torch.autocast`` with bfloat16, ``"fp32"`` does
            not, ``"auto"`` (the default) is bf16 on CUDA and fp32 elsewhere.
        channels_last: use the channels-last memory format for 4-D inputs and the model;
            ``None`` (the default) uses it on CUDA only. See :meth:`resolved`.
    """

    epochs: int = 30
    batch_size: int = 128
    drop_last: bool = False
    optimizer: Optimizer = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: ScheduleKind = "cosine"
    warmup: float = 0.0
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    swa_start: float | None = None
    swa_lr: float = 0.05
    swa_schedule: SwaSchedule = "anneal"
    original: TrainSettings | None = None
    augment: bool = True
    precision: Precision = "auto"
    channels_last: bool | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 0:
            problems.append(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        kinds = get_args(ScheduleKind)
        if self.schedule not in kinds:
            problems.append(f"schedule must be one of {kinds}, got {self.schedule!r}")
        if self.schedule in DERIVED_SCHEDULES and self.original is None:
            problems.append(f"schedule {self.schedule!r} needs the original run's settings")
        if (
            self.schedule == "lrw"
            and self.original is not None
            and self.epochs > self.original.epochs
        ):
            problems.append(
                f"lrw rewinds the last {self.epochs} epochs of the original schedule, "
                f"which has only {self.original.epochs}"
            )
        if self.swa_schedule not in SWA_SCHEDULES:
            problems.append(
                f"swa_schedule must be one of {SWA_SCHEDULES}, got {self.swa_schedule!r}"
            )
        if (
            self.swa_start is not None
            and self.swa_schedule == "anneal"
            and self.schedule in ("step", *DERIVED_SCHEDULES)
        ):
            problems.append(
                f"a {self.schedule!r} schedule cannot anneal to swa_lr before SWA starts; "
                "use swa_schedule 'switch' (the schedule over all steps, constant swa_lr "
                "from swa_start)"
            )
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            problems.append(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.warmup < 1:
            problems.append(f"warmup must be in [0, 1), got {self.warmup}")
        if any(not 0 < m < 1 for m in self.milestones):
            problems.append(f"milestones must be fractions in (0, 1), got {self.milestones}")
        if self.swa_start is not None and not 0 <= self.swa_start < 1:
            problems.append(f"swa_start must be in [0, 1) or None, got {self.swa_start}")
        if not self.swa_lr > 0:
            problems.append(f"swa_lr must be > 0, got {self.swa_lr}")
        if problems:
            raise ValueError("; ".join(problems))

    def resolved(self, device: torch.device | str) -> tuple[bool, bool]:
        """``(bf16, channels_last)`` as they apply on ``device``: the ``auto`` values turn on
        on CUDA only, where bf16 autocast and channels-last convolutions are the fast path.
        Elsewhere they stay off: bf16 changes the numbers, and on a CPU it is fast only with
        bf16 instructions; set them explicitly there."""
        cuda = torch.device(device).type == "cuda"
        bf16 = self.precision == "bf16" or (self.precision == "auto" and cuda)
        channels_last = cuda if self.channels_last is None else self.channels_last
        return bf16, channels_last

    @property
    def swa_start_epoch(self) -> int | None:
        """The epoch index (0-based) at which SWA begins, or ``None`` without SWA."""
        if self.swa_start is None:
            return None
        return int(self.swa_start * self.epochs)

    def swa_start_step(self, steps_per_epoch: int) -> int | None:
        """The global step at which SWA begins, or ``None`` without SWA."""
        epoch = self.swa_start_epoch
        return None if epoch is None else epoch * steps_per_epoch
