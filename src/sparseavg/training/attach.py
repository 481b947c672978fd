"""Keeping a mask in any training loop: hooks on ``optimizer.step()``.

:func:`attach` registers a step pre-hook and a step post-hook on a torch optimizer, so every
``optimizer.step()`` keeps the pruned weights and their optimizer state at exactly zero, whoever
calls it: a plain loop, ``GradScaler.step``, a Lightning ``Trainer`` or a Hugging Face
``Trainer``. It is :class:`~sparseavg.training.masking.MaskEnforcer` run by the optimizer
instead of by the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..pruning import Mask, MaskError, StepMaskSchedule
from ..pruning.rigl import apply_mask_update_
from .masking import MaskEnforcer


class AttachedMask:
    """A mask attached to an optimizer by :func:`attach`; :meth:`remove` detaches it.

    Also a context manager: ``with attach(model, mask, optimizer): ...`` detaches on exit.
    """

    def __init__(
        self,
        enforcer: MaskEnforcer,
        mask: Mask,
        optimizer: torch.optim.Optimizer,
    ) -> None:
        self.mask = mask
        self.optimizer = optimizer
        self._enforcer = enforcer
        self._handles: list[RemovableHandle] = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        ]
        self._on_backward: list[RemovableHandle] = []
        self._steps: _StepUpdates | None = None

    def follow_steps(
        self,
        schedule: StepMaskSchedule,
        steps_per_epoch: int,
        total_steps: int,
        start_step: int = 0,
    ) -> None:
        """Let ``schedule`` change the mask at the optimizer steps it names (RigL's drop and
        grow), as :func:`~sparseavg.train` does: ``optimizer.step()`` calls are counted from
        ``start_step``; at an update step the pre-hook computes the new mask from the dense
        gradients, writes it into the weights and optimizer state (dropped and grown weights
        and their state at exactly 0) and the step is undone after it runs (no update on
        that batch: the batch only scores growth), the counter advancing all the same.

        Raises:
            ValueError: ``steps_per_epoch`` < 1 or ``total_steps`` < ``start_step``.
        """
        if steps_per_epoch < 1 or total_steps < start_step:
            raise ValueError(
                f"follow_steps: steps_per_epoch = {steps_per_epoch}, total_steps = "
                f"{total_steps}, start_step = {start_step}"
            )
        self._steps = _StepUpdates(schedule, steps_per_epoch, total_steps, start_step)

    @property
    def steps_per_epoch(self) -> int | None:
        """The steps per epoch :meth:`follow_steps` was given, or ``None`` without it."""
        return None if self._steps is None else self._steps.steps_per_epoch

    @property
    def steps_taken(self) -> int | None:
        """The optimizer steps counted since :meth:`follow_steps` (from its ``start_step``),
        or ``None`` without it."""
        return None if self._steps is None else self._steps.step

    @property
    def attached(self) -> bool:
        """Whether the hooks are still registered."""
        return bool(self._handles)

    def remove(self) -> None:
        """Detach both hooks; later steps no longer touch the mask. Calling it again does
        nothing. The weights and optimizer state are left as they are."""
        for handle in self._handles + self._on_backward:
            handle.remove()
        self._handles = []
        self._on_backward = []

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero the gradients of pruned weights now (the pre-step hook does this too; call it
        where a loop reads gradients before ``step``, e.g. before clipping them by norm)."""
        self._enforcer.mask_gradients()

    def mask_gradients_on_backward(self) -> None:
        """Also zero each pruned weight's gradient as soon as backward has accumulated it
        (``register_post_accumulate_grad_hook``), for loops that read gradients between
        backward and ``step`` without a place to call :meth:`mask_gradients`, such as a
        Trainer that clips them by norm. :meth:`remove` detaches these hooks too."""
        if not self.attached:
            raise RuntimeError("mask_gradients_on_backward: the mask was removed")
        for param, factor in zip(self._enforcer.params, self._enforcer.factors, strict=True):
            hook = partial(_mask_grad, factor=factor)
            self._on_backward.append(param.register_post_accumulate_grad_hook(hook))

    @torch.no_grad()
    def tighten(self, mask: Mask) -> None:
        """Keep ``mask`` from now on instead (a mask that changed during training, e.g. a
        gradual-pruning step at an epoch end): the weights it prunes and their optimizer state
        are set to zero at once, and the hooks (those of :meth:`mask_gradients_on_backward`
        too) follow it.

        Raises:
            RuntimeError: the mask was removed.
            MaskError: ``mask`` names other parameters than the attached one.
        """
        if not self.attached:
            raise RuntimeError("tighten: the mask was removed")
        if set(mask) != set(self.mask):
            raise MaskError("tighten: the new mask must name the attached mask's parameters")
        on_backward = bool(self._on_backward)
        for handle in self._on_backward:
            handle.remove()
        self._on_backward = []
        self._enforcer = self._enforcer.tighten(mask, self.optimizer)
        self.mask = mask
        if on_backward:
            self.mask_gradients_on_backward()

    def _before_step(
        self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """Mask the gradients; if ``step`` got a closure (it computes the gradients inside
        ``step``, as Lightning's automatic optimization does), mask them after each call of it.
        At an update step of :meth:`follow_steps` first update the mask from the dense
        gradients and keep what the step must not change."""
        if self._steps is not None and self._steps.updates_now():
            self._update_mask(self._steps)
        self._enforcer.mask_gradients()
        return after_closure(args, kwargs, lambda: self._enforcer.mask_gradients())

    def _after_step(
        self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        if self._steps is not None:
            self._steps.undo(optimizer)
        self._enforcer.mask_weights()
        self._enforcer.mask_optimizer_state(optimizer)

    @torch.no_grad()
    def _update_mask(self, steps: _StepUpdates) -> None:
        """One update of the step schedule from the current dense gradients, written into the
        weights and the optimizer's state; the parameters and state are kept so that
        :meth:`_after_step` can undo the step."""
        model = self._enforcer.model
        params = dict(model.named_parameters())
        weights = {name: params[name].detach() for name in self.mask}
        new, grown = steps.schedule.update_step(
            steps.step,
            steps.steps_per_epoch,
            steps.total_steps,
            weights,
            self._enforcer.gradients(),
            self.mask,
        )
        new = new.to(next(iter(weights.values())).device) if weights else new
        apply_mask_update_(params, new, grown, self.optimizer.state)
        self._enforcer = MaskEnforcer(model, new)
        self.mask = new
        steps.keep(self.optimizer)

    def __enter__(self) -> AttachedMask:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "attached" if self.attached else "removed"
        return f"AttachedMask({self.mask!r}, {type(self.optimizer).__name__}, {state})"


def after_closure(
    args: tuple[Any, ...], kwargs: dict[str, Any], then: Callable[[], object]
) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """What a step pre-hook returns so that ``then()`` runs after every call of the closure
    ``step`` got (it computes the gradients inside ``step``, as Lightning's automatic
    optimization does), or ``None`` when it got none. ``args[0]`` is the optimizer; a closure
    comes second or as ``closure=``."""

    def wrap(closure: Callable[[], Any]) -> Callable[[], Any]:
        def closure_then() -> Any:
            loss = closure()
            then()
            return loss

        return closure_then

    if len(args) > 1 and callable(args[1]):
        return (args[0], wrap(args[1]), *args[2:]), kwargs
    if callable(kwargs.get("closure")):
        return args, {**kwargs, "closure": wrap(kwargs["closure"])}
    return None


class _StepUpdates:
    """The step count of :meth:`AttachedMask.follow_steps` and what an update step keeps to
    undo its optimizer step: every parameter's value and optimizer state."""

    def __init__(
        self, schedule: StepMaskSchedule, steps_per_epoch: int, total_steps: int, step: int
    ) -> None:
        self.schedule = schedule
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = total_steps
        self.step = step
        self.kept: list[tuple[Tensor, Tensor, dict[str, Any]]] | None = None

    def updates_now(self) -> bool:
        return self.step < self.total_steps and self.schedule.updates_at(
            self.step, self.steps_per_epoch, self.total_steps
        )

    def keep(self, optimizer: torch.optim.Optimizer) -> None:
        self.kept = [
            (p, p.detach().clone(), _cloned(optimizer.state.get(p, {})))
            for group in optimizer.param_groups
            for p in group["params"]
        ]

    @torch.no_grad()
    def undo(self, optimizer: torch.optim.Optimizer) -> None:
        """Put back what :meth:`keep` kept (no update on this batch) and count the step."""
        if self.kept is not None:
            for p, value, state in self.kept:
                p.copy_(value)
                if state:
                    optimizer.state[p] = state
                else:
                    optimizer.state.pop(p, None)
            self.kept = None
        self.step += 1


def _cloned(state: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.detach().clone() if isinstance(v, Tensor) else v for k, v in state.items()}


@torch.no_grad()
def _mask_grad(param: Tensor, *, factor: Tensor) -> None:
    if param.grad is not None:
        param.grad.mul_(factor)


def attach(
    model: nn.Module, mask: Mask | Mapping[str, Tensor], optimizer: torch.optim.Optimizer
) -> AttachedMask:
    """Keep ``mask`` through every ``optimizer.step()``, whoever calls it.

    At once, the pruned weights of ``model`` and the pruned entries of any optimizer state they
    already have (momentum, Adam moments: a mask attached mid-training) are set to zero. Then
    before each step the gradients of pruned weights are zeroed (so momentum and Adam moments
    stay zero; with a closure, after it ran), and after each step the pruned weights (weight
    decay, numerical noise) and the pruned entries of every optimizer-state tensor shaped like
    its parameter are zeroed again. Surviving weights train exactly as without the mask.

    Works with any optimizer whose update is elementwise (SGD with momentum or Nesterov, Adam,
    AdamW; ``foreach`` and ``fused``), with ``torch.amp.GradScaler`` (a skipped step stays
    skipped; masking by 0/1 does not care whether gradients are scaled) and with gradient
    accumulation (the hooks run once per step, on the summed gradients). Attach after the model
    is on its device and after the optimizer exists; the hooks hold no global state.

    Args:
        model: the module whose parameters ``mask`` names (``model.named_parameters()``).
        mask: ``name -> bool tensor`` of each parameter's shape, ``True`` = alive.
        optimizer: the torch optimizer that holds those parameters. A wrapper whose ``step``
            runs no step hooks (Lightning's ``LightningOptimizer``, accelerate's
            ``AcceleratedOptimizer``) is unwrapped to the optimizer it holds.

    Returns:
        An :class:`AttachedMask`; its ``remove()`` detaches the hooks.

    Raises:
        MaskError: a mask entry is not a parameter of ``model``, has another shape, or is not a
            parameter that ``optimizer`` updates.
        TypeError: ``model`` is not a module, ``mask`` not a mapping, or ``optimizer`` not a
            torch optimizer.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(mask, Mapping):
        raise TypeError(f"mask must be a Mask or a name -> bool tensor mapping, got {mask!r}")
    optimizer = _hookable(optimizer)
    mask = mask if isinstance(mask, Mask) else Mask(mask)
    mask.validate(model)
    named = dict(model.named_parameters())
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [name for name in mask if id(named[name]) not in held]
    if missing:
        raise MaskError(
            "; ".join(
                f"mask entry {name!r} is not a parameter of the optimizer" for name in missing
            )
        )
    enforcer = MaskEnforcer(model, mask)
    enforcer.mask_weights()
    enforcer.mask_optimizer_state(optimizer)
    return AttachedMask(enforcer, mask, optimizer)


def _hookable(optimizer: object) -> torch.optim.Optimizer:
    """``optimizer``, or the torch optimizer a wrapper holds when the wrapper's own ``step``
    would run no step hooks (hooks registered on it would then never fire)."""
    current = optimizer
    for _ in range(4):  # wrappers of wrappers, but no endless loop
        if isinstance(current, torch.optim.Optimizer) and getattr(
            type(current).step, "hooked", False
        ):
            return current
        inner = getattr(current, "optimizer", None) or getattr(current, "_optimizer", None)
        if inner is None:
            break
        current = inner
    raise TypeError(
        f"optimizer must be a torch.optim.Optimizer whose step() runs step hooks, got "
        f"{type(optimizer).__name__}"
    )
