"""``train_together``: several models in lock step (swamp-rigl's particles), each model's
step k before any model's step k + 1, so that a step schedule can decide from all of them.

Each model trains exactly as :func:`~sparseavg.train` would train it alone (its own optimizer,
learning rate, batch order ``make_generator(seed, "epoch", e)``, SWA, epoch records and
checkpoints), except in two places. At the schedule's update steps, with ``shared`` (the
default), every model runs forward and backward on its own batch, then *one*
:meth:`~sparseavg.pruning.StepMaskSchedule.update_step` is taken on the models' mean weights
and mean dense gradients, and the new mask is written into every model (dropped and grown
weights at exactly 0 with zero optimizer state); no model takes an optimizer step on that
batch, so all models hold the same mask at every step. Without ``shared`` each model updates
its own mask, exactly as :func:`~sparseavg.train` would. And for the first ``shared_steps``
every model takes the first model's batches. With one model the run is
:func:`~sparseavg.train` 's, bit for bit.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, islice

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from ..data import BatchSource
from ..pruning import FeedbackMaskSchedule, Mask, StepMaskSchedule
from ..pruning.rigl import apply_mask_update_, particle_mean
from ..utils.seeding import make_generator
from ..utils.state import clone_state
from .evaluate import model_device
from .history import EpochLog
from .loop import (
    DivergenceError,
    Progress,
    TrainResult,
    TrainState,
    _autocast,
    _clear_gradients,
    _compiled,
    _epoch_summary,
    _swa_state,
    _swa_to_cpu,
    _update_mask_at_step,
    build_optimizer,
    correct_predictions,
    optimizer_state_to_cpu,
    steps_per_epoch,
)
from .masking import MaskEnforcer
from .schedules import learning_rate
from .settings import TrainSettings

#: settings the models must share so that their steps and epochs line up
LOCKSTEP_SETTINGS: tuple[str, ...] = ("epochs", "batch_size", "drop_last")


@dataclass
class _Member:
    """One model of the lock step and what :func:`~sparseavg.train` keeps for it."""

    model: nn.Module
    settings: TrainSettings
    seed: int
    optimizer: torch.optim.Optimizer
    swa: AveragedModel | None
    swa_start_step: int | None
    channels_last: bool
    autocast: Callable[[], object]
    forward: Callable[[Tensor], Tensor]
    losses: list[float] = field(default_factory=list)
    history: list[EpochLog] = field(default_factory=list)
    lr: float | None = None
    batches: Iterator[tuple[Tensor, Tensor]] = field(default_factory=lambda: iter(()))
    step_losses: list[Tensor] = field(default_factory=list)
    step_hits: list[Tensor] = field(default_factory=list)
    trained: list[Tensor] = field(init=False)

    def __post_init__(self) -> None:
        # the parameters whose gradients each step clears, read once (train() does the same)
        self.trained = [p for group in self.optimizer.param_groups for p in group["params"]]


def check_lockstep(settings: Sequence[TrainSettings], seeds: Sequence[int]) -> None:
    """Raise ``ValueError`` unless ``settings`` (one per model, at least one) share
    :data:`LOCKSTEP_SETTINGS` and there is one seed per model."""
    if not settings:
        raise ValueError("train_together needs at least one model")
    if len(seeds) != len(settings):
        raise ValueError(f"{len(settings)} models but {len(seeds)} seeds")
    for name in LOCKSTEP_SETTINGS:
        values = {getattr(s, name) for s in settings}
        if len(values) > 1:
            raise ValueError(f"models in lock step must share {name}, got {sorted(values)}")


def train_together(
    models: Sequence[nn.Module],
    data: BatchSource,
    settings: Sequence[TrainSettings],
    *,
    seeds: Sequence[int],
    mask: Mask,
    mask_schedule: StepMaskSchedule,
    start_step: int = 0,
    shared_steps: int = 0,
    shared: bool = True,
    resume: Sequence[TrainState] | None = None,
    on_epoch_end: Callable[[int, TrainState], None] | None = None,
    progress: Progress | None = None,
    compile: bool = False,
) -> list[TrainResult]:
    """Train ``models`` in place, in lock step, sharing ``mask_schedule`` 's decisions (see the
    module docstring); returns one :class:`~sparseavg.training.TrainResult` per model.

    Args:
        models: distinct models of one architecture on one device, each already holding its
            start weights.
        data: the training split.
        settings: each model's hyperparameters; they must share :data:`LOCKSTEP_SETTINGS`
            (learning rate, weight decay, schedule and SWA may differ).
        seeds: each model's batch order and augmentation seed (as :func:`~sparseavg.train`).
        mask: the mask all models start under.
        mask_schedule: the step schedule whose updates all models share (RigL). Its
            epoch-end ``update`` sees the models' mean weights and no gradients.
        start_step: the global step to begin at.
        shared_steps: for global steps below it every model takes the first model's batches
            (and augmentation), so models that start alike stay alike until then; each takes
            its own order after it (in the epoch it falls in, from the batch at that step on).
        shared: take each update once on the models' means and give it to all (default);
            ``False``: every model updates its own mask from its own weights and gradients,
            as :func:`~sparseavg.train` would, and only the batches and steps are shared.
        resume: every model's :class:`~sparseavg.training.TrainState`, all at one step (and
            with one mask when ``shared``), to continue from.
        on_epoch_end: called with ``(model index, CPU TrainState)`` for every model at every
            epoch boundary; the state holds the model's mask.
        progress: called after every step with ``(step, total, None)`` and at every epoch end
            with the models' mean epoch loss.
        compile: run each model's forward through ``torch.compile``.

    Raises:
        DivergenceError: a model's training loss was NaN or infinite (checked once per epoch);
            the models share decisions, so all of them stop.
        ValueError: the settings, seeds or checkpoints do not line up, or the schedule is a
            feedback (DPF) schedule.
    """
    check_lockstep(settings, seeds)
    if len(models) != len(settings) or len({id(m) for m in models}) != len(models):
        raise ValueError("train_together needs one distinct model per settings")
    if isinstance(mask_schedule, FeedbackMaskSchedule):
        raise ValueError("a feedback mask schedule (DPF) keeps dense weights; not in lock step")
    device = model_device(models[0])
    first = settings[0]
    spe = steps_per_epoch(data, first.batch_size, first.drop_last)
    total = first.epochs * spe
    members = [
        _member(m, s, seed, spe, device, compile)
        for m, s, seed in zip(models, settings, seeds, strict=True)
    ]
    step = start_step
    masks = [mask] * len(members)
    if resume is not None:
        step, masks = _resume(members, resume, device, shared)
    enforcers = [MaskEnforcer(mb.model, m) for mb, m in zip(members, masks, strict=True)]
    for enforcer, mb in zip(enforcers, members, strict=True):
        enforcer.mask_weights()
        mb.model.train()
    # alike models on one batch order stay alike: until shared_steps only the first trains,
    # and the others take its state when they part (or at an epoch end before)
    lead_only = step < shared_steps and _alike(members, masks, settings)

    while step < total:
        epoch, offset = divmod(step, spe)
        epoch_end = (epoch + 1) * spe
        started, first_step = time.perf_counter(), step
        common = min(max(shared_steps - epoch * spe, 0), spe)  # this epoch's shared batches
        for mb in members:
            mb.batches = _epoch_batches(data, mb, seeds[0], epoch, offset, common)
            mb.step_losses, mb.step_hits = [], []
        for s in range(step, epoch_end):
            if lead_only and s == shared_steps:  # they part here: all take the lead's state
                lead_only = False
                _follow_lead(members, masks, enforcers)
                for mb in members[1:]:
                    mb.batches = _epoch_batches(data, mb, seeds[0], epoch, s - epoch * spe, 0)
            for mb in members[:1] if lead_only else members:
                _forward_backward(mb, s, total, device)
            n = 1 if lead_only else len(members)
            active, active_masks, active_enforcers = members[:n], masks[:n], enforcers[:n]
            if mask_schedule.updates_at(s, spe, total):
                if shared:
                    new = _shared_update(
                        mask_schedule, s, spe, total, active, active_enforcers, masks[0]
                    )
                    updated = [new] * n
                else:
                    updated = [
                        _update_mask_at_step(
                            mask_schedule, s, spe, total, mb.model, m, e, mb.optimizer
                        )
                        for mb, m, e in zip(active, active_masks, active_enforcers, strict=True)
                    ]
                masks[:n] = updated
                enforcers[:n] = [
                    MaskEnforcer(mb.model, m) for mb, m in zip(active, updated, strict=True)
                ]
                for enforcer in enforcers[:n]:  # the batch only scored growth: no step
                    enforcer.mask_gradients()
                    enforcer.mask_weights()
            else:
                for enforcer, mb in zip(enforcers[:n], active, strict=True):
                    enforcer.mask_gradients()
                    mb.optimizer.step()
                    enforcer.mask_weights()
            step = s + 1
            if progress is not None:
                progress(step, total, None)
        seconds = time.perf_counter() - started
        if lead_only:  # an epoch end before they part: all hold the lead's state
            _follow_lead(members, masks, enforcers)
        for mb in members:
            bad, mean_loss, accuracy = _epoch_summary(mb.step_losses, mb.step_hits)
            if bad is not None:
                raise DivergenceError(first_step + bad, epoch)
            mb.losses.append(mean_loss)
            mb.history.append(EpochLog(epoch, step, mean_loss, accuracy, mb.lr, seconds))
        masks, enforcers = _epoch_end_update(
            mask_schedule, epoch, members, masks, enforcers, shared
        )
        for index, (mb, m) in enumerate(zip(members, masks, strict=True)):
            start_epoch = mb.settings.swa_start_epoch
            if mb.swa is not None and start_epoch is not None and epoch >= start_epoch:
                mb.swa.update_parameters(mb.model)
            if on_epoch_end is not None:
                on_epoch_end(index, _checkpoint(mb, step, m))
        if progress is not None:
            progress(step, total, sum(mb.losses[-1] for mb in members) / len(members))

    return [
        TrainResult(
            state=clone_state(mb.model, device="cpu"),
            swa_state=_swa_state(mb.swa),
            rewind_state=None,
            losses=mb.losses,
            steps=step,
            swa_count=0 if mb.swa is None else int(mb.swa.n_averaged),
            mask=m,
            history=mb.history,
        )
        for mb, m in zip(members, masks, strict=True)
    ]


def _member(
    model: nn.Module,
    settings: TrainSettings,
    seed: int,
    spe: int,
    device: torch.device,
    compile: bool,
) -> _Member:
    """A model's optimizer, SWA average and precision, as :func:`~sparseavg.train` sets them
    up."""
    bf16, channels_last = settings.resolved(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    swa_start_step = settings.swa_start_step(spe)
    return _Member(
        model=model,
        settings=settings,
        seed=seed,
        optimizer=build_optimizer(model, settings),
        swa=AveragedModel(model, use_buffers=False) if swa_start_step is not None else None,
        swa_start_step=swa_start_step,
        channels_last=channels_last,
        autocast=_autocast(device, bf16),
        forward=_compiled(model) if compile else model,
    )


def _alike(
    members: Sequence[_Member], masks: Sequence[Mask], settings: Sequence[TrainSettings]
) -> bool:
    """Whether the members would train alike on one batch order: more than one, one
    hyperparameter set, one mask and one state (weights and buffers)."""
    if len(members) < 2 or any(s != settings[0] for s in settings[1:]):
        return False
    if any(m != masks[0] for m in masks[1:]):
        return False
    first = members[0].model.state_dict()
    return all(
        all(torch.equal(first[k], v) for k, v in mb.model.state_dict().items())
        for mb in members[1:]
    )


@torch.no_grad()
def _follow_lead(
    members: Sequence[_Member], masks: list[Mask], enforcers: list[MaskEnforcer]
) -> None:
    """Every member takes the first's state: weights, buffers, optimizer and SWA state,
    learning rate, the epoch's records so far and its mask (copies, nothing shared)."""
    lead = members[0]
    for i, mb in enumerate(members[1:], start=1):
        mb.model.load_state_dict(lead.model.state_dict())
        mb.optimizer.load_state_dict(copy.deepcopy(lead.optimizer.state_dict()))
        if mb.swa is not None and lead.swa is not None:
            mb.swa.load_state_dict(lead.swa.state_dict())
        mb.lr = lead.lr  # (the optimizer's groups came with its state)
        mb.losses, mb.history = list(lead.losses), list(lead.history)
        mb.step_losses, mb.step_hits = list(lead.step_losses), list(lead.step_hits)
        masks[i] = masks[0]
        enforcers[i] = MaskEnforcer(mb.model, masks[0])


