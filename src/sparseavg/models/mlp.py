"""Fully connected network: Flatten → (Linear → ReLU)* → Linear."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from sparseavg.models._common import (
    check_num_classes,
    check_positive_int,
    check_shape,
    init_weights,
)

__all__ = ["MLP", "build_mlp"]


class MLP(nn.Module):
    """Multi-layer perceptron on flattened inputs.

    Args:
        in_features: number of input features (product of the sample shape).
        hidden: widths of the hidden layers, in order (may be empty: a linear model).
        num_classes: number of logits.

    Input ``(N, *sample_shape)`` with ``prod(sample_shape) == in_features``;
    output ``(N, num_classes)``.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=False)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(N, *sample_shape)`` to logits ``(N, num_classes)``."""
        out: Tensor = self.layers(x)
        return out


def build_mlp(
    num_classes: int,
    input_shape: tuple[int, ...],
    *,
    hidden: Sequence[int] = (256, 256),
) -> MLP:
    """Build ``mlp``: any ``input_shape`` (flattened), hidden widths ``hidden``."""
    shape = check_shape(input_shape)
    if isinstance(hidden, str | bytes) or not isinstance(hidden, Sequence):
        raise ValueError(f"hidden must be a sequence of positive ints, got {hidden!r}")
    widths = tuple(check_positive_int("hidden width", h) for h in hidden)
    return MLP(math.prod(shape), widths, check_num_classes(num_classes))
