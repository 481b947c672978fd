"""``train``: one model, one mask, one schedule, one seed; with SWA, rewind capture and resume."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from ..data import BatchSource
from ..data.split import count_batches
from ..pruning import FeedbackMaskSchedule, Mask, MaskSchedule, StepMaskSchedule
from ..pruning.dpf import masked_weights
from ..pruning.rigl import apply_mask_update_
from ..utils.seeding import make_generator
from ..utils.state import State, clone_state
from .evaluate import model_device
from .history import EpochLog
from .masking import MaskEnforcer
from .schedules import learning_rate
from .settings import TrainSettings


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite.

    Attributes:
        step: the global optimizer step (0-based) whose loss was first non-finite.
        epoch: the epoch (0-based) it fell in.
    """

    def __init__(self, step: int, epoch: int) -> None:
        super().__init__(f"training loss became non-finite at step {step} (epoch {epoch})")
        self.step = step
        self.epoch = epoch


@dataclass
class TrainState:
    """Everything needed to continue a run exactly from an epoch boundary.

    All tensors are on the CPU; the object holds only tensors, numbers, lists and dicts, so
    ``torch.load(..., weights_only=True)`` reads it back.
    """

    step: int
    model: State
    optimizer: dict[str, Any]
    swa: dict[str, Tensor] | None = None
    rewind: State | None = None
    losses: list[float] = field(default_factory=list)
    mask: dict[str, Tensor] | None = None
    history: list[EpochLog] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict for ``torch.save``."""
        return {
            "step": self.step,
            "model": self.model,
            "optimizer": self.optimizer,
            "swa": self.swa,
            "rewind": self.rewind,
            "losses": list(self.losses),
            "mask": self.mask,
            "history": [e.to_dict() for e in self.history],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        """Inverse of :meth:`to_dict`."""
        return cls(
            step=int(d["step"]),
            model=d["model"],
            optimizer=d["optimizer"],
            swa=d.get("swa"),
            rewind=d.get("rewind"),
            losses=[float(v) for v in d.get("losses", [])],
            mask=d.get("mask"),
            # checkpoints written before the history was kept resume with the later epochs'
            history=[EpochLog.from_dict(e) for e in d.get("history", [])],
        )


@dataclass
class TrainResult:
    """The outcome of :func:`train`.

    Attributes:
        state: the final weights (last iterate), on the CPU.
        swa_state: the SWA average of the per-epoch snapshots (``None`` without SWA). Its
            BatchNorm statistics are those of the last iterate: recalibrate before using it.
        rewind_state: the weights after ``rewind_step`` steps, when one was asked for.
        losses: mean training loss of each finished epoch.
        steps: optimizer steps taken in total (``start_step`` included).
        swa_count: snapshots in the SWA average.
        mask: the mask at the end (differs from the given one only under ``mask_schedule``).
        dense_state: under a :class:`~sparseavg.pruning.FeedbackMaskSchedule` (DPF), the
            final state with the dense weights ``w`` the model kept (``state`` is ``w ⊙ m``),
            on the CPU; ``None`` otherwise.
        history: one :class:`~.history.EpochLog` per finished epoch (loss, training
            accuracy, learning rate, seconds), those of a resumed checkpoint included.
    """

    state: State
    swa_state: State | None
    rewind_state: State | None
    losses: list[float]
    steps: int
    swa_count: int = 0
    mask: Mask | None = None
    history: list[EpochLog] = field(default_factory=list)
    dense_state: State | None = None

    @property
    def final_state(self) -> State:
        """The state a cycle keeps: the SWA average when there is one, else the last iterate."""
        return self.swa_state if self.swa_state is not None else self.state


class Progress(Protocol):
    """Receives progress reports; the CLI passes a rich progress bar behind this.

    :func:`train` calls it with ``(step, total, None)`` after every step, and with
    ``(step, total, loss)`` after the last step of every epoch (and when it stops), ``loss``
    being the mean loss of the last finished epoch (``None`` before one has finished).
    ``step`` counts the steps done (global, 1-based), ``total`` is the step it stops at.
    Every step is reported (the engine's tests interrupt runs at exact steps through it), so
    the receiver must be cheap: the CLI's rich bar takes about 2.5 us a call.
    """

    def __call__(self, step: int, total: int, loss: float | None) -> None: ...


def steps_per_epoch(data: BatchSource, batch_size: int, drop_last: bool = False) -> int:
    """Optimizer steps in one epoch: every batch, the last partial one included
    (``ceil(len(data) / batch_size)``), or full batches only with ``drop_last`` (at least
    one)."""
    return max(1, count_batches(len(data), batch_size, drop_last))


def build_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """The optimizer ``settings`` names, over all of the model's parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if settings.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=settings.lr,
            momentum=settings.momentum,
            nesterov=settings.nesterov and settings.momentum > 0,
            weight_decay=settings.weight_decay,
        )
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    raise ValueError(f"unknown optimizer {settings.optimizer!r}")


