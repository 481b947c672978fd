"""Helpers shared by the model definitions: argument checks and weight initialisation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

__all__ = [
    "INIT_SCHEMES",
    "InitScheme",
    "check_image_shape",
    "check_num_classes",
    "check_positive_int",
    "check_shape",
    "init_open_lth",
    "init_weights",
    "initialise",
]

InitScheme = Literal["sparseavg", "open_lth"]
INIT_SCHEMES: tuple[str, ...] = ("sparseavg", "open_lth")


def check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    """Return ``input_shape`` as a tuple of positive ints, or raise ``ValueError``.

    ``input_shape`` is the shape of one sample, without the batch dimension.
    """
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise ValueError(f"input_shape must be a sequence of ints, got {input_shape!r}") from None
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(
            f"input_shape must be a non-empty tuple of positive ints, got {input_shape!r}"
        )
    return shape


def check_image_shape(
    model: str, input_shape: Sequence[int], min_size: int
) -> tuple[int, int, int]:
    """Validate an image shape ``(C, H, W)`` with ``H, W >= min_size``; return it.

    Raises ``ValueError`` naming the model and the input shapes it accepts.
    """
    shape = check_shape(input_shape)
    if len(shape) != 3 or shape[1] < min_size or shape[2] < min_size:
        raise ValueError(
            f"{model} cannot take input_shape {shape}: it accepts images (C, H, W) "
            f"with H, W >= {min_size}, e.g. (3, 32, 32)"
        )
    return shape[0], shape[1], shape[2]


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int >= 1, else raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_num_classes(num_classes: object) -> int:
    """Return ``num_classes`` if it is an int >= 1, else raise ``ValueError``."""
    return check_positive_int("num_classes", num_classes)


def init_weights(model: nn.Module) -> None:
    """Initialise ``model`` in place (uses the global torch RNG; the caller seeds it).

    Convolutions: Kaiming normal (fan_out, ReLU), bias 0. Linear layers: PyTorch's default
    (as constructed). Batch norm: weight 1, bias 0.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def init_open_lth(model: nn.Module) -> None:
    """Initialise ``model`` in place as open_lth does (uses the global torch RNG).

    open_lth (2ce732f) builds a model with torch's default initialisation, then applies its
    ``kaiming_normal`` and ``uniform`` initialisers (``models/initializers.py``,
    ``bn_initializers.py``; the default of every model) to each module in order:

    - conv and linear weights: ``kaiming_normal_`` with its defaults (fan_in, gain sqrt(2));
    - conv and linear biases: torch's default, uniform in ``±1/sqrt(fan_in)`` (open_lth never
      touches them; a conv bias our constructors zeroed is drawn again);
    - BatchNorm: weight uniform in [0, 1) (``torch.rand``), bias 0.

    On a model whose constructor draws nothing beyond torch's defaults (the MLPs and
    LeNet-300-100) this gives open_lth's weights bit for bit under the same seed.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            nn.init.kaiming_normal_(module.weight)
            if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d) and module.bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                nn.init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            with torch.no_grad():
                module.weight.copy_(torch.rand(module.weight.shape))
                module.bias.zero_()


def initialise(model: nn.Module, scheme: str) -> nn.Module:
    """``model`` with the initialisation ``scheme`` (in place; uses the global torch RNG).

    ``"sparseavg"``: as the model built itself (our models: :func:`init_weights`; torchvision
    models: theirs). ``"open_lth"``: :func:`init_open_lth`.

    Raises:
        ValueError: an unknown scheme.
    """
    if scheme == "open_lth":
        init_open_lth(model)
    elif scheme != "sparseavg":
        raise ValueError(f"init must be one of {', '.join(INIT_SCHEMES)}, got {scheme!r}")
    return model
