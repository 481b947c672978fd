"""The recipes: each is defaults and fixed settings for the one cycle loop, plus a plan."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import Config, ConfigError, PruningConfig, build_config, merge
from ..pruning import parse_pattern
from ..pruning.channels import INSTALL as CHANNELS_INSTALL
from ..pruning.channels import torch_pruning_available
from .plan import CyclePlan, RunPlan
from .standard import (
    budget_plan,
    dpf_phase_plan,
    ensemble_of_ingredients_run,
    ensemble_run,
    feedback_plan,
    gmp_phase_plan,
    gradual_plan,
    lineage_average_run,
    member_plan,
    particles_rigl_plan,
    rigl_plan,
    run_plan,
    shared_dense_plan,
    standard_plan,
)

PlanFn = Callable[[Config, int, int, int], CyclePlan]
RunPlanFn = Callable[[Config], RunPlan]


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
        run: ``config -> RunPlan``: lineages and the rows each cycle reports.
        reference: the paper and code it follows (docs/recipes.md has the details).
    """

    name: str
    summary: str
    defaults: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    plan: PlanFn = standard_plan
    run: RunPlanFn = run_plan
    reference: str = ""


_REWIND_ONE = {"ingredients": {"count": 1, "start": "rewind", "combine": "single"}}
_FINETUNE_ONE = {"ingredients": {"count": 1, "start": "finetune", "combine": "single"}}
# What the SMS code does around every prune-retrain phase: LLR retraining, Nesterov momentum
# (its SGD sets nesterov = weight_decay > 0), and BatchNorm recalibrated for every model,
# on augmented training batches, with momentum 0.1.
_SMS_CODE = {
    "train": {"nesterov": True},
    "pruning": {"retrain_schedule": "llr"},
    "bn": {"recalibrate": "always", "augment": True, "momentum": 0.1},
}
_SWA = {"train": {"swa_start": 0.75, "swa_lr": 0.05}}
_SWAMP_DEFAULTS = merge(_SWA, {"ingredients": {"count": 4}})
_SWAMP_FIXED = {"ingredients": {"start": "rewind", "combine": "uniform"}, "train": {"swa": True}}
_SOUP_DEFAULTS = merge(_SMS_CODE, {"ingredients": {"count": 3, "combine": "uniform"}})
_LINEAGES = merge(_SMS_CODE, {"ingredients": {"count": 3}})
_LINEAGES_FIXED = {"ingredients": {"start": "finetune", "combine": "single", "single_until": 0}}
_SWAMP_PAPER = "SWAMP (Choi et al., ICLR 2024, arXiv 2305.14852)"
_SMS_PAPER = "Sparse Model Soups (Zimmer et al., ICLR 2024, arXiv 2306.16788; ZIB-IOL/SMS)"
_LTH_PAPER = "lottery tickets (Frankle & Carbin 2019; Frankle et al. 2020; open_lth)"
_RIGL_PAPER = "RigL (Evci et al., ICML 2020, arXiv 1911.11134; google-research/rigl)"
_DPF_PAPER = "DPF (Lin et al., ICLR 2020, arXiv 2006.07253) as ZIB-IOL/BIMP runs it"
_BIMP_PAPER = "Budgeted IMP (Zimmer et al., ICLR 2023, arXiv 2111.00843; ZIB-IOL/BIMP)"
# What the BIMP code does: a dense run from scratch, then prune-retrain phases with ALLR and
# Nesterov momentum (its SGD sets nesterov = weight_decay > 0); no BatchNorm recalibration.
_BIMP_CODE = {
    "train": {"nesterov": True},
    "pruning": {"retrain_schedule": "allr", "target_sparsity": 0.9, "rewind_epochs": 0.0},
}
# sms-gmp and sms-dpf: gmp's interval schedule as phases (train.epochs 30 = 6 + 4 x 6), each
# retrained with the SMS code's LLR by m ingredients, soups uniform.
_PHASED_DEFAULTS = {
    "pruning": {"target_sparsity": 0.9, "gmp_interval": 6, "cycles": 4, "retrain_schedule": "llr"},
    "ingredients": {"count": 3, "combine": "uniform"},
}
_PHASED_FIXED = {
    "pruning": {"method": "magnitude", "retrain_epochs": 0},
    "ingredients": {"start": "finetune", "length_factor": 1.0},
}
# The retraining schedules whose rates are the dense run's, not a peak that ingredients.vary =
# "lr" could vary (slr's peak only shapes its warm-up).
VARY_LR_REFUSED: tuple[str, ...] = ("ft", "lrw", "slr")
# The phases' lengths come from pruning.retrain_budget alone.
_BIMP_FIXED = {"pruning": {"retrain_epochs": 0}, "ingredients": {"length_factor": 1.0}}


