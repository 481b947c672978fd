"""Learning-rate schedules as pure functions of the step.

A schedule is a warm-up followed by a *body*. With ``n`` total steps and a warm-up fraction
``w``, the first ``int(w * n)`` steps ramp from 0 to the peak ``lr`` (linearly for
constant/step/cosine, as the Sparse Model Soups (SMS) code warms up its dense runs; along a half
cosine for llr/slr/clr, as the SMS code warms up its retraining), so step 0 runs at rate 0 and
no step exceeds the peak. The body covers the remaining steps, at position ``u`` in [0, 1).

The retraining schedules of the SMS code (``zimmer2024sparse``, ``define_retrain_schedule``)
derive from the run being retrained (``settings.original``), with the SMS names:

==========  =================================================================================
``ft``      constant at the original's smallest rate after its warm-up (Han et al.)
``lrw``     the original's last ``n`` steps (learning-rate rewinding, Renda et al.)
``slr``     warm-up to the peak, then the original schedule compressed into the remaining
            steps, its own warm-up replaced by the peak (scaled restarting, Le & Hua)
``clr``     warm-up, then a cosine from the peak to the original's smallest rate
``llr``     warm-up, then linear decay to 0 (the SMS default)
==========  =================================================================================

The warm-up is ``settings.warmup`` for every schedule (0: none, as the SMS code's dense
runs without ``n_epochs_warmup``); the recipes give the SMS code's 10 %
(:data:`DEFAULT_RETRAIN_WARMUP`) to a fine-tuning cycle's llr, slr and clr.

``allr`` (llr with an adaptive peak) is chosen per cycle by the recipes, from the norm the
pruning removed; it reaches this module as an llr schedule with that peak.

One difference from the SMS code: torch's ``SequentialLR``, which the SMS code chains its
warm-up and body with, repeats the peak for one step at the end of the warm-up, so the code's
body runs one step behind ours (``|difference| <= peak / steps after warm-up``).
"""

from __future__ import annotations

import functools
import math

from .settings import TrainSettings

#: the SMS code's warm-up of its llr, slr and clr retraining (``int(0.1 * iterations)``
#: steps): the fraction ``sparseavg.recipes`` gives a fine-tuning cycle's settings
DEFAULT_RETRAIN_WARMUP = 0.1
_COSINE_WARMUP = ("llr", "slr", "clr")


def learning_rate(
    settings: TrainSettings, step: int, total_steps: int, swa_start_step: int | None
) -> float:
    """The learning rate for optimizer step ``step`` (0-based) of ``total_steps``.

    Without SWA the schedule spans all steps. With SWA (``swa_start_step`` not ``None``) the
    rate is the constant ``settings.swa_lr`` from ``swa_start_step`` on; before it, under
    ``swa_schedule = "anneal"`` the schedule spans only the steps before ``swa_start_step`` and
    decays to ``swa_lr`` instead of 0, under ``"switch"`` it is the schedule over all steps.
    """
    if swa_start_step is not None and step >= swa_start_step:
        return settings.swa_lr
    anneal = swa_start_step is not None and settings.swa_schedule == "anneal"
    horizon = max(swa_start_step if anneal and swa_start_step is not None else total_steps, 1)
    floor = settings.swa_lr if anneal else 0.0
    steps_per_epoch = total_steps // settings.epochs if settings.epochs else 1
    return _rate(settings, step, horizon, floor, max(steps_per_epoch, 1))


def warmup_steps(settings: TrainSettings, horizon: int) -> int:
    """Steps of the warm-up in a schedule of ``horizon`` steps: ``int(settings.warmup *
    horizon)`` (a warm-up of 0 is none, for every schedule)."""
    return int(settings.warmup * horizon)


def _rate(settings: TrainSettings, step: int, horizon: int, floor: float, spe: int) -> float:
    kind = settings.schedule
    peak = settings.lr
    if kind == "lrw":
        original = _original(settings)
        total = original.epochs * spe
        return _original_rate(original, total - horizon + step, total)
    n_warm = warmup_steps(settings, horizon)
    if step < n_warm:
        if kind in _COSINE_WARMUP:
            return peak * (1 - math.cos(math.pi * step / n_warm)) / 2
        return peak * step / n_warm
    t = step / horizon
    u = (step - n_warm) / max(horizon - n_warm, 1)
    if kind == "constant":
        return peak
    if kind == "step":
        drops = sum(1 for m in settings.milestones if t >= m)
        return peak * settings.gamma**drops
    if kind == "cosine":
        return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * u))
    if kind == "llr":
        return floor + (peak - floor) * (1 - u)
    original = _original(settings)
    total = original.epochs * spe
    if kind == "ft":
        return smallest_rate(original, total)
    if kind == "clr":
        low = smallest_rate(original, total)
        return low + 0.5 * (peak - low) * (1 + math.cos(math.pi * u))
    if kind == "slr":
        index = int((step - n_warm) * total / max(horizon - n_warm, 1))
        if index < warmup_steps(original, _original_horizon(original, total)):
            return peak
        return _original_rate(original, index, total)
    raise ValueError(f"unknown schedule {kind!r}")


def _original(settings: TrainSettings) -> TrainSettings:
    if settings.original is None:
        raise ValueError(f"schedule {settings.schedule!r} needs settings.original")
    return settings.original


def _original_swa_step(original: TrainSettings, total: int) -> int | None:
    return original.swa_start_step(total // max(original.epochs, 1))


def _original_horizon(original: TrainSettings, total: int) -> int:
    swa_step = _original_swa_step(original, total)
    if swa_step is None or original.swa_schedule != "anneal":
        return total
    return swa_step


def _original_rate(original: TrainSettings, step: int, total: int) -> float:
    swa_step = _original_swa_step(original, total)
    return learning_rate(original, min(max(step, 0), max(total - 1, 0)), total, swa_step)


@functools.lru_cache(maxsize=64)
def smallest_rate(original: TrainSettings, total: int) -> float:
    """The smallest rate of the original run after its warm-up (the SMS code's ``minLR``)."""
    first = warmup_steps(original, _original_horizon(original, total))
    rates = [_original_rate(original, s, total) for s in range(first, total)]
    return min(rates) if rates else original.lr
