"""What pruning does to a model, measured on plain states."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor


@torch.no_grad()
def relative_norm_drop(
    before: Mapping[str, Tensor], after: Mapping[str, Tensor], names: Iterable[str]
) -> float:
    """``sqrt(|‖θ‖² − ‖θ'‖²|) / ‖θ‖`` over the entries ``names`` of two states.

    The Sparse Model Soups code measures this over every weight and bias (norm layers
    included) of the model before and after pruning; its adaptive retraining schedule (ALLR)
    scales the peak learning rate by it. 0 for a state with zero norm.
    """
    keys = list(names)
    square_before = sum(float(before[k].double().pow(2).sum()) for k in keys)
    square_after = sum(float(after[k].double().pow(2).sum()) for k in keys)
    if square_before <= 0:
        return 0.0
    return math.sqrt(abs(square_before - square_after)) / math.sqrt(square_before)
