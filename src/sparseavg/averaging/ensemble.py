"""Prediction ensembles: the average of the members' class probabilities."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..data import BatchSource
from ..training.evaluate import (
    EVAL_BATCH_SIZE,
    Evaluation,
    evaluate_probabilities,
    predict_logits,
)


@torch.no_grad()
def ensemble_probabilities(
    models: Sequence[nn.Module], data: BatchSource, *, batch_size: int = EVAL_BATCH_SIZE
) -> torch.Tensor:
    """Mean softmax probabilities ``(N, classes)`` of ``models`` over ``data`` in fixed order."""
    if not models:
        raise ValueError("an ensemble needs at least one model")
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        chunks = []
        for x, _ in data.batches(batch_size):
            probs = torch.stack([predict_logits(m, x).softmax(dim=1).cpu() for m in models])
            chunks.append(probs.mean(dim=0))
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)
    return torch.cat(chunks)


@torch.no_grad()
def evaluate_ensemble(
    models: Sequence[nn.Module], data: BatchSource, *, batch_size: int = EVAL_BATCH_SIZE
) -> Evaluation:
    """Accuracy and NLL of the ensemble that averages the members' predicted probabilities."""
    probs = ensemble_probabilities(models, data, batch_size=batch_size)
    labels = torch.cat([y.cpu() for _, y in data.batches(batch_size)])
    return evaluate_probabilities(probs, labels)
