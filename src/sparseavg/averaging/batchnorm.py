"""BatchNorm recalibration: exact statistics of an averaged model."""

from __future__ import annotations

import itertools

from torch import nn
from torch.optim.swa_utils import update_bn

from ..data import BatchSource
from ..training.evaluate import model_device

RECALIBRATION_BATCH_SIZE = 256


def has_batchnorm(model: nn.Module) -> bool:
    """Whether any module of ``model`` is a BatchNorm layer."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def recalibrate_bn(
    model: nn.Module,
    data: BatchSource,
    *,
    num_batches: int | None = None,
    batch_size: int = RECALIBRATION_BATCH_SIZE,
) -> None:
    """Recompute every BatchNorm layer's running statistics, in place.

    The statistics are reset and then accumulated as a cumulative (equal-weight) average over
    ``num_batches`` batches of ``data`` in its fixed order and without augmentation (all of it
    when ``None``), with ``momentum=None`` as in ``torch.optim.swa_utils.update_bn``, which does
    the work. The running mean is then the mean of the per-batch means and the running variance
    the mean of the per-batch unbiased variances. The model's mode and momenta are restored.
    Averaged weights need this before they are evaluated or pruned: the averaged running
    statistics do not describe the averaged network.
    """
    if not has_batchnorm(model):
        return
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches must be >= 1 or None, got {num_batches}")
    batches = data.batches(batch_size)
    if num_batches is not None:
        batches = itertools.islice(batches, num_batches)
    update_bn(batches, model, device=model_device(model))
