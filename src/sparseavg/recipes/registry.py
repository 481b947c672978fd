"""The recipes: each is defaults and fixed settings for the one cycle loop, plus a plan."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import Config, ConfigError, build_config, merge
from .plan import CyclePlan
from .standard import gradual_plan, member_plan, standard_plan

PlanFn = Callable[[Config, int, int, int], CyclePlan]


@dataclass(frozen=True)
class Recipe:
    """A method.

    Attributes:
        name: as in ``recipe = "swamp"``.
        summary: one line for ``--help``.
        defaults: nested config values that the user's config may override.
        fixed: nested config values that define the method; a user value that differs is an
            error.
        plan: ``(config, lineage, cycle, rewind_step) -> CyclePlan``.
        members: how many independent lineages (ensemble members) the run has.
    """

    name: str
    summary: str
    defaults: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    plan: PlanFn = standard_plan
    members: Callable[[Config], int] = lambda config: 1


_REWIND_ONE = {"ingredients": {"count": 1, "start": "rewind", "combine": "single"}}
_FINETUNE_ONE = {"ingredients": {"count": 1, "start": "finetune", "combine": "single"}}
_LLR = {"pruning": {"retrain_schedule": "llr"}}
_SWAMP_DEFAULTS = {"ingredients": {"count": 4}, "train": {"swa_start": 0.75, "swa_lr": 0.05}}
_SWAMP_FIXED = {"ingredients": {"start": "rewind", "combine": "uniform"}, "train": {"swa": True}}

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe("imp", "IMP with weight rewinding (lottery tickets)", fixed=_REWIND_ONE),
        Recipe(
            "imp-swa",
            "IMP with SWA over the last part of each training run, one model",
            defaults={"train": {"swa_start": 0.75, "swa_lr": 0.05}},
            fixed=merge(_REWIND_ONE, {"train": {"swa": True}}),
        ),
        Recipe(
            "swamp",
            "SWAMP: N particles with SWA from the same ticket, averaged, then pruned",
            defaults=_SWAMP_DEFAULTS,
            fixed=_SWAMP_FIXED,
        ),
        Recipe(
            "swamp+",
            "SWAMP with one particle in the first cycles (ingredients.single_until)",
            defaults=merge(_SWAMP_DEFAULTS, {"ingredients": {"single_until": 4}}),
            fixed=_SWAMP_FIXED,
        ),
        Recipe(
            "sms",
            "Sparse Model Soups: fine-tune m ingredients from the last soup, average them",
            defaults=merge(_LLR, {"ingredients": {"count": 3, "combine": "uniform"}}),
            fixed={"ingredients": {"start": "finetune"}},
        ),
        Recipe(
            "imp-ft",
            "prune-retrain IMP (fine-tuning, no rewinding)",
            defaults=_LLR,
            fixed=_FINETUNE_ONE,
        ),
        Recipe(
            "imp+",
            "prune-retrain IMP retrained length_factor times longer (a K-soup's compute)",
            defaults=merge(_LLR, {"ingredients": {"length_factor": 3.0}}),
            fixed=_FINETUNE_ONE,
        ),
        Recipe(
            "ensemble",
            "K independent IMP runs, evaluated by averaging their predictions",
            defaults={"ingredients": {"count": 2}},
            fixed={"ingredients": {"start": "rewind", "combine": "single", "single_until": 0}},
            plan=member_plan,
            members=lambda config: config.ingredients.count,
        ),
        Recipe(
            "one-shot",
            "prune to pruning.target_sparsity at once, then retrain",
            defaults=merge(
                _LLR, {"pruning": {"target_sparsity": 0.9}, "ingredients": {"start": "finetune"}}
            ),
            fixed={"pruning": {"cycles": 1}, "ingredients": {"count": 1, "combine": "single"}},
        ),
        Recipe(
            "random",
            "IMP with random instead of magnitude pruning (the random-mask baseline)",
            fixed=merge(_REWIND_ONE, {"pruning": {"method": "random"}}),
        ),
        Recipe(
            "gmp",
            "gradual magnitude pruning to pruning.target_sparsity in one run (cubic schedule)",
            defaults={"pruning": {"target_sparsity": 0.9, "rewind_epochs": 0.0}},
            fixed={
                "pruning": {"cycles": 0, "method": "magnitude"},
                "ingredients": {"count": 1, "combine": "single", "start": "rewind"},
            },
            plan=gradual_plan,
        ),
    ]
}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; an unknown name raises :class:`ConfigError` listing them."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"recipe: {name!r} is not one of {', '.join(RECIPES)}") from None


def _conflicts(fixed: dict[str, Any], given: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in fixed.items():
        if key not in given:
            continue
        if isinstance(value, dict) and isinstance(given[key], dict):
            out += _conflicts(value, given[key], f"{prefix}{key}.")
        elif given[key] != value and not (
            isinstance(value, float) and isinstance(given[key], int) and given[key] == value
        ):
            out.append(f"{prefix}{key} = {given[key]!r} (recipe fixes it to {value!r})")
    return out


def resolve_config(values: dict[str, Any]) -> Config:
    """Defaults ← the recipe's defaults ← ``values`` ← the recipe's fixed settings, validated.

    Raises :class:`ConfigError` for an unknown recipe, a value that contradicts the recipe, or
    any invalid field.
    """
    name = values.get("recipe", "imp")
    if not isinstance(name, str):
        raise ConfigError(f"recipe: expected a string, got {name!r}")
    recipe = get_recipe(name)
    conflicts = _conflicts(recipe.fixed, values)
    if conflicts:
        raise ConfigError(f"recipe {name}: {conflicts[0]}")
    config = build_config(merge(merge(recipe.defaults, values), recipe.fixed))
    check_config(config)
    return config


def check_config(config: Config) -> None:
    """Checks that involve more than one field."""
    ing, p = config.ingredients, config.pruning
    if ing.combine == "greedy" and config.data.val_fraction <= 0:
        raise ConfigError("ingredients.combine = 'greedy' needs data.val_fraction > 0")
    if ing.values and ing.vary == "seed":
        raise ConfigError("ingredients.values is set but ingredients.vary = 'seed' varies nothing")
    if ing.values and len(ing.values) != ing.count:
        raise ConfigError(
            f"ingredients.values has {len(ing.values)} entries; ingredients.count is {ing.count}"
        )
    if any(v <= 0 for v in ing.values):
        raise ConfigError(f"ingredients.values must be positive factors, got {ing.values}")
    if config.recipe in ("gmp", "one-shot") and p.target_sparsity <= 0:
        raise ConfigError(f"recipe {config.recipe} needs pruning.target_sparsity in (0, 1)")
    if config.recipe == "gmp" and p.gmp_end <= p.gmp_start:
        raise ConfigError(
            f"pruning.gmp_end ({p.gmp_end}) must be after pruning.gmp_start ({p.gmp_start})"
        )
    if config.train.epochs == 0 and not config.model.pretrained:
        raise ConfigError("train.epochs = 0 needs a model.pretrained checkpoint")
    if p.rewind_epochs >= config.train.epochs and not config.model.pretrained:
        raise ConfigError(
            f"pruning.rewind_epochs ({p.rewind_epochs:g}) must be less than train.epochs "
            f"({config.train.epochs})"
        )