def _swa_to_cpu(swa: AveragedModel) -> dict[str, Tensor]:
    return clone_state(swa.state_dict(), device="cpu")


def train(
    model: nn.Module,
    data: BatchSource,
    settings: TrainSettings,
    *,
    seed: int,
    mask: Mask | None = None,
    start_step: int = 0,
    stop_step: int | None = None,
    rewind_step: int | None = None,
    resume: TrainState | None = None,
    on_epoch_end: Callable[[TrainState], None] | None = None,
    progress: Progress | None = None,
    mask_schedule: MaskSchedule | None = None,
    compile: bool = False,
) -> TrainResult:
    """Train ``model`` in place under ``mask`` and return its final weights.

    Args:
        model: the model, already on its training device, its weights already masked.
        data: the training split.
        settings: hyperparameters (:class:`TrainSettings`).
        seed: the run's seed. Epoch ``e`` draws its batch order and augmentation from a
            generator seeded with ``(seed, "epoch", e)``, so a run resumed at an epoch boundary
            sees exactly the batches an uninterrupted one would.
        mask: pruned weights are kept at exactly 0 (gradients masked before and weights after
            every step). ``None`` trains densely.
        start_step: the global step to begin at, e.g. the rewind step T0 for a run that starts
            from the rewound weights; the schedule starts there and momentum starts at 0.
        stop_step: stop after this global step (default: ``settings.epochs`` epochs). Used for
            the common dense run up to the rewind point.
        rewind_step: capture the weights after this many global steps as ``rewind_state``.
        resume: continue from a :class:`TrainState` given to ``on_epoch_end`` earlier.
        on_epoch_end: called with a CPU :class:`TrainState` at every epoch boundary (to save
            a checkpoint); it carries the epochs' records so far (``history``).
        progress: called after every step with ``(step, total, None)`` and at every epoch end
            with the epoch's mean loss (see :class:`Progress`).
        mask_schedule: changes the mask during training (e.g. gradual magnitude pruning): its
            ``update`` is called at each epoch end (see
            :class:`~sparseavg.pruning.MaskSchedule`); a returned mask replaces the current
            one (weights and optimizer buffers of newly pruned weights are zeroed). Needs a
            ``mask``. The current mask is checkpointed. A
            :class:`~sparseavg.pruning.StepMaskSchedule` (RigL) also changes the mask at the
            steps it names, from that batch's dense gradients, and those steps take no
            optimizer step. A :class:`~sparseavg.pruning.FeedbackMaskSchedule` (DPF) keeps the
            weights dense: each forward and backward runs at ``w ⊙ m``, the optimizer updates
            the dense ``w`` (pruned weights, their gradients and momentum are not zeroed), the
            mask is recomputed after the steps it names; checkpoints hold the dense weights,
            the returned ``state`` is ``w ⊙ m`` (``dense_state`` holds ``w``). It cannot be
            combined with SWA.
        compile: run the model's forward through ``torch.compile`` (the first steps wait for
            the compilation, tens of seconds; results differ from eager ones by rounding).
            Off by default. The mask, the optimizer and the loss stay eager.

    Raises:
        DivergenceError: a training loss was NaN or infinite (checked once per epoch).
    """
    device = model_device(model)
    if mask_schedule is not None and mask is None:
        raise ValueError("a mask_schedule needs a mask to change")
    feedback = mask_schedule if isinstance(mask_schedule, FeedbackMaskSchedule) else None
    if feedback is not None and settings.swa_start is not None:
        raise ValueError(
            "a feedback mask schedule (DPF) keeps dense weights: SWA would average them"
        )
    spe = steps_per_epoch(data, settings.batch_size, settings.drop_last)
    total_steps = settings.epochs * spe
    stop = total_steps if stop_step is None else min(stop_step, total_steps)
    swa_start_epoch = settings.swa_start_epoch
    swa_start_step = settings.swa_start_step(spe)

    use_bf16, channels_last = settings.resolved(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = build_optimizer(model, settings)
    enforcer = MaskEnforcer(model, None if feedback else mask)
    swa = AveragedModel(model, use_buffers=False) if swa_start_step is not None else None
    losses: list[float] = []
    history: list[EpochLog] = []
    rewind_state: State | None = None

    step = start_step
    if resume is not None:
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        if swa is not None and resume.swa is not None:
            swa.load_state_dict(resume.swa)
        rewind_state = resume.rewind
        losses = list(resume.losses)
        history = list(resume.history)
        step = resume.step
        if resume.mask is not None:
            mask = Mask(resume.mask).to(device)
            enforcer = MaskEnforcer(model, None if feedback else mask)
    enforcer.mask_weights()
    if rewind_step is not None and step == rewind_step and rewind_state is None:
        rewind_state = clone_state(model, device="cpu")

    model.train()
    forward = _compiled(model) if compile else model
    autocast = _autocast(device, use_bf16)
    trained = [p for group in optimizer.param_groups for p in group["params"]]
    schedule_gradients = mask_schedule is not None and mask_schedule.needs_gradients
    step_schedule = mask_schedule if isinstance(mask_schedule, StepMaskSchedule) else None
    dense_gradients: dict[str, Tensor] | None = None
    current_lr: float | None = None
    while step < stop:
        epoch, offset = divmod(step, spe)
        epoch_end = min((epoch + 1) * spe, stop)
        generator = make_generator(seed, "epoch", epoch)
        started = time.perf_counter()
        # 0-d losses and (batch,) hits (argmax == label) on the device, read once at the
        # epoch end: no host-device sync inside the epoch
        step_losses: list[Tensor] = []
        step_hits: list[Tensor] = []
        batches = data.batches(
            settings.batch_size,
            generator=generator,
            augment=settings.augment,
            drop_last=settings.drop_last,
        )
        first = step
        for i, (x, y) in enumerate(batches):
            if i < offset:
                continue  # resuming inside an epoch: same generator, skip what was done
            if step >= epoch_end:
                break
            lr = learning_rate(settings, step, total_steps, swa_start_step)
            if lr != current_lr:
                for group in optimizer.param_groups:
                    group["lr"] = lr
                current_lr = lr
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            # DPF: forward and backward at w ⊙ m, the dense w back before the step
            with _at_masked_point(model, mask if feedback else None):
                with autocast():
                    logits = forward(x)
                    loss = F.cross_entropy(logits, y)
                _clear_gradients(trained)
                loss.backward()
            skip = step_schedule is not None and step_schedule.updates_at(step, spe, total_steps)
            if skip and step_schedule is not None and mask is not None:
                mask = _update_mask_at_step(
                    step_schedule, step, spe, total_steps, model, mask, enforcer, optimizer
                )
                enforcer = MaskEnforcer(model, mask)
            if schedule_gradients and step + 1 == (epoch + 1) * spe:
                dense_gradients = enforcer.gradients()
            enforcer.mask_gradients()
            if not skip:  # a step-schedule update step only scores growth (rigl)
                optimizer.step()
            enforcer.mask_weights()
            if feedback is not None and mask is not None and feedback.recomputes_after(step + 1):
                weights = {n: p.detach() for n, p in model.named_parameters() if n in mask}
                mask = feedback.recompute(step + 1, spe, weights, mask).to(device)
            step_losses.append(loss.detach())
            step_hits.append(correct_predictions(logits.detach(), y))
            step += 1
            if rewind_step is not None and step == rewind_step:
                rewind_state = clone_state(model, device="cpu")
            if progress is not None:
                progress(step, stop, None)
        bad, mean_loss, accuracy = _epoch_summary(step_losses, step_hits)
        if bad is not None:
            raise DivergenceError(first + bad, epoch)
        if step == epoch_end and epoch_end == (epoch + 1) * spe:
            losses.append(mean_loss)
            seconds = time.perf_counter() - started
            history.append(EpochLog(epoch, step, mean_loss, accuracy, current_lr, seconds))
            if mask_schedule is not None and mask is not None:
                weights = {n: p.detach() for n, p in model.named_parameters() if n in mask}
                new_mask = mask_schedule.update(epoch + 1, weights, dense_gradients, mask)
                dense_gradients = None
                if new_mask is not None:
                    mask = new_mask.to(device)
                    if feedback is None:
                        enforcer = enforcer.tighten(mask, optimizer)
            if swa is not None and swa_start_epoch is not None and epoch >= swa_start_epoch:
                swa.update_parameters(model)
            if on_epoch_end is not None:
                on_epoch_end(
                    TrainState(
                        step=step,
                        model=clone_state(model, device="cpu"),
                        optimizer=optimizer_state_to_cpu(optimizer),
                        swa=_swa_to_cpu(swa) if swa is not None else None,
                        rewind=rewind_state,
                        losses=list(losses),
                        mask=None
                        if mask_schedule is None or mask is None
                        else dict(mask.to("cpu")),
                        history=list(history),
                    )
                )
        if progress is not None:
            progress(step, stop, losses[-1] if losses else None)

    swa_state = _swa_state(swa)
    swa_count = 0 if swa is None else int(swa.n_averaged)
    state = clone_state(model, device="cpu")
    dense_state: State | None = None
    if feedback is not None and mask is not None:
        dense_state = state
        state = mask.applied(state)  # the model DPF reports: w ⊙ m
    return TrainResult(
        state=state,
        swa_state=swa_state,
        rewind_state=rewind_state,
        losses=losses,
        steps=step,
        swa_count=swa_count,
        mask=mask,
        history=history,
        dense_state=dense_state,
    )


def _swa_state(swa: AveragedModel | None) -> State | None:
    """The SWA average's model state on the CPU, ``None`` without SWA or before its first
    snapshot."""
    if swa is None or int(swa.n_averaged) == 0:
        return None
    return {
        k.removeprefix("module."): v for k, v in _swa_to_cpu(swa).items() if k.startswith("module.")
    }


def _update_mask_at_step(
    schedule: StepMaskSchedule,
    step: int,
    steps_per_epoch: int,
    total_steps: int,
    model: nn.Module,
    mask: Mask,
    enforcer: MaskEnforcer,
    optimizer: torch.optim.Optimizer,
) -> Mask:
    """One :meth:`~sparseavg.pruning.StepMaskSchedule.update_step` from the current (dense,
    not yet masked) gradients, written into the model and ``optimizer``'s state: dropped and
    grown weights become exactly 0 with zero optimizer state. Returns the new mask."""
    params = dict(model.named_parameters())
    weights = {name: params[name].detach() for name in mask}
    new_mask, grown = schedule.update_step(
        step, steps_per_epoch, total_steps, weights, enforcer.gradients(), mask
    )
    new_mask = new_mask.to(model_device(model))
    apply_mask_update_(params, new_mask, grown, optimizer.state)
    return new_mask


def _at_masked_point(
    model: nn.Module, mask: Mask | None
) -> contextlib.AbstractContextManager[None]:
    """The parameters at ``w ⊙ mask`` inside the block (:func:`~sparseavg.pruning.dpf.
    masked_weights`), or nothing for ``None``."""
    return contextlib.nullcontext() if mask is None else masked_weights(model, mask)


def _autocast(
    device: torch.device, bf16: bool
) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """A factory of the context each forward runs in: bfloat16 autocast, or nothing (entering
    a disabled ``torch.autocast`` costs about 4 us a step, 0.1-2 % of a small model's step)."""
    if bf16:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def _clear_gradients(params: list[Tensor]) -> None:
    """``optimizer.zero_grad(set_to_none=True)`` without its profiler and dynamo wrappers,
    which cost 13 us a step for LeNet-300-100 and 24 us for ResNet-20 on a CPU core:
    drop every gradient."""
    for p in params:
        p.grad = None


def _compiled(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """``model``'s forward compiled with ``torch.compile`` (same parameters and buffers)."""
    return torch.compile(model)


def correct_predictions(logits: Tensor, y: Tensor) -> Tensor:
    """True where the argmax prediction (over dim 1, the classes, as ``cross_entropy`` reads
    them) is the label; class-probability targets count their argmax as the label."""
    target = y.argmax(dim=1) if y.is_floating_point() else y
    return logits.argmax(dim=1) == target


def _epoch_summary(
    step_losses: list[Tensor], step_hits: list[Tensor]
) -> tuple[int | None, float, float]:
    """Read an epoch's step losses and hits from the device, once per epoch.

    Args:
        step_losses: each step's 0-d loss.
        step_hits: each step's bool tensor, True where the argmax prediction was the label.

    Returns:
        ``(bad, mean, accuracy)``: the index of the first non-finite loss (``None`` if all
        are finite), the mean loss in nats (NaN for no steps or a non-finite loss), computed
        in the default float dtype as the losses were always stored, and the share of hits
        (NaN for no steps).
    """
    if not step_losses:
        return None, float("nan"), float("nan")
    done = torch.stack(step_losses).to(torch.get_default_dtype())
    finite = torch.isfinite(done)
    hits = torch.cat([h.reshape(-1) for h in step_hits])
    if not bool(finite.all()):
        return int((~finite).nonzero()[0, 0]), float("nan"), float("nan")
    return None, float(done.mean()), int(hits.sum()) / hits.numel()


def optimizer_state_to_cpu(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every tensor copied to the CPU: the ``optimizer`` entry
    of a :class:`TrainState` (executors that train otherwise write their checkpoints in it)."""

    def move(value: Any) -> Any:
        if isinstance(value, Tensor):
            return value.detach().to("cpu").clone()
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        if isinstance(value, list):
            return [move(v) for v in value]
        return value

    return move(optimizer.state_dict())
