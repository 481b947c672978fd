"""Linear mode connectivity: loss and error along the straight line between two models.

Frankle et al. (2020), "Linear Mode Connectivity and the Lottery Ticket Hypothesis": two
networks are linearly connected when the loss does not rise along ``(1 - α)·a + α·b``; the
rise is measured by the *barrier*, the maximum over the line minus the mean of its two ends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..averaging.batchnorm import RECALIBRATION_BATCH_SIZE, has_batchnorm, recalibrate_bn
from ..data import BatchSource
from ..training.evaluate import evaluate
from ..utils.state import State, clone_state

#: called after each point of a line with (points done, points in all)
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class PathResult:
    """A model's loss and error at equally spaced points of a line between two states.

    Attributes:
        alphas: the interpolation weights α in [0, 1], first 0 (state a), last 1 (state b).
        losses: mean cross-entropy (nats per sample) at each α.
        errors: error rate ``1 - accuracy`` in [0, 1] at each α.
    """

    alphas: tuple[float, ...]
    losses: tuple[float, ...]
    errors: tuple[float, ...]

    @property
    def loss_barrier(self) -> float:
        """``max_α loss(α) - (loss(0) + loss(1)) / 2`` in nats; 0 when the ends are the top."""
        return barrier(self.losses)

    @property
    def error_barrier(self) -> float:
        """``max_α error(α) - (error(0) + error(1)) / 2``, as a fraction of the samples."""
        return barrier(self.errors)

    def to_dict(self) -> dict[str, object]:
        """The result as JSON-ready lists, barriers included."""
        return {
            "alphas": list(self.alphas),
            "losses": list(self.losses),
            "errors": list(self.errors),
            "loss_barrier": self.loss_barrier,
            "error_barrier": self.error_barrier,
        }


def barrier(values: tuple[float, ...] | list[float]) -> float:
    """The height of a line's barrier: its maximum minus the mean of its two ends."""
    if len(values) < 2:
        raise ValueError("a line needs at least its two ends")
    return max(values) - (values[0] + values[-1]) / 2


def interpolate(
    state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor], alpha: float
) -> State:
    """``(1 - alpha)·a + alpha·b`` for floating tensors (``torch.lerp``: exactly ``a`` at 0 and
    ``b`` at 1); other entries (e.g. BatchNorm's ``num_batches_tracked``) are taken from ``a``."""
    if state_a.keys() != state_b.keys():
        differ = sorted(set(state_a) ^ set(state_b))
        raise ValueError(f"the two states have different entries: {differ[:5]}")
    return {
        k: torch.lerp(a, state_b[k].to(a.device, a.dtype), alpha) if a.is_floating_point() else a
        for k, a in state_a.items()
    }


def linear_paths(
    model: nn.Module,
    state_a: Mapping[str, Tensor],
    state_b: Mapping[str, Tensor],
    *,
    eval_data: Mapping[str, BatchSource],
    points: int = 11,
    recalibrate: BatchSource | None = None,
    bn_batches: int | None = None,
    batch_size: int = RECALIBRATION_BATCH_SIZE,
    progress: Progress | None = None,
) -> dict[str, PathResult]:
    """:func:`linear_path` on several splits at once (``{"test": ..., "train": ...}``): each
    point is built and recalibrated once and evaluated on every split."""
    if points < 2:
        raise ValueError(f"points must be >= 2 (the two ends), got {points}")
    if not eval_data:
        raise ValueError("eval_data names no split to evaluate on")
    saved = clone_state(model)
    alphas = tuple(i / (points - 1) for i in range(points))
    losses: dict[str, list[float]] = {name: [] for name in eval_data}
    errors: dict[str, list[float]] = {name: [] for name in eval_data}
    recalibrating = recalibrate is not None and has_batchnorm(model)
    try:
        for done, alpha in enumerate(alphas, start=1):
            model.load_state_dict(interpolate(state_a, state_b, alpha))
            if recalibrating:
                assert recalibrate is not None
                recalibrate_bn(model, recalibrate, num_batches=bn_batches, batch_size=batch_size)
            for name, data in eval_data.items():
                ev = evaluate(model, data)
                losses[name].append(ev.loss)
                errors[name].append(1.0 - ev.accuracy)
            if progress is not None:
                progress(done, points)
    finally:
        model.load_state_dict(saved)
    return {
        name: PathResult(alphas, tuple(losses[name]), tuple(errors[name])) for name in eval_data
    }


def linear_path(
    model: nn.Module,
    state_a: Mapping[str, Tensor],
    state_b: Mapping[str, Tensor],
    *,
    eval_data: BatchSource,
    points: int = 11,
    recalibrate: BatchSource | None = None,
    bn_batches: int | None = None,
    batch_size: int = RECALIBRATION_BATCH_SIZE,
    progress: Progress | None = None,
) -> PathResult:
    """Loss and error of ``model`` with the weights ``(1 - α)·a + α·b`` at ``points`` equally
    spaced α in [0, 1] (see :func:`interpolate`), evaluated on every sample of ``eval_data``.

    When the model has BatchNorm and ``recalibrate`` is a split (the training split), the
    running statistics of every point are recomputed on it before it is evaluated: the first
    ``bn_batches`` batches of ``batch_size`` (all when ``None``) in the split's fixed order,
    without augmentation, so the result is deterministic and the ends are ``a`` and ``b``
    recalibrated the same way. Without ``recalibrate`` the statistics are interpolated like
    the weights. ``model`` is the workspace: its state is restored afterwards.

    The barrier between a model and itself is exactly 0: every point is the same state.
    """
    return linear_paths(
        model,
        state_a,
        state_b,
        eval_data={"data": eval_data},
        points=points,
        recalibrate=recalibrate,
        bn_batches=bn_batches,
        batch_size=batch_size,
        progress=progress,
    )["data"]
