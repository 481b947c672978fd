"""ImageNet ResNets from torchvision (optional dependency, imported lazily)."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from torch import nn

from sparseavg.models._common import check_image_shape, check_num_classes

__all__ = ["build_torchvision_resnet", "torchvision_resnet_factory"]

MIN_IMAGE_SIZE = 32  # five stride-2 stages


def build_torchvision_resnet(
    arch: str, num_classes: int, input_shape: tuple[int, ...]
) -> nn.Module:
    """Build torchvision's ``arch`` (``"resnet18"`` or ``"resnet50"``), randomly initialised.

    Accepts images ``(3, H, W)`` with ``H, W >= 32``; output ``(N, num_classes)``. The
    ReLUs are switched to out-of-place so the model is safe under ``torch.func``.

    Raises:
        ImportError: torchvision is not installed.
    """
    channels, _, _ = check_image_shape(arch, input_shape, MIN_IMAGE_SIZE)
    if channels != 3:
        raise ValueError(
            f"{arch} cannot take input_shape {tuple(input_shape)}: it accepts RGB images "
            f"(3, H, W) with H, W >= {MIN_IMAGE_SIZE}, e.g. (3, 224, 224)"
        )
    num_classes = check_num_classes(num_classes)
    try:
        tv_models = importlib.import_module("torchvision.models")
    except ImportError as exc:
        raise ImportError(f"{arch} needs torchvision: pip install 'sparseavg[vision]'") from exc
    model: nn.Module = getattr(tv_models, arch)(weights=None, num_classes=num_classes)
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return model


def torchvision_resnet_factory(arch: str) -> Callable[[int, tuple[int, ...]], nn.Module]:
    """Return the registry factory ``(num_classes, input_shape) -> model`` for ``arch``."""

    def factory(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
        return build_torchvision_resnet(arch, num_classes, input_shape)

    factory.__name__ = arch
    factory.__doc__ = f"Build torchvision's ``{arch}`` (needs the ``vision`` extra)."
    return factory
