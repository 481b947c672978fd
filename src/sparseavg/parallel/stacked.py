"""The stacked executor: a cycle's ingredients trained as one batched model on one device.

K jobs that differ only in seed, learning rate (and its schedule) and weight decay train as
one model whose trainable parameters are one ``(K, P)`` tensor. ``torch.func.functional_call``
under ``torch.vmap`` runs the K forward passes at once (K convolutions become one grouped
convolution, K matrix products one batched product), one backward gives the ``(K, P)``
gradient, and one SGD update over ``(K, P)`` with ``(K,)`` learning rates and weight decays
steps all K. BatchNorm running statistics are stacked ``(K, ...)`` per ingredient and updated
in place under vmap (which batches the in-place update of a batched buffer).

Ingredient k sees exactly what :func:`~sparseavg.train` would show it: the batches and the
augmentation of its own generator ``make_generator(seed, "epoch", epoch)``, its own learning
rate at every step, the shared mask on its gradients before and its weights after every step,
its own SWA average (``torch.optim.swa_utils.AveragedModel``, applied to the stack). Its
checkpoints, divergence handling and result are :func:`~sparseavg.train` 's, so a run started
by one executor can be resumed by the other. What is not stacked falls back to
:class:`~.sequential.Sequential`, saying why (see :func:`unstackable`).

Differences from :class:`~.sequential.Sequential`, none of which change what is computed:

- floating-point rounding: a grouped convolution or a batched matrix product sums in another
  order than K separate ones (float64: ~1e-15 relative per step);
- an ingredient whose loss became NaN/inf in an epoch is reported through ``hooks.diverged`` at
  that epoch's end and dropped from the stack; the others go on;
- every ingredient's ``seconds`` is the wall time of the stack (all of them trained during all
  of it), plus the seconds of the checkpoint it resumed; so are its epochs' ``seconds``;
- under dropout, vmap draws independent masks per ingredient from the global generator
  (``randomness="different"``), as separate runs would, but not the same draws.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from ..data import BatchSource
from ..pruning import Lockstep, Mask
from ..training import (
    DivergenceError,
    EpochLog,
    TrainResult,
    TrainSettings,
    TrainState,
    learning_rate,
    steps_per_epoch,
)
from ..training.evaluate import model_device
from ..utils.seeding import make_generator
from ..utils.state import State
from .base import Hooks, Job, Outcome, Tracker, Trainer, Work
from .sequential import Sequential
from .stack import (
    Layout,
    LossFn,
    StackedModel,
    flat_mask,
    make_loss,
    momentum_row,
    optimizer_state,
    read_state,
    sgd_step,
    stack_inputs,
    swa_copy,
    swa_state_dict,
)
from .trainers import LoopTrainer

#: settings every stacked job must share; the others (lr, weight decay, the schedule and its
#: parameters, swa_lr) only change the learning rate and weight decay of each step.
SHARED_SETTINGS: tuple[str, ...] = (
    "epochs",
    "batch_size",
    "drop_last",
    "optimizer",
    "momentum",
    "nesterov",
    "swa_start",
    "augment",
    "precision",
    "channels_last",
)

Checkpoint = tuple[TrainState, float]


# -- what can be stacked -------------------------------------------------------------------------


def unstackable(model: nn.Module, work: Work, jobs: Sequence[Job]) -> str | None:
    """Why ``jobs`` (two or more) cannot train as one stack (``None`` if they can)."""
    if work.during is not None:
        return "a mask schedule changes the mask during training"
    if work.compile:
        return "execution.compile compiles one model's forward, not the stacked one"
    first = jobs[0].settings
    for job in jobs:
        if job.settings.optimizer != "sgd":
            return f"optimizer {job.settings.optimizer!r} is not stacked (SGD only)"
        for name in SHARED_SETTINGS:
            if getattr(job.settings, name) != getattr(first, name):
                return f"ingredients differ in {name}"
    params = list(model.parameters())
    if not all(p.requires_grad for p in params):
        return "the model has frozen parameters"
    if len({p.dtype for p in params}) > 1:
        return "the model's parameters differ in dtype"
    layout = Layout.of(model)
    if not set(layout.keys) <= set(layout.params) | set(layout.buffers):
        return "the model's state has entries that are neither parameters nor buffers"
    return None


def read_checkpoints(
    jobs: Sequence[Job], hooks: Hooks
) -> tuple[list[Checkpoint | None], str | None]:
    """Every job's checkpoint (``hooks.resume``), and why they cannot resume as one stack
    (``None`` if they can: none has one, or all have one at the same step)."""
    found = [hooks.resume(job) for job in jobs]
    present = [c for c in found if c is not None]
    if not present:
        return found, None
    if len(present) < len(found):
        return found, "some ingredients have a checkpoint and some not"
    if len({state.step for state, _ in present}) > 1:
        return found, "the ingredients' checkpoints are at different steps"
    if any(state.mask is not None for state, _ in present):
        return found, "a checkpoint holds a mask changed during training"
    return found, None


# -- the executor --------------------------------------------------------------------------------


class Stacked:
    """Trains the jobs as one batched model on the model's device (see the module docstring);
    falls back to :class:`~.sequential.Sequential` for what it cannot stack, saying why."""

    name = "stacked"

    def run(
        self, model: nn.Module, trainer: Trainer, work: Work, jobs: Sequence[Job], hooks: Hooks
    ) -> dict[int, Outcome]:
        if len(jobs) <= 1:  # nothing to stack, nothing worth saying
            return Sequential().run(model, trainer, work, jobs, hooks)
        if not isinstance(trainer, LoopTrainer):
            hooks.message(
                "stacked: a training function of your own is not stacked; training them one by one"
            )
            return Sequential().run(model, trainer, work, jobs, hooks)
        if isinstance(work.during, Lockstep):
            hooks.message(
                "stacked: these ingredients train in lock step (one step each in turn); "
                "training them together here"
            )
            return Sequential().run(model, trainer, work, jobs, hooks)
        reason = unstackable(model, work, jobs)
        checkpoints: list[Checkpoint | None] = [None] * len(jobs)
        if reason is None:
            checkpoints, reason = read_checkpoints(jobs, hooks)
        if reason is not None:
            hooks.message(f"stacked: {reason}; training them one by one")
            return Sequential().run(model, trainer, work, jobs, hooks)
        tracker = hooks.track(jobs)
        try:
            return train_stacked(model, trainer.data, work, jobs, checkpoints, hooks, tracker)
        finally:
            tracker.close()


# -- the training loop ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What the stacked jobs share (see :data:`SHARED_SETTINGS`), as :func:`~sparseavg.train`
    derives it: ``spe`` steps per epoch, ``stop`` steps in all, the SWA start (epoch and step,
    or ``None``), bf16 autocast and channels-last inputs on ``device``."""

    settings: TrainSettings
    device: torch.device
    spe: int
    stop: int
    swa_start_epoch: int | None
    swa_start_step: int | None
    bf16: bool
    channels_last: bool

    @classmethod
    def of(cls, settings: TrainSettings, data: BatchSource, device: torch.device) -> Plan:
        spe = steps_per_epoch(data, settings.batch_size, settings.drop_last)
        bf16, channels_last = settings.resolved(device)
        return cls(
            settings,
            device,
            spe,
            settings.epochs * spe,
            settings.swa_start_epoch,
            settings.swa_start_step(spe),
            bf16,
            channels_last,
        )

    def rate(self, settings: TrainSettings, step: int) -> float:
        """A job's learning rate at ``step``, as :func:`~sparseavg.train` sets it."""
        return learning_rate(settings, step, self.stop, self.swa_start_step)


