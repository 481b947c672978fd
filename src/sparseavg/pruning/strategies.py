"""Pruning strategies: pure functions ``(weights, mask, fraction, scope) -> Mask``.

Each removes exactly ``round(fraction * alive)`` of the weights still alive (per layer for
``scope="layerwise"``), never revives a pruned one, and breaks ties deterministically: among
equal scores the weight that comes first (in mask order, then flat index) goes first.
``rounding="open_lth"`` counts as open_lth's ``sparse_global`` does instead: the threshold is
the ``ceil(fraction * alive)``-th smallest score (0-based) and every alive weight whose score
is at most that threshold goes, so ``ceil(fraction * alive) + 1`` weights when no two tie.

``layer_fractions`` (``{glob: fraction}``) takes the layers whose names match a pattern out of
the ranking: each such layer loses ``round(fraction * its alive)`` on its own (the first
matching pattern decides), and the other layers are pruned by ``scope`` and ``fraction`` as
usual. The lottery-ticket paper prunes LeNet's hidden layers at 20 % and its output layer at
10 % per round this way.
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor

from .mask import DeadLayerWarning, Mask, MaskError, dead_layers

Scope = Literal["global", "layerwise"]
SCOPES: tuple[str, ...] = ("global", "layerwise")
Rounding = Literal["round", "open_lth"]
ROUNDINGS: tuple[str, ...] = ("round", "open_lth")


def _check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")


def pruning_groups(
    names: list[str],
    fraction: float,
    scope: str,
    layer_fractions: Mapping[str, float] | None = None,
) -> list[tuple[list[str], float]]:
    """How ``names`` are ranked: ``(layers ranked together, fraction they lose)`` pairs.

    Layers matching a ``layer_fractions`` pattern form a group of their own with that
    fraction (the first matching pattern decides); the rest form one group (``"global"``) or
    one group each (``"layerwise"``). A pattern that matches no name is refused (ValueError):
    a typo would otherwise prune at the wrong rate without a word.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    _check_fraction(fraction)
    special: dict[str, float] = {}
    for pattern, value in (layer_fractions or {}).items():
        _check_fraction(value)
        matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise ValueError(
                f"layer_fractions pattern {pattern!r} matches no prunable weight ({shown})"
            )
        for n in matched:
            special.setdefault(n, value)
    rest = [n for n in names if n not in special]
    groups = [([n], special[n]) for n in names if n in special]
    if rest:
        groups += [(rest, fraction)] if scope == "global" else [([n], fraction) for n in rest]
    return groups


def _prune_by_scores(
    mask: Mask,
    scores: Mapping[str, Tensor],
    fraction: float,
    scope: str,
    target_sparsity: float | None = None,
    layer_fractions: Mapping[str, float] | None = None,
    protected: Mapping[str, Tensor] | None = None,
    rounding: Rounding = "round",
) -> Mask:
    """Remove the lowest-scoring alive weights; scores are float tensors shaped like the mask.

    Each group (see :func:`pruning_groups`) loses ``round(fraction * alive)`` weights (for
    ``rounding="open_lth"``: see :func:`open_lth_count`), or, with ``target_sparsity``, as many
    as make ``round(target_sparsity * total)`` of it pruned. ``protected`` (bool tensors shaped
    like the mask) marks weights that are never pruned: a group then loses at most its alive
    weights that are not protected.
    """
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    names = list(mask)
    new = {n: mask[n].clone() for n in names}
    for group, group_fraction in pruning_groups(names, fraction, scope, layer_fractions):
        flat_mask = torch.cat([mask[n].reshape(-1).cpu() for n in group])
        alive = int(flat_mask.sum())
        if target_sparsity is None and rounding == "open_lth":
            group_scores = torch.cat([scores[n].detach().reshape(-1).float().cpu() for n in group])
            k = open_lth_count(group_scores[flat_mask], group_fraction)
        elif target_sparsity is None:
            k = round(group_fraction * alive)
        else:
            k = max(0, round(target_sparsity * flat_mask.numel()) - (flat_mask.numel() - alive))
        candidates = flat_mask
        if protected is not None:
            candidates = flat_mask & ~torch.cat([protected[n].reshape(-1).cpu() for n in group])
            k = min(k, int(candidates.sum()))
        if k == 0:
            continue
        flat_scores = torch.cat([scores[n].detach().reshape(-1).float().cpu() for n in group])
        if not bool(torch.isfinite(flat_scores[flat_mask]).all()):
            raise ValueError(
                f"cannot prune: non-finite weights in {group if len(group) < 4 else 'the model'}"
            )
        flat_scores = flat_scores.masked_fill(~candidates, float("inf"))
        order = torch.sort(flat_scores, stable=True).indices
        flat_new = flat_mask.clone()
        flat_new[order[:k]] = False
        offset = 0
        for n in group:
            size = mask[n].numel()
            new[n] = flat_new[offset : offset + size].reshape(mask[n].shape).to(mask[n].device)
            offset += size
    out = Mask(new)
    dead = dead_layers(mask, out)
    if dead:
        warnings.warn(
            f"pruning left no weight alive in {', '.join(dead)}: "
            f"{'its' if len(dead) == 1 else 'their'} output no longer depends on the input; "
            "prune layer-wise (scope = 'layerwise'), give the layer a lower rate "
            "(layer_fractions), or leave it out of the prunable set",
            DeadLayerWarning,
            stacklevel=3,
        )
    return out


