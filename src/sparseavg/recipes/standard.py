"""The plans the recipes share: every method is this cycle loop with other pieces.

:func:`standard_plan` is IMP with rewinding, fine-tuning or re-initialisation, K ingredients
and any combine; the other plan functions adjust it (one model per lineage, shared dense
model, gradual pruning during training). :func:`run_plan` and its variants say how many
lineages a run has and which rows it reports.
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from typing import cast

from ..averaging import AcceptRule
from ..config import Config
from ..pruning import (
    GmpCounts,
    GradualMagnitudePruning,
    Lockstep,
    MaskSchedule,
    Rounding,
    Scope,
)
from ..pruning.budget import split_epochs
from ..pruning.channels import ChannelGradualPruning, Norm
from ..pruning.dpf import DPFSchedule
from ..pruning.gmp_reference import IntervalGradualPruning, bimp_gmp_schedule
from ..pruning.rigl import Distribution, RigLSchedule
from ..training import TrainSettings
from ..training.schedules import DEFAULT_RETRAIN_WARMUP
from ..training.settings import DERIVED_SCHEDULES
from ..utils.seeding import derive_seed
from .plan import Combiner, CyclePlan, IngredientPlan, MaskRule, RunPlan, SettingsRule, StartRule
from .readouts import (
    CombinedRows,
    IngredientEnsemble,
    IngredientRows,
    LineageAverage,
    LineageEnsemble,
    LineageReprune,
)
from .rules import (
    AdaptivePeak,
    AverageMask,
    AverageMaskPerLayer,
    Borrow,
    ChannelPrune,
    DenseAverageMask,
    DenseMask,
    FineTune,
    Greedy,
    MagnitudePrune,
    MagnitudePruneTo,
    NMPrune,
    Pretrained,
    RandomChannelPrune,
    RandomNMPrune,
    RandomPrune,
    Reinit,
    Rewind,
    RewindThrough,
    ShuffleLayers,
    Single,
    SourceMask,
    SparseStart,
    Uniform,
)

# -- settings ------------------------------------------------------------------------------------

#: the retraining schedules the SMS code warms up (``int(0.1 * iterations)`` steps)
RETRAIN_WARMUP: tuple[str, ...] = ("llr", "slr", "clr")


def base_settings(config: Config) -> TrainSettings:
    """The :class:`TrainSettings` of ``config.train``: training from scratch or a ticket."""
    t = config.train
    return TrainSettings(
        epochs=t.epochs,
        batch_size=t.batch_size,
        drop_last=t.drop_last,
        optimizer=t.optimizer,
        lr=t.lr,
        momentum=t.momentum,
        nesterov=t.nesterov,
        weight_decay=t.weight_decay,
        schedule=t.schedule,
        warmup=t.warmup,
        milestones=tuple(t.milestones),
        gamma=t.gamma,
        swa_start=t.swa_start if t.swa else None,
        swa_lr=t.swa_lr,
        swa_schedule=t.swa_schedule,
        augment=t.augment,
        precision=t.precision,
        channels_last=None if t.channels_last == "auto" else t.channels_last == "on",
    )


def retrain_settings(config: Config) -> TrainSettings:
    """Settings of a fine-tuning cycle: ``train`` with the ``pruning.retrain_*`` overrides and
    ``ingredients.length_factor`` (imp+) applied.

    The schedule is ``pruning.retrain_schedule`` (else ``train.schedule``) over the retraining
    epochs, with the SMS code's 10 % warm-up for llr/slr/clr/allr and none for the others
    (``train.warmup`` is the dense run's); ft, lrw, slr and clr derive from the dense run's
    settings. ``allr`` is planned as ``llr``: its peak is chosen when the cycle starts
    (:class:`~.rules.AdaptivePeak`).
    """
    p = config.pruning
    base = base_settings(config)
    kind = p.retrain_schedule or base.schedule
    kind = "llr" if kind == "allr" else kind
    return replace(
        base,
        epochs=max(1, round((p.retrain_epochs or base.epochs) * config.ingredients.length_factor)),
        schedule=kind,
        lr=p.retrain_lr or base.lr,
        warmup=DEFAULT_RETRAIN_WARMUP if kind in RETRAIN_WARMUP else 0.0,
        original=base if kind in DERIVED_SCHEDULES else None,
    )


def default_factors(count: int) -> list[float]:
    """Multipliers of the varied hyperparameter when none are given: ``count`` values spaced
    geometrically from 0.5 to 2 (1.0 for a single ingredient)."""
    if count == 1:
        return [1.0]
    return [2.0 ** (-1.0 + 2.0 * k / (count - 1)) for k in range(count)]


def ingredient_seed(config: Config, lineage: int, cycle: int, index: int) -> int:
    """The seed of one ingredient: its batch order and augmentation. Each cycle draws new
    ones (``train.data_order = "per_cycle"``), or every cycle those of cycle 0 (``"fixed"``:
    open_lth keeps one data order for every level; epoch ``e`` of every cycle then sees the
    same batches)."""
    if config.train.data_order == "fixed":
        cycle = 0
    return derive_seed(config.seed, "lineage", lineage, "cycle", cycle, "ingredient", index)


def make_ingredients(
    config: Config, lineage: int, cycle: int, settings: TrainSettings, count: int
) -> tuple[IngredientPlan, ...]:
    """The cycle's ``count`` ingredients from ``settings``.

    A cycle that trains ``ingredients.count`` models varies ``ingredients.vary`` over them
    (factors ``ingredients.values``, else :func:`default_factors`); a cycle forced to one model
    (cycle 0 of a fine-tuning recipe, SWAMP+'s early cycles) trains the base settings. Seeds
    differ per ingredient when ``vary = "seed"`` or ``seed_per_ingredient``; otherwise every
    ingredient shares ingredient 0's seed (batch order and augmentation), as the SMS code
    does when it varies weight decay, learning rate or length.
    """
    ing = config.ingredients
    varies = count == ing.count and ing.vary != "seed"
    factors = (list(ing.values) or default_factors(count)) if varies else [1.0] * count
    distinct = ing.vary == "seed" or ing.seed_per_ingredient
    out = []
    for k, f in enumerate(factors):
        s = settings
        if varies and ing.vary == "lr":
            s = replace(settings, lr=settings.lr * f)
        elif varies and ing.vary == "weight_decay":
            s = replace(settings, weight_decay=settings.weight_decay * f)
        elif varies and ing.vary == "length":
            s = replace(settings, epochs=max(1, round(settings.epochs * f)))
        seed = ingredient_seed(config, lineage, cycle, k if distinct else 0)
        out.append(IngredientPlan(k, seed, s))
    return tuple(out)


# -- rules from the config -----------------------------------------------------------------------


def prune_rule(config: Config, lineage: int, cycle: int) -> MaskRule:
    """How cycle ``cycle`` derives its mask, from ``pruning.*``. Under an N:M
    ``pruning.pattern`` the last cycle keeps exactly N of every M weights, the earlier ones
    remove ``prune_fraction`` of the survivors with N per group kept."""
    p = config.pruning
    scope = cast(Scope, p.scope)
    rounding = cast(Rounding, p.rounding)
    seed: tuple[object, ...] = (config.seed, "lineage", lineage, "cycle", cycle, "prune")
    nm = p.n_m
    base: MaskRule
    if p.masks_from:
        base = SourceMask()
    elif cycle == 0:
        base = DenseMask()
    elif nm is not None:
        fraction = None if cycle >= p.cycles else config.prune_fraction
        if p.method == "random":
            base = RandomNMPrune(*nm, fraction, seed, scope)
        else:
            base = NMPrune(*nm, fraction, scope)
    elif p.granularity == "channel" and p.method == "random":
        base = RandomChannelPrune(config.prune_fraction, seed, scope)
    elif p.granularity == "channel":
        base = ChannelPrune(config.prune_fraction, scope, cast(Norm, p.channel_norm))
    elif p.method == "random":
        base = RandomPrune(config.prune_fraction, seed, scope, dict(p.layer_fractions), rounding)
    else:
        base = MagnitudePrune(config.prune_fraction, scope, dict(p.layer_fractions), rounding)
    if p.method == "shuffle" and cycle > 0:
        return ShuffleLayers(base, seed)
    return base


def combiner(config: Config, count: int) -> Combiner:
    """How ``count`` ingredients combine, from ``ingredients.combine``."""
    ing = config.ingredients
    if count == 1 or ing.combine == "single":
        return Single()
    if ing.combine == "greedy":
        return Greedy(cast(AcceptRule, ing.accept))
    return Uniform()


# -- plans ---------------------------------------------------------------------------------------


def standard_plan(config: Config, lineage: int, cycle: int, rewind_step: int) -> CyclePlan:
    """IMP with rewinding, fine-tuning or re-initialisation; K ingredients; any combine.

    Cycle 0 trains the dense model, or takes the pretrained checkpoint: rewinding recipes train
    their K particles from the shared rewind point θ_T0 (the ticket, the initialisation trained
    ``pruning.rewind_epochs`` by a common run); fine-tuning recipes train one dense model in one
    run of ``train.epochs`` from the lineage's initialisation (one optimizer, one seed, one
    schedule), as the SMS code trains its dense model, and have no ticket. Cycle c ≥ 1 derives
    its mask from the previous combined model and trains K ingredients from θ_T0 ⊙ m (``start =
    "rewind"``), the previous model ⊙ m (``"finetune"``, with the ``pruning.retrain_*``
    settings) or a new initialisation ⊙ m (``"reinit"``). ``pruning.retrain_schedule = "allr"``
    chooses each fine-tuning ingredient's peak from the norm drop and its own length, except
    under ``ingredients.vary = "lr"``: then each trains llr from its own rate, as the SMS code
    trains LLR from each split's value. A shuffled mask rewinds to θ_T0 ⊙ m_L ⊙ m, m_L the mask
    it shuffles, as open_lth (``pruning.shuffle_start = "ticket"``: θ_T0 ⊙ m). SWAMP+ trains one
    model below ``ingredients.single_until``, with SWA or, with ``ingredients.early = "imp"``,
    as plain IMP.
    """
    ing = config.ingredients
    mask = prune_rule(config, lineage, cycle)
    if cycle == 0 and config.model.pretrained:
        return CyclePlan(0, mask, Pretrained(), (), Single())
    early = cycle < ing.single_until
    start: StartRule
    adapt: SettingsRule | None = None
    if cycle == 0 and ing.start == "finetune":
        count, settings = 1, base_settings(config)
        start = Reinit(derive_seed(config.seed, "lineage", lineage, "init"))
    elif cycle == 0 or ing.start == "rewind":
        count = 1 if early or (cycle == 0 and ing.start != "rewind") else ing.count
        settings, start = base_settings(config), Rewind()
        if isinstance(mask, ShuffleLayers) and config.pruning.shuffle_start == "pruned_ticket":
            start = RewindThrough(mask.rule, cycle)
    elif ing.start == "finetune":
        count = ing.count
        settings, start = retrain_settings(config), FineTune()
        if config.pruning.retrain_schedule == "allr" and ing.vary != "lr":
            # varying the rate, the SMS code trains LLR from each split's own value instead
            adapt = AdaptivePeak(
                max_lr=settings.lr,
                fraction=config.prune_fraction,
                original_epochs=config.train.epochs,
            )
    else:
        count = ing.count
        init_seed = derive_seed(config.seed, "lineage", lineage, "cycle", cycle, "reinit")
        settings, start = base_settings(config), Reinit(init_seed)
    if early and ing.early == "imp":
        settings = replace(settings, swa_start=None)
    return CyclePlan(
        cycle=cycle,
        mask=mask,
        start=start,
        ingredients=make_ingredients(config, lineage, cycle, settings, count),
        combine=combiner(config, count),
        adapt=adapt,
    )


def _one_model(config: Config) -> Config:
    return dataclasses.replace(config, ingredients=dataclasses.replace(config.ingredients, count=1))


def member_plan(config: Config, lineage: int, cycle: int, rewind_step: int) -> CyclePlan:
    """One lineage of a multi-lineage recipe: a one-model IMP lineage of its own."""
    return standard_plan(_one_model(config), lineage, cycle, rewind_step)


def shared_dense_plan(config: Config, lineage: int, cycle: int, rewind_step: int) -> CyclePlan:
    """One of several one-model lineages that share lineage 0's dense model (IMP-AVG)."""
    plan = member_plan(config, lineage, cycle, rewind_step)
    if cycle == 0 and lineage > 0:
        return replace(plan, start=Borrow(0), ingredients=(), combine=Single())
    return plan


def gradual_plan(config: Config, lineage: int, cycle: int, rewind_step: int) -> CyclePlan:
    """Gradual magnitude pruning: one training run whose mask tightens on a cubic schedule,
    after every epoch between ``pruning.gmp_start`` and ``gmp_end``, or after every
    ``pruning.gmp_interval``-th epoch as the BIMP code schedules it; each step counted per
    ``pruning.gmp_counts``. Under ``pruning.granularity = "channel"`` the steps prune whole
    channels to the schedule's channel sparsity."""
    plan = standard_plan(config, lineage, cycle, rewind_step)
    if not plan.start.trains:
        return plan
    p = config.pruning
    epochs = config.train.epochs
    counts = cast(GmpCounts, p.gmp_counts)
    scope = cast(Scope, p.scope)
    schedule: MaskSchedule
    if p.gmp_interval > 0:
        schedule = IntervalGradualPruning(
            epochs, p.gmp_interval, p.target_sparsity, scope=scope, counts=counts, pattern=p.n_m
        )
    else:
        first = round(p.gmp_start * epochs)
        last = min(max(first + 1, round(p.gmp_end * epochs)), epochs)
        if p.granularity == "channel":
            norm = cast(Norm, p.channel_norm)
            schedule = ChannelGradualPruning(first, last, p.target_sparsity, scope, norm)
        else:
            schedule = GradualMagnitudePruning(
                first, last, p.target_sparsity, scope, pattern=p.n_m, counts=counts
            )
    return replace(plan, during=schedule)


def feedback_plan(config: Config, lineage: int, cycle: int, rewind_step: int) -> CyclePlan:
    """DPF: one training run that keeps dense weights and steps at ``w ⊙ m``, its mask
    recomputed from the dense weights on the BIMP code's GMP schedule
    (``pruning.gmp_interval``) and every 16 steps (:class:`~sparseavg.pruning.dpf.
    DPFSchedule`); the cycle's model is ``w ⊙ m``."""
    plan = standard_plan(config, lineage, cycle, rewind_step)
    if not plan.start.trains:
        return plan
    p = config.pruning
    schedule = DPFSchedule.bimp(
        config.train.epochs, p.gmp_interval, p.target_sparsity, scope=cast(Scope, p.scope)
    )
    return replace(plan, during=schedule)


def rigl_plan(config: Config, lineage: int, cycle: int, rewind_step: int) -> CyclePlan:
    """RigL: one training run from the initialisation under a random mask at
    ``pruning.target_sparsity`` (:class:`~.rules.SparseStart`, ``pruning.rigl_distribution``),
    whose mask drops and grows every ``pruning.rigl_interval`` steps until ``pruning.rigl_end``
    of training (:class:`~sparseavg.pruning.rigl.RigLSchedule`)."""
    plan = standard_plan(config, lineage, cycle, rewind_step)
    p = config.pruning
    seed = (config.seed, "lineage", lineage, "cycle", cycle, "rigl")
    distribution = cast(Distribution, p.rigl_distribution)
    return replace(
        plan,
        mask=SparseStart(1.0 - p.target_sparsity, distribution, seed),
        during=RigLSchedule(p.rigl_drop_fraction, p.rigl_end, p.rigl_interval),
    )


def particles_rigl_plan(config: Config, lineage: int, cycle: int, rewind_step: int) -> CyclePlan:
    """swamp-rigl: :func:`rigl_plan` with ``ingredients.count`` particles that start from the
    same initialisation and sparse mask and differ in their batch order, trained in lock step
    (:class:`~sparseavg.pruning.Lockstep`); for the first ``pruning.rigl_together`` of training
    they take the first particle's batches (one trajectory), then each its own. Under
    ``pruning.rigl_decide = "average"`` every drop/grow decision is taken once, on their mean
    weights and mean dense gradient, and written into all of them: one mask throughout. Under
    ``"each"`` each runs RigL on its own, and their moved masks are settled on the mask of
    their average with each layer's alive count kept (:class:`~.rules.AverageMaskPerLayer`)
    before they are averaged."""
    plan = rigl_plan(config, lineage, cycle, rewind_step)
    p = config.pruning
    shared = p.rigl_decide == "average"
    lockstep = Lockstep(cast(RigLSchedule, plan.during), p.rigl_together, shared)
    return replace(plan, during=lockstep, settle=None if shared else AverageMaskPerLayer())


def phase_epochs(config: Config) -> tuple[int, ...]:
    """Each pruning phase's retraining epochs under a budget (bimp): ``pruning.retrain_budget``
    (0: ``train.epochs``) split over ``pruning.cycles`` as the BIMP code splits
    ``n_epochs_to_split`` (:func:`~sparseavg.pruning.budget.split_epochs`)."""
    p = config.pruning
    return split_epochs(p.retrain_budget or config.train.epochs, p.cycles)


def budget_plan(config: Config, lineage: int, cycle: int, rewind_step: int) -> CyclePlan:
    """Budgeted IMP: :func:`standard_plan` (fine-tuning) whose phase ``c`` retrains for
    :func:`phase_epochs` ``[c - 1]`` epochs; ALLR's clip then uses that phase's length over
    the dense cycle 0's ``train.epochs`` (the reference's ``n_epochs``)."""
    if cycle == 0:
        return standard_plan(config, lineage, cycle, rewind_step)
    phase = phase_epochs(config)[cycle - 1]
    phased = dataclasses.replace(
        config, pruning=dataclasses.replace(config.pruning, retrain_epochs=phase)
    )
    return standard_plan(phased, lineage, cycle, rewind_step)


def gmp_phases(config: Config) -> tuple[tuple[int, float], ...]:
    """``(epochs, sparsity)`` of each phase of a phased gmp (sms-gmp): phase 0 trains the dense
    model until gmp's first pruning epoch, phase k ≥ 1 starts at the k-th step of the BIMP
    code's schedule (:func:`~sparseavg.pruning.gmp_reference.bimp_gmp_schedule` of
    ``train.epochs``, ``pruning.gmp_interval``, ``target_sparsity``) and trains until the next
    one, the last until ``train.epochs``; the lengths add up to ``train.epochs``."""
    p, epochs = config.pruning, config.train.epochs
    steps = bimp_gmp_schedule(epochs, p.gmp_interval, p.target_sparsity)
    ends = [e for e, _ in steps] + [epochs]
    starts = [0] + [e for e, _ in steps]
    sparsities = [0.0] + [s for _, s in steps]
    return tuple((end - start, s) for start, end, s in zip(starts, ends, sparsities, strict=True))


def gmp_phase_plan(config: Config, lineage: int, cycle: int, rewind_step: int) -> CyclePlan:
    """gmp's schedule as phases (sms-gmp): :func:`standard_plan` (fine-tuning) whose cycle
    ``c`` prunes the previous soup to exactly ``round(s_c · total)`` by magnitude and trains
    for :func:`gmp_phases` ``[c]`` epochs; cycle 0 is the dense model trained until the first
    pruning epoch."""
    epochs, sparsity = gmp_phases(config)[cycle]
    if cycle == 0:
        dense = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=epochs))
        return standard_plan(dense, lineage, cycle, rewind_step)
    phased = dataclasses.replace(
        config, pruning=dataclasses.replace(config.pruning, retrain_epochs=epochs)
    )
    plan = standard_plan(phased, lineage, cycle, rewind_step)
    return replace(plan, mask=MagnitudePruneTo(sparsity, cast(Scope, config.pruning.scope)))


