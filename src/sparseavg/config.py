"""The experiment's one validated, typed configuration.

A :class:`Config` has sections of plain typed fields. The schema of a field is its annotation
and its metadata, nothing else: a ``Literal`` annotation is the one list of its allowed values,
and ``_f(..., lo=, hi=)`` its range (for a list or a table: the range of each element). Every
check, the ``--help`` text and the configuration reference (docs/configuration.md) read them
from there (:func:`field_specs`).
:func:`build_config` checks every value against them and refuses unknown keys, so a bad config
fails with one line that names the field and what it accepts.

The run directory's name hashes the values that differ from their defaults, plus
:data:`SCHEMA_VERSION` (see :meth:`Config.digest`): adding a field renames no run. The
``execution`` section (where and how it runs, not what it computes) is left out of the hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import tomli_w

from .averaging import AcceptRule
from .models import InitScheme
from .pruning import GmpCounts, Rounding, Scope, fraction_per_cycle, parse_pattern
from .pruning.rigl import Distribution, RiglDecide
from .training.settings import Optimizer, Precision, SwaSchedule

#: Part of every run's hash. Bump it when a default changes (or what a value means), since a
#: run directory's name hashes only the values that differ from the defaults: the same name
#: would otherwise stand for another experiment. Adding a field with a default that keeps the
#: old behaviour needs no bump and renames nothing.
SCHEMA_VERSION = 3


class ConfigError(ValueError):
    """A configuration that cannot be run; the message names the field and what it accepts."""


# -- the allowed values of each choice field: one Literal per field ------------------------------

TrainSchedule = Literal["constant", "step", "cosine", "llr"]
RetrainSchedule = Literal[
    "", "constant", "step", "cosine", "llr", "ft", "lrw", "slr", "clr", "allr"
]
PruneMethod = Literal["magnitude", "random", "shuffle"]
ShuffleStart = Literal["pruned_ticket", "ticket"]
Granularity = Literal["weight", "channel"]
ChannelNorm = Literal["l1", "l2"]
IngredientStart = Literal["rewind", "finetune", "reinit"]
Combine = Literal["single", "uniform", "greedy"]
Vary = Literal["seed", "weight_decay", "lr", "length"]
SoupMetric = Literal["macro", "accuracy"]
EarlyCycles = Literal["swa", "imp"]
Recalibrate = Literal["averaged", "always", "never"]
OnDivergence = Literal["stop", "drop"]
DataOrder = Literal["per_cycle", "fixed"]
Progress = Literal["auto", "rich", "plain", "none"]
MemoryFormat = Literal["auto", "on", "off"]
Mode = Literal["auto", "sequential", "stacked", "distributed"]
DpfSettle = Literal["dense", "masked"]

STARTS: tuple[str, ...] = get_args(IngredientStart)
COMBINES: tuple[str, ...] = get_args(Combine)
VARIES: tuple[str, ...] = get_args(Vary)
PRUNERS: tuple[str, ...] = get_args(PruneMethod)
SWA_SCHEDULES: tuple[str, ...] = get_args(SwaSchedule)
EARLY_CYCLES: tuple[str, ...] = get_args(EarlyCycles)
RECALIBRATE: tuple[str, ...] = get_args(Recalibrate)
DIVERGENCE: tuple[str, ...] = get_args(OnDivergence)
PROGRESS: tuple[str, ...] = get_args(Progress)


@dataclass(frozen=True)
class Range:
    """An interval of numbers; ``None`` bounds are infinite. ``str()`` is ``"[0, 1)"``."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, (int, float)):
            return False
        lo, hi = self.lo, self.hi
        if lo is not None and (value <= lo if self.lo_open else value < lo):
            return False
        return not (hi is not None and (value >= hi if self.hi_open else value > hi))

    def __str__(self) -> str:
        left = "(" if self.lo is None or self.lo_open else "["
        right = ")" if self.hi is None or self.hi_open else "]"
        lo = "-inf" if self.lo is None else f"{self.lo:g}"
        hi = "inf" if self.hi is None else f"{self.hi:g}"
        return f"{left}{lo}, {hi}{right}"


