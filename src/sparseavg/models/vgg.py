"""CIFAR VGG networks with batch norm, in the style of open_lth."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparseavg.models._common import check_image_shape, check_num_classes, init_weights

__all__ = ["VGG", "VGG_PLANS", "build_vgg", "vgg_factory"]

# Standard configurations A/B/D/E; "M" is a 2x2 max-pool. As in open_lth the fifth pool is
# dropped: the 2x2 map left from a 32x32 input is average-pooled into the 512-d head.
VGG_PLANS: dict[int, tuple[int | str, ...]] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    19: (
        *(64, 64, "M", 128, 128, "M"),
        *(256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512),
    ),
}
MIN_IMAGE_SIZE = 16  # four 2x2 max-pools


class VGG(nn.Module):
    """VGG: (conv3x3-BN-ReLU | maxpool2x2)* per ``plan``, global average pool,
    ``Linear(512, num_classes)``.

    Convs have a bias, as in open_lth (zero-initialised here; open_lth keeps torch's default,
    which ``model.init = "open_lth"`` draws). Input ``(N, in_channels, H, W)``
    with ``H, W >= 16``; output ``(N, num_classes)``.
    """

    def __init__(self, plan: Sequence[int | str], in_channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for spec in plan:
            if spec == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            elif isinstance(spec, int):
                layers += [
                    nn.Conv2d(channels, spec, kernel_size=3, padding=1),
                    nn.BatchNorm2d(spec),
                    nn.ReLU(inplace=False),
                ]
                channels = spec
            else:
                raise ValueError(f"VGG plan entries must be ints or 'M', got {spec!r}")
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(N, C, H, W)`` to logits ``(N, num_classes)``."""
        out = torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1)
        logits: Tensor = self.fc(out)
        return logits


def build_vgg(depth: int, num_classes: int, input_shape: tuple[int, ...]) -> VGG:
    """Build ``vgg<depth>`` (11, 13, 16 or 19) for images ``(C, H, W)`` with ``H, W >= 16``."""
    if depth not in VGG_PLANS:
        raise ValueError(f"VGG depth must be one of {sorted(VGG_PLANS)}, got {depth}")
    channels, _, _ = check_image_shape(f"vgg{depth}", input_shape, MIN_IMAGE_SIZE)
    return VGG(VGG_PLANS[depth], channels, check_num_classes(num_classes))


def vgg_factory(depth: int) -> Callable[[int, tuple[int, ...]], VGG]:
    """Return the registry factory ``(num_classes, input_shape) -> model`` for ``depth``."""

    def factory(num_classes: int, input_shape: tuple[int, ...]) -> VGG:
        return build_vgg(depth, num_classes, input_shape)

    factory.__name__ = f"vgg{depth}"
    factory.__doc__ = f"Build ``vgg{depth}`` (CIFAR VGG with BN, images (C, H, W), H, W >= 16)."
    return factory
