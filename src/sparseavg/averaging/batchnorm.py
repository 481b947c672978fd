"""BatchNorm recalibration: statistics that describe the weights they sit beside."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..data import BatchSource
from ..training.evaluate import model_device

#: ``forward(model, batch)``: runs one batch through the model (its output is not used)
Forward = Callable[[nn.Module, Any], Any]

RECALIBRATION_BATCH_SIZE = 256

_NONE = object()  # what next() gives on an empty iterator


def has_batchnorm(model: nn.Module) -> bool:
    """Whether any module of ``model`` is a BatchNorm layer."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    data: BatchSource,
    *,
    num_batches: int | None = None,
    batch_size: int = RECALIBRATION_BATCH_SIZE,
    momentum: float | None = None,
    augment: bool = False,
    generator: torch.Generator | None = None,
) -> None:
    """Recompute every BatchNorm layer's running statistics, in place.

    The statistics are reset and then updated over ``num_batches`` batches of ``data`` (all of
    it when ``None``) in train mode, without gradients:

    - ``momentum=None`` (default): the exact average over the batches, equal weight per batch,
      via ``torch.optim.swa_utils.update_bn``. The running mean is the mean of the per-batch
      means, the running variance the mean of the per-batch unbiased variances.
    - ``momentum=m``: exponential averaging with factor ``m`` from the reset values (mean 0,
      variance 1), as a training forward pass does; the Sparse Model Soups code recalibrates
      this way with BatchNorm's default 0.1.

    ``generator=None`` takes the batches in the split's fixed order without augmentation; with
    a CPU generator the order is a permutation drawn from it and, if ``augment``, the batches
    are augmented as in training (the SMS code recalibrates on augmented batches). The model's
    mode and its layers' momenta are restored. Averaged weights need this before they are
    evaluated or pruned: the averaged running statistics do not describe the averaged network.
    """
    if not has_batchnorm(model):
        return
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches must be >= 1 or None, got {num_batches}")
    if momentum is not None and not 0.0 < momentum <= 1.0:
        raise ValueError(f"momentum must be in (0, 1] or None, got {momentum}")
    if augment and generator is None:
        raise ValueError("augment=True needs a generator for the augmentation's randomness")
    batches = data.batches(batch_size, generator=generator, augment=augment)
    if num_batches is not None:
        batches = itertools.islice(batches, num_batches)
    recalibrate_bn_on(model, batches, momentum=momentum)


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor in it (nested in tuples, lists and dicts) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def default_forward(model: nn.Module, batch: Any) -> Any:
    """The forward pass of one batch as most loops write it: ``model(**batch)`` for a dict
    (Hugging Face), ``model(batch[0])`` for a tuple or list ``(inputs, targets, ...)``,
    ``model(batch)`` for a tensor; tensors are moved to the model's device first."""
    batch = to_device(batch, model_device(model))
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, list | tuple):
        return model(batch[0])
    return model(batch)


@torch.no_grad()
def recalibrate_bn_on(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    momentum: float | None = None,
    forward: Forward = default_forward,
) -> None:
    """Recompute every BatchNorm layer's running statistics over ``batches``, in place: reset
    them, then run each batch through ``forward(model, batch)`` in train mode without
    gradients. ``momentum=None``: the exact average over the batches (BatchNorm's cumulative
    average, as ``torch.optim.swa_utils.update_bn``); ``momentum=m``: exponential averaging
    from the reset values. The model's mode and its layers' momenta are restored.

    Unlike ``update_bn`` it takes the user's batches as they come (dicts of tensors included)
    and a ``forward`` for models whose call differs (pytorch#49082).

    Raises:
        ValueError: ``batches`` is empty (checked before the statistics are reset)."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return
    if momentum is not None and not 0.0 < momentum <= 1.0:
        raise ValueError(f"momentum must be in (0, 1] or None, got {momentum}")
    batches = iter(batches)
    first = next(batches, _NONE)
    if first is _NONE:
        raise ValueError(
            "no batches to recalibrate BatchNorm on: the statistics would be reset to mean 0, "
            "variance 1; pass at least one batch"
        )
    saved = [m.momentum for m in layers]
    was_training = model.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = momentum
    model.train()
    try:
        for batch in itertools.chain([first], batches):
            forward(model, batch)
    finally:
        for m, value in zip(layers, saved, strict=True):
            m.momentum = value
        model.train(was_training)
