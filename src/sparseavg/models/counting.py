"""Parameter counting."""

from __future__ import annotations

from torch import nn

__all__ = ["count_parameters"]


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of scalar parameters of ``model`` (buffers excluded).

    With ``trainable_only`` only parameters with ``requires_grad`` are counted.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
