"""Masks and pruning: which weights live, and pure functions that choose the next mask."""

from .mask import LayerSparsity, Mask, MaskError
from .measures import relative_norm_drop
from .parameters import prunable_parameters
from .schedule import (
    GradualMagnitudePruning,
    MaskSchedule,
    cubic_sparsity,
    fraction_per_cycle,
    sparsity_after,
)
from .strategies import (
    SCOPES,
    Scope,
    magnitude_prune,
    magnitude_prune_to,
    pruning_groups,
    random_prune,
    shuffle_within_layers,
)

__all__ = [
    "SCOPES",
    "GradualMagnitudePruning",
    "LayerSparsity",
    "Mask",
    "MaskError",
    "MaskSchedule",
    "Scope",
    "cubic_sparsity",
    "fraction_per_cycle",
    "magnitude_prune",
    "magnitude_prune_to",
    "prunable_parameters",
    "pruning_groups",
    "random_prune",
    "relative_norm_drop",
    "shuffle_within_layers",
    "sparsity_after",
]
