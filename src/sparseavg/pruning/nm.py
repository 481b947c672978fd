"""N:M semi-structured masks: at most N of every M consecutive weights along the input dimension.

A weight of shape ``(out, in, *kernel)`` (``nn.Linear``: ``(out, in)``; ``nn.Conv1d/2d/3d``:
``(out, in / groups, k...)``) is cut into groups of ``m`` consecutive *input channels* at each
output channel and kernel position: the group view is ``weight.movedim(1, -1).reshape(-1, m)``.
For a linear weight these are ``m`` consecutive entries of a row, which is the layout
``torch.sparse.to_sparse_semi_structured`` (cuSPARSELt / CUTLASS) compresses: 2 of every 4
along the last, contiguous dimension of the ``(out, in)`` weight. For convolutions it is the
layout of NVIDIA's ASP (``apex.contrib.sparsity``, which permutes ``(K, C, R, S)`` to
``(R, S, K, C)`` and groups along ``C``) and of TensorRT's sparse convolutions: the input
channels, innermost in a channels-last implicit GEMM. It is *not* the flattened
``in * kh * kw`` of ``weight.reshape(out, -1)``, whose groups would straddle kernel positions.

IMP reaches an N:M mask over several cycles (:func:`nm_prune`): every cycle but the last
removes a share of the alive weights by magnitude, as unstructured pruning does, but never one
of the ``n`` largest alive weights of its group; the last keeps exactly those ``n``. Ties are
broken as in :mod:`.strategies`: among equal scores the weight that comes first (within a
group: the lower input channel) is pruned first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .mask import Mask, MaskError
from .strategies import Scope, _check_fraction, _check_weights, _prune_by_scores

#: the largest group size a pattern may have
MAX_GROUP = 32
UNSTRUCTURED = "unstructured"
_PATTERN = re.compile(r"(\d+):(\d+)")


def parse_pattern(text: str) -> tuple[int, int] | None:
    """``"unstructured"`` -> ``None``; ``"N:M"`` -> ``(N, M)`` with ``0 < N < M <= 32``,
    written canonically (ASCII digits, no leading zeros).

    Raises:
        ValueError: anything else, with what is accepted.
    """
    if text == UNSTRUCTURED:
        return None
    match = _PATTERN.fullmatch(text)
    accepted = f"'{UNSTRUCTURED}' or 'N:M' with 0 < N < M <= {MAX_GROUP}, e.g. '2:4'"
    if match is None:
        raise ValueError(f"{text!r} is not {accepted}")
    n, m = int(match.group(1)), int(match.group(2))
    if text != f"{n}:{m}":  # one spelling per pattern: the text is hashed into the run's name
        raise ValueError(f"{text!r} is written '{n}:{m}' (ASCII digits, no leading zeros)")
    if not 0 < n < m <= MAX_GROUP:
        raise ValueError(f"{text!r} is not {accepted}")
    return n, m


def _check_nm(n: int, m: int) -> None:
    """Refuse ``n`` and ``m`` unless they are integers (not bools) with ``0 < n < m <= 32``."""
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (n, m))
    if not (ints and 0 < n < m <= MAX_GROUP):
        raise ValueError(
            f"n and m: an N:M pattern needs integers 0 < n < m <= {MAX_GROUP}, got n = {n!r}, "
            f"m = {m!r}"
        )


def group_problem(shape: Sequence[int], m: int) -> str | None:
    """Why a weight of ``shape`` cannot be cut into groups of ``m`` along its input dimension
    (dimension 1), or ``None`` when it can."""
    if len(shape) < 2:
        return f"has no input dimension (shape {tuple(shape)})"
    if shape[1] % m:
        channels = "input channel" if shape[1] == 1 else "input channels"
        return f"has {shape[1]} {channels} (shape {tuple(shape)}), not a multiple of {m}"
    return None


def to_groups(t: Tensor, m: int) -> Tensor:
    """``t`` (``(out, in, *kernel)``) as ``(groups, m)``: row ``g`` holds ``m`` consecutive
    input channels at one output channel and kernel position (a copy for conv weights)."""
    problem = group_problem(t.shape, m)
    if problem is not None:
        raise MaskError(f"cannot cut into groups of {m}: the tensor {problem}")
    return t.movedim(1, -1).reshape(-1, m)


def from_groups(groups: Tensor, shape: Sequence[int]) -> Tensor:
    """The inverse of :func:`to_groups`: ``(groups, m)`` back to ``shape``."""
    moved = (shape[0], *shape[2:], shape[1])
    return groups.reshape(moved).movedim(-1, 1)


def nonzeros_per_group(t: Tensor, m: int) -> Tensor:
    """The number of non-zero (for a mask: alive) entries in each group of ``m``, ``(groups,)``."""
    return (to_groups(t, m) != 0).sum(dim=1)


def is_nm(t: Tensor, n: int, m: int) -> bool:
    """Whether every group of ``m`` of ``t`` (weights or a mask) has at most ``n`` non-zeros."""
    return bool((nonzeros_per_group(t, m) <= n).all())


def _strongest(scores: Tensor, alive: Tensor, n: int, m: int) -> Tensor:
    """The ``n`` highest-scoring alive entries of every group (all alive ones where a group
    has fewer), as a bool tensor of the weight's shape; among equal scores the later wins."""
    g_alive = to_groups(alive, m)
    g_scores = to_groups(scores.detach().float(), m).masked_fill(~g_alive, float("-inf"))
    order = torch.sort(g_scores, dim=1, stable=True).indices
    top = torch.zeros_like(g_alive).scatter_(1, order[:, m - n :], True)
    return from_groups(top & g_alive, alive.shape)


