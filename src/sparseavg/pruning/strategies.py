"""Pruning strategies: pure functions ``(weights, mask, fraction, scope) -> Mask``.

Each removes exactly ``round(fraction * alive)`` of the weights still alive (per layer for
``scope="layerwise"``), never revives a pruned one, and breaks ties deterministically: among
equal scores the weight that comes first (in mask order, then flat index) goes first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor

from .mask import Mask, MaskError

Scope = Literal["global", "layerwise"]
SCOPES: tuple[str, ...] = ("global", "layerwise")


def _check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")


def _prune_by_scores(
    mask: Mask,
    scores: Mapping[str, Tensor],
    fraction: float,
    scope: str,
    target_sparsity: float | None = None,
) -> Mask:
    """Remove the lowest-scoring alive weights; scores are float tensors shaped like the mask.

    Each group (all layers, or one layer) loses ``round(fraction * alive)`` weights, or, with
    ``target_sparsity``, as many as make ``round(target_sparsity * total)`` of it pruned.
    """
    _check_fraction(fraction)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    names = list(mask)
    new = {n: mask[n].clone() for n in names}
    groups = [names] if scope == "global" else [[n] for n in names]
    for group in groups:
        flat_mask = torch.cat([mask[n].reshape(-1).cpu() for n in group])
        alive = int(flat_mask.sum())
        if target_sparsity is None:
            k = round(fraction * alive)
        else:
            k = max(0, round(target_sparsity * flat_mask.numel()) - (flat_mask.numel() - alive))
        if k == 0:
            continue
        flat_scores = torch.cat([scores[n].detach().reshape(-1).float().cpu() for n in group])
        if not bool(torch.isfinite(flat_scores[flat_mask]).all()):
            raise ValueError(
                f"cannot prune: non-finite weights in {group if len(group) < 4 else 'the model'}"
            )
        flat_scores = flat_scores.masked_fill(~flat_mask, float("inf"))
        order = torch.sort(flat_scores, stable=True).indices
        flat_new = flat_mask.clone()
        flat_new[order[:k]] = False
        offset = 0
        for n in group:
            size = mask[n].numel()
            new[n] = flat_new[offset : offset + size].reshape(mask[n].shape).to(mask[n].device)
            offset += size
    return Mask(new)


def _check_weights(weights: Mapping[str, Tensor], mask: Mask) -> None:
    missing = [n for n in mask if n not in weights]
    if missing:
        raise MaskError(f"weights lack the masked parameters {missing[:5]}")
    for n in mask:
        if tuple(weights[n].shape) != tuple(mask[n].shape):
            shapes = f"{tuple(weights[n].shape)} != mask shape {tuple(mask[n].shape)}"
            raise MaskError(f"{n!r}: weight shape {shapes}")


def magnitude_prune(
    weights: Mapping[str, Tensor], mask: Mask, fraction: float, scope: Scope = "global"
) -> Mask:
    """Prune the ``fraction`` of alive weights with the smallest absolute value.

    Args:
        weights: ``name -> tensor`` for at least every name in ``mask`` (e.g. a state dict).
        mask: the current mask; only its alive weights are candidates.
        fraction: share of the alive weights to remove, in [0, 1) (0.2 keeps 80 %).
        scope: ``"global"`` ranks all layers together; ``"layerwise"`` prunes each layer by
            ``fraction``.

    Returns:
        A new :class:`Mask` with exactly ``round(fraction * alive)`` fewer alive weights
        (per layer for ``"layerwise"``).
    """
    _check_weights(weights, mask)
    return _prune_by_scores(mask, {n: weights[n].abs() for n in mask}, fraction, scope)


def random_prune(
    mask: Mask, fraction: float, *, generator: torch.Generator, scope: Scope = "global"
) -> Mask:
    """Prune a uniformly random ``fraction`` of the alive weights (the random-pruning baseline).

    Scores are drawn with ``generator`` (a CPU ``torch.Generator``), one per weight in mask order,
    so the same seed gives the same mask.
    """
    scores = {n: torch.rand(mask[n].shape, generator=generator) for n in mask}
    return _prune_by_scores(mask, scores, fraction, scope)


def magnitude_prune_to(
    weights: Mapping[str, Tensor], mask: Mask, sparsity: float, scope: Scope = "global"
) -> Mask:
    """Prune the smallest alive weights until exactly ``round(sparsity * total)`` are pruned
    (per layer for ``"layerwise"``); a mask already that sparse is returned unchanged.
    Used by gradual magnitude pruning, whose schedule gives sparsities rather than fractions.
    """
    _check_fraction(sparsity)
    _check_weights(weights, mask)
    scores = {n: weights[n].abs() for n in mask}
    return _prune_by_scores(mask, scores, 0.0, scope, target_sparsity=sparsity)
