"""``execution.mode = "auto"`` on a GPU: stacked when the copies fit, else sequential."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..training.evaluate import model_device
from .base import Hooks, Job, Outcome, Trainer, Work
from .sequential import Sequential
from .stacked import Stacked

#: bytes a stacked ingredient needs per byte of its model state, beyond activations: the
#: weights, their gradients, momentum, the SWA average and the checkpoint copy
STATE_COPIES = 6
#: share of the free GPU memory the stacked copies may take (the rest is for activations)
MEMORY_SHARE = 0.5


def stacked_fits(model: nn.Module, k: int) -> bool:
    """Whether ``k`` stacked copies of ``model`` (with optimizer state and SWA) fit in half the
    free memory of its CUDA device; ``False`` off CUDA."""
    device = model_device(model)
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return k * state * STATE_COPIES <= MEMORY_SHARE * free


class Auto:
    """Stacked on a CUDA device when the jobs' copies fit (:func:`stacked_fits`), sequential
    otherwise (on CPUs stacking measured 0.66x a loop's throughput for ResNet-20 with K = 4 on
    2 cores, so it is never chosen there)."""

    name = "auto"

    def run(
        self, model: nn.Module, trainer: Trainer, work: Work, jobs: Sequence[Job], hooks: Hooks
    ) -> dict[int, Outcome]:
        if stacked_fits(model, len(jobs)):  # Stacked trains a single job on its own
            return Stacked().run(model, trainer, work, jobs, hooks)
        return Sequential().run(model, trainer, work, jobs, hooks)
