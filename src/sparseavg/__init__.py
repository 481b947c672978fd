"""sparseavg: sparse networks by iterative magnitude pruning with weight averaging.

The library layers (import them into an existing training loop; none touches disk except
``Mask.save``/``Mask.load`` and ``save_sparse``/``load_sparse``):

- pruning: :class:`Mask`, :func:`prunable_parameters`, :func:`magnitude_prune`,
  :func:`random_prune`, :func:`shuffle_within_layers`, :class:`GradualMagnitudePruning`,
  :func:`save_sparse` / :func:`load_sparse` (a pruned model's compact file)
  :func:`nm_prune` (N:M masks such as 2:4), :func:`to_semi_structured` (2:4 linear layers
  on a GPU's sparse tensor cores)
- training: :func:`train` (masked SGD/Adam with SWA, rewind capture, resume),
  :class:`TrainSettings`, :func:`evaluate`, and :func:`attach` (keeps a mask through every
  ``optimizer.step()`` of your own loop, or of a Lightning / Hugging Face Trainer)
- averaging: :func:`uniform_average`, :func:`greedy_soup`, :func:`recalibrate_bn`,
  :func:`evaluate_ensemble`
- data / models: :func:`load_dataset`, :func:`build_model`, :func:`sparse_linear` (CSR linear
  layers for inference, where measured faster)
- analysis: :func:`linear_path` (loss barriers), :func:`hessian_trace` (Hutchinson),
  :func:`distances`, :func:`calibration` (ECE)

and the experiment layer on top: :func:`resolve_config` and :func:`run` (the cycle loop with
run directories that resume; :func:`run_distributed` is its torchrun form, :func:`run_many`
runs many configs in parallel processes), the recipes on your own model and training loop
(:func:`swamp`, :func:`sms`, :func:`imp`, :func:`prune` for any recipe; ``train_fn`` gets a
:class:`LoopSettings`), and
:func:`analyze_run` / :func:`load_analysis` (``sparseavg analyze``).
"""

from .analysis import (
    Calibration,
    Distance,
    PathResult,
    TraceEstimate,
    calibration,
    distances,
    hessian_trace,
    linear_path,
)
from .averaging import (
    SoupResult,
    ensemble_probabilities,
    evaluate_ensemble,
    greedy_soup,
    recalibrate_bn,
    recalibrate_bn_on,
    uniform_average,
)
from .config import Config, ConfigError
from .data import Dataset, Split, available_datasets, load_dataset
from .experiment import OwnRun, imp, prune, run, run_distributed, run_many, sms, swamp
from .experiment.analyze import AnalysisSettings, analyze_run, load_analysis
from .models import available_models, build_model, count_parameters, sparse_linear
from .pruning import (
    GradualMagnitudePruning,
    Mask,
    MaskError,
    MaskSchedule,
    fraction_per_cycle,
    load_sparse,
    magnitude_prune,
    magnitude_prune_to,
    nm_prune,
    prunable_parameters,
    random_prune,
    save_sparse,
    shuffle_within_layers,
    to_semi_structured,
)
from .recipes import RECIPES, resolve_config
from .training import (
    AttachedMask,
    DivergenceError,
    EpochLog,
    Evaluation,
    LoopSettings,
    MaskEnforcer,
    TrainResult,
    TrainSettings,
    TrainState,
    attach,
    evaluate,
    train,
)

__version__ = "0.1.0"

__all__ = [
    "RECIPES",
    "AnalysisSettings",
    "AttachedMask",
    "Calibration",
    "Config",
    "ConfigError",
    "Dataset",
    "Distance",
    "DivergenceError",
    "EpochLog",
    "Evaluation",
    "GradualMagnitudePruning",
    "LoopSettings",
    "Mask",
    "MaskEnforcer",
    "MaskError",
    "MaskSchedule",
    "OwnRun",
    "PathResult",
    "SoupResult",
    "Split",
    "TraceEstimate",
    "TrainResult",
    "TrainSettings",
    "TrainState",
    "__version__",
    "analyze_run",
    "attach",
    "available_datasets",
    "available_models",
    "build_model",
    "calibration",
    "count_parameters",
    "distances",
    "ensemble_probabilities",
    "evaluate",
    "evaluate_ensemble",
    "fraction_per_cycle",
    "greedy_soup",
    "hessian_trace",
    "imp",
    "linear_path",
    "load_analysis",
    "load_dataset",
    "load_sparse",
    "magnitude_prune",
    "magnitude_prune_to",
    "nm_prune",
    "prunable_parameters",
    "prune",
    "random_prune",
    "recalibrate_bn",
    "recalibrate_bn_on",
    "resolve_config",
    "run",
    "run_distributed",
    "run_many",
    "save_sparse",
    "shuffle_within_layers",
    "sms",
    "sparse_linear",
    "swamp",
    "to_semi_structured",
    "train",
    "uniform_average",
]
