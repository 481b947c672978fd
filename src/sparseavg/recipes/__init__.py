"""Recipes: the methods, as settings and plans for the one cycle loop."""

from .plan import CyclePlan, GradualPlan, IngredientPlan, base_settings, retrain_settings
from .registry import RECIPES, Recipe, check_config, get_recipe, resolve_config

__all__ = [
    "RECIPES",
    "CyclePlan",
    "GradualPlan",
    "IngredientPlan",
    "Recipe",
    "base_settings",
    "check_config",
    "get_recipe",
    "resolve_config",
    "retrain_settings",
]
