"""Evaluation of a model on a split: accuracy and mean cross-entropy; macro accuracy."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import BatchSource

EVAL_BATCH_SIZE = 1024


@dataclass(frozen=True)
class Evaluation:
    """Accuracy in [0, 1] and mean cross-entropy loss (nats) over ``count`` samples.

    A user's ``eval_fn`` (own-model runs) gives its headline metric as ``accuracy``, its
    ``loss`` if it reports one (else NaN), ``count`` 0, and everything it returned in
    ``metrics``."""

    accuracy: float
    loss: float
    count: int
    metrics: dict[str, float] = field(default_factory=dict)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _prepare(x: Tensor, device: torch.device, channels_last: bool) -> Tensor:
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    x: Tensor,
    *,
    precision: str = "fp32",
    channels_last: bool = False,
) -> Tensor:
    """Logits ``(B, classes)`` in float32 for inputs ``x`` ``(B, *input_shape)``, in eval mode."""
    device = model_device(model)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        return model(_prepare(x, device, channels_last)).float()


@torch.no_grad()
def evaluate_probabilities(probabilities: list[Tensor] | Tensor, labels: Tensor) -> Evaluation:
    """Accuracy and negative log-likelihood of class probabilities ``(N, classes)``."""
    probs = torch.cat(probabilities) if isinstance(probabilities, list) else probabilities
    labels = labels.to(probs.device)
    nll = F.nll_loss(torch.log(probs.clamp_min(1e-12)), labels, reduction="sum")
    correct = (probs.argmax(dim=1) == labels).sum()
    n = labels.numel()
    return Evaluation(accuracy=int(correct) / n, loss=float(nll) / n, count=n)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: BatchSource,
    *,
    batch_size: int = EVAL_BATCH_SIZE,
    precision: str = "fp32",
    channels_last: bool = False,
) -> Evaluation:
    """Accuracy and mean cross-entropy of ``model`` on every sample of ``data`` (eval mode).

    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    device = model_device(model)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    count = 0
    try:
        for x, y in data.batches(batch_size):
            y = y.to(device, non_blocking=True)
            logits = predict_logits(model, x, precision=precision, channels_last=channels_last)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(dim=1) == y).sum()
            count += y.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("cannot evaluate on an empty split")
    return Evaluation(accuracy=int(correct) / count, loss=float(loss_sum) / count, count=count)


def macro_accuracy_of(predictions: Tensor, labels: Tensor, num_classes: int) -> float:
    """The mean of the per-class accuracies (recalls) of predicted classes ``(N,)`` against
    ``labels`` ``(N,)``, as torchmetrics' ``MulticlassAccuracy(num_classes)`` computes it (its
    default ``average="macro"``, the SMS code's ``accuracy``).

    Class ``c``'s accuracy is ``correct_c / count_c`` (0 when no sample has label ``c``); a
    class that no sample has and nothing predicts is left out of the mean, one that is only
    predicted counts as 0 (torchmetrics weighs out classes with ``tp + fp + fn == 0``).
    """
    predictions = predictions.reshape(-1).to(torch.int64)
    labels = labels.reshape(-1).to(device=predictions.device, dtype=torch.int64)
    count = torch.bincount(labels, minlength=num_classes).double()
    predicted = torch.bincount(predictions, minlength=num_classes).double()
    correct = torch.bincount(labels[predictions == labels], minlength=num_classes).double()
    present = (count + predicted - correct) > 0
    recall = torch.where(count > 0, correct / count.clamp_min(1), torch.zeros_like(count))
    n = int(present.sum())
    return float(recall[present].sum()) / n if n else 0.0


@torch.no_grad()
def macro_accuracy(
    model: nn.Module,
    data: BatchSource,
    num_classes: int,
    *,
    batch_size: int = EVAL_BATCH_SIZE,
    precision: str = "fp32",
    channels_last: bool = False,
) -> float:
    """:func:`macro_accuracy_of` ``model``'s predictions on every sample of ``data`` (eval
    mode; the model's mode is restored afterwards): the SMS code's greedy-soup metric."""
    was_training = model.training
    model.eval()
    predictions, labels = [], []
    try:
        for x, y in data.batches(batch_size):
            logits = predict_logits(model, x, precision=precision, channels_last=channels_last)
            predictions.append(logits.argmax(dim=1))
            labels.append(y.to(logits.device, non_blocking=True))
    finally:
        model.train(was_training)
    if not labels:
        raise ValueError("cannot evaluate on an empty split")
    return macro_accuracy_of(torch.cat(predictions), torch.cat(labels), num_classes)
