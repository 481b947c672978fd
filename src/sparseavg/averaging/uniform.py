"""Uniform (and weighted) averages of model states."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..pruning import Mask
from ..utils.state import State


def _check_compatible(states: Sequence[Mapping[str, Tensor]]) -> None:
    if not states:
        raise ValueError("cannot average an empty list of states")
    keys = set(states[0])
    for i, s in enumerate(states[1:], start=1):
        if set(s) != keys:
            differ = sorted(keys ^ set(s))
            raise ValueError(f"state {i} has different entries than state 0: {differ[:5]}")
        for k in keys:
            if s[k].shape != states[0][k].shape:
                raise ValueError(
                    f"state {i} entry {k!r} has shape {tuple(s[k].shape)}, "
                    f"state 0 has {tuple(states[0][k].shape)}"
                )


@torch.no_grad()
def uniform_average(
    states: Sequence[Mapping[str, Tensor]],
    *,
    mask: Mask | None = None,
    weights: Sequence[float] | None = None,
) -> State:
    """The (weighted) mean of model states, entry by entry.

    Floating-point entries are averaged as a running mean, ``avg += w_k / W_k * (x_k - avg)``
    (``torch.lerp``), so the average of identical states is bit-for-bit that state and an entry
    that is 0 in every state stays exactly 0. Integer entries (e.g. BatchNorm's
    ``num_batches_tracked``) are taken from the first state. With ``mask``, masked entries are
    multiplied by it afterwards (a no-op when every state respects the mask).

    Args:
        states: K states with identical names and shapes.
        mask: the shared mask, applied to the result.
        weights: K non-negative weights (default: uniform).

    Returns:
        A new state on the device of ``states[0]``.
    """
    _check_compatible(states)
    if weights is None:
        weights = [1.0] * len(states)
    if len(weights) != len(states) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be {len(states)} non-negative numbers with a positive sum")
    first = states[0]
    result: State = {}
    for name, t0 in first.items():
        if not t0.is_floating_point():
            result[name] = t0.detach().clone()
            continue
        avg = t0.detach().clone()
        seen = weights[0]
        for s, w in zip(states[1:], weights[1:], strict=True):
            if w == 0:
                continue
            seen += w  # a weight of 1 (all before had weight 0) makes lerp return s exactly
            avg.lerp_(s[name].to(avg.device, avg.dtype), w / seen)
        result[name] = avg
    if mask is not None:
        result = mask.applied(result)
    return result
