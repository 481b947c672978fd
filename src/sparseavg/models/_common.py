"""Helpers shared by the model definitions: argument checks and weight initialisation."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = [
    "check_image_shape",
    "check_num_classes",
    "check_positive_int",
    "check_shape",
    "init_weights",
]


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
