"""Small models and data shared by the tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

# The devices a ``device``-marked test runs on (``pytest -m device`` selects them all): the CPU
# always, CUDA where torch sees a GPU (``benchmarks/gpu_check.py`` runs them there).
CUDA = torch.cuda.is_available()
DEVICES = [
    pytest.param("cpu", marks=pytest.mark.device),
    pytest.param(
        "cuda", marks=[pytest.mark.device, pytest.mark.skipif(not CUDA, reason="no CUDA device")]
    ),
]


class TinyConvNet(nn.Module):
    """conv -> BN -> ReLU -> linear, for (1, 8, 8) inputs and 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def tiny_net(seed: int = 0) -> TinyConvNet:
    torch.manual_seed(seed)
    return TinyConvNet()


def tiny_split(n: int = 96, seed: int = 0):
    from sparseavg.data import Split

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long() + (x[:, 0, 0, 0] > 1).long()
    return Split(x, y)
