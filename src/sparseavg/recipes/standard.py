"""The plans shared by the recipes: every method is this cycle loop with other settings."""

from __future__ import annotations

import dataclasses

from ..config import Config
from .plan import (
    CyclePlan,
    GradualPlan,
    base_settings,
    make_ingredients,
    retrain_settings,
    varied,
)


def standard_plan(config: Config, lineage: int, cycle: int, rewind_step: int) -> CyclePlan:
    """IMP with rewinding or fine-tuning, K ingredients, any combine.

    Cycle 0 trains the dense model from the shared rewind point θ_T0 (rewinding recipes train
    their K particles from there; fine-tuning recipes train one dense model), or takes the
    pretrained checkpoint. Cycle c ≥ 1 prunes the previous combined model and trains K
    ingredients from θ_T0 ⊙ m (``start = "rewind"``) or from the previous model ⊙ m
    (``"finetune"``, with the ``pruning.retrain_*`` settings).
    """
    ing = config.ingredients
    method = config.pruning.method
    if cycle == 0:
        if config.model.pretrained:
            return CyclePlan(0, "pretrained", 0, (), "single", 0.0, method)
        count = 1 if ing.start == "finetune" or ing.single_until > 0 else ing.count
        settings = varied(config, base_settings(config), count)
        start, start_step, fraction = "ticket", rewind_step, 0.0
    else:
        count = 1 if cycle < ing.single_until else ing.count
        if ing.start == "rewind":
            settings = varied(config, base_settings(config), count)
            start, start_step = "rewind", rewind_step
        else:
            settings = varied(config, retrain_settings(config), count)
            start, start_step = "finetune", 0
        fraction = config.prune_fraction
    return CyclePlan(
        cycle=cycle,
        start=start,  # type: ignore[arg-type]
        start_step=start_step,
        ingredients=make_ingredients(config, lineage, cycle, settings),
        combine=ing.combine if count > 1 else "single",
        prune_fraction=fraction,
        prune_method=method,
    )


def member_plan(config: Config, lineage: int, cycle: int, rewind_step: int) -> CyclePlan:
    """One member of a prediction ensemble: a plain one-model IMP lineage."""
    single = dataclasses.replace(
        config, ingredients=dataclasses.replace(config.ingredients, count=1)
    )
    return standard_plan(single, lineage, cycle, rewind_step)


def gradual_plan(config: Config, lineage: int, cycle: int, rewind_step: int) -> CyclePlan:
    """Gradual magnitude pruning: one training run whose mask tightens every epoch."""
    plan = standard_plan(config, lineage, cycle, rewind_step)
    if plan.start == "pretrained":
        return plan
    epochs = config.train.epochs
    start = round(config.pruning.gmp_start * epochs)
    end = max(start + 1, round(config.pruning.gmp_end * epochs))
    return dataclasses.replace(
        plan, gradual=GradualPlan(start, min(end, epochs), config.pruning.target_sparsity)
    )
