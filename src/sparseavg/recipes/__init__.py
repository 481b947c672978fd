"""Recipes: the methods, as settings and plans for the one cycle loop."""

from .plan import (
    Combiner,
    CombineTools,
    CyclePlan,
    IngredientPlan,
    LineageResult,
    MaskRule,
    MaskSources,
    Readout,
    ReadoutTools,
    RunPlan,
    SettingsRule,
    StartFacts,
    StartRule,
    StartSources,
)
from .registry import RECIPES, Recipe, check_config, get_recipe, resolve_config
from .standard import base_settings, retrain_settings

__all__ = [
    "RECIPES",
    "CombineTools",
    "Combiner",
    "CyclePlan",
    "IngredientPlan",
    "LineageResult",
    "MaskRule",
    "MaskSources",
    "Readout",
    "ReadoutTools",
    "Recipe",
    "RunPlan",
    "SettingsRule",
    "StartFacts",
    "StartRule",
    "StartSources",
    "base_settings",
    "check_config",
    "get_recipe",
    "resolve_config",
    "retrain_settings",
]
