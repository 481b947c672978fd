"""Masks and pruning: which weights live, pure functions that choose the next mask, and the
compact file of a pruned model."""

from .compress import Compressed, compress, decompress, load_sparse, save_sparse
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
    "Compressed",
    "GradualMagnitudePruning",
    "LayerSparsity",
    "Mask",
    "MaskError",
    "MaskSchedule",
    "Scope",
    "compress",
    "cubic_sparsity",
    "decompress",
    "fraction_per_cycle",
    "load_sparse",
    "magnitude_prune",
    "magnitude_prune_to",
    "prunable_parameters",
    "pruning_groups",
    "random_prune",
    "relative_norm_drop",
    "save_sparse",
    "shuffle_within_layers",
    "sparsity_after",
]
