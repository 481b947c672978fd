"""Pre-activation wide ResNets of Zagoruyko & Komodakis (2016)."""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparseavg.models._common import (
    check_image_shape,
    check_num_classes,
    check_positive_int,
    init_weights,
)

__all__ = [
    "WRN_NAME_PATTERN",
    "PreActBlock",
    "WideResNet",
    "build_wide_resnet",
    "parse_wrn_name",
    "wrn_blocks_per_stage",
    "wrn_factory",
]

WRN_NAME_PATTERN = re.compile(r"wrn(\d+)_(\d+)")
MIN_IMAGE_SIZE = 8
_BASE_WIDTHS = (16, 32, 64)


def wrn_blocks_per_stage(depth: int) -> int:
    """Blocks per stage for a WRN of ``depth``.

    ``(depth - 4) / 6`` when that is an integer (the WRN paper: WRN-28 → 4, WRN-16 → 2);
    else ``(depth - 2) / 6`` (the ResNet-32 convention of WRN-32-4 in SWAMP → 5).
    """
    if depth >= 10 and (depth - 4) % 6 == 0:
        return (depth - 4) // 6
    if depth >= 8 and (depth - 2) % 6 == 0:
        return (depth - 2) // 6
    raise ValueError(
        f"WRN depth must be 6n+4 (e.g. 16, 28, 40) or 6n+2 (e.g. 20, 32) with n >= 1, got {depth}"
    )


def parse_wrn_name(name: str) -> tuple[int, int] | None:
    """Return ``(depth, widen_factor)`` for names like ``"wrn28_2"``, else ``None``."""
    match = WRN_NAME_PATTERN.fullmatch(name)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


class PreActBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3(stride)-BN-ReLU-[dropout]-conv3x3, plus shortcut.

    The shortcut is the identity, or a 1x1 conv (stride ``stride``) applied to the
    pre-activated input when the shape changes. Input ``(N, in_channels, H, W)``; output
    ``(N, out_channels, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``(N, C_in, H, W)``."""
        pre = F.relu(self.bn1(x))
        residual: Tensor = x if self.shortcut is None else self.shortcut(pre)
        out: Tensor = self.conv1(pre)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + residual


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``: conv3x3(16), 3 stages of pre-activation blocks
    (16k/32k/64k channels, strides 1/2/2), BN-ReLU, global average pool, ``Linear(64k, K)``.

    Input ``(N, in_channels, H, W)``; output ``(N, num_classes)``.
    """

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        in_channels: int,
        num_classes: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        blocks_per_stage = wrn_blocks_per_stage(depth)
        self.conv1 = nn.Conv2d(in_channels, _BASE_WIDTHS[0], 3, 1, padding=1, bias=False)
        blocks: list[nn.Module] = []
        channels = _BASE_WIDTHS[0]
        for stage, base in enumerate(_BASE_WIDTHS):
            width = base * widen_factor
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(PreActBlock(channels, width, stride, dropout))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(N, C, H, W)`` to logits ``(N, num_classes)``."""
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        logits: Tensor = self.fc(out)
        return logits


def build_wide_resnet(
    depth: int,
    widen_factor: int,
    num_classes: int,
    input_shape: tuple[int, ...],
    *,
    dropout: float = 0.0,
) -> WideResNet:
    """Build ``wrn<depth>_<widen_factor>`` for images ``(C, H, W)`` with ``H, W >= 8``."""
    name = f"wrn{depth}_{widen_factor}"
    try:
        wrn_blocks_per_stage(depth)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    check_positive_int(f"{name}: widen factor", widen_factor)
    channels, _, _ = check_image_shape(name, input_shape, MIN_IMAGE_SIZE)
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
    return WideResNet(
        depth, widen_factor, channels, check_num_classes(num_classes), dropout=float(dropout)
    )


def wrn_factory(depth: int, widen_factor: int) -> Callable[..., WideResNet]:
    """Return the factory ``(num_classes, input_shape, *, dropout=0.0) -> model`` for
    ``wrn<depth>_<widen_factor>``."""

    def factory(
        num_classes: int, input_shape: tuple[int, ...], *, dropout: float = 0.0
    ) -> WideResNet:
        return build_wide_resnet(depth, widen_factor, num_classes, input_shape, dropout=dropout)

    factory.__name__ = f"wrn{depth}_{widen_factor}"
    factory.__doc__ = f"Build ``wrn{depth}_{widen_factor}`` (images (C, H, W), H, W >= 8)."
    return factory
