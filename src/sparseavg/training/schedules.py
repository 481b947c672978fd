"""Learning-rate schedules as pure functions of the step."""

from __future__ import annotations

import math

from .settings import TrainSettings

LLR_DEFAULT_WARMUP = 0.1


def learning_rate(
    settings: TrainSettings, step: int, total_steps: int, swa_start_step: int | None
) -> float:
    """The learning rate for optimizer step ``step`` (0-based) of ``total_steps``.

    Without SWA the schedule spans all steps. With SWA (``swa_start_step`` not ``None``) it spans
    the steps before ``swa_start_step`` and decays towards ``settings.swa_lr`` rather than 0; from
    ``swa_start_step`` on the rate is the constant ``swa_lr``.
    """
    if swa_start_step is not None and step >= swa_start_step:
        return settings.swa_lr
    horizon = swa_start_step if swa_start_step is not None else total_steps
    horizon = max(horizon, 1)
    floor = settings.swa_lr if swa_start_step is not None else 0.0
    peak = settings.lr
    t = step / horizon
    warmup = settings.warmup
    if settings.schedule == "llr" and warmup == 0:
        warmup = LLR_DEFAULT_WARMUP
    if warmup > 0 and t < warmup:
        return peak * (step + 1) / (warmup * horizon)
    kind = settings.schedule
    if kind == "constant":
        return peak
    if kind == "step":
        drops = sum(1 for m in settings.milestones if t >= m)
        return peak * settings.gamma**drops
    # decays over what is left after the warm-up
    u = (t - warmup) / (1 - warmup) if warmup < 1 else 1.0
    u = min(max(u, 0.0), 1.0)
    if kind == "cosine":
        return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * u))
    if kind == "llr":
        return floor + (peak - floor) * (1 - u)
    raise ValueError(f"unknown schedule {kind!r}")