@dataclass
class Member:
    """One job of the stack and what :func:`~sparseavg.train` keeps for it besides its
    weights, buffers, momentum and SWA average: its epoch losses and records, its rewind
    state (carried from a checkpoint) and the training seconds spent before this call."""

    job: Job
    losses: list[float]
    rewind: State | None = None
    before: float = 0.0
    history: list[EpochLog] = field(default_factory=list)


@dataclass
class Stack:
    """A stacked run between two steps. Copy k of every stacked tensor belongs to
    ``members[k]``.

    Attributes:
        model: the scratch model (the architecture ``functional_call`` runs, the parameters
            SGD state dicts are made for).
        layout: where its state lives in the stack.
        members: the jobs still training, in index order.
        weights: parameters ``flat`` ``(K, P)`` and buffers ``(K, ...)``.
        swa: the SWA average of ``weights`` (``None`` without SWA).
        momentum: ``(K, P)`` SGD momentum buffers (``None`` before the first step or without
            momentum).
        step: the global step reached.
    """

    model: nn.Module
    layout: Layout
    members: list[Member]
    weights: StackedModel
    swa: AveragedModel | None
    momentum: Tensor | None
    step: int

    @classmethod
    def start(
        cls,
        model: nn.Module,
        plan: Plan,
        work: Work,
        jobs: Sequence[Job],
        checkpoints: Sequence[Checkpoint | None],
    ) -> Stack:
        """The stack ``train`` would start from for each job: ``work.start``, or the job's
        checkpoint (all or none, at one step)."""
        layout = Layout.of(model)
        start = read_state(model, layout, work.start)
        copies, averages, members, buffers = [], [], [], []
        n_averaged, step = 0, work.start_step
        for job, checkpoint in zip(jobs, checkpoints, strict=True):
            if checkpoint is None:
                copies.append(start)
                averages.append(start)  # AveragedModel's copy of the model it is built from
                members.append(Member(job, []))
                continue
            resume, seconds = checkpoint
            copies.append(read_state(model, layout, resume.model))
            buffers.append(momentum_row(model, layout, job.settings, resume.optimizer))
            average = start
            if resume.swa is not None:
                average, n_averaged = swa_copy(model, layout, resume.swa)
            averages.append(average)
            members.append(
                Member(job, list(resume.losses), resume.rewind, seconds, list(resume.history))
            )
            step = resume.step
        swa = None
        if plan.swa_start_step is not None:
            swa = AveragedModel(StackedModel(averages), use_buffers=False)
            swa.n_averaged.fill_(n_averaged)
        momentum = None
        if buffers and all(b is not None for b in buffers):
            momentum = torch.stack([b for b in buffers if b is not None])
        return cls(model, layout, members, StackedModel(copies), swa, momentum, step)

    def drop(self, gone: Sequence[int]) -> None:
        """Take copies ``gone`` out of the stack."""
        keep = [k for k in range(len(self.members)) if k not in gone]
        self.members = [self.members[k] for k in keep]
        self.weights.select(keep)
        if self.swa is not None:
            _averaged(self.swa).select(keep)
        if self.momentum is not None:
            self.momentum = self.momentum[torch.tensor(keep, device=self.momentum.device)]

    def checkpoint(self, k: int, lr: float) -> TrainState:
        """Copy k's epoch checkpoint in :func:`~sparseavg.train` 's format; ``lr``: the rate of
        the step just taken (its SGD param group's)."""
        member = self.members[k]
        momentum = None if self.momentum is None else self.momentum[k]
        return TrainState(
            step=self.step,
            model=self.layout.state(self.weights.copy(k)),
            optimizer=optimizer_state(self.model, self.layout, member.job.settings, lr, momentum),
            swa=None if self.swa is None else _swa_of(self.swa, self.layout, k),
            rewind=member.rewind,
            losses=list(member.losses),
            history=list(member.history),
        )

    def result(self, k: int, mask: Mask) -> TrainResult:
        """Copy k's :class:`~sparseavg.training.TrainResult`, as :func:`~sparseavg.train`
        returns it."""
        swa_state: State | None = None
        swa_count = 0 if self.swa is None else int(self.swa.n_averaged)
        if self.swa is not None and swa_count > 0:
            swa_state = self.layout.state(_averaged(self.swa).copy(k))
        return TrainResult(
            state=self.layout.state(self.weights.copy(k)),
            swa_state=swa_state,
            rewind_state=self.members[k].rewind,
            losses=list(self.members[k].losses),
            steps=self.step,
            swa_count=swa_count,
            mask=mask,
            history=list(self.members[k].history),
        )


