"""Small 1-D convolutional network for MNIST-1D style sequences."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sparseavg.models._common import (
    check_num_classes,
    check_positive_int,
    check_shape,
    init_weights,
)

__all__ = ["Conv1dNet", "build_conv1d"]

_KERNEL = 5
_PADDING = 2
_STRIDES = (1, 2, 2)


def _out_length(length: int, stride: int) -> int:
    """Output length of a kernel-5, padding-2 convolution with ``stride``."""
    return (length + 2 * _PADDING - _KERNEL) // stride + 1


class Conv1dNet(nn.Module):
    """Three Conv1d (kernel 5, padding 2; strides 1, 2, 2) blocks, then a linear head.

    Each conv is followed by BatchNorm1d (if ``batch_norm``) and ReLU. The final feature map
    ``(N, width, L_out)`` is flattened (keeping position information, which MNIST-1D needs)
    and fed to ``Linear(width * L_out, num_classes)``.

    Args:
        in_channels: input channels ``C``.
        length: input length ``L``.
        num_classes: number of logits.
        width: channels of every conv layer.
        batch_norm: use BatchNorm1d after each conv (convs then have no bias).
        add_channel_dim: the input is ``(N, L)``; insert a channel dim of size 1 first.

    Input ``(N, C, L)`` (or ``(N, L)`` with ``add_channel_dim``); output ``(N, num_classes)``.
    """

    def __init__(
        self,
        in_channels: int,
        length: int,
        num_classes: int,
        width: int = 32,
        batch_norm: bool = True,
        add_channel_dim: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Unflatten(1, (1, length))] if add_channel_dim else []
        channels = in_channels
        for stride in _STRIDES:
            layers.append(
                nn.Conv1d(
                    channels, width, _KERNEL, stride=stride, padding=_PADDING, bias=not batch_norm
                )
            )
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU(inplace=False))
            channels = width
            length = _out_length(length, stride)
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(width * length, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(N, C, L)`` (or ``(N, L)``) to logits ``(N, num_classes)``."""
        logits: Tensor = self.fc(torch.flatten(self.features(x), 1))
        return logits


def build_conv1d(
    num_classes: int,
    input_shape: tuple[int, ...],
    *,
    width: int = 32,
    batch_norm: bool = True,
) -> Conv1dNet:
    """Build ``conv1d`` for input ``(C, L)``, e.g. ``(1, 40)`` for MNIST-1D, or ``(L,)``."""
    shape = check_shape(input_shape)
    if len(shape) not in (1, 2):
        raise ValueError(
            f"conv1d cannot take input_shape {shape}: it accepts sequences (C, L) "
            "or (L,), e.g. (1, 40)"
        )
    if not isinstance(batch_norm, bool):
        raise ValueError(f"batch_norm must be a bool, got {batch_norm!r}")
    channels, length = (1, shape[0]) if len(shape) == 1 else (shape[0], shape[1])
    return Conv1dNet(
        channels,
        length,
        check_num_classes(num_classes),
        width=check_positive_int("width", width),
        batch_norm=batch_norm,
        add_channel_dim=len(shape) == 1,
    )
