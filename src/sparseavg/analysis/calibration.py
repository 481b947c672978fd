"""Calibration: whether a model's confidence matches how often it is right.

Expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural Networks"):
the confidence of a prediction is its largest class probability; predictions fall into ``M``
equal-width bins ``((m-1)/M, m/M]`` of confidence (confidence 0 into the first); then
``ECE = Σ_m (n_m / N) · |accuracy_m - confidence_m|`` over the non-empty bins.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

BINS = 15


@dataclass(frozen=True)
class Calibration:
    """The calibration of ``N`` predictions among ``C`` classes.

    Attributes:
        ece: expected calibration error in [0, 1].
        accuracy: fraction of correct predictions.
        per_class_accuracy: per true class, the fraction of its samples predicted correctly
            (``None`` for a class without samples); length ``C``.
        bin_counts: predictions per confidence bin; length ``bins``.
        bin_confidences: mean confidence per bin (``None`` where empty).
        bin_accuracies: accuracy per bin (``None`` where empty).
    """

    ece: float
    accuracy: float
    per_class_accuracy: tuple[float | None, ...]
    bin_counts: tuple[int, ...]
    bin_confidences: tuple[float | None, ...]
    bin_accuracies: tuple[float | None, ...]

    def to_dict(self) -> dict[str, object]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def calibration(probabilities: Tensor, labels: Tensor, bins: int = BINS) -> Calibration:
    """ECE with ``bins`` equal-width confidence bins, accuracy and per-class accuracy of class
    ``probabilities`` ``(N, C)`` (rows sum to 1) against integer ``labels`` ``(N,)``."""
    if probabilities.dim() != 2 or labels.shape != probabilities.shape[:1]:
        raise ValueError(
            f"expected probabilities (N, C) and labels (N,), got {tuple(probabilities.shape)} "
            f"and {tuple(labels.shape)}"
        )
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    n, classes = probabilities.shape
    if n == 0:
        raise ValueError("cannot measure calibration on no predictions")
    probs = probabilities.detach().to("cpu", torch.float64)
    labels = labels.detach().cpu()
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).double()
    index = (torch.ceil(confidence * bins).long() - 1).clamp_(0, bins - 1)
    counts = torch.bincount(index, minlength=bins)
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, confidence)
    acc_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, correct)
    ece = float((conf_sum - acc_sum).abs().sum()) / n  # n_m/N · |acc_m - conf_m| summed
    per_class_total = torch.bincount(labels, minlength=classes)
    per_class_correct = torch.bincount(labels, weights=correct, minlength=classes)

    def ratio(num: Tensor, den: Tensor) -> tuple[float | None, ...]:
        return tuple(
            float(a) / int(d) if int(d) > 0 else None for a, d in zip(num, den, strict=True)
        )

    return Calibration(
        ece=ece,
        accuracy=float(correct.mean()),
        per_class_accuracy=ratio(per_class_correct, per_class_total),
        bin_counts=tuple(int(c) for c in counts),
        bin_confidences=ratio(conf_sum, counts),
        bin_accuracies=ratio(acc_sum, counts),
    )
