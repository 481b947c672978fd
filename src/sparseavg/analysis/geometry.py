"""Where models lie relative to each other: distances and angles between parameter vectors.

Only parameters count (``model.named_parameters()``, floating point): buffers such as
BatchNorm's running statistics describe the data, not the weights, and are left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Distance:
    """Two models ``a`` and ``b`` (labels): the L2 norm of the difference of their parameter
    vectors (in weight units) and the cosine of the angle between them (in [-1, 1]; NaN when
    one is all zeros)."""

    a: str
    b: str
    l2: float
    cosine: float


def parameter_names(model: nn.Module) -> list[str]:
    """The names of ``model``'s floating-point parameters, in registration order."""
    return [n for n, p in model.named_parameters() if p.is_floating_point()]


def flatten(state: Mapping[str, Tensor], names: Sequence[str]) -> Tensor:
    """The entries ``names`` of ``state`` flattened and concatenated: a float64 CPU vector."""
    return torch.cat([state[n].detach().reshape(-1).to("cpu", torch.float64) for n in names])


def l2_distance(a: Tensor, b: Tensor) -> float:
    """``||a - b||_2`` of two flat vectors."""
    return float(torch.linalg.vector_norm(a - b))


def cosine_similarity(a: Tensor, b: Tensor) -> float:
    """``a·b / (||a|| ||b||)`` of two flat vectors; NaN when either is zero."""
    denominator = float(torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b))
    return float(a @ b) / denominator if denominator > 0 else float("nan")


def distances(
    states: Mapping[str, Mapping[str, Tensor]],
    pairs: Sequence[tuple[str, str]],
    names: Sequence[str],
) -> list[Distance]:
    """:class:`Distance` of each pair of labels of ``states``, over the parameters ``names``."""
    flat = {label: flatten(states[label], names) for label in {x for p in pairs for x in p}}
    return [
        Distance(a, b, l2_distance(flat[a], flat[b]), cosine_similarity(flat[a], flat[b]))
        for a, b in pairs
    ]