def open_lth_count(alive_scores: Tensor, fraction: float) -> int:
    """How many of these alive weights open_lth's ``sparse_global`` prunes.

    open_lth (``pruning/sparse_global.py``, 2ce732f) takes ``k = ceil(fraction * alive)``, the
    threshold ``sort(scores)[k]`` (0-based: the ``k + 1``-th smallest) and keeps only scores
    strictly above it: ``k + 1`` weights go when no score ties the threshold, more when some
    do. Where ``k`` reaches ``alive`` (open_lth would fail with an IndexError) all go.

    Args:
        alive_scores: 1-D scores (e.g. ``|w|``) of the alive weights of one ranked group.
        fraction: share of them to prune, in [0, 1).
    """
    alive = alive_scores.numel()
    k = math.ceil(fraction * alive)
    if k >= alive:
        return alive
    threshold = torch.sort(alive_scores).values[k]
    return int((alive_scores <= threshold).sum())


def _check_weights(weights: Mapping[str, Tensor], mask: Mask) -> None:
    missing = [n for n in mask if n not in weights]
    if missing:
        raise MaskError(f"weights lack the masked parameters {missing[:5]}")
    for n in mask:
        if tuple(weights[n].shape) != tuple(mask[n].shape):
            shapes = f"{tuple(weights[n].shape)} != mask shape {tuple(mask[n].shape)}"
            raise MaskError(f"{n!r}: weight shape {shapes}")


def magnitude_prune(
    weights: Mapping[str, Tensor],
    mask: Mask,
    fraction: float,
    scope: Scope = "global",
    layer_fractions: Mapping[str, float] | None = None,
    rounding: Rounding = "round",
) -> Mask:
    """Prune the ``fraction`` of alive weights with the smallest absolute value.

    Args:
        weights: ``name -> tensor`` for at least every name in ``mask`` (e.g. a state dict).
        mask: the current mask; only its alive weights are candidates.
        fraction: share of the alive weights to remove, in [0, 1) (0.2 keeps 80 %).
        scope: ``"global"`` ranks all layers together; ``"layerwise"`` prunes each layer by
            ``fraction``.
        layer_fractions: ``{glob: fraction}`` for layers pruned on their own at another rate.
        rounding: ``"round"``: ``round(fraction * alive)`` go; ``"open_lth"``: open_lth's
            count, ``ceil(fraction * alive) + 1`` plus any ties (:func:`open_lth_count`).

    Returns:
        A new :class:`Mask` with exactly ``round(fraction * alive)`` fewer alive weights
        (per layer for ``"layerwise"`` and for the ``layer_fractions`` layers).
    """
    _check_weights(weights, mask)
    scores = {n: weights[n].abs() for n in mask}
    return _prune_by_scores(
        mask, scores, fraction, scope, layer_fractions=layer_fractions, rounding=rounding
    )


def random_prune(
    mask: Mask,
    fraction: float,
    *,
    generator: torch.Generator,
    scope: Scope = "global",
    layer_fractions: Mapping[str, float] | None = None,
    rounding: Rounding = "round",
) -> Mask:
    """Prune a uniformly random ``fraction`` of the alive weights (the random-pruning baseline).

    Scores are drawn with ``generator`` (a CPU ``torch.Generator``), one per weight in mask order,
    so the same seed gives the same mask. Counts are those of :func:`magnitude_prune` (with
    the same ``rounding``).
    """
    scores = {n: torch.rand(mask[n].shape, generator=generator) for n in mask}
    return _prune_by_scores(
        mask, scores, fraction, scope, layer_fractions=layer_fractions, rounding=rounding
    )


def shuffle_within_layers(mask: Mask, *, generator: torch.Generator) -> Mask:
    """The same number of alive weights in every layer, at uniformly random positions.

    The lottery-ticket paper's random-pruning control: a random mask with the layer-wise
    sparsities of a magnitude-pruned one. Layers are shuffled in mask order with
    ``generator``, so the same seed gives the same mask.
    """
    out = {}
    for name, t in mask.items():
        flat = t.reshape(-1).cpu()
        order = torch.randperm(flat.numel(), generator=generator)
        out[name] = flat[order].reshape(t.shape).to(t.device)
    return Mask(out)


def magnitude_prune_to(
    weights: Mapping[str, Tensor],
    mask: Mask,
    sparsity: float,
    scope: Scope = "global",
) -> Mask:
    """Prune the smallest alive weights until exactly ``round(sparsity * total)`` are pruned
    (per layer for ``"layerwise"``); a mask already that sparse is returned unchanged.
    Used by gradual magnitude pruning, whose schedule gives sparsities rather than fractions.
    """
    _check_fraction(sparsity)
    _check_weights(weights, mask)
    scores = {n: weights[n].abs() for n in mask}
    return _prune_by_scores(mask, scores, 0.0, scope, target_sparsity=sparsity)
