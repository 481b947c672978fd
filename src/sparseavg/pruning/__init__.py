"""Masks and pruning: which weights live, and pure functions that choose the next mask."""

from .mask import LayerSparsity, Mask, MaskError
from .parameters import prunable_parameters
from .schedule import cubic_sparsity, fraction_per_cycle, sparsity_after
from .strategies import SCOPES, Scope, magnitude_prune, magnitude_prune_to, random_prune

__all__ = [
    "SCOPES",
    "LayerSparsity",
    "Mask",
    "MaskError",
    "Scope",
    "cubic_sparsity",
    "fraction_per_cycle",
    "magnitude_prune",
    "magnitude_prune_to",
    "prunable_parameters",
    "random_prune",
    "sparsity_after",
]
