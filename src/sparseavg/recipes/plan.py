"""What the engine runs: a :class:`CyclePlan` per cycle, filled in by a recipe."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from ..config import Config
from ..training import TrainSettings
from ..utils.seeding import derive_seed

Start = Literal["ticket", "rewind", "finetune", "pretrained"]


@dataclass(frozen=True)
class IngredientPlan:
    """One model to train in a cycle: its index, its own seed and its hyperparameters."""

    index: int
    seed: int
    settings: TrainSettings


@dataclass(frozen=True)
class GradualPlan:
    """Gradual magnitude pruning inside one training run (Zhu & Gupta's cubic schedule):
    the mask is tightened at every epoch end between ``start_epoch`` and ``end_epoch``."""

    start_epoch: int
    end_epoch: int
    final_sparsity: float


@dataclass(frozen=True)
class CyclePlan:
    """One IMP level.

    Attributes:
        cycle: 0 for the dense cycle.
        start: ``"ticket"`` (cycle 0: from the shared rewind point θ_T0), ``"rewind"`` (θ_T0 ⊙ m),
            ``"finetune"`` (the previous combined model ⊙ m), ``"pretrained"`` (cycle 0 from the
            user's checkpoint: nothing is trained).
        start_step: the global step training resumes at (T0 when rewinding, else 0).
        ingredients: the models trained under this cycle's mask.
        combine: ``"single"``, ``"uniform"`` or ``"greedy"``.
        prune_fraction: share of surviving weights removed before this cycle (0 in cycle 0).
        prune_method: ``"magnitude"`` or ``"random"``.
        gradual: gradual pruning during the ingredients' training, or ``None``.
    """

    cycle: int
    start: Start
    start_step: int
    ingredients: tuple[IngredientPlan, ...]
    combine: str
    prune_fraction: float
    prune_method: str
    gradual: GradualPlan | None = None


def base_settings(config: Config) -> TrainSettings:
    """The :class:`TrainSettings` of ``config.train``."""
    t = config.train
    return TrainSettings(
        epochs=t.epochs,
        batch_size=t.batch_size,
        optimizer=t.optimizer,  # type: ignore[arg-type]
        lr=t.lr,
        momentum=t.momentum,
        nesterov=t.nesterov,
        weight_decay=t.weight_decay,
        schedule=t.schedule,  # type: ignore[arg-type]
        warmup=t.warmup,
        milestones=tuple(t.milestones),
        gamma=t.gamma,
        swa_start=t.swa_start if t.swa else None,
        swa_lr=t.swa_lr,
        augment=t.augment,
        precision=t.precision,  # type: ignore[arg-type]
        channels_last=t.channels_last,
    )


def retrain_settings(config: Config) -> TrainSettings:
    """Settings of a fine-tuning cycle: ``train`` with the ``pruning.retrain_*`` overrides and
    ``ingredients.length_factor`` (imp+) applied."""
    p = config.pruning
    s = base_settings(config)
    epochs = p.retrain_epochs or s.epochs
    return replace(
        s,
        epochs=max(1, round(epochs * config.ingredients.length_factor)),
        schedule=p.retrain_schedule or s.schedule,  # type: ignore[arg-type]
        lr=p.retrain_lr or s.lr,
    )


def default_factors(count: int) -> list[float]:
    """Multipliers of the varied hyperparameter when none are given: ``count`` values spaced
    geometrically from 0.5 to 2 (1.0 for a single ingredient)."""
    if count == 1:
        return [1.0]
    return [2.0 ** (-1.0 + 2.0 * k / (count - 1)) for k in range(count)]


def ingredient_seed(config: Config, lineage: int, cycle: int, index: int) -> int:
    """The seed of one ingredient: its batch order and augmentation."""
    return derive_seed(config.seed, "lineage", lineage, "cycle", cycle, "ingredient", index)


def varied(config: Config, settings: TrainSettings, count: int) -> list[TrainSettings]:
    """``count`` copies of ``settings`` that differ in ``ingredients.vary``."""
    vary = config.ingredients.vary
    if vary == "seed":
        return [settings] * count
    factors = list(config.ingredients.values) or default_factors(count)
    out = []
    for k in range(count):
        f = factors[k]
        if vary == "lr":
            out.append(replace(settings, lr=settings.lr * f))
        elif vary == "weight_decay":
            out.append(replace(settings, weight_decay=settings.weight_decay * f))
        else:  # length
            out.append(replace(settings, epochs=max(1, round(settings.epochs * f))))
    return out


def make_ingredients(
    config: Config, lineage: int, cycle: int, settings: list[TrainSettings]
) -> tuple[IngredientPlan, ...]:
    """Number the ingredients and give each its derived seed."""
    return tuple(
        IngredientPlan(k, ingredient_seed(config, lineage, cycle, k), s)
        for k, s in enumerate(settings)
    )
