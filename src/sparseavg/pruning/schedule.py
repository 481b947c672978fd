"""How much to prune when: per-cycle fractions and gradual (cubic) sparsity schedules."""

from __future__ import annotations


def fraction_per_cycle(target_sparsity: float, cycles: int) -> float:
    """The per-cycle fraction that reaches ``target_sparsity`` after ``cycles`` cycles.

    Each cycle keeps ``1 - f`` of what survives, so ``f = 1 - (1 - s) ** (1 / n)``.
    """
    if not 0.0 <= target_sparsity < 1.0:
        raise ValueError(f"target_sparsity must be in [0, 1), got {target_sparsity}")
    if cycles < 1:
        raise ValueError(f"cycles must be >= 1, got {cycles}")
    return 1.0 - (1.0 - target_sparsity) ** (1.0 / cycles)


def sparsity_after(fraction: float, cycles: int) -> float:
    """Sparsity after ``cycles`` cycles that each remove ``fraction`` of the survivors."""
    return 1.0 - (1.0 - fraction) ** cycles


def cubic_sparsity(
    step: int,
    *,
    start_step: int,
    end_step: int,
    final_sparsity: float,
    initial_sparsity: float = 0.0,
) -> float:
    """Gradual magnitude pruning's target sparsity at ``step`` (Zhu & Gupta, 2017).

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0)) ** 3`` for ``t0 <= t <= t1``; ``s_i``
    before ``t0`` and ``s_f`` after ``t1``.
    """
    if end_step <= start_step:
        raise ValueError(f"end_step ({end_step}) must be after start_step ({start_step})")
    if step <= start_step:
        return initial_sparsity
    if step >= end_step:
        return final_sparsity
    progress = (step - start_step) / (end_step - start_step)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** 3