def epoch_batches(
    data: BatchSource, plan: Plan, jobs: Sequence[Job], epoch: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch of stacked batches ``(x (K, B, ...), y (K, B))``: job k's are those
    :func:`~sparseavg.train` draws from ``make_generator(seed, "epoch", epoch)``."""
    settings = plan.settings
    sources = [
        data.batches(
            settings.batch_size,
            generator=make_generator(job.seed, "epoch", epoch),
            augment=settings.augment,
            drop_last=settings.drop_last,
        )
        for job in jobs
    ]
    for batch in zip(*sources, strict=True):
        x = stack_inputs([b[0] for b in batch], plan.channels_last)
        y = torch.stack([b[1] for b in batch])
        yield x.to(plan.device, non_blocking=True), y.to(plan.device, non_blocking=True)


@dataclass(frozen=True)
class EpochSteps:
    """What :func:`train_epoch` leaves for the epoch's end, on the device.

    Attributes:
        losses: ``(steps, K)`` the steps' losses (default float dtype, as ``train``).
        hits: ``(steps, K)`` int64 counts of each copy's samples predicted right.
        samples: samples per copy in all of the steps.
        started: ``time.perf_counter()`` when the epoch's training began.
    """

    losses: Tensor
    hits: Tensor
    samples: int
    started: float


def train_epoch(
    stack: Stack,
    data: BatchSource,
    plan: Plan,
    loss_fn: LossFn,
    factors: Tensor | None,
    tracker: Tracker,
) -> EpochSteps:
    """Train the stack to the end of the epoch of ``stack.step`` (or ``plan.stop``)."""
    started = time.perf_counter()
    first = stack.step
    epoch, offset = divmod(first, plan.spe)
    end = min((epoch + 1) * plan.spe, plan.stop)
    jobs = [m.job for m in stack.members]
    dtype, device = stack.weights.flat.dtype, plan.device
    rates = torch.tensor(
        [[plan.rate(j.settings, s) for j in jobs] for s in range(first, end)], dtype=dtype
    ).to(device, non_blocking=True)
    decay = torch.tensor([j.settings.weight_decay for j in jobs], dtype=dtype)
    weight_decay = decay.to(device) if bool(decay.any()) else None
    nesterov = plan.settings.nesterov and plan.settings.momentum > 0
    losses = torch.empty(end - first, len(jobs), device=device)
    hits = torch.empty(end - first, len(jobs), dtype=torch.int64, device=device)
    samples = 0
    flat = stack.weights.flat
    for i, (x, y) in enumerate(epoch_batches(data, plan, jobs, epoch)):
        if i < offset:
            continue  # resuming inside an epoch: same generators, skip what was done
        if stack.step >= end:
            break
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=plan.bf16):
            loss, hit = loss_fn(flat, stack.weights.stacked_buffers(), x, y)
        flat.grad = None
        loss.sum().backward()
        assert flat.grad is not None
        stack.momentum = sgd_step(
            flat.detach(),
            flat.grad,
            stack.momentum,
            rates[stack.step - first],
            weight_decay,
            factors,
            momentum=plan.settings.momentum,
            nesterov=nesterov,
        )
        losses[stack.step - first] = loss.detach()
        hits[stack.step - first] = hit
        samples += y[0].numel()
        stack.step += 1
        tracker(stack.step, plan.stop, None)
    flat.grad = None
    done = stack.step - first
    return EpochSteps(losses[:done], hits[:done], samples, started)


def end_epoch(stack: Stack, plan: Plan, steps: EpochSteps, hooks: Hooks) -> dict[int, Outcome]:
    """:func:`~sparseavg.train` 's epoch end for every copy, after the ``steps`` of an epoch
    that began at step ``stack.step - len(steps.losses)``: diverged copies go to
    ``hooks.diverged`` (and ``hooks.save``) and out of the stack; the others record their
    mean loss and the epoch (:class:`~sparseavg.training.EpochLog`) and update their SWA
    average.

    Returns:
        The outcomes of the diverged copies, by job index.
    """
    losses, hits = steps.losses, steps.hits
    first = stack.step - losses.shape[0]
    epoch = first // plan.spe
    finite = torch.isfinite(losses).cpu()
    gone = [k for k in range(len(stack.members)) if not bool(finite[:, k].all())]
    outcomes: dict[int, Outcome] = {}
    for k in gone:
        job = stack.members[k].job
        bad = int((~finite[:, k]).nonzero()[0, 0])
        outcome = hooks.diverged(job, DivergenceError(first + bad, epoch))
        hooks.save(job, outcome)
        outcomes[job.index] = outcome
    if gone:
        stack.drop(gone)
        kept = [k for k in range(losses.shape[1]) if k not in gone]
        losses, hits = losses[:, kept], hits[:, kept]
    if not stack.members or stack.step != (epoch + 1) * plan.spe:
        return outcomes
    # per column, as train() takes the mean of its (steps,) losses
    means = torch.stack([losses[:, k].contiguous().mean() for k in range(losses.shape[1])])
    right = hits.sum(dim=0).tolist()
    seconds = time.perf_counter() - steps.started
    for member, mean, count in zip(stack.members, means.tolist(), right, strict=True):
        member.losses.append(mean)
        lr = plan.rate(member.job.settings, stack.step - 1)
        member.history.append(EpochLog(epoch, stack.step, mean, count / steps.samples, lr, seconds))
    start = plan.swa_start_epoch
    if stack.swa is not None and start is not None and epoch >= start:
        stack.swa.update_parameters(stack.weights)
    return outcomes


def train_stacked(
    model: nn.Module,
    data: BatchSource,
    work: Work,
    jobs: Sequence[Job],
    checkpoints: Sequence[Checkpoint | None],
    hooks: Hooks,
    tracker: Tracker,
) -> dict[int, Outcome]:
    """:func:`~sparseavg.train` of every job at once, from ``work.start`` or the jobs'
    ``checkpoints`` (all or none, at one step): checkpoints, outcomes and saves through
    ``hooks``, progress to ``tracker``. Returns the outcomes by job index."""
    t0 = time.perf_counter()
    device = model_device(model)
    plan = Plan.of(jobs[0].settings, data, device)
    for job, checkpoint in zip(jobs, checkpoints, strict=True):
        if checkpoint is not None:
            step = checkpoint[0].step
            hooks.message(f"cycle {work.cycle} ingredient {job.index}: resuming at step {step}")
    stack = Stack.start(model, plan, work, jobs, checkpoints)
    mask = work.mask.to(device)
    mask.validate(model)
    factors = flat_mask(mask, stack.layout, stack.weights.flat)
    if factors is not None:
        with torch.no_grad():
            stack.weights.flat.mul_(factors)
    loss_fn = make_loss(model, stack.layout)
    model.train()
    outcomes: dict[int, Outcome] = {}
    while stack.step < plan.stop and stack.members:
        steps = train_epoch(stack, data, plan, loss_fn, factors, tracker)
        outcomes.update(end_epoch(stack, plan, steps, hooks))
        if stack.step % plan.spe == 0:
            seconds = time.perf_counter() - t0
            for k, member in enumerate(stack.members):
                state = stack.checkpoint(k, plan.rate(member.job.settings, stack.step - 1))
                hooks.checkpoint(member.job, state, member.before + seconds)
        last = [m.losses[-1] for m in stack.members if m.losses]
        tracker(stack.step, plan.stop, sum(last) / len(last) if last else None)
    seconds = time.perf_counter() - t0
    for k, member in enumerate(stack.members):
        outcome = hooks.finish(member.job, stack.result(k, mask), member.before + seconds)
        hooks.save(member.job, outcome)
        outcomes[member.job.index] = outcome
    return outcomes


def _averaged(swa: AveragedModel) -> StackedModel:
    module = swa.module
    assert isinstance(module, StackedModel)
    return module


def _swa_of(swa: AveragedModel, layout: Layout, k: int) -> dict[str, Tensor]:
    n_averaged = swa.n_averaged
    assert isinstance(n_averaged, Tensor)
    return swa_state_dict(layout, n_averaged, _averaged(swa).copy(k))