def _f(
    default: Any,
    help: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> Any:
    """A field with its help and, for numbers, its range (of each element for a list or table)."""
    bounded = lo is not None or hi is not None
    meta = {"help": help, "range": Range(lo, hi, lo_open, hi_open) if bounded else None}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = _f("mnist1d", "data set name (see `sparseavg inspect --datasets`)")
    val_fraction: float = _f(
        0.1, "share of the training set held out for greedy soups", lo=0.0, hi=1.0, hi_open=True
    )
    split_seed: int = _f(0, "seed of the held-out split", lo=0)


@dataclass(frozen=True)
class ModelConfig:
    name: str = _f("conv1d", "model name (see `sparseavg inspect --models`)")
    options: dict[str, Any] = _f({}, "model-specific options, e.g. {width = 64}")
    init: InitScheme = _f(
        "sparseavg",
        "weight initialisation of the built-in models: sparseavg (convs Kaiming normal fan_out, "
        "bias 0; linear layers torch's default; BatchNorm weight 1) or open_lth (conv and "
        "linear weights Kaiming normal fan_in, biases torch's default, BatchNorm weight "
        "uniform in [0, 1)), which the lottery-ticket configs use",
    )
    pretrained: str = _f(
        "",
        "a state_dict file (.safetensors or .pt) to start from instead of "
        "training the dense model in cycle 0",
    )


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _f(30, "epochs per training run", lo=0)
    batch_size: int = _f(128, "samples per step", lo=1)
    drop_last: bool = _f(
        False,
        "skip each epoch's last partial batch (false: train on it too, as the SMS code and "
        "open_lth do; schedules count the steps an epoch really has)",
    )
    optimizer: Optimizer = _f("sgd", "optimizer")
    lr: float = _f(0.1, "peak learning rate", lo=0.0, lo_open=True)
    momentum: float = _f(0.9, "SGD momentum", lo=0.0, hi=1.0, hi_open=True)
    nesterov: bool = _f(False, "Nesterov momentum")
    weight_decay: float = _f(5e-4, "weight decay", lo=0.0)
    schedule: TrainSchedule = _f("cosine", "learning-rate schedule")
    warmup: float = _f(
        0.0,
        "fraction of steps spent warming up from rate 0 (linear; a half cosine for llr); 0 is "
        "none, for every schedule (fine-tuning cycles use the SMS code's 10 % for llr/slr/clr)",
        lo=0.0,
        hi=1.0,
        hi_open=True,
    )
    milestones: list[float] = _f(
        [0.5, 0.75],
        "step schedule: fractions of training where lr drops",
        lo=0.0,
        hi=1.0,
        lo_open=True,
        hi_open=True,
    )
    gamma: float = _f(0.1, "step schedule: lr factor at each milestone", lo=0.0, lo_open=True)
    swa: bool = _f(False, "stochastic weight averaging over the last part of training")
    swa_start: float = _f(
        0.75,
        "fraction of epochs after which SWA averages (one snapshot per epoch, constant swa_lr)",
        lo=0.0,
        hi=1.0,
        hi_open=True,
    )
    swa_lr: float = _f(0.05, "constant learning rate during SWA", lo=0.0, lo_open=True)
    swa_schedule: SwaSchedule = _f(
        "anneal",
        "lr before SWA: 'anneal' fits the schedule into the steps before swa_start and ends it "
        "at swa_lr; 'switch' runs the schedule as if over all steps and switches to swa_lr at "
        "swa_start",
    )
    augment: bool = _f(True, "use the data set's augmentation")
    data_order: DataOrder = _f(
        "per_cycle",
        "batch order and augmentation draws: new ones every cycle (per_cycle), or cycle 0's "
        "again in every cycle, ingredient by ingredient (fixed: open_lth's one data order for "
        "every level)",
    )
    precision: Precision = _f(
        "auto", "training precision: bf16 autocast or fp32; auto = bf16 on CUDA, fp32 elsewhere"
    )
    channels_last: MemoryFormat = _f(
        "auto", "channels-last memory format for image models: on, off, or auto (on CUDA only)"
    )


@dataclass(frozen=True)
class PruningConfig:
    cycles: int = _f(10, "pruning cycles after the dense cycle 0", lo=0)
    fraction: float = _f(
        0.2,
        "share of the surviving weights removed per cycle (0.2 keeps 80 %)",
        lo=0.0,
        hi=1.0,
        lo_open=True,
        hi_open=True,
    )
    target_sparsity: float = _f(
        0.0,
        "if > 0: derive fraction = 1-(1-s)^(1/cycles) to reach this sparsity after the last cycle",
        lo=0.0,
        hi=1.0,
        hi_open=True,
    )
    scope: Scope = _f("global", "rank weights over all layers or per layer")
    method: PruneMethod = _f("magnitude", "how weights are chosen")
    rounding: Rounding = _f(
        "round",
        "how many weights a cycle removes: round(f * alive) per ranked group, or open_lth's "
        "count (threshold at the ceil(f * alive)-th smallest, 0-based; every weight at or "
        "below it goes: ceil(f * alive) + 1 without ties)",
    )
    include: list[str] = _f(
        [],
        "glob patterns of parameter names to prune, any parameter (embeddings, attention "
        "projections); empty = every conv and linear weight",
    )
    pattern: str = _f(
        "unstructured",
        "'unstructured', or 'N:M' (e.g. '2:4', which GPU sparse kernels run): keep N of every M "
        "consecutive input-channel weights; cycles reach it with the sparsity 1-N/M as "
        "target_sparsity and the last cycle leaves exactly N per group (gmp: the last step)",
    )
    granularity: Granularity = _f(
        "weight",
        "what a cycle removes: single weights (weight), or whole output channels (channel: conv "
        "filters, linear rows, with the BatchNorms and next layers' input columns coupled to "
        "them, as Torch-Pruning groups them; fraction and target_sparsity then count channels; "
        "needs the structured extra)",
    )
    channel_norm: ChannelNorm = _f(
        "l1",
        "granularity channel: a channel's score over its group's masked weights, their mean "
        "absolute value (l1) or root mean square (l2); the lowest go first",
    )
    shuffle_start: ShuffleStart = _f(
        "pruned_ticket",
        "method shuffle: a cycle starts from the ticket pruned by the mask it shuffles, then by "
        "the shuffled mask (pruned_ticket: open_lth's randomly_prune, so weights alive only in "
        "the shuffled mask start at 0), or from the ticket under the shuffled mask (ticket)",
    )
    exclude_first: bool = _f(False, "keep the first conv/linear layer dense")
    exclude_last: bool = _f(False, "keep the last (classifier) layer dense")
    exclude: list[str] = _f([], "glob patterns of parameter names to keep dense")
    layer_fractions: dict[str, float] = _f(
        {},
        "per-layer fractions {glob = fraction}: matching layers are pruned on their own at "
        'that fraction, e.g. {"fc3.weight" = 0.1} (the lottery-ticket paper\'s output layer)',
        lo=0.0,
        hi=1.0,
        hi_open=True,
    )
    masks_from: str = _f(
        "",
        "a run directory of the same model whose mask of cycle c this run uses in cycle c "
        "(the lottery-ticket controls: recipes reinit and shuffle)",
    )
    initial_mask: str = _f(
        "",
        "a mask file (.safetensors of bool tensors) that cycle 0 starts "
        "from instead of the dense model",
    )
    rewind_epochs: float = _f(
        1.0,
        "rewinding recipes: the ticket's rewind point T0 in epochs (fractions allowed; 0 = the "
        "initialisation); fine-tuning recipes train cycle 0 in one run and ignore it",
        lo=0.0,
    )
    retrain_epochs: int = _f(
        0, "fine-tuning cycles: epochs of each retraining (0 = train.epochs)", lo=0
    )
    retrain_schedule: RetrainSchedule = _f(
        "",
        "fine-tuning cycles: lr schedule, a train.schedule or one of the SMS code's retraining "
        "schedules ft, lrw, slr, clr, llr, allr (empty = train.schedule)",
    )
    retrain_lr: float = _f(0.0, "fine-tuning cycles: peak lr (0 = train.lr)", lo=0.0)
    gmp_start: float = _f(
        0.1, "gmp: fraction of training where pruning starts", lo=0.0, hi=1.0, hi_open=True
    )
    gmp_end: float = _f(
        0.75,
        "gmp: fraction of training where the final sparsity is reached",
        lo=0.0,
        hi=1.0,
        lo_open=True,
    )
    gmp_interval: int = _f(
        0,
        "gmp: prune after epochs interval, 2 interval, ..., n interval with n = train.epochs "
        "// interval - 1, as the BIMP code (ZIB-IOL/BIMP) does, so the last interval trains "
        "at the target; 0 = after every epoch between gmp_start and gmp_end",
        lo=0,
    )
    gmp_counts: GmpCounts = _f(
        "exact",
        "gmp: what a step prunes: to exactly round(s * total) for the schedule's sparsity s "
        "(exact), or round(f * alive) more with f = 1 - (1 - s) / (1 - s_prev) from the "
        "previous step's nominal sparsity, as the BIMP code counts (bimp: the end can miss "
        "round(target_sparsity * total) by a weight or two)",
    )
    dpf_settle: DpfSettle = _f(
        "masked",
        "sms-dpf: what a phase's copies, each with its own mask, are settled on: the mask of "
        "the average of their dense weights at the phase's count, the soup being that average "
        "on it (dense: DPF's model of the averaged weights; sms-dpf's default), or the mask of "
        "the average of their masked weights w_i * m_i, each projected onto it (masked: the "
        "reading measured first, which cuts alive weights of every copy; the field's default "
        "so that runs from before it keep their names)",
    )
    retrain_budget: int = _f(
        0,
        "bimp: retraining epochs the pruning.cycles phases share, split as the BIMP code "
        "splits n_epochs_to_split (budget // cycles each, the last phase the rest: 10 over 3 "
        "= 3, 3, 4); 0 = train.epochs",
        lo=0,
    )
    rigl_distribution: Distribution = _f(
        "erk",
        "rigl: how the sparse start spreads target_sparsity over the layers: erk (Erdos-Renyi-"
        "Kernel, denser small layers), er (Erdos-Renyi, conv kernels ignored) or uniform; each "
        "layer gets floor(s_l * N_l) zeros at random places (seeded), as google-research/rigl",
    )
    rigl_interval: int = _f(
        0,
        "rigl: Delta T, optimizer steps between mask updates (an update step takes no optimizer "
        "step); 0 = rigl's 100, or end step // 20 where 100 would give fewer than 20 updates "
        "(small data sets: MNIST-1D's 10 epochs of 29 steps update every 10 steps)",
        lo=0,
    )
    rigl_drop_fraction: float = _f(
        0.3,
        "rigl: share of each layer's alive weights dropped (and regrown) at step 0, decayed by "
        "a cosine to 0 at rigl_end",
        lo=0.0,
        hi=1.0,
    )
    rigl_end: float = _f(
        0.75,
        "rigl: fraction of training after which the mask stays fixed (the paper's 75 %)",
        lo=0.0,
        hi=1.0,
        lo_open=True,
    )
    rigl_decide: RiglDecide = _f(
        "each",
        "swamp-rigl: who takes the particles' drop/grow decisions: average (one decision at "
        "every update from the particles' mean weights and mean dense gradient, written into "
        "all of them, so they share one mask and train in lock step; swamp-rigl's default) or "
        "each (every particle runs RigL on its own; their masks are settled on their average's "
        "at the end, each layer's count kept)",
    )
    rigl_together: float = _f(
        0.0,
        "swamp-rigl with rigl_decide = average: the fraction of training during which the "
        "particles take the first particle's batches, so they train as one from their common "
        "start (as SWAMP's particles start from one trained ticket) before each takes its "
        "own batch order; 0 = apart from the first step",
        lo=0.0,
        hi=1.0,
        hi_open=True,
    )

    @property
    def n_m(self) -> tuple[int, int] | None:
        """``pattern`` as ``(N, M)``, or ``None`` for unstructured pruning.

        Raises:
            ConfigError: ``pattern`` is neither ``"unstructured"`` nor a valid ``"N:M"``.
        """
        try:
            return parse_pattern(self.pattern)
        except ValueError as err:
            raise ConfigError(f"pruning.pattern: {err}") from None


@dataclass(frozen=True)
class IngredientsConfig:
    count: int = _f(
        1, "models trained per cycle (SWAMP particles, soup ingredients, ensemble members)", lo=1
    )
    start: IngredientStart = _f(
        "rewind",
        "cycle start: rewind to the ticket, fine-tune the last model, or a new random "
        "initialisation (reinit)",
    )
    combine: Combine = _f("single", "how a cycle's models become one")
    accept: AcceptRule = _f(
        "ge", "greedy soup: keep a candidate if held-out accuracy is >= (ge) or > (gt)"
    )
    soup_metric: SoupMetric = _f(
        "macro",
        "greedy soup: the held-out accuracy candidates are ranked and kept by: the mean of "
        "per-class accuracies (macro: torchmetrics' MulticlassAccuracy default, the SMS code's) "
        "or the share of samples right (accuracy)",
    )
    vary: Vary = _f(
        "seed",
        "the one hyperparameter that differs between ingredients. lr: the schedule's peak "
        "(clr: the cosine's start; allr: each ingredient trains llr from its own peak, not "
        "the adaptive one, as the SMS code trains LLR from each split's value; refused with "
        "pruning.retrain_schedule ft, lrw or slr, whose rates are the dense run's). length: "
        "the (re)training epochs (allr's lower clip uses each ingredient's own)",
    )
    seed_per_ingredient: bool = _f(
        False,
        "with vary = weight_decay, lr or length: also give each ingredient its own seed (batch "
        "order, augmentation); the SMS code shares one",
    )
    values: list[float] = _f(
        [],
        "per-ingredient values of the varied hyperparameter (factors of "
        "the base value for lr, weight_decay and length)",
        lo=0.0,
        lo_open=True,
    )
    single_until: int = _f(0, "swamp+: one particle in cycles below this", lo=0)
    early: EarlyCycles = _f(
        "swa",
        "swamp+: the single-particle cycles train with SWA (swa) or are plain IMP (imp)",
    )
    length_factor: float = _f(1.0, "imp+: retrain this many times longer", lo=1.0)


@dataclass(frozen=True)
class BNConfig:
    recalibrate: Recalibrate = _f(
        "averaged",
        "recompute BatchNorm statistics of averaged models (soups, SWA) only, of every model "
        "before it is evaluated or starts the next cycle (always, the SMS code), or never",
    )
    batches: int = _f(
        0, "batches (of train.batch_size) per recalibration; 0 = the whole split", lo=0
    )
    augment: bool = _f(False, "recalibrate on augmented training batches (the SMS code does)")
    momentum: float = _f(
        0.0,
        "BatchNorm momentum while recalibrating; 0 = the exact average over the batches "
        "(torch's update_bn), 0.1 = the SMS code",
        lo=0.0,
        hi=1.0,
    )


@dataclass(frozen=True)
class ExecutionConfig:
    device: str = _f("auto", "cpu, cuda, cuda:1, mps, or auto")
    data_dir: str = _f("", "data directory (default: $SPARSEAVG_DATA or ~/.cache/sparseavg/data)")
    download: bool = _f(True, "download missing data files")
    on_divergence: OnDivergence = _f(
        "stop", "a NaN/inf loss stops the run, or drops that ingredient"
    )
    progress: Progress = _f("auto", "progress display")
    mode: Mode = _f(
        "auto",
        "how a cycle's ingredients train: one after another (sequential), as one batched model "
        "on one device (stacked), over torchrun's processes (distributed); auto = stacked on "
        "a GPU when the copies fit, else sequential",
    )
    compile: bool = _f(
        False,
        "torch.compile each model's forward: tens of seconds to compile (29 s for ResNet-20 on "
        "a 2-core CPU), then 1.4x faster steps there; results differ by rounding",
    )
    timeout: float = _f(
        1800.0,
        "distributed: seconds a rank waits for the others before it stops with an error",
        lo=0.0,
        lo_open=True,
    )
    tensorboard: bool = _f(
        False,
        "write TensorBoard scalars under RUN_DIR/tensorboard/ as each cycle completes: its "
        "rows (step = cycle) and its ingredients' training curves (step = global step); "
        'needs pip install "sparseavg[tensorboard]"',
    )
    wandb: bool = _f(
        False,
        "log the same scalars to Weights & Biases as each cycle completes (one W&B run per run "
        "directory, named after it, resumed with it; project $WANDB_PROJECT, default "
        'sparseavg; WANDB_MODE=offline works); needs pip install "sparseavg[wandb]"',
    )


@dataclass(frozen=True)
class Config:
    recipe: str = _f("imp", "the method (see `sparseavg run --help`)")
    seed: int = _f(0, "experiment seed; every other seed derives from it", lo=0)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    ingredients: IngredientsConfig = field(default_factory=IngredientsConfig)
    bn: BNConfig = field(default_factory=BNConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)

    # -- derived ------------------------------------------------------------------------------
    def to_dict(self, *, hashed_only: bool = False) -> dict[str, Any]:
        """A nested plain dict; with ``hashed_only`` the ``execution`` section is left out."""
        d = dataclasses.asdict(self)
        if hashed_only:
            d.pop("execution")
        return d

    def non_defaults(self, *, hashed_only: bool = False) -> dict[str, Any]:
        """The values that differ from their field's default, nested like :meth:`to_dict`
        (sections with none left out); with ``hashed_only`` without ``execution``."""
        d = _non_defaults(self)
        if hashed_only:
            d.pop("execution", None)
        return d

    def digest(self) -> str:
        """SHA-256 (hex) of :data:`SCHEMA_VERSION` and the values that differ from their
        defaults, ``execution`` left out; names the run directory.

        Leaving defaults out (as open_lth does) keeps run names stable when a field is added:
        a config that does not set it hashes as before, so an interrupted study still resumes.
        """
        payload = {"schema": SCHEMA_VERSION, "values": self.non_defaults(hashed_only=True)}
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def run_name(self) -> str:
        """``<recipe>-<dataset>-<model>-<hash8>``."""
        return f"{self.recipe}-{self.data.dataset}-{self.model.name}-{self.digest()[:8]}"

    @property
    def prune_fraction(self) -> float:
        """The per-cycle fraction, derived from ``target_sparsity`` when that is set."""
        p = self.pruning
        if p.target_sparsity > 0 and p.cycles > 0:
            return fraction_per_cycle(p.target_sparsity, p.cycles)
        return p.fraction


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _non_defaults(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            sub = _non_defaults(value)
            if sub:
                out[f.name] = sub
        elif value != _default_of(f):
            out[f.name] = value
    return out


# -- the schema, read from the annotations and metadata ------------------------------------------


@dataclass(frozen=True)
class FieldSpec:
    """One config field: ``key`` (``"train.lr"``), annotation, default, help, and what it
    accepts: ``choices`` (from a ``Literal``) or ``range`` (of each element for a list or
    table)."""

    key: str
    type: Any
    default: Any
    help: str
    choices: tuple[str, ...] | None
    range: Range | None

    @property
    def allowed(self) -> str:
        """What the field accepts, in words: ``sgd|adam|adamw``, ``number in (0, 1)``,
        ``integer in [1, inf)``, ``list of numbers in (0, 1)``, ``true|false``, ``string``."""
        if self.choices is not None:
            return "|".join(c if c else '""' for c in self.choices)
        origin = get_origin(self.type)
        if origin is list:
            text = f"list of {_PLURAL.get(get_args(self.type)[0], 'values')}"
        elif origin is dict:
            inner = get_args(self.type)[1]
            text = "table" if inner is Any else f"table of {_PLURAL.get(inner, 'values')}"
        else:
            text = _SINGULAR.get(self.type, str(self.type))
        return f"{text} in {self.range}" if self.range is not None else text


_SINGULAR = {bool: "true|false", int: "integer", float: "number", str: "string"}
_PLURAL = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def _specs_of(cls: type, prefix: str) -> list[FieldSpec]:
    hints = get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            continue
        choices = get_args(tp) if get_origin(tp) is Literal else None
        out.append(
            FieldSpec(
                key=f"{prefix}{f.name}",
                type=tp,
                default=_default_of(f),
                help=f.metadata["help"],
                choices=choices,
                range=f.metadata.get("range"),
            )
        )
    return out


def field_specs() -> list[FieldSpec]:
    """Every field of :class:`Config` in order (top-level fields, then each section's)."""
    specs = _specs_of(Config, "")
    hints = get_type_hints(Config)
    for f in dataclasses.fields(Config):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            specs += _specs_of(tp, f"{f.name}.")  # type: ignore[arg-type]
    return specs


def field_help() -> list[tuple[str, str, str]]:
    """``(key, repr(default), help)`` for every field, for tables of the fields."""
    return [(s.key, repr(s.default), s.help) for s in field_specs()]


def toml_value(value: Any) -> str:
    """``value`` written as a TOML value on one line (for help texts and messages)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


# -- validation ----------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, get_args(tp)))
    if origin is list:
        return f"a list of {_PLURAL.get(get_args(tp)[0], 'values')}"
    if origin is dict:
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, str(tp)
    )


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are."""
    origin = get_origin(tp)
    bad = ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if not isinstance(value, str) or value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise bad
        inner = get_args(tp)[0]
        return [_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        inner = get_args(tp)[1]
        if inner is Any:
            return dict(value)
        return {k: _coerce(f"{key}.{k}", v, inner) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise bad


def _check_range(key: str, value: Any, bounds: Range | None) -> None:
    """``value`` (each element of a list or table) must lie in ``bounds``."""
    if bounds is None:
        return
    if isinstance(value, list):
        items = [(f"{key}[{i}]", v) for i, v in enumerate(value)]
    elif isinstance(value, dict):
        items = [(f"{key}.{k}", v) for k, v in value.items()]
    else:
        items = [(key, value)]
    for name, v in items:
        if v not in bounds:
            raise ConfigError(f"{name}: {v!r} is outside {bounds}")


def _build_section(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]}; {prefix.rstrip('.') or 'the top level'} "
            f"accepts: {', '.join(fields)}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        key = f"{prefix}{name}"
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a table [{key}]")
            kwargs[name] = _build_section(tp, value, f"{key}.")  # type: ignore[arg-type]
            continue
        value = _coerce(key, value, tp)
        _check_range(key, value, fields[name].metadata.get("range"))
        kwargs[name] = value
    return cls(**kwargs)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in, recursively for tables (neither is changed)."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "options":
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``"train.lr=0.05"`` -> ``{"train": {"lr": 0.05}}``; the value is read as TOML, and taken
    as a plain string when it is not valid TOML (``data.dataset=mnist``)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. train.lr=0.05")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: bad key {key!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; a missing or malformed file raises :class:`ConfigError` naming it."""
    p = Path(path)
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a directory, not a config file") from None
    except OSError as err:
        raise ConfigError(f"{p}: cannot be read ({err.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{p}: not valid TOML ({err})") from None


def build_config(values: dict[str, Any]) -> Config:
    """Validate a nested dict into a :class:`Config` (unknown keys and bad values refused);
    fields it lacks keep their defaults."""
    cfg: Config = _build_section(Config, values, "")
    return cfg


def to_toml(d: dict[str, Any]) -> str:
    """Write a nested dict of scalars, lists and tables as TOML, with ``tomli_w``: any string
    (characters outside the BMP included) and empty or nested tables read back equal."""
    return tomli_w.dumps(d)
