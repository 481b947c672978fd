"""Keeping pruned weights at exactly zero during training."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..pruning import Mask


class MaskEnforcer:
    """Multiplies gradients before, and weights after, each optimizer step by the mask.

    Masked gradients keep momentum buffers and Adam moments of pruned weights at zero, and the
    re-mask after the step removes what weight decay or numerical noise might leave, so a pruned
    weight is exactly 0 after every step. Both are single ``torch._foreach_mul_`` calls.
    """

    def __init__(self, model: nn.Module, mask: Mask | None) -> None:
        self.model = model
        self.params: list[Tensor] = []
        self.factors: list[Tensor] = []
        if mask is None:
            return
        mask.validate(model)
        named = dict(model.named_parameters())
        for name in mask:
            p = named[name]
            self.params.append(p)
            self.factors.append(mask[name].to(device=p.device, dtype=p.dtype))

    @torch.no_grad()
    def tighten(self, mask: Mask, optimizer: torch.optim.Optimizer) -> MaskEnforcer:
        """Switch to a new mask mid-training: zero the newly pruned weights and every optimizer
        buffer of theirs (momentum, Adam moments), so nothing revives them. Returns the new
        enforcer."""
        new = MaskEnforcer(self.model, mask)
        new.mask_optimizer_state(optimizer)
        new.mask_weights()
        return new

    def __bool__(self) -> bool:
        return bool(self.params)

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero the gradients of pruned weights (call after ``backward``, before ``step``)."""
        if not self.params:
            return
        grads = [p.grad for p in self.params if p.grad is not None]
        if len(grads) == len(self.params):
            torch._foreach_mul_(grads, self.factors)
        else:
            for p, f in zip(self.params, self.factors, strict=True):
                if p.grad is not None:
                    p.grad.mul_(f)

    @torch.no_grad()
    def gradients(self) -> dict[str, Tensor]:
        """Copies of the masked parameters' current (dense) gradients, ``name -> tensor``;
        call before :meth:`mask_gradients` (mask schedules that grow weights need them)."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        return {names[id(p)]: p.grad.detach().clone() for p in self.params if p.grad is not None}

    @torch.no_grad()
    def mask_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero the pruned entries of every optimizer-state tensor shaped like its parameter
        (SGD ``momentum_buffer``, Adam ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``, ...), in
        place, in one ``torch._foreach_mul_``. Adam's ``step`` counter is left alone, even for a
        0-d parameter; parameters without state yet (no step taken) are skipped."""
        buffers: list[Tensor] = []
        factors: list[Tensor] = []
        for p, f in zip(self.params, self.factors, strict=True):
            state = optimizer.state.get(p)
            if not state:
                continue
            for key, buf in state.items():
                if key != "step" and isinstance(buf, Tensor) and buf.shape == p.shape:
                    buffers.append(buf)
                    factors.append(f)
        if buffers:
            torch._foreach_mul_(buffers, factors)

    @torch.no_grad()
    def mask_weights(self) -> None:
        """Zero the pruned weights (call after ``step``)."""
        if self.params:
            torch._foreach_mul_(self.params, self.factors)