def dpf_phase_plan(config: Config, lineage: int, cycle: int, rewind_step: int) -> CyclePlan:
    """DPF's schedule as phases (sms-dpf): :func:`gmp_phase_plan` whose phase ``c`` ≥ 1
    trains every ingredient with DPF's error feedback at the phase's sparsity ``s_c``
    (:class:`~sparseavg.pruning.dpf.DPFSchedule` from ``s_c``, recomputed every 16 steps), and
    settles the ingredients' moved masks on one before they are combined, per
    ``pruning.dpf_settle``: the mask of their dense weights' average, the soup that average
    on it (``dense``, :class:`~.rules.DenseAverageMask`), or the mask of the average of their
    masked weights (``masked``, :class:`~.rules.AverageMask`)."""
    plan = gmp_phase_plan(config, lineage, cycle, rewind_step)
    if cycle == 0 or not plan.start.trains:
        return plan  # the dense phase: DPF at sparsity 0 is plain dense training
    sparsity = gmp_phases(config)[cycle][1]
    scope = cast(Scope, config.pruning.scope)
    settle = DenseAverageMask if config.pruning.dpf_settle == "dense" else AverageMask
    return replace(
        plan,
        during=DPFSchedule((), initial=sparsity, scope=scope),
        settle=settle(sparsity, scope),
    )


