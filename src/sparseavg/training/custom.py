"""A user's own training function inside a recipe: what it is asked to do, and the check that
it did it.

A recipe run with the user's loop (``sparseavg.swamp(model_fn, train_fn, eval_fn, ...)``)
calls ``train_fn(model, mask, seed, settings)`` once per ingredient, with ``settings`` a
:class:`LoopSettings`: the recipe's hyperparameters for this run, the epochs to train, the
recipe's learning-rate schedule as a function, and :meth:`LoopSettings.end_epoch`, which the
loop calls after every epoch so that SWA (SWAMP's averaging over the last epochs), progress
and the mask check happen where the recipe needs them. :func:`run_user_loop` makes the call
and turns what it left into a :class:`~sparseavg.training.TrainResult`.

In a user's loop one *step* of the run is one epoch: ``start_epoch`` is the rewind point of
rewinding recipes, and checkpoints are whole ingredients (an interrupted ingredient trains
again from its start when the run resumes).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from ..pruning import (
    FeedbackMaskSchedule,
    Lockstep,
    Mask,
    MaskError,
    MaskSchedule,
    StepMaskSchedule,
)
from ..utils.state import clone_state
from .attach import AttachedMask, attach
from .attach_feedback import AttachedFeedback
from .history import EpochLog
from .loop import DivergenceError, Progress, TrainResult
from .schedules import learning_rate
from .settings import TrainSettings


class TrainFn(Protocol):
    """``train_fn(model, mask, seed, settings) -> None``: train ``model`` in place.

    ``model`` is on its device with the start weights loaded (pruned weights already 0);
    ``mask`` is the :class:`~sparseavg.Mask` to keep, on the model's device (empty in the
    dense run that makes the ticket): keep it with ``settings.attach(model, optimizer)``
    (:meth:`LoopSettings.attach`, which also follows a mask the recipe changes at epoch ends:
    gmp), or ``sparseavg.attach(model, mask, optimizer)`` where it does not; ``seed`` fixes
    the run's batch order and augmentation (particles differ in it); ``settings`` is a
    :class:`LoopSettings`.
    """

    def __call__(self, model: nn.Module, mask: Mask, seed: int, settings: LoopSettings) -> None: ...


@dataclass
class LoopSettings:
    """What one call of a user's ``train_fn`` is asked to do.

    Attributes:
        train: the recipe's hyperparameters for this run (``epochs``, ``lr``,
            ``weight_decay``, ``momentum``, ``schedule``, ``swa_start``, ...). Batch size,
            augmentation and precision are the loop's own business.
        start_epoch: the first epoch to train (the rewind point of rewinding recipes, else 0).
        stop_epoch: train up to this epoch, exclusive (``train.epochs``, or the rewind point
            in the dense run that makes the ticket).
        cycle: the pruning cycle (0 = dense).
        index: the ingredient's index in its cycle (-1 for the ticket run).
        history: one :class:`~.history.EpochLog` per :meth:`end_epoch` call (its loss and
            accuracy as reported, no learning rate: the loop's optimizer is its own).
        mask: the run's mask as it stands (a recipe that changes it during training moves
            it at epoch ends or steps; ``None`` only for settings made by hand).
        schedule: how the recipe changes the mask during training (gmp, rigl, dpf), or
            ``None``.
        attached: what :meth:`attach` attached, or ``None`` before it is called.
    """

    train: TrainSettings
    start_epoch: int
    stop_epoch: int
    cycle: int = 0
    index: int = 0
    mask: Mask | None = None
    progress: Progress | None = None
    swa: AveragedModel | None = field(default=None, repr=False)
    history: list[EpochLog] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter, repr=False)
    schedule: MaskSchedule | None = field(default=None, repr=False)
    attached: AttachedMask | AttachedFeedback | None = field(default=None, repr=False)

    def attach(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        steps_per_epoch: int | None = None,
    ) -> AttachedMask | AttachedFeedback:
        """:func:`~sparseavg.attach` the run's mask to ``optimizer``, following it when the
        recipe changes it: at epoch ends (gmp: :meth:`end_epoch` tightens the attached mask),
        at optimizer steps (rigl: :meth:`~sparseavg.training.AttachedMask.follow_steps`), or
        with DPF's error feedback (dpf, sms-dpf: an :class:`~.attach_feedback.
        AttachedFeedback`, forward at ``w ⊙ m``, the step on the dense ``w``). The last two
        need ``steps_per_epoch``, the loop's ``optimizer.step()`` calls per epoch. Use it
        instead of ``sparseavg.attach(model, mask, optimizer)`` in a ``train_fn`` that any
        recipe may call.

        Raises:
            ValueError: the run has no mask (the dense run to the rewind point), or the recipe
                changes the mask at steps and ``steps_per_epoch`` is missing or below 1.
        """
        if self.mask is None:
            raise ValueError("settings.attach: this run trains densely; there is no mask")
        stepwise = isinstance(self.schedule, (StepMaskSchedule, FeedbackMaskSchedule))
        if stepwise and (steps_per_epoch is None or steps_per_epoch < 1):
            raise ValueError(
                "settings.attach: this recipe changes the mask at optimizer steps; pass "
                "steps_per_epoch, the optimizer.step() calls of one epoch"
            )
        start = self.start_epoch * (steps_per_epoch or 0)
        attached: AttachedMask | AttachedFeedback
        if isinstance(self.schedule, FeedbackMaskSchedule):
            assert steps_per_epoch is not None
            attached = AttachedFeedback(
                model, self.mask, optimizer, self.schedule, steps_per_epoch, start
            )
        else:
            attached = attach(model, self.mask, optimizer)
            if isinstance(self.schedule, StepMaskSchedule):
                assert steps_per_epoch is not None
                total = self.train.epochs * steps_per_epoch
                attached.follow_steps(self.schedule, steps_per_epoch, total, start)
        self.attached = attached
        return attached

    @property
    def epochs_done(self) -> int:
        """How many times :meth:`end_epoch` was called."""
        return len(self.history)

    @property
    def losses(self) -> list[float]:
        """The losses the loop reported, one per epoch that reported one."""
        return [e.loss for e in self.history if e.loss is not None]

    @property
    def epochs(self) -> int:
        """Epochs of the whole schedule (``train.epochs``)."""
        return self.train.epochs

    @property
    def lr(self) -> float:
        """The peak learning rate."""
        return self.train.lr

    @property
    def weight_decay(self) -> float:
        return self.train.weight_decay

    @property
    def momentum(self) -> float:
        return self.train.momentum

    @property
    def epoch_range(self) -> range:
        """``range(start_epoch, stop_epoch)``: the epochs this call trains."""
        return range(self.start_epoch, self.stop_epoch)

    def learning_rate(self, step: int, steps_per_epoch: int) -> float:
        """The recipe's learning rate at optimizer step ``step`` of the whole schedule
        (``epoch * steps_per_epoch + i``, counted from epoch 0 even when ``start_epoch > 0``),
        with ``steps_per_epoch`` steps in each of ``train.epochs`` epochs: the warm-up, the
        decay and SWA's constant ``swa_lr`` of the built-in loop (:func:`~.learning_rate`)."""
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        total = self.train.epochs * steps_per_epoch
        return learning_rate(self.train, step, total, self.train.swa_start_step(steps_per_epoch))

    def end_epoch(
        self,
        model: nn.Module,
        loss: float | None = None,
        accuracy: float | None = None,
        lr: float | None = None,
    ) -> None:
        """Call once after every epoch of :attr:`epoch_range`, with the epoch's mean training
        loss (nats), training accuracy (the share of correct predictions, 0 to 1) and the
        learning rate of its last step, each if known: checks that the pruned weights are
        still exactly 0, takes the SWA snapshot when the recipe averages this epoch, records
        the epoch (the run's ``epochs.jsonl``), reports progress. ``loss``, ``accuracy`` and
        ``lr`` may be 0-d tensors.

        Raises:
            MaskError: a pruned weight is nonzero (keep the mask with :func:`sparseavg.attach`).
            DivergenceError: ``loss`` or a weight is NaN/inf.
            ValueError: ``accuracy`` is not a share between 0 and 1, or ``lr`` is negative or
                not finite.
            RuntimeError: called more often than the epochs to train.
        """
        if accuracy is not None:
            accuracy = float(accuracy)
            if not 0.0 <= accuracy <= 1.0:
                raise ValueError(
                    f"end_epoch: accuracy = {accuracy!r}; pass the share of correct "
                    "predictions, between 0 and 1"
                )
        if lr is not None:
            lr = float(lr)
            if not (math.isfinite(lr) and lr >= 0.0):
                raise ValueError(
                    f"end_epoch: lr = {lr!r}; pass the learning rate of the epoch's last "
                    "step, a finite number >= 0"
                )
        epoch = self.start_epoch + self.epochs_done
        if epoch >= self.stop_epoch:
            raise RuntimeError(
                f"end_epoch called {self.epochs_done + 1} times; this run trains "
                f"{self.stop_epoch - self.start_epoch} epochs ({self.start_epoch} to "
                f"{self.stop_epoch - 1})"
            )
        if (loss is not None and not math.isfinite(loss)) or not _finite(model):
            raise DivergenceError(epoch, epoch)
        self._follow_steps()
        if isinstance(self.attached, AttachedFeedback):
            self.attached.epoch_end(epoch + 1)  # the model keeps dense weights: no check
            self.mask = self.attached.mask
        else:
            check_mask_kept(model, self.mask, f"after epoch {epoch}")
            self._update_mask(model, epoch)
        now = time.perf_counter()
        self.history.append(
            EpochLog(
                epoch,
                epoch + 1,
                None if loss is None else float(loss),
                accuracy,
                lr,
                now - self.started,
            )
        )
        self.started = now
        start = self.train.swa_start_epoch
        if self.swa is not None and start is not None and epoch >= start:
            self.swa.update_parameters(model)
        if self.progress is not None:
            losses = self.losses
            self.progress(epoch + 1, self.stop_epoch, losses[-1] if losses else None)

    def _follow_steps(self) -> None:
        """Under a step schedule (rigl) :attr:`mask` is the attached mask's, which the
        optimizer's hooks move; a loop that did not attach through :meth:`attach` is
        stopped."""
        stepwise = isinstance(self.schedule, (StepMaskSchedule, FeedbackMaskSchedule))
        if not stepwise or self.mask is None:
            return
        if self.attached is None or self.attached.steps_per_epoch is None:
            raise RuntimeError(
                "this recipe changes the mask at optimizer steps (rigl, dpf): keep it in "
                "train_fn with settings.attach(model, optimizer, steps_per_epoch)"
            )
        self.mask = self.attached.mask

    @torch.no_grad()
    def _update_mask(self, model: nn.Module, epoch: int) -> None:
        """The recipe's epoch-end mask change (gmp's step after ``epoch``): the new mask
        replaces :attr:`mask`, its pruned weights are zeroed in ``model`` and, when the loop
        attached through :meth:`attach`, in the attached mask and its optimizer's state."""
        if self.schedule is None or self.mask is None:
            return
        params = dict(model.named_parameters())
        weights = {name: params[name].detach() for name in self.mask}
        new = self.schedule.update(epoch + 1, weights, None, self.mask)
        if new is None:
            return
        new = new.to(next(iter(weights.values())).device) if weights else new
        new.apply_(model)
        if isinstance(self.attached, AttachedMask) and self.attached.attached:
            self.attached.tighten(new)
        self.mask = new


def _check_steps_taken(loop: LoopSettings) -> None:
    """A step schedule's run must have counted the optimizer steps it was told of."""
    attached = loop.attached
    spe = None if attached is None else attached.steps_per_epoch
    steps = None if attached is None else attached.steps_taken
    if spe is None or steps is None:
        raise RuntimeError(
            "this recipe changes the mask at optimizer steps (rigl, dpf): keep it in train_fn "
            "with settings.attach(model, optimizer, steps_per_epoch)"
        )
    if steps != loop.stop_epoch * spe:
        raise RuntimeError(
            f"train_fn took {steps - loop.start_epoch * spe} optimizer steps, but "
            f"settings.attach was told {spe} an epoch for {loop.stop_epoch - loop.start_epoch} "
            "epochs: the recipe's mask updates are placed by that count"
        )


def _finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.is_floating_point())


def check_mask_kept(model: nn.Module, mask: Mask | None, when: str) -> None:
    """Raise :class:`~sparseavg.MaskError` naming the layers whose pruned weights are nonzero."""
    if mask is None:
        return
    named = dict(model.named_parameters())
    bad = {}
    with torch.no_grad():
        for name, keep in mask.items():
            alive = int(((named[name] != 0) & ~keep.to(named[name].device)).sum())
            if alive:
                bad[name] = alive
    if bad:
        where = ", ".join(f"{n} ({k})" for n, k in list(bad.items())[:4])
        raise MaskError(
            f"{when}, {sum(bad.values())} pruned weights are nonzero: {where}. Keep the mask in "
            "train_fn with settings.attach(model, optimizer), which also follows a mask the "
            "recipe changes at epoch ends"
        )


def check_mask_unchanged(mask: Mask, before: dict[str, Tensor]) -> None:
    """Raise :class:`~sparseavg.MaskError` when ``mask`` differs from the copy ``before``
    taken ahead of ``train_fn`` (the loop wrote to the recipe's mask in place)."""
    changed = {
        name: int((keep != before[name].to(keep.device)).sum())
        for name, keep in mask.items()
        if not torch.equal(keep, before[name].to(keep.device))
    }
    if changed:
        where = ", ".join(f"{n} ({k})" for n, k in list(changed.items())[:4])
        raise MaskError(
            f"train_fn changed the mask in place ({sum(changed.values())} entries: {where}); "
            "the mask is the recipe's: read it, keep it with sparseavg.attach(model, mask, "
            "optimizer), never write to it"
        )


def run_user_loop(
    train_fn: TrainFn,
    model: nn.Module,
    mask: Mask,
    seed: int,
    settings: TrainSettings,
    *,
    start_epoch: int = 0,
    stop_epoch: int | None = None,
    cycle: int = 0,
    index: int = 0,
    progress: Progress | None = None,
    mask_schedule: MaskSchedule | None = None,
) -> TrainResult:
    """Call ``train_fn`` for one run and return what it left as a
    :class:`~sparseavg.training.TrainResult` (steps counted in epochs).

    ``model`` holds the start weights on its device. With SWA (``settings.swa_start``) the
    result's ``swa_state`` averages the snapshots :meth:`LoopSettings.end_epoch` took. A
    ``mask_schedule`` that changes the mask at epoch ends (gmp) is applied by
    :meth:`LoopSettings.end_epoch`; the result's ``mask`` is the last one. One that changes it
    at steps (RigL) or keeps dense weights (DPF) needs the built-in loop (``ValueError``).

    Raises:
        MaskError: ``train_fn`` wrote to the mask, or pruned weights are nonzero after the run.
        DivergenceError: the loop reported a NaN/inf loss, or left NaN/inf weights.
        RuntimeError: ``train_fn`` did not call ``end_epoch`` once per epoch although the
            recipe averages over epochs (SWA).
    """
    if isinstance(mask_schedule, Lockstep):
        raise ValueError(
            "a mask schedule that trains several models in lock step (swamp-rigl) needs the "
            "built-in training loop"
        )
    stop = settings.epochs if stop_epoch is None else min(stop_epoch, settings.epochs)
    swa = AveragedModel(model, use_buffers=False) if settings.swa_start is not None else None
    loop = LoopSettings(settings, start_epoch, stop, cycle, index, mask, progress, swa)
    loop.schedule = mask_schedule
    model.train()
    before = {name: keep.clone() for name, keep in mask.items()}
    train_fn(model, mask, seed, loop)
    check_mask_unchanged(mask, before)
    if not _finite(model):
        raise DivergenceError(stop, max(stop - 1, 0))
    if mask_schedule is not None and loop.epochs_done != stop - start_epoch:
        raise RuntimeError(
            f"train_fn called settings.end_epoch(model) {loop.epochs_done} times, but the "
            f"recipe changes the mask at epoch ends: call it once after each epoch of "
            f"settings.epoch_range ({stop - start_epoch})"
        )
    if isinstance(mask_schedule, (StepMaskSchedule, FeedbackMaskSchedule)):
        _check_steps_taken(loop)
        loop._follow_steps()  # the mask the hooks moved since the last epoch end
    dense_state = None
    if isinstance(loop.attached, AttachedFeedback):
        masked, dense_state = loop.attached.states()  # DPF's model is w ⊙ m
        loop.attached.remove()
        model.load_state_dict(masked)
    mask = loop.mask if loop.mask is not None else mask
    check_mask_kept(model, mask, "after train_fn")
    swa_state = None
    swa_count = 0
    if loop.swa is not None:
        if loop.epochs_done != stop - start_epoch:
            raise RuntimeError(
                f"train_fn called settings.end_epoch(model) {loop.epochs_done} times, but the "
                f"recipe averages weights (SWA) over epochs {settings.swa_start_epoch} to "
                f"{stop - 1}: call it once after each epoch of settings.epoch_range"
            )
        swa_count = int(loop.swa.n_averaged)
        if swa_count:
            swa_state = _swa_weights(loop.swa, model)
    return TrainResult(
        state=clone_state(model, device="cpu"),
        swa_state=swa_state,
        rewind_state=None,
        losses=loop.losses,
        steps=stop,
        swa_count=swa_count,
        mask=mask,
        history=loop.history,
        dense_state=dense_state,
    )


def _swa_weights(swa: AveragedModel, model: nn.Module) -> dict[str, Tensor]:
    """The averaged parameters with the model's buffers (BatchNorm statistics of the last
    iterate: recalibrate before use), keyed as ``model.state_dict()``."""
    module = swa.module
    assert isinstance(module, nn.Module)
    averaged = dict(module.named_parameters(remove_duplicate=False))
    return {k: averaged.get(k, v).detach().to("cpu").clone() for k, v in model.state_dict().items()}
