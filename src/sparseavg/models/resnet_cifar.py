"""CIFAR ResNets of He et al. (2016) as used by open_lth / the lottery-ticket work."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparseavg.models._common import check_image_shape, check_num_classes, init_weights

__all__ = ["BasicBlock", "CifarResNet", "build_cifar_resnet", "cifar_resnet_factory"]

_STAGE_WIDTHS = (16, 32, 64)
MIN_IMAGE_SIZE = 8


class BasicBlock(nn.Module):
    """Post-activation basic block: conv3x3-BN-ReLU-conv3x3-BN, add shortcut, ReLU.

    The shortcut is the identity, or a 1x1 conv (stride ``stride``) + BN projection when the
    shape changes (option B). Input ``(N, in_channels, H, W)``; output
    ``(N, out_channels, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``(N, C_in, H, W)``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2): conv3x3(16)-BN-ReLU, 3 stages of ``n`` basic blocks (16/32/64 channels,
    strides 1/2/2), global average pool, ``Linear(64, num_classes)``.

    Input ``(N, in_channels, H, W)``; output ``(N, num_classes)``.
    """

    def __init__(self, depth: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, _STAGE_WIDTHS[0], 3, 1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STAGE_WIDTHS[0])
        blocks: list[nn.Module] = []
        channels = _STAGE_WIDTHS[0]
        for stage, width in enumerate(_STAGE_WIDTHS):
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(channels, width, stride))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(N, C, H, W)`` to logits ``(N, num_classes)``."""
        out = self.blocks(F.relu(self.bn1(self.conv1(x))))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        logits: Tensor = self.fc(out)
        return logits


def build_cifar_resnet(depth: int, num_classes: int, input_shape: tuple[int, ...]) -> CifarResNet:
    """Build a CIFAR ResNet of ``depth`` for images ``(C, H, W)`` with ``H, W >= 8``."""
    channels, _, _ = check_image_shape(f"resnet{depth}", input_shape, MIN_IMAGE_SIZE)
    return CifarResNet(depth, channels, check_num_classes(num_classes))


def cifar_resnet_factory(depth: int) -> Callable[[int, tuple[int, ...]], CifarResNet]:
    """Return the registry factory ``(num_classes, input_shape) -> model`` for ``depth``."""

    def factory(num_classes: int, input_shape: tuple[int, ...]) -> CifarResNet:
        return build_cifar_resnet(depth, num_classes, input_shape)

    factory.__name__ = f"resnet{depth}"
    factory.__doc__ = f"Build ``resnet{depth}`` (CIFAR ResNet, images (C, H, W), H, W >= 8)."
    return factory