def _epoch_batches(
    data: BatchSource, mb: _Member, first_seed: int, epoch: int, offset: int, shared: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """``mb`` 's batches of ``epoch`` from batch ``offset`` on (a resume inside the epoch skips
    the others): the first ``shared`` of them from ``first_seed`` 's order, the rest from its
    own, each order drawn as :func:`~sparseavg.train` draws it."""

    def order(seed: int) -> Iterator[tuple[Tensor, Tensor]]:
        return iter(
            data.batches(
                mb.settings.batch_size,
                generator=make_generator(seed, "epoch", epoch),
                augment=mb.settings.augment,
                drop_last=mb.settings.drop_last,
            )
        )

    if shared == 0 or mb.seed == first_seed:
        return islice(order(mb.seed), offset, None)
    own = islice(order(mb.seed), max(offset, shared), None)
    return chain(islice(order(first_seed), offset, shared), own)


def _resume(
    members: list[_Member], resume: Sequence[TrainState], device: torch.device, shared: bool
) -> tuple[int, list[Mask]]:
    """Load every member's checkpoint; returns their common step and their masks."""
    if len(resume) != len(members):
        raise ValueError(f"{len(members)} models but {len(resume)} checkpoints to resume")
    steps = {r.step for r in resume}
    if len(steps) > 1:
        raise ValueError(f"models in lock step resume at one step, got steps {sorted(steps)}")
    masks = [Mask(r.mask).to(device) for r in resume if r.mask is not None]
    if len(masks) < len(resume):
        raise ValueError("a lock-step checkpoint holds its model's mask; one has none")
    if shared and any(m != masks[0] for m in masks[1:]):
        raise ValueError("models that share decisions resume under one mask; theirs differ")
    for mb, r in zip(members, resume, strict=True):
        mb.model.load_state_dict(r.model)
        mb.optimizer.load_state_dict(r.optimizer)
        if mb.swa is not None and r.swa is not None:
            mb.swa.load_state_dict(r.swa)
        mb.losses, mb.history = list(r.losses), list(r.history)
    return resume[0].step, masks


def _epoch_end_update(
    schedule: StepMaskSchedule,
    epoch: int,
    members: Sequence[_Member],
    masks: list[Mask],
    enforcers: list[MaskEnforcer],
    shared: bool,
) -> tuple[list[Mask], list[MaskEnforcer]]:
    """The schedule's epoch-end ``update``: once on the members' mean weights when
    ``shared``, else on each member's own; new masks are tightened into the members."""
    device = model_device(members[0].model)
    if shared:
        new = schedule.update(epoch + 1, _mean_weights(members, masks[0]), None, masks[0])
        updates = [new] * len(members)
    else:
        updates = []
        for mb, m in zip(members, masks, strict=True):
            params = dict(mb.model.named_parameters())
            weights = {n: params[n].detach() for n in m}
            updates.append(schedule.update(epoch + 1, weights, None, m))
    out_masks, out_enforcers = [], []
    for mb, m, e, new in zip(members, masks, enforcers, updates, strict=True):
        if new is None:
            out_masks.append(m)
            out_enforcers.append(e)
        else:
            out_masks.append(new.to(device))
            out_enforcers.append(e.tighten(out_masks[-1], mb.optimizer))
    return out_masks, out_enforcers


def _forward_backward(mb: _Member, step: int, total: int, device: torch.device) -> None:
    """One batch of ``mb`` 's own order: learning rate, forward, loss and backward (no step)."""
    lr = learning_rate(mb.settings, step, total, mb.swa_start_step)
    if lr != mb.lr:
        for group in mb.optimizer.param_groups:
            group["lr"] = lr
        mb.lr = lr
    x, y = next(mb.batches)
    x = x.to(device, non_blocking=True)
    y = y.to(device, non_blocking=True)
    if mb.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    with mb.autocast():  # type: ignore[attr-defined]
        logits = mb.forward(x)
        loss = F.cross_entropy(logits, y)
    _clear_gradients(mb.trained)
    loss.backward()
    mb.step_losses.append(loss.detach())
    mb.step_hits.append(correct_predictions(logits.detach(), y))


def _mean_weights(members: Sequence[_Member], mask: Mask) -> dict[str, Tensor]:
    """The members' mean of every masked parameter (:func:`~sparseavg.pruning.rigl.
    particle_mean`), on their device."""
    device = model_device(members[0].model)
    weights = [dict(mb.model.named_parameters()) for mb in members]
    return {n: t.to(device) for n, t in particle_mean(weights, mask).items()}


@torch.no_grad()
def _shared_update(
    schedule: StepMaskSchedule,
    step: int,
    spe: int,
    total: int,
    members: Sequence[_Member],
    enforcers: Sequence[MaskEnforcer],
    mask: Mask,
) -> Mask:
    """One update from the members' mean weights and mean dense gradients of this step,
    written into every member (:func:`~sparseavg.pruning.rigl.apply_mask_update_`)."""
    device = model_device(members[0].model)
    grads = particle_mean([e.gradients() for e in enforcers], mask)
    new_mask, grown = schedule.update_step(
        step,
        spe,
        total,
        _mean_weights(members, mask),
        {n: g.to(device) for n, g in grads.items()},
        mask,
    )
    new_mask = new_mask.to(device)
    for mb in members:
        apply_mask_update_(dict(mb.model.named_parameters()), new_mask, grown, mb.optimizer.state)
    return new_mask


def _checkpoint(mb: _Member, step: int, mask: Mask) -> TrainState:
    """``mb`` 's CPU checkpoint at an epoch boundary, with the shared mask."""
    return TrainState(
        step=step,
        model=clone_state(mb.model, device="cpu"),
        optimizer=optimizer_state_to_cpu(mb.optimizer),
        swa=_swa_to_cpu(mb.swa) if mb.swa is not None else None,
        rewind=None,
        losses=list(mb.losses),
        mask=dict(mask.to("cpu")),
        history=list(mb.history),
    )


__all__ = ["LOCKSTEP_SETTINGS", "check_lockstep", "train_together"]
