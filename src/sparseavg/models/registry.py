"""Name → model factory registry, and ``build_model``.

A factory is called as ``factory(num_classes=..., input_shape=..., **options)`` and returns
an ``nn.Module`` mapping ``(N, *input_shape)`` to logits ``(N, num_classes)``. Besides the
registered names, ``wrn<depth>_<width>`` (e.g. ``wrn28_2``) builds a wide ResNet.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from sparseavg.models.conv1d import build_conv1d
from sparseavg.models.imagenet import torchvision_resnet_factory
from sparseavg.models.lenet import build_lenet300_100
from sparseavg.models.mlp import build_mlp
from sparseavg.models.resnet_cifar import cifar_resnet_factory
from sparseavg.models.vgg import vgg_factory
from sparseavg.models.wide_resnet import parse_wrn_name, wrn_factory

__all__ = ["WRN_PLACEHOLDER", "available_models", "build_model", "register_model"]

ModelFactory = Callable[..., nn.Module]

WRN_PLACEHOLDER = "wrn<depth>_<width>"
_RESERVED_ARGS = ("num_classes", "input_shape")

_REGISTRY: dict[str, ModelFactory] = {
    "mlp": build_mlp,
    "lenet300_100": build_lenet300_100,
    "conv1d": build_conv1d,
    **{f"resnet{d}": cifar_resnet_factory(d) for d in (20, 32, 56)},
    **{f"vgg{d}": vgg_factory(d) for d in (11, 13, 16, 19)},
    **{arch: torchvision_resnet_factory(arch) for arch in ("resnet18", "resnet50")},
}


def register_model(name: str, factory: Callable[..., nn.Module]) -> None:
    """Register ``factory`` under ``name``.

    ``factory(num_classes=..., input_shape=..., **options)`` must return the model.

    Raises:
        ValueError: ``name`` is empty, the wrn placeholder, or already registered.
        TypeError: ``factory`` is not callable.
    """
    if not isinstance(name, str) or not name or name == WRN_PLACEHOLDER:
        raise ValueError(f"invalid model name {name!r}")
    if not callable(factory):
        raise TypeError(f"factory for {name!r} must be callable, got {type(factory).__name__}")
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = factory


def available_models() -> list[str]:
    """Sorted model names, including the pattern ``"wrn<depth>_<width>"``."""
    return sorted([*_REGISTRY, WRN_PLACEHOLDER])


def _check_options(name: str, factory: ModelFactory, options: Mapping[str, Any]) -> None:
    """Raise ``TypeError`` naming any option that ``factory`` does not accept."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # signature not introspectable: let the call decide
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [
        p.name
        for p in params.values()
        if p.name not in _RESERVED_ARGS
        and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"unknown option(s) for model {name!r}: {', '.join(unknown)}; "
            f"accepted options: {', '.join(accepted) if accepted else '(none)'}"
        )


def build_model(
    name: str, num_classes: int, input_shape: tuple[int, ...], **options: Any
) -> nn.Module:
    """Build the model ``name`` for samples of ``input_shape`` and ``num_classes`` logits.

    The weights are initialised from the global torch RNG (seed it for reproducibility).
    ``options`` are model-specific keyword options (e.g. ``hidden`` for ``mlp``, ``width``
    for ``conv1d``, ``dropout`` for ``wrn<depth>_<width>``).

    Returns:
        a module mapping ``(N, *input_shape)`` to logits ``(N, num_classes)``.

    Raises:
        ValueError: unknown ``name``, an ``input_shape`` the model cannot take, or a bad
            option value.
        TypeError: an option the model does not accept.
        ImportError: the model needs an optional dependency that is missing.
    """
    input_shape = tuple(input_shape)
    factory = _REGISTRY.get(name)
    if factory is None:
        wrn = parse_wrn_name(name)
        if wrn is None:
            known = ", ".join(available_models())
            raise ValueError(f"unknown model {name!r}; known models: {known}")
        factory = wrn_factory(*wrn)
    _check_options(name, factory, options)
    model: nn.Module = factory(num_classes=num_classes, input_shape=input_shape, **options)
    return model