# -- run plans -----------------------------------------------------------------------------------


def _common(config: Config) -> TrainSettings | None:
    """The common dense run's settings: cycle 0's first ingredient (None when cycle 0 trains
    nothing or does not start from a ticket)."""
    plan = standard_plan(_one_model(config), 0, 0, 0)
    if not plan.ingredients or not isinstance(plan.start, Rewind):
        return None
    return plan.ingredients[0].settings


def run_plan(config: Config) -> RunPlan:
    """One lineage; ingredient rows, their prediction ensemble and the combined model (the
    headline)."""
    readouts = (IngredientRows(), IngredientEnsemble(), CombinedRows(headline=True))
    return RunPlan(1, readouts, _common(config))


def ensemble_of_ingredients_run(config: Config) -> RunPlan:
    """As :func:`run_plan`, with the ingredients' prediction ensemble as the headline."""
    readouts = (IngredientRows(), IngredientEnsemble(headline=True), CombinedRows(headline=False))
    return RunPlan(1, readouts, _common(config))


def ensemble_run(config: Config) -> RunPlan:
    """``ingredients.count`` independent lineages, their prediction ensemble the headline."""
    readouts = (CombinedRows(headline=False), LineageEnsemble(headline=True))
    return RunPlan(config.ingredients.count, readouts, _common(config))


def lineage_average_run(config: Config, headline: str) -> RunPlan:
    """``ingredients.count`` lineages from one dense model; their average (IMP-AVG) and the
    re-pruned average (IMP-RePrune), ``headline`` naming which is the result."""
    scope = cast(Scope, config.pruning.scope)
    readouts = (
        CombinedRows(headline=False),
        LineageAverage(headline=headline == "average"),
        LineageReprune(headline=headline == "reprune", scope=scope, pattern=config.pruning.n_m),
    )
    return RunPlan(config.ingredients.count, readouts, _common(config))