def _nm_by_scores(
    mask: Mask,
    scores: Mapping[str, Tensor],
    n: int,
    m: int,
    *,
    fraction: float | None,
    sparsity: float | None,
    scope: Scope,
) -> Mask:
    _check_nm(n, m)
    for name in mask:
        problem = group_problem(mask[name].shape, m)
        if problem is not None:
            raise MaskError(f"{name!r} cannot be cut into groups of {m}: it {problem}")
        alive_scores = scores[name].detach()[mask[name].to(scores[name].device)]
        if not bool(torch.isfinite(alive_scores).all()):
            raise ValueError(f"cannot prune: non-finite weights in {name}")
    keep = {name: _strongest(scores[name].cpu(), mask[name].cpu(), n, m) for name in mask}
    if fraction is None and sparsity is None:
        return Mask({name: keep[name].to(mask[name].device) for name in mask})
    return _prune_by_scores(
        mask, scores, fraction or 0.0, scope, target_sparsity=sparsity, protected=keep
    )


def nm_prune(
    weights: Mapping[str, Tensor],
    mask: Mask,
    n: int,
    m: int,
    fraction: float | None = None,
    scope: Scope = "global",
) -> Mask:
    """Prune by magnitude towards an N:M mask (see the module docstring for the groups).

    Args:
        weights: ``name -> tensor`` for at least every name in ``mask`` (e.g. a state dict);
            every masked tensor's dimension 1 must be a multiple of ``m``.
        mask: the current mask; only its alive weights are candidates.
        n: at most ``n`` of every ``m`` weights stay alive, ``0 < n < m``.
        m: the group size, ``m <= 32``.
        fraction: ``None`` (the last cycle): keep exactly the ``n`` largest alive weights of
            every group (all of a group's alive weights where it has fewer). A share in
            [0, 1) (an earlier cycle): remove ``round(fraction * alive)`` of the smallest alive
            weights (per layer for ``"layerwise"``), never one of the ``n`` largest of its
            group, and at most all the others.
        scope: how ``fraction`` ranks: over all layers (``"global"``) or per layer.

    Returns:
        A new :class:`Mask`; no pruned weight is revived. Ties: the weight that comes first
        goes first (within a group: the lower input channel; across groups: mask order, then
        flat index).

    Raises:
        MaskError: a weight is missing, mis-shaped, or cannot be cut into groups of ``m``.
        ValueError: a bad ``n:m`` or ``fraction``, or non-finite alive weights.
    """
    if fraction is not None:
        _check_fraction(fraction)
    _check_weights(weights, mask)
    scores = {name: weights[name].abs() for name in mask}
    return _nm_by_scores(mask, scores, n, m, fraction=fraction, sparsity=None, scope=scope)


def nm_prune_to(
    weights: Mapping[str, Tensor],
    mask: Mask,
    n: int,
    m: int,
    sparsity: float,
    scope: Scope = "global",
) -> Mask:
    """As :func:`magnitude_prune_to` (prune the smallest alive weights until exactly
    ``round(sparsity * total)`` are pruned, per layer for ``"layerwise"``), but never one of
    the ``n`` largest alive weights of its group of ``m``. At ``sparsity = 1 - n / m`` the
    result is exactly N:M when every group has at least ``n`` alive. Gradual pruning's rule."""
    _check_fraction(sparsity)
    _check_weights(weights, mask)
    scores = {name: weights[name].abs() for name in mask}
    return _nm_by_scores(mask, scores, n, m, fraction=None, sparsity=sparsity, scope=scope)


def random_nm_prune(
    mask: Mask,
    n: int,
    m: int,
    fraction: float | None = None,
    *,
    generator: torch.Generator,
    scope: Scope = "global",
) -> Mask:
    """:func:`nm_prune` with uniformly random scores instead of magnitudes (the random-mask
    baseline under an N:M pattern): the last cycle keeps ``n`` random alive weights of every
    group. Scores are drawn with ``generator`` (CPU), one per weight in mask order."""
    if fraction is not None:
        _check_fraction(fraction)
    scores = {name: torch.rand(mask[name].shape, generator=generator) for name in mask}
    return _nm_by_scores(mask, scores, n, m, fraction=fraction, sparsity=None, scope=scope)


def ungroupable(model: nn.Module, names: Iterable[str], m: int) -> dict[str, str]:
    """The weights among ``names`` (parameter names of ``model``'s layers) that an N:M
    pattern cannot group, with the reason: an input dimension that is not a multiple of ``m``,
    or a transposed convolution (whose dimension 1 is its output)."""
    params = dict(model.named_parameters())
    out = {}
    for name in names:
        owner = model.get_submodule(name.rpartition(".")[0])
        if isinstance(owner, nn.modules.conv._ConvTransposeNd):
            out[name] = "is a transposed convolution, which no N:M kernel runs"
            continue
        problem = group_problem(params[name].shape, m)
        if problem is not None:
            out[name] = problem
    return out
