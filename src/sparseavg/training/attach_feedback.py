"""DPF's error feedback in any training loop: hooks on the model's forward and the
optimizer's ``step()``.

:class:`AttachedFeedback` does what :func:`~sparseavg.train` does under a
:class:`~sparseavg.pruning.FeedbackMaskSchedule`, from hooks, so a user's own loop trains as
DPF without changing: before the first forward after a step the masked parameters hold
``w ⊙ m`` (their dense values kept aside, :func:`~sparseavg.pruning.dpf.masked_weights`'
swap), so the forward and backward run at the masked point; before ``optimizer.step()`` the
dense values are written back, so the step applies the masked point's gradient to the dense
``w``, pruned coordinates included; after each step the schedule may recompute the mask from
the dense weights (every 16 steps, DPF's rule). Nothing is masked on gradients, weights or
optimizer state.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..pruning import FeedbackMaskSchedule, Mask
from ..utils.state import State, clone_state
from .attach import after_closure


class AttachedFeedback:
    """DPF's feedback attached to ``model`` and ``optimizer`` (see the module docstring);
    :meth:`remove` detaches it, the dense weights back in the model.

    Attributes:
        mask: the current mask (moved by the schedule's recomputations and :meth:`epoch_end`).
        steps_taken: ``optimizer.step()`` calls counted from ``start_step``.
        steps_per_epoch: what the loop said one epoch takes.
    """

    def __init__(
        self,
        model: nn.Module,
        mask: Mask,
        optimizer: torch.optim.Optimizer,
        schedule: FeedbackMaskSchedule,
        steps_per_epoch: int,
        start_step: int = 0,
    ) -> None:
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        mask.validate(model)
        self.model, self.mask, self.optimizer = model, mask, optimizer
        self.schedule = schedule
        self.steps_per_epoch = steps_per_epoch
        self.steps_taken = start_step
        self._params = dict(model.named_parameters())
        self._dense: dict[str, Tensor] | None = None
        self._handles: list[RemovableHandle] = [
            model.register_forward_pre_hook(self._before_forward),
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        ]

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def remove(self) -> None:
        """Detach the hooks and write the dense weights back; calling it again does nothing."""
        self._restore()
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def dense_weights(self) -> dict[str, Tensor]:
        """The masked parameters' dense values ``w`` (kept aside while ``w ⊙ m`` is in)."""
        if self._dense is not None:
            return dict(self._dense)
        return {name: self._params[name].detach() for name in self.mask}

    def states(self) -> tuple[State, State]:
        """``(w ⊙ m, w)``: the model's state at the masked point and dense, on the CPU."""
        self._restore()
        dense = clone_state(self.model, device="cpu")
        return self.mask.to("cpu").applied(dense), dense

    def epoch_end(self, epochs_done: int) -> None:
        """The schedule's epoch-end ``update`` (gmp's pruning epochs) on the dense weights; a
        new mask replaces :attr:`mask` and zeroes nothing."""
        new = self.schedule.update(epochs_done, self.dense_weights(), None, self.mask)
        if new is not None:
            self.mask = new.to(self._device())

    def _device(self) -> torch.device:
        first = next(iter(self.mask), None)
        return self._params[first].device if first is not None else torch.device("cpu")

    @torch.no_grad()
    def _before_forward(self, module: nn.Module, args: Any) -> None:
        if self._dense is not None:
            return  # already at the masked point (several forwards before one step)
        self._dense = {}
        for name, alive in self.mask.items():
            p = self._params[name]
            self._dense[name] = p.detach().clone()
            p.mul_(alive.to(device=p.device, dtype=p.dtype))

    @torch.no_grad()
    def _restore(self) -> None:
        if self._dense is None:
            return
        for name, value in self._dense.items():
            self._params[name].copy_(value)
        self._dense = None

    def _before_step(
        self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """The dense weights back before the update; a closure's forward runs at the masked
        point and its weights are written back after it."""
        self._restore()
        return after_closure(args, kwargs, self._restore)

    def _after_step(
        self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.steps_taken += 1
        if self.schedule.recomputes_after(self.steps_taken):
            weights = self.dense_weights()
            self.mask = self.schedule.recompute(
                self.steps_taken, self.steps_per_epoch, weights, self.mask
            ).to(self._device())
