"""The trace of the loss Hessian by Hutchinson's estimator: a measure of sharpness.

For a random vector ``v`` with independent Rademacher entries (±1 with equal probability),
``E[vᵀHv] = tr(H)``. Each probe costs one Hessian-vector product per batch, computed
forward-over-reverse with :mod:`torch.func` (``jvp`` of ``grad``), never the Hessian itself.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp

from ..data import BatchSource
from ..training.evaluate import model_device
from ..utils.state import clone_state

#: ``loss(outputs, targets)``: a scalar, the mean over the batch's samples
LossFn = Callable[[Tensor, Tensor], Tensor]
#: called after each probe with (probes done, probes in all)
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson's estimate of ``tr(H)``.

    Attributes:
        mean: the mean of the per-probe values ``vᵀHv`` (units of the loss per weight²).
        stderr: their sample standard deviation over ``sqrt(probes)``.
        probes: the number of Rademacher probes.
        batches: the number of batches the loss is taken over.
    """

    mean: float
    stderr: float
    probes: int
    batches: int

    def to_dict(self) -> dict[str, float | int]:
        return {
            "mean": self.mean,
            "stderr": self.stderr,
            "probes": self.probes,
            "batches": self.batches,
        }


def rademacher(
    params: Mapping[str, Tensor], generator: torch.Generator, mask: Mapping[str, Tensor] | None
) -> dict[str, Tensor]:
    """A ±1 tensor like each of ``params`` (drawn on the CPU from ``generator``, then moved),
    zero where ``mask`` is false."""
    probe = {}
    for name, p in params.items():
        v = torch.randint(0, 2, p.shape, generator=generator).to(p.dtype).mul_(2).sub_(1)
        v = v.to(p.device)
        if mask is not None and name in mask:
            v = v * mask[name].to(p.device, p.dtype)
        probe[name] = v
    return probe


def hessian_trace(
    model: nn.Module,
    state: Mapping[str, Tensor],
    data: BatchSource,
    *,
    probes: int,
    batches: int,
    batch_size: int,
    seed: int,
    mask: Mapping[str, Tensor] | None = None,
    loss: LossFn = F.cross_entropy,
    progress: Progress | None = None,
) -> TraceEstimate:
    """Hutchinson's estimate of the trace of the Hessian of the training loss at ``state``.

    The loss is ``loss`` (mean cross-entropy by default) over the samples of the first
    ``batches`` batches of ``batch_size`` of ``data``, in its fixed order and without
    augmentation, so that it is a deterministic function of the weights: the batches'
    Hessians are weighted by their sizes, which gives the Hessian of the mean loss over all the
    samples taken. The model is in eval mode (BatchNorm uses its running statistics). ``H`` is
    taken with respect to every trainable parameter; with ``mask`` (parameter name -> bool
    tensor, e.g. a :class:`~sparseavg.pruning.Mask`) the probes are zero on pruned weights,
    which gives the trace of ``H`` restricted to the surviving weights: the subspace a sparse
    network trains in.

    Each of ``probes`` (>= 2) Rademacher vectors ``v``, drawn from a generator seeded with
    ``seed``, gives one value ``vᵀHv``; the estimate is their mean and its standard error.
    ``model`` is the workspace: its state and mode are restored afterwards.
    """
    if probes < 2:
        raise ValueError(f"probes must be >= 2 (the standard error needs two), got {probes}")
    if batches < 1:
        raise ValueError(f"batches must be >= 1, got {batches}")
    saved, was_training = clone_state(model), model.training
    device = model_device(model)
    chosen = [
        (x.to(device), y.to(device)) for x, y in itertools.islice(data.batches(batch_size), batches)
    ]
    if not chosen:
        raise ValueError("cannot estimate a Hessian trace on an empty split")
    total = sum(len(y) for _, y in chosen)
    try:
        model.load_state_dict(state)
        model.eval()
        params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        buffers = {n: b.detach() for n, b in model.named_buffers()}

        def batch_loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
            return loss(functional_call(model, (p, buffers), (x,)), y)

        generator = torch.Generator().manual_seed(seed)
        values = []
        for done in range(1, probes + 1):
            v = rademacher(params, generator, mask)
            value = 0.0
            for x, y in chosen:
                hv = jvp(lambda p, x=x, y=y: grad(batch_loss)(p, x, y), (params,), (v,))[1]
                vhv = sum((v[n] * hv[n]).sum() for n in params)
                value += float(vhv) * len(y) / total
            values.append(value)
            if progress is not None:
                progress(done, probes)
    finally:
        model.load_state_dict(saved)
        model.train(was_training)
    return TraceEstimate(
        mean=statistics.fmean(values),
        stderr=statistics.stdev(values) / math.sqrt(probes),
        probes=probes,
        batches=len(chosen),
    )
