"""The experiment's one validated, typed configuration.

A :class:`Config` has sections of plain typed fields. Each field carries a help string and its
allowed values or range in its metadata; :func:`build_config` checks every value against them
and refuses unknown keys, so a bad config fails with one line that names the field and what
it accepts. The resolved config (defaults, recipe defaults, file, overrides) hashes to the run
directory's name; the ``execution`` section (where and how it runs, not what it computes) is
left out of the hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from .averaging import ACCEPT_RULES
from .pruning import SCOPES, fraction_per_cycle
from .training import OPTIMIZERS, PRECISIONS, RETRAIN_SCHEDULES, SCHEDULES


class ConfigError(ValueError):
    """A configuration that cannot be run; the message names the field and what it accepts."""


def _f(
    default: Any,
    help: str,
    *,
    choices: tuple[Any, ...] | None = None,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> Any:
    meta = {
        "help": help,
        "choices": choices,
        "lo": lo,
        "hi": hi,
        "lo_open": lo_open,
        "hi_open": hi_open,
    }
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


STARTS = ("rewind", "finetune", "reinit")
COMBINES = ("single", "uniform", "greedy")
VARIES = ("seed", "weight_decay", "lr", "length")
PRUNERS = ("magnitude", "random", "shuffle")
SWA_SCHEDULES = ("anneal", "switch")
EARLY_CYCLES = ("swa", "imp")
RECALIBRATE = ("averaged", "always", "never")
DIVERGENCE = ("stop", "drop")
PROGRESS = ("auto", "rich", "plain", "none")


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
    pretrained: str = _f(
        "",
        "a state_dict file (.safetensors or .pt) to start from instead of "
        "training the dense model in cycle 0",
    )


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _f(30, "epochs per training run", lo=0)
    batch_size: int = _f(128, "samples per step", lo=1)
    optimizer: str = _f("sgd", "optimizer", choices=OPTIMIZERS)
    lr: float = _f(0.1, "peak learning rate", lo=0.0, lo_open=True)
    momentum: float = _f(0.9, "SGD momentum", lo=0.0, hi=1.0, hi_open=True)
    nesterov: bool = _f(False, "Nesterov momentum")
    weight_decay: float = _f(5e-4, "weight decay", lo=0.0)
    schedule: str = _f("cosine", "learning-rate schedule", choices=SCHEDULES)
    warmup: float = _f(0.0, "fraction of steps with linear warm-up", lo=0.0, hi=1.0, hi_open=True)
    milestones: list[float] = _f([0.5, 0.75], "step schedule: fractions of training where lr drops")
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
    swa_schedule: str = _f(
        "anneal",
        "lr before SWA: 'anneal' fits the schedule into the steps before swa_start and ends it "
        "at swa_lr; 'switch' runs the schedule as if over all steps and switches to swa_lr at "
        "swa_start",
        choices=SWA_SCHEDULES,
    )
    augment: bool = _f(True, "use the data set's augmentation")
    precision: str = _f("fp32", "training precision", choices=PRECISIONS)
    channels_last: bool = _f(False, "channels-last memory format for image models")


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
    scope: str = _f("global", "rank weights over all layers or per layer", choices=SCOPES)
    method: str = _f("magnitude", "how weights are chosen", choices=PRUNERS)
    exclude_first: bool = _f(False, "keep the first conv/linear layer dense")
    exclude_last: bool = _f(False, "keep the last (classifier) layer dense")
    exclude: list[str] = _f([], "glob patterns of parameter names to keep dense")
    layer_fractions: dict[str, float] = _f(
        {},
        "per-layer fractions {glob = fraction}: matching layers are pruned on their own at "
        'that fraction, e.g. {"fc3.weight" = 0.1} (the lottery-ticket paper\'s output layer)',
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
        1.0, "rewind point T0 in epochs (fractions allowed; 0 = the initialisation)", lo=0.0
    )
    retrain_epochs: int = _f(
        0, "fine-tuning cycles: epochs of each retraining (0 = train.epochs)", lo=0
    )
    retrain_schedule: str = _f(
        "",
        "fine-tuning cycles: lr schedule, a train.schedule or one of the SMS code's retraining "
        "schedules ft, lrw, slr, clr, llr, allr (empty = train.schedule)",
        choices=("", *SCHEDULES, *RETRAIN_SCHEDULES),
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


@dataclass(frozen=True)
class IngredientsConfig:
    count: int = _f(
        1, "models trained per cycle (SWAMP particles, soup ingredients, ensemble members)", lo=1
    )
    start: str = _f(
        "rewind",
        "cycle start: rewind to the ticket, fine-tune the last model, or a new random "
        "initialisation (reinit)",
        choices=STARTS,
    )
    combine: str = _f("single", "how a cycle's models become one", choices=COMBINES)
    accept: str = _f(
        "ge",
        "greedy soup: keep a candidate if held-out accuracy is >= (ge) or > (gt)",
        choices=ACCEPT_RULES,
    )
    vary: str = _f(
        "seed", "the one hyperparameter that differs between ingredients", choices=VARIES
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
    )
    single_until: int = _f(0, "swamp+: one particle in cycles below this", lo=0)
    early: str = _f(
        "swa",
        "swamp+: the single-particle cycles train with SWA (swa) or are plain IMP (imp)",
        choices=EARLY_CYCLES,
    )
    length_factor: float = _f(1.0, "imp+: retrain this many times longer", lo=1.0)


@dataclass(frozen=True)
class BNConfig:
    recalibrate: str = _f(
        "averaged",
        "recompute BatchNorm statistics of averaged models (soups, SWA) only, of every model "
        "before it is evaluated or starts the next cycle (always, the SMS code), or never",
        choices=RECALIBRATE,
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
    on_divergence: str = _f(
        "stop", "a NaN/inf loss stops the run, or drops that ingredient", choices=DIVERGENCE
    )
    progress: str = _f("auto", "progress display", choices=PROGRESS)


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

    def digest(self) -> str:
        """SHA-256 (hex) of the resolved config minus ``execution``; names the run directory."""
        text = json.dumps(self.to_dict(hashed_only=True), sort_keys=True, default=str)
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


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, str(tp)
    )


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are."""
    origin = get_origin(tp)
    bad = ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise bad
        inner = get_args(tp)[0]
        return [_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
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


def _check_range(key: str, value: Any, meta: dict[str, Any]) -> None:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if (lo is None and hi is None) or isinstance(value, (list, dict, str)):
        return
    below = lo is not None and (value <= lo if meta["lo_open"] else value < lo)
    above = hi is not None and (value >= hi if meta["hi_open"] else value > hi)
    if below or above:
        left = "(" if meta["lo_open"] else "["
        right = ")" if meta["hi_open"] else "]"
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        left, right = ("(" if lo is None else left), (")" if hi is None else right)
        raise ConfigError(f"{key}: {value!r} is outside {left}{lo_s}, {hi_s}{right}")


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
        _check_range(key, value, dict(fields[name].metadata))
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
    """Validate a nested dict into a :class:`Config` (unknown keys and bad values refused)."""
    cfg = _build_section(Config, values, "")
    return cfg


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def field_help() -> list[tuple[str, str, str]]:
    """``(key, default, help)`` for every field, for ``--help`` and the README."""
    rows = []
    for section in dataclasses.fields(Config):
        tp = get_type_hints(Config)[section.name]
        if dataclasses.is_dataclass(tp):
            for f in dataclasses.fields(tp):
                default = _default_of(f)
                rows.append((f"{section.name}.{f.name}", repr(default), f.metadata["help"]))
        else:
            rows.append((section.name, repr(section.default), section.metadata["help"]))
    return rows


def to_toml(d: dict[str, Any]) -> str:
    """Write a nested dict of scalars, lists and tables as TOML (enough for :class:`Config`)."""

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {scalar(x)}" for k, x in v.items()) + "}"
        raise TypeError(f"cannot write {type(v).__name__} as TOML")

    lines = [f"{k} = {scalar(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            lines.extend(f"{kk} = {scalar(vv)}" for kk, vv in v.items())
    return "\n".join(lines) + "\n"
