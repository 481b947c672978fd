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

import torch
from torch import Tensor, nn

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
