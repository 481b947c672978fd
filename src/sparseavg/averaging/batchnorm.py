"""BatchNorm recalibration: statistics that describe the weights they sit beside."""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from ..data import BatchSource
from ..training.evaluate import model_device

RECALIBRATION_BATCH_SIZE = 256


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
    device = model_device(model)
    if momentum is None:
        update_bn(batches, model, device=device)
        return
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in layers]
    was_training = model.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = momentum
    model.train()
    try:
        for x, _ in batches:
            model(x.to(device))
    finally:
        for m, value in zip(layers, saved, strict=True):
            m.momentum = value
        model.train(was_training)
