"""Masks and pruning: which weights live, pure functions that choose the next mask, and the
compact file of a pruned model."""

from .channels import (
    ChannelGradualPruning,
    ChannelGroup,
    channel_groups,
    channel_prune,
    channel_prune_to,
    slim_model,
)
from .compress import Compressed, compress, decompress, load_sparse, save_sparse
from .mask import DeadLayerWarning, LayerSparsity, Mask, MaskError, dead_layers
from .measures import relative_norm_drop
from .nm import (
    is_nm,
    nm_prune,
    nm_prune_to,
    nonzeros_per_group,
    parse_pattern,
    random_nm_prune,
    to_groups,
    ungroupable,
)
from .parameters import prunable_parameters
from .schedule import (
    FeedbackMaskSchedule,
    GmpCounts,
    GradualMagnitudePruning,
    Lockstep,
    MaskSchedule,
    StepMaskSchedule,
    cubic_sparsity,
    fraction_per_cycle,
    sparsity_after,
)
from .semi_structured import (
    SemiStructured,
    SemiStructuredError,
    semi_structured_problem,
    to_semi_structured,
)
from .strategies import (
    ROUNDINGS,
    SCOPES,
    Rounding,
    Scope,
    magnitude_prune,
    magnitude_prune_to,
    pruning_groups,
    random_prune,
    shuffle_within_layers,
)

__all__ = [
    "ROUNDINGS",
    "SCOPES",
    "ChannelGradualPruning",
    "ChannelGroup",
    "Compressed",
    "DeadLayerWarning",
    "FeedbackMaskSchedule",
    "GmpCounts",
    "GradualMagnitudePruning",
    "LayerSparsity",
    "Lockstep",
    "Mask",
    "MaskError",
    "MaskSchedule",
    "Rounding",
    "Scope",
    "SemiStructured",
    "SemiStructuredError",
    "StepMaskSchedule",
    "channel_groups",
    "channel_prune",
    "channel_prune_to",
    "compress",
    "cubic_sparsity",
    "dead_layers",
    "decompress",
    "fraction_per_cycle",
    "is_nm",
    "load_sparse",
    "magnitude_prune",
    "magnitude_prune_to",
    "nm_prune",
    "nm_prune_to",
    "nonzeros_per_group",
    "parse_pattern",
    "prunable_parameters",
    "pruning_groups",
    "random_nm_prune",
    "random_prune",
    "relative_norm_drop",
    "save_sparse",
    "semi_structured_problem",
    "shuffle_within_layers",
    "slim_model",
    "sparsity_after",
    "to_groups",
    "to_semi_structured",
    "ungroupable",
]