def _lineage_average(name: str, summary: str, headline: str) -> Recipe:
    """IMP-AVG and IMP-RePrune: the same lineages, another readout as the headline."""
    return Recipe(
        name,
        summary,
        defaults=_LINEAGES,
        fixed=_LINEAGES_FIXED,
        plan=shared_dense_plan,
        run=lambda config: lineage_average_run(config, headline),
        reference=_SMS_PAPER,
    )


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe(
            "imp",
            "IMP with weight rewinding (lottery tickets)",
            fixed=_REWIND_ONE,
            reference=_LTH_PAPER,
        ),
        Recipe(
            "imp-swa",
            "IMP with SWA over the last part of each training run, one model (SWAMP's "
            "SWA-only ablation)",
            defaults=_SWA,
            fixed=merge(_REWIND_ONE, {"train": {"swa": True}}),
            reference=_SWAMP_PAPER,
        ),
        Recipe(
            "swamp",
            "SWAMP: N particles with SWA from the same ticket, averaged, then pruned",
            defaults=_SWAMP_DEFAULTS,
            fixed=_SWAMP_FIXED,
            reference=_SWAMP_PAPER,
        ),
        Recipe(
            "swamp+",
            "SWAMP with one particle in the first cycles (ingredients.single_until; "
            "ingredients.early = imp makes them plain IMP)",
            defaults=merge(_SWAMP_DEFAULTS, {"ingredients": {"single_until": 4}}),
            fixed=_SWAMP_FIXED,
            reference=_SWAMP_PAPER,
        ),
        Recipe(
            "swamp-no-swa",
            "SWAMP without SWA: N particles from the same ticket, averaged (the particles-only "
            "ablation)",
            defaults={"ingredients": {"count": 4}},
            fixed={
                "ingredients": {"start": "rewind", "combine": "uniform"},
                "train": {"swa": False},
            },
            reference=_SWAMP_PAPER,
        ),
        Recipe(
            "sms",
            "Sparse Model Soups: fine-tune m ingredients from the last soup, average them",
            defaults=_SOUP_DEFAULTS,
            fixed={"ingredients": {"start": "finetune"}},
            reference=_SMS_PAPER,
        ),
        Recipe(
            "sms-ensemble",
            "SMS whose result per phase is the prediction ensemble of its m ingredients "
            "(m x the inference cost); the next phase starts from the soup",
            defaults=_SOUP_DEFAULTS,
            fixed={"ingredients": {"start": "finetune"}},
            run=ensemble_of_ingredients_run,
            reference=_SMS_PAPER,
        ),
        Recipe(
            "imp-ft",
            "prune-retrain IMP (fine-tuning, no rewinding)",
            defaults=_SMS_CODE,
            fixed=_FINETUNE_ONE,
            reference=_SMS_PAPER,
        ),
        Recipe(
            "imp+",
            "prune-retrain IMP retrained length_factor times longer (a K-soup's compute)",
            defaults=merge(_SMS_CODE, {"ingredients": {"length_factor": 3.0}}),
            fixed=_FINETUNE_ONE,
            reference=_SMS_PAPER,
        ),
        _lineage_average(
            "imp-avg",
            "m prune-retrain lineages from one dense model, pruned separately; result: their "
            "average (lower sparsity)",
            "average",
        ),
        _lineage_average(
            "imp-reprune",
            "as imp-avg; result: the average pruned back to the lineages' sparsity",
            "reprune",
        ),
        Recipe(
            "ensemble",
            "K independent IMP runs, evaluated by averaging their predictions",
            defaults={"ingredients": {"count": 2}},
            fixed={"ingredients": {"start": "rewind", "combine": "single", "single_until": 0}},
            plan=member_plan,
            run=ensemble_run,
            reference=_SWAMP_PAPER,
        ),
        Recipe(
            "one-shot",
            "prune to pruning.target_sparsity at once, then retrain",
            defaults=merge(
                _SMS_CODE,
                {"pruning": {"target_sparsity": 0.9}, "ingredients": {"start": "finetune"}},
            ),
            fixed={"pruning": {"cycles": 1}, "ingredients": {"count": 1, "combine": "single"}},
            reference=_SMS_PAPER,
        ),
        Recipe(
            "random",
            "IMP with random instead of magnitude pruning (the random-mask baseline)",
            fixed=merge(_REWIND_ONE, {"pruning": {"method": "random"}}),
            reference=_LTH_PAPER,
        ),
        Recipe(
            "shuffle",
            "lottery-ticket control: magnitude pruning's per-layer sparsities at random "
            "positions (of pruning.masks_from's masks, or of this run's)",
            fixed=merge(_REWIND_ONE, {"pruning": {"method": "shuffle"}}),
            reference=_LTH_PAPER,
        ),
        Recipe(
            "reinit",
            "lottery-ticket control: pruning.masks_from's masks, trained from a new random "
            "initialisation",
            defaults={"pruning": {"rewind_epochs": 0.0}},
            fixed={
                "ingredients": {"count": 1, "start": "reinit", "combine": "single"},
                "pruning": {"method": "magnitude"},
            },
            reference=_LTH_PAPER,
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
            reference="Zhu & Gupta 2017 (gradual magnitude pruning); pruning.gmp_interval, "
            "gmp_counts = 'bimp': as ZIB-IOL/BIMP's GMP",
        ),
        Recipe(
            "dpf",
            "dynamic pruning with feedback: one run that steps at the masked weights and updates "
            "the dense ones; the mask recomputed from them on gmp's schedule "
            "(pruning.gmp_interval) and every 16 steps",
            defaults={"pruning": {"target_sparsity": 0.9, "rewind_epochs": 0.0, "gmp_interval": 1}},
            fixed={
                "pruning": {"cycles": 0, "method": "magnitude"},
                "ingredients": {"count": 1, "combine": "single", "start": "rewind"},
                "train": {"swa": False},
            },
            plan=feedback_plan,
            reference=_DPF_PAPER,
        ),
        Recipe(
            "sms-gmp",
            "Sparse Model Soups on gmp's phases: a dense run to gmp's first pruning epoch, then "
            "at each of its pruning.cycles steps the last soup pruned to the schedule's "
            "sparsity and m ingredients trained to the next step, averaged",
            defaults=_PHASED_DEFAULTS,
            fixed=_PHASED_FIXED,
            plan=gmp_phase_plan,
            reference=f"{_SMS_PAPER} on ZIB-IOL/BIMP's GMP",
        ),
        Recipe(
            "sms-dpf",
            "Sparse Model Soups on dpf's phases: as sms-gmp, each ingredient trained with DPF's "
            "error feedback at the phase's sparsity; the soup is the copies' dense average on "
            "its own mask (pruning.dpf_settle)",
            defaults=merge(_PHASED_DEFAULTS, {"pruning": {"dpf_settle": "dense"}}),
            fixed=merge(_PHASED_FIXED, {"train": {"swa": False}}),
            plan=dpf_phase_plan,
            reference=f"{_SMS_PAPER} on {_DPF_PAPER}",
        ),
        Recipe(
            "bimp",
            "budgeted IMP: a dense run, then pruning.cycles prune-retrain phases (ALLR) that "
            "share pruning.retrain_budget epochs",
            defaults=_BIMP_CODE,
            fixed=merge(_FINETUNE_ONE, _BIMP_FIXED),
            plan=budget_plan,
            reference=_BIMP_PAPER,
        ),
        Recipe(
            "sms-bimp",
            "Sparse Model Soups on BIMP's phases: m ingredients per phase from the last soup, "
            "averaged; the phases share pruning.retrain_budget epochs",
            defaults=merge(_BIMP_CODE, {"ingredients": {"count": 3, "combine": "uniform"}}),
            fixed=merge(_BIMP_FIXED, {"ingredients": {"start": "finetune"}}),
            plan=budget_plan,
            reference=f"{_SMS_PAPER} on {_BIMP_PAPER}",
        ),
        Recipe(
            "rigl",
            "RigL: one run from a random sparse mask (pruning.rigl_distribution at "
            "pruning.target_sparsity) that drops the smallest weights and regrows where the "
            "dense gradient is largest every pruning.rigl_interval steps",
            # the rigl code's default keeps the first layer dense (prune_first_layer=False)
            defaults={
                "pruning": {"target_sparsity": 0.9, "exclude_first": True, "rewind_epochs": 0.0}
            },
            fixed={
                "pruning": {"cycles": 0, "method": "magnitude"},
                "ingredients": {"count": 1, "combine": "single", "start": "rewind"},
            },
            plan=rigl_plan,
            reference=_RIGL_PAPER,
        ),
        Recipe(
            "swamp-rigl",
            "SWAMP on RigL: N particles from one initialisation and random sparse mask, one "
            "trajectory for the first half (pruning.rigl_together), then each with its own "
            "batch order and SWA after pruning.rigl_end, in lock step: every drop/grow "
            "decision taken once on their average and shared (pruning.rigl_decide), then "
            "averaged",
            defaults=merge(
                _SWAMP_DEFAULTS,
                {
                    "pruning": {
                        "target_sparsity": 0.9,
                        "exclude_first": True,
                        "rewind_epochs": 0.0,
                        "rigl_decide": "average",
                        "rigl_together": 0.5,
                    }
                },
            ),
            fixed=merge(_SWAMP_FIXED, {"pruning": {"cycles": 0, "method": "magnitude"}}),
            plan=particles_rigl_plan,
            reference=f"{_SWAMP_PAPER} on {_RIGL_PAPER}",
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
    values = _pattern_target(values)
    config = build_config(merge(merge(recipe.defaults, values), recipe.fixed))
    check_config(config)
    return config


def _pattern_target(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with ``pruning.target_sparsity = 1 - N/M`` filled in for an N:M
    ``pruning.pattern`` that comes without one: the pattern decides the final sparsity, so it
    replaces a recipe's default target (one-shot's and gmp's 0.9). A target the user gives is
    left for :func:`check_config` to compare; a malformed pattern for it to refuse."""
    pruning = values.get("pruning")
    if not isinstance(pruning, dict) or "target_sparsity" in pruning:
        return values
    pattern = pruning.get("pattern")
    try:
        nm = parse_pattern(pattern) if isinstance(pattern, str) else None
    except ValueError:
        return values
    if nm is None:
        return values
    return merge(values, {"pruning": {"target_sparsity": 1 - nm[0] / nm[1]}})


def _check_pattern(config: Config, n: int, m: int) -> None:
    """What an N:M ``pruning.pattern`` cannot be combined with."""
    p = config.pruning
    what = f"pruning.pattern = {p.pattern!r}"
    final = 1 - n / m
    if abs(p.target_sparsity - final) > 1e-12:
        raise ConfigError(
            f"pruning.target_sparsity = {p.target_sparsity:g} contradicts {what}, which ends "
            f"with {n} of every {m} weights alive (sparsity {final:g}); leave target_sparsity "
            f"unset or set it to {final!r}"
        )
    if p.cycles == 0 and config.recipe != "gmp":
        raise ConfigError(f"{what} needs pruning.cycles >= 1 to reach it (or recipe gmp)")
    if p.method == "shuffle":
        raise ConfigError(
            f"pruning.method = 'shuffle' moves alive weights anywhere in a layer, which breaks "
            f"the groups of {what}; pruning.method = 'random' draws random N:M masks"
        )
    if p.masks_from:
        raise ConfigError(
            f"pruning.masks_from takes every mask from another run, with that run's pattern; "
            f"leave {what} unset"
        )
    if p.layer_fractions:
        raise ConfigError(
            f"pruning.layer_fractions sets per-layer rates, but {what} ends every pruned layer "
            f"with {n} of {m} alive; keep a layer dense with pruning.exclude instead"
        )


def _check_gmp_reference(config: Config) -> None:
    """``pruning.gmp_interval`` and ``gmp_counts``: gmp's options, and what they exclude."""
    p, t = config.pruning, config.train
    gmp = config.recipe in _GMP_SCHEDULED
    if not gmp and (p.gmp_interval > 0 or p.gmp_counts != "exact"):
        which = "gmp_interval" if p.gmp_interval > 0 else "gmp_counts"
        raise ConfigError(
            f"pruning.{which} sets recipe gmp's schedule; recipe {config.recipe} has none"
        )
    if p.gmp_interval > 0 and 2 * p.gmp_interval > t.epochs:
        raise ConfigError(
            f"pruning.gmp_interval = {p.gmp_interval} needs train.epochs >= "
            f"{2 * p.gmp_interval} (one interval to prune in, one at the target), got {t.epochs}"
        )
    default = PruningConfig()
    moved = [
        name for name in ("gmp_start", "gmp_end") if getattr(p, name) != getattr(default, name)
    ]
    if p.gmp_interval > 0 and moved:
        raise ConfigError(
            f"pruning.{moved[0]} places the every-epoch schedule; pruning.gmp_interval = "
            f"{p.gmp_interval} prunes from epoch {p.gmp_interval} to the last interval: leave "
            f"pruning.{moved[0]} unset"
        )
    if p.gmp_counts == "bimp" and p.n_m is not None:
        raise ConfigError(
            f"pruning.gmp_counts = 'bimp' removes a share of all alive weights, which breaks "
            f"pruning.pattern = {p.pattern!r}: use gmp_counts = 'exact'"
        )


#: the recipes whose mask follows gmp's schedule (pruning.gmp_*)
_GMP_SCHEDULED = ("gmp", "dpf", "sms-gmp", "sms-dpf")


def _check_dpf(config: Config) -> None:
    """Recipes dpf, sms-gmp and sms-dpf: the BIMP code's interval schedule, each mask pruned
    by global (or layer-wise) magnitude to the schedule's count, so nothing that shapes masks
    otherwise; ``pruning.dpf_settle`` is sms-dpf's alone."""
    p, default = config.pruning, PruningConfig()
    if p.dpf_settle != default.dpf_settle and config.recipe != "sms-dpf":
        raise ConfigError(
            f"pruning.dpf_settle = {p.dpf_settle!r} says how recipe sms-dpf settles its copies' "
            f"masks; recipe {config.recipe} has no such copies: leave it unset"
        )
    if config.recipe not in ("dpf", "sms-gmp", "sms-dpf"):
        return
    name = config.recipe
    if p.gmp_interval < 1:
        raise ConfigError(
            f"recipe {name} prunes on the BIMP code's schedule: pruning.gmp_interval must be >= 1"
        )
    steps = config.train.epochs // p.gmp_interval - 1
    phased = name.startswith("sms-")
    if phased and p.cycles != steps and 2 * p.gmp_interval <= config.train.epochs:
        raise ConfigError(
            f"recipe {name} has one phase per pruning step of gmp's schedule: set "
            f"pruning.cycles = train.epochs // pruning.gmp_interval - 1 = {steps}"
        )
    if phased and p.retrain_schedule == "allr":
        raise ConfigError(
            "pruning.retrain_schedule = 'allr' scales its peak by a per-cycle fraction; "
            f"recipe {name}'s phases prune unequal fractions: use llr or clr"
        )
    own = {
        "gmp_counts": p.gmp_counts != default.gmp_counts,
        "pattern": p.pattern != default.pattern,
        "initial_mask": bool(p.initial_mask),
        "masks_from": bool(p.masks_from),
        "layer_fractions": bool(p.layer_fractions),
    }
    given = [name for name, differs in own.items() if differs]
    if given:
        raise ConfigError(
            f"pruning.{given[0]} = {getattr(p, given[0])!r}: recipe {name} prunes every mask "
            f"by magnitude to gmp's count (dpf: from scratch from the dense weights); leave "
            f"pruning.{given[0]} unset"
        )


def _check_fraction(config: Config) -> None:
    """A ``pruning.fraction`` set (not its default) where a target decides every cycle's
    fraction: it would change only the run's name."""
    p = config.pruning
    if p.fraction == PruningConfig().fraction or p.target_sparsity <= 0:
        return
    if p.n_m is not None:
        why = f"pruning.pattern = {p.pattern!r}, whose sparsity {p.target_sparsity:g} sets it"
    else:
        why = f"pruning.target_sparsity = {p.target_sparsity:g}, which sets it"
    raise ConfigError(
        f"pruning.fraction = {p.fraction:g} is not used with {why} (each cycle removes "
        "1-(1-s)^(1/cycles)); leave pruning.fraction unset"
    )


_RIGL_RECIPES = ("rigl", "swamp-rigl")
_RIGL_FIELDS = (
    "rigl_distribution",
    "rigl_interval",
    "rigl_drop_fraction",
    "rigl_end",
    "rigl_decide",
    "rigl_together",
)


def _check_rigl(config: Config) -> None:
    """``pruning.rigl_*``: recipe rigl's, and what rigl's own sparse start and per-layer
    drop/grow leave no room for."""
    p, t = config.pruning, config.train
    default = PruningConfig()
    moved = [n for n in _RIGL_FIELDS if getattr(p, n) != getattr(default, n)]
    if config.recipe not in _RIGL_RECIPES:
        if moved:
            raise ConfigError(
                f"pruning.{moved[0]} sets recipe rigl's schedule; recipe {config.recipe} has none"
            )
        return
    if p.target_sparsity <= 0:
        raise ConfigError(f"recipe {config.recipe} needs pruning.target_sparsity in (0, 1)")
    own = {
        "pattern": p.pattern != default.pattern,
        "initial_mask": bool(p.initial_mask),
        "masks_from": bool(p.masks_from),
        "layer_fractions": bool(p.layer_fractions),
        "rounding": p.rounding != default.rounding,
        "scope": p.scope != default.scope,
        "granularity": p.granularity != default.granularity,
    }
    given = [name for name, differs in own.items() if differs]
    if given:
        raise ConfigError(
            f"pruning.{given[0]} = {getattr(p, given[0])!r}: recipe {config.recipe} draws its own "
            f"random sparse start (pruning.rigl_distribution) and drops and grows per layer; leave "
            f"pruning.{given[0]} unset"
        )
    if config.recipe == "rigl" and p.rigl_decide != default.rigl_decide:
        raise ConfigError(
            f"pruning.rigl_decide = {p.rigl_decide!r} chooses how swamp-rigl's particles decide; "
            "recipe rigl trains one model: leave it unset"
        )
    if config.recipe == "rigl" and p.rigl_together != default.rigl_together:
        raise ConfigError(
            f"pruning.rigl_together = {p.rigl_together:g} is how long swamp-rigl's particles "
            "train as one; recipe rigl trains one model: leave it unset"
        )
    if config.recipe == "swamp-rigl" and config.execution.mode == "distributed":
        raise ConfigError(
            "execution.mode = 'distributed' deals the particles out one by one, but recipe "
            "swamp-rigl trains them in lock step in one process: use execution.mode = "
            "'sequential' or 'auto'"
        )
    if t.swa and t.swa_start < p.rigl_end:
        raise ConfigError(
            f"train.swa_start = {t.swa_start:g} averages weights while recipe {config.recipe} "
            f"still moves the mask (until pruning.rigl_end = {p.rigl_end:g}): set "
            f"train.swa_start >= {p.rigl_end:g}"
        )


def _check_budget(config: Config) -> None:
    """``pruning.retrain_budget``: bimp's, at least one epoch per phase."""
    p = config.pruning
    if not config.recipe.endswith("bimp"):
        if p.retrain_budget:
            raise ConfigError(
                f"pruning.retrain_budget splits the retraining of recipe bimp; recipe "
                f"{config.recipe} retrains pruning.retrain_epochs per cycle"
            )
        return
    budget = p.retrain_budget or config.train.epochs
    if p.cycles < 1 or budget < p.cycles:
        raise ConfigError(
            f"recipe {config.recipe}: pruning.retrain_budget ({budget} epochs) must give each of "
            f"the pruning.cycles ({p.cycles}) phases at least one epoch"
        )


def _check_granularity(config: Config) -> None:
    """``pruning.granularity = "channel"``: the package it needs, and what it cannot be
    combined with (each removes or counts single weights)."""
    p = config.pruning
    if p.granularity != "channel":
        if p.channel_norm != "l1":
            raise ConfigError(
                f"pruning.channel_norm = {p.channel_norm!r} scores channels; "
                "pruning.granularity is 'weight' (set it to 'channel')"
            )
        return
    what = "pruning.granularity = 'channel'"
    if p.n_m is not None:
        raise ConfigError(
            f"{what} removes whole channels; pruning.pattern = {p.pattern!r} keeps N of every "
            "M weights: choose one"
        )
    conflicts = [
        (
            p.method not in ("magnitude", "random"),
            f"pruning.method = {p.method!r}",
            "places single weights",
        ),
        (bool(p.layer_fractions), "pruning.layer_fractions", "sets per-layer weight rates"),
        (p.rounding != "round", f"pruning.rounding = {p.rounding!r}", "counts single weights"),
        (p.gmp_interval > 0, "pruning.gmp_interval", "is the BIMP code's weight schedule"),
        (p.gmp_counts != "exact", f"pruning.gmp_counts = {p.gmp_counts!r}", "counts weights"),
        (config.recipe == "imp-reprune", "recipe imp-reprune", "re-prunes by single weights"),
    ]
    for bad, name, why in conflicts:
        if bad:
            raise ConfigError(f"{name} {why}; {what} removes whole channels: leave it unset")
    if not torch_pruning_available():
        raise ConfigError(f"{what} needs the torch-pruning package: {CHANNELS_INSTALL}")


def check_config(config: Config) -> None:
    """Checks that involve more than one field, and every cycle's training settings.

    Builds the plan of every cycle and lineage, so any setting that :class:`TrainSettings`
    refuses is refused here, before a run writes anything.
    """
    ing, p, t = config.ingredients, config.pruning, config.train
    if ing.combine == "greedy" and config.data.val_fraction <= 0:
        raise ConfigError("ingredients.combine = 'greedy' needs data.val_fraction > 0")
    if ing.values and ing.vary == "seed":
        raise ConfigError("ingredients.values is set but ingredients.vary = 'seed' varies nothing")
    if ing.values and len(ing.values) != ing.count:
        raise ConfigError(
            f"ingredients.values has {len(ing.values)} entries; ingredients.count is {ing.count}"
        )
    if config.recipe in ("gmp", "dpf", "one-shot") and p.target_sparsity <= 0:
        raise ConfigError(f"recipe {config.recipe} needs pruning.target_sparsity in (0, 1)")
    if config.recipe == "gmp" and p.gmp_end <= p.gmp_start:
        raise ConfigError(
            f"pruning.gmp_end ({p.gmp_end}) must be after pruning.gmp_start ({p.gmp_start})"
        )
    _check_gmp_reference(config)
    _check_dpf(config)
    _check_budget(config)
    _check_fraction(config)
    _check_rigl(config)
    if ing.seed_per_ingredient and ing.vary == "seed":
        raise ConfigError(
            "ingredients.seed_per_ingredient only matters when ingredients.vary is "
            "weight_decay, lr or length (vary = 'seed' gives every ingredient its own seed)"
        )
    if p.masks_from and p.method == "random":
        raise ConfigError(
            "pruning.masks_from takes its masks from another run; pruning.method = 'random' "
            "would ignore them (use recipe shuffle for random masks with their layer sparsities)"
        )
    if p.shuffle_start != "pruned_ticket" and p.method != "shuffle":
        raise ConfigError(
            f"pruning.shuffle_start = {p.shuffle_start!r} says where a shuffled mask starts; "
            f"pruning.method is {p.method!r} (use recipe shuffle)"
        )
    if p.masks_from and p.initial_mask:
        raise ConfigError("pruning.masks_from and pruning.initial_mask both give cycle 0's mask")
    if ing.start == "reinit" and not p.masks_from:
        raise ConfigError(
            "ingredients.start = 'reinit' (the lottery-ticket control) trains another run's "
            "masks from a new initialisation: set pruning.masks_from to that run's directory"
        )
    if ing.vary == "lr" and ing.start == "finetune" and p.retrain_schedule in VARY_LR_REFUSED:
        raise ConfigError(
            f"ingredients.vary = 'lr' varies the retraining's peak rate, which "
            f"pruning.retrain_schedule = {p.retrain_schedule!r} does not use (its rates are "
            f"the dense run's): use llr or allr (the SMS code's LLR from each value) or clr"
        )
    if p.retrain_schedule == "lrw" and (p.retrain_epochs or t.epochs) > t.epochs:
        raise ConfigError(
            f"pruning.retrain_schedule = 'lrw' rewinds the last pruning.retrain_epochs "
            f"({p.retrain_epochs}) epochs of the dense schedule, which has train.epochs "
            f"({t.epochs})"
        )
    if t.swa and t.swa_schedule == "anneal" and t.schedule == "step":
        raise ConfigError(
            "train.schedule = 'step' cannot anneal to train.swa_lr before SWA starts: set "
            "train.swa_schedule = 'switch' (the step schedule over all epochs, then a constant "
            "swa_lr from swa_start) or use a cosine or llr schedule"
        )
    _check_granularity(config)
    nm = p.n_m  # a malformed pattern raises ConfigError here
    if nm is not None:
        _check_pattern(config, *nm)
    gmp = config.recipe in _GMP_SCHEDULED
    if p.rounding != "round" and (nm is not None or gmp or p.masks_from):
        what = (
            f"pruning.pattern = {p.pattern!r}"
            if nm is not None
            else f"recipe {config.recipe}"
            if gmp
            else "pruning.masks_from"
        )
        raise ConfigError(
            f"pruning.rounding = {p.rounding!r} counts what a fraction of the survivors "
            f"removes; {what} decides the counts itself: leave pruning.rounding unset"
        )
    if t.epochs == 0 and not config.model.pretrained:
        raise ConfigError("train.epochs = 0 needs a model.pretrained checkpoint")
    rewinds = ing.start != "finetune"
    if rewinds and p.rewind_epochs >= config.train.epochs and not config.model.pretrained:
        raise ConfigError(
            f"pruning.rewind_epochs ({p.rewind_epochs:g}) must be less than train.epochs "
            f"({config.train.epochs})"
        )
    _check_plans(config)


def _check_plans(config: Config) -> None:
    """Build every cycle's plan: settings that TrainSettings refuses become a ConfigError."""
    recipe = get_recipe(config.recipe)
    try:
        lineages = recipe.run(config).lineages
        for cycle in range(config.pruning.cycles + 1):
            for lineage in range(lineages):
                recipe.plan(config, lineage, cycle, 0)
    except ValueError as err:
        raise ConfigError(f"train.{err}") from None
