"""Dynamic Pruning with Feedback (DPF; Lin et al., 2020) as the BIMP code runs it
(ZIB-IOL/BIMP at 7bad593, ``strategies/scratchStrategies.py``, class ``DPF``, lines 305-362).

The model keeps *dense* weights. Each forward and backward pass runs at the masked point
``w ⊙ m``; the gradient found there is applied to the dense ``w`` (pruned coordinates
included: the error feedback), and the mask is recomputed from scratch from the dense weights,
by global magnitude, at GMP's sparsity (:func:`~sparseavg.pruning.gmp_reference.
required_sparsity` of :func:`~sparseavg.pruning.gmp_reference.bimp_gmp_schedule`) after each
pruning epoch and every :data:`DPF_RECOMPUTE_EVERY` iterations. The model evaluated and
exported is ``w ⊙ m`` (``GMP.at_train_end`` makes the last mask permanent).

Two equivalent ways to run a step at the masked point: :func:`masked_weights` swaps the
masked values into a module's parameters in place for the forward and backward pass, as the
reference does; :func:`feedback_weights` builds tensors for ``torch.func.functional_call``
whose value is ``w ⊙ m`` and whose gradient reaches ``w`` unmasked.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .gmp_reference import bimp_gmp_schedule, required_sparsity
from .mask import Mask
from .strategies import Scope, magnitude_prune_to

#: The reference recomputes DPF's mask after every 16th iteration ("as in the original paper",
#: ``DPF.after_training_iteration``), counting iterations from 1 over the whole run.
DPF_RECOMPUTE_EVERY = 16


def _named(target: nn.Module | Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    return dict(target.named_parameters()) if isinstance(target, nn.Module) else target


@contextmanager
def masked_weights(target: nn.Module | Mapping[str, Tensor], mask: Mask) -> Iterator[None]:
    """Inside the block the masked parameters of ``target`` hold ``w ⊙ m``; on leaving it (also
    on an exception) their dense values are written back. Gradients computed inside stay in
    ``.grad``: run the forward *and* ``backward()`` inside, ``optimizer.step()`` after, and the
    step applies the masked point's gradient to the dense weights (the reference's
    ``start_forward_mode`` / ``during_training``).

    Raises:
        MaskError: the mask does not fit ``target``.
    """
    params = _named(target)
    mask.validate(params)
    dense: dict[str, Tensor] = {}
    with torch.no_grad():
        for name, alive in mask.items():
            p = params[name]
            dense[name] = p.detach().clone()
            p.mul_(alive.to(device=p.device, dtype=p.dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            for name, value in dense.items():
                params[name].copy_(value)


def feedback_weights(params: Mapping[str, Tensor], mask: Mask) -> dict[str, Tensor]:
    """``name -> tensor`` for ``torch.func.functional_call``: each masked parameter ``w``
    becomes ``where(m, w, w - w.detach())``, exactly ``w ⊙ m`` in value with ``∂/∂w`` the
    identity (straight through), so ``∂L/∂w`` is the gradient at the masked point for every
    coordinate; other entries pass through unchanged.

    Raises:
        MaskError: the mask does not fit ``params``.
    """
    mask.validate(params)
    return {
        name: torch.where(mask[name].to(p.device), p, p - p.detach()) if name in mask else p
        for name, p in params.items()
    }


def dpf_mask(dense: Mapping[str, Tensor], sparsity: float, *, scope: Scope = "global") -> Mask:
    """DPF's mask: recomputed from scratch from the dense weights, the ``round(sparsity *
    total)`` smallest magnitudes pruned (per layer with ``"layerwise"``; the reference:
    global), so any weight pruned before can come back. ``dense`` holds exactly the prunable
    weights."""
    return magnitude_prune_to(dense, Mask.ones_like(dense), sparsity, scope=scope)


def dpf_recomputes(iteration: int, every: int = DPF_RECOMPUTE_EVERY) -> bool:
    """Whether the reference recomputes the mask after ``iteration`` (1-based, counted over
    the whole run, not per epoch)."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    return iteration % every == 0


@dataclass(frozen=True)
class DPFSchedule:
    """DPF as a :class:`~sparseavg.pruning.FeedbackMaskSchedule`: ``train`` keeps the dense
    weights, runs each step at ``w ⊙ m`` and updates ``w``; the mask is recomputed from scratch
    from the dense weights (:func:`dpf_mask`) after each pruning epoch of ``steps`` (``(epoch,
    sparsity)``, epochs counted from 1) at its sparsity, and after every ``every``-th step of
    the run at the sparsity in force (that of the last pruning epoch finished before the step;
    ``initial`` before the first). :meth:`bimp` builds the reference's: gmp's
    :func:`~sparseavg.pruning.gmp_reference.bimp_gmp_schedule` from 0.

    The optimizer state is never masked: the reference's ``prune_momentum`` finds no pruned
    module under DPF (its masks are kept aside, ``only_save_mask``), so momentum of pruned
    weights keeps accumulating, as their dense values do.
    """

    steps: tuple[tuple[int, float], ...]
    initial: float = 0.0
    every: int = DPF_RECOMPUTE_EVERY
    scope: Scope = "global"
    needs_gradients: bool = False

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}")
        if not 0.0 <= self.initial < 1.0:
            raise ValueError(f"initial must be in [0, 1), got {self.initial}")

    @classmethod
    def bimp(
        cls, n_epochs: int, interval: int, goal_sparsity: float, *, scope: Scope = "global"
    ) -> DPFSchedule:
        """The BIMP code's DPF: dense until gmp's first pruning epoch, then its schedule.

        Raises:
            ValueError: as :func:`~sparseavg.pruning.gmp_reference.bimp_gmp_schedule`.
        """
        steps = bimp_gmp_schedule(n_epochs, interval, goal_sparsity)
        return cls(tuple(steps), scope=scope)

    def update(
        self,
        epochs_done: int,
        weights: Mapping[str, Tensor],
        gradients: Mapping[str, Tensor] | None,
        mask: Mask,
    ) -> Mask | None:
        """After a pruning epoch: the mask at its sparsity from the dense ``weights``."""
        sparsities = dict(self.steps)
        if epochs_done not in sparsities:
            return None
        return dpf_mask(weights, sparsities[epochs_done], scope=self.scope)

    def recomputes_after(self, steps_done: int) -> bool:
        return dpf_recomputes(steps_done, self.every)

    def recompute(
        self, steps_done: int, steps_per_epoch: int, weights: Mapping[str, Tensor], mask: Mask
    ) -> Mask:
        """The mask at the sparsity in force during the epoch ``steps_done`` falls in (the
        reference's ``currently_required_sparsity``: set at the last pruning epoch end)."""
        epochs_done = (steps_done - 1) // steps_per_epoch
        sparsity = self.initial
        if any(epoch <= epochs_done for epoch, _ in self.steps):
            sparsity = required_sparsity(epochs_done, self.steps)
        return dpf_mask(weights, sparsity, scope=self.scope)
