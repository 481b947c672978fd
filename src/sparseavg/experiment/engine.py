"""The cycle loop of DESIGN.md: every recipe is this loop with other pieces.

A cycle (IMP level) of one lineage::

    mask ──► start ──► train the ingredients ──► combine ──► (recalibrate BN) ──► read out

The recipe's :class:`~sparseavg.recipes.CyclePlan` says how each stage is done (which mask
rule, which start, which combiner); the engine only runs the stages in order, hands the rules
what they ask for, and stores what they make. Every stage skips itself when its output
exists (:mod:`.store`), so calling :func:`run` again on an interrupted run directory resumes
it and ends with the same results.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..averaging import has_batchnorm
from ..config import Config, ConfigError
from ..parallel import Auto, Executor, Job, Outcome, Sequential, Stacked, Work
from ..parallel.distributed import NEEDS_TORCHRUN, Team, launched_by_torchrun
from ..parallel.distributed import serve as serve_jobs
from ..pruning import (
    Mask,
    MaskError,
    nonzeros_per_group,
    prunable_parameters,
    pruning_groups,
    relative_norm_drop,
    ungroupable,
)
from ..pruning.channels import ChannelGroups, channel_groups
from ..recipes import (
    CyclePlan,
    LineageResult,
    Recipe,
    RunPlan,
    StartFacts,
    get_recipe,
)
from ..recipes.rules import with_channel_groups
from ..training import DivergenceError, Evaluation, TrainResult, TrainState
from ..training.evaluate import model_device
from ..utils.files import CorruptFileError
from ..utils.seeding import derive_seed
from ..utils.state import State, clone_state
from .logs import TENSORBOARD_INSTALL, tensorboard_available, tensorboard_problem
from .progress import NullReporter, Reporter
from .rundir import RunDir
from .runinfo import RunDirError, RunInfo, read_run
from .store import LineageFiles, RunStore
from .task import DataTask, Task, example_input, load_data


class RunError(RuntimeError):
    """The run stopped; every finished artifact is kept and the same command resumes it."""


# -- checks before anything is written -----------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``"auto"`` picks CUDA, then MPS, then the CPU; anything else must be available."""
    mps = getattr(torch.backends, "mps", None)
    mps_available = mps is not None and mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"execution.device: {name!r} is not a device (cpu, cuda, cuda:1, mps, auto)"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("execution.device: cuda was asked for but torch sees no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"execution.device: {name!r} does not exist; torch sees "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type == "mps" and not mps_available:
        raise ConfigError("execution.device: mps was asked for but this torch build has no MPS")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"execution.device: {name!r} is not supported (cpu, cuda, mps, auto)")
    return device


@dataclass
class Context:
    """What every stage of a run needs."""

    config: Config
    recipe: Recipe
    plan: RunPlan
    store: RunStore
    task: Task
    model: nn.Module
    reporter: Reporter
    rewind_step: int
    prunable: list[str]
    pretrained: State | None
    initial_mask: Mask | None
    source: RunInfo | None = None
    executor: Executor = field(default_factory=Sequential)
    channels: ChannelGroups | None = None

    def state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.model.state_dict().values())


def choose_executor(config: Config, device: torch.device) -> Executor:
    """The executor ``execution.mode`` names (``distributed`` is made by the launcher, which
    passes it to :func:`run`)."""
    mode = config.execution.mode
    if mode == "distributed":
        raise ConfigError(NEEDS_TORCHRUN)
    if launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
        raise ConfigError(
            f"this process is rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']} under "
            f"torchrun, but execution.mode = {mode!r}: every rank would run the whole "
            'experiment; set execution.mode = "distributed" (--set execution.mode=distributed)'
        )
    if mode == "stacked":
        return Stacked()
    if mode == "auto" and device.type == "cuda":
        return Auto()
    return Sequential()


def prepare(
    config: Config,
    runs_dir: str | Path,
    reporter: Reporter | None = None,
    executor: Executor | None = None,
    task: Task | None = None,
) -> Context:
    """Check everything that can be checked before anything is written: device, data, model,
    pretrained checkpoint, masks, and that every cycle has steps and weights to train.
    ``task`` is the user's model and loop (default: the config's data set, model and the
    built-in loop). Raises ConfigError / MaskError / DataUnavailableError; writes nothing."""
    if config.execution.tensorboard and not tensorboard_available():
        raise ConfigError(
            "execution.tensorboard = true needs torch.utils.tensorboard, which does not import "
            f"({tensorboard_problem()}): {TENSORBOARD_INSTALL}"
        )
    if task is None:
        device = resolve_device(config.execution.device)
        data = load_data(config, device)
        if len(data.train) < config.train.batch_size:
            raise ConfigError(
                f"train.batch_size ({config.train.batch_size}) is larger than the training "
                f"split ({len(data.train)} samples): use at most {len(data.train)}"
            )
        task = DataTask(config, data, device)
    model = task.build(derive_seed(config.seed, "lineage", 0, "init"))
    executor = executor or choose_executor(config, model_device(model))
    p = config.pruning
    try:
        weights = prunable_parameters(
            model,
            include=p.include,
            exclude_first=p.exclude_first,
            exclude_last=p.exclude_last,
            exclude=p.exclude,
        )
    except ValueError as err:  # "include/exclude pattern ... matches no ...", or no layer
        where = "pruning." if str(err).startswith(("exclude", "include")) else "pruning: "
        raise ConfigError(f"{where}{err}") from None
    names = list(weights)
    if not names:
        raise ConfigError("pruning: the exclusions leave no layer to prune")
    pretrained = task.pretrained(model) if config.model.pretrained else None
    initial_mask = _load_initial_mask(p.initial_mask, names, model)
    _check_groups(config, model, names, initial_mask)
    _check_weights_survive(config, {n: w.numel() for n, w in weights.items()}, initial_mask)
    source = _source_run(config, names, model)
    channels = _channel_groups(config, task, model, names)
    recipe = get_recipe(config.recipe)
    run_plan = recipe.run(config)
    spe = task.steps_per_epoch(config.train.batch_size, config.train.drop_last)
    return Context(
        config=config,
        recipe=recipe,
        plan=run_plan,
        store=RunStore(
            RunDir(Path(runs_dir) / config.run_name(), run_id=config.digest()), run_plan.lineages
        ),
        task=task,
        model=model,
        reporter=reporter or NullReporter(),
        # a pretrained model is its own ticket: cycles rewind to it and restart the schedule
        rewind_step=0 if pretrained is not None else round(p.rewind_epochs * spe),
        prunable=names,
        pretrained=pretrained,
        initial_mask=initial_mask,
        source=source,
        executor=executor,
        channels=channels,
    )


def _check_weights_survive(config: Config, sizes: dict[str, int], initial: Mask | None) -> None:
    """Refuse a pruning schedule that leaves a ranked group of layers with no weight alive, or
    whose ``layer_fractions`` name no prunable weight."""
    p = config.pruning
    alive = {n: int(initial[n].sum()) if initial is not None else size for n, size in sizes.items()}
    names = list(sizes)
    try:
        groups = pruning_groups(names, config.prune_fraction, p.scope, p.layer_fractions)
    except ValueError as err:  # a layer_fractions pattern that matches no prunable weight
        raise ConfigError(f"pruning.{err}") from None
    if p.cycles == 0:  # gradual pruning reaches target_sparsity within one run
        for group, _ in pruning_groups(names, 0.0, p.scope):
            total = sum(sizes[n] for n in group)
            if total - round(p.target_sparsity * total) <= 0:
                raise ConfigError(
                    f"pruning.target_sparsity = {p.target_sparsity} leaves no weight alive in "
                    f"{_group_name(group)}"
                )
        return
    for group, fraction in groups:
        left = sum(alive[n] for n in group)
        for cycle in range(1, p.cycles + 1):
            left -= round(fraction * left)
            if left <= 0:
                raise ConfigError(
                    f"pruning.cycles = {p.cycles} with a fraction of {fraction:g} per cycle "
                    f"leaves no weight alive in {_group_name(group)} by cycle {cycle}; use fewer "
                    "cycles or a smaller fraction"
                )


def _check_groups(config: Config, model: nn.Module, names: list[str], initial: Mask | None) -> None:
    """Under an N:M ``pruning.pattern``: refuse prunable layers that cannot be cut into groups
    of M input channels (the user keeps them dense with ``pruning.exclude``), and an initial
    mask with a group of fewer than N alive weights (the last cycle could not keep N)."""
    nm = config.pruning.n_m
    if nm is None:
        return
    n, m = nm
    what = f"pruning.pattern = {config.pruning.pattern!r}"
    bad = ungroupable(model, names, m)
    if bad:
        listed = "; ".join(f"{name} {reason}" for name, reason in bad.items())
        raise ConfigError(
            f"{what} groups {m} consecutive input channels, but {listed}; keep such layers "
            f"dense with pruning.exclude = {[*bad]} (or pruning.exclude_first/exclude_last)"
        )
    if initial is None:
        return
    for name in names:
        fewest = int(nonzeros_per_group(initial[name], m).min())
        if fewest < n:
            raise ConfigError(
                f"pruning.initial_mask leaves {fewest} of {m} weights alive in a group of "
                f"{name}, fewer than the {n} that {what} keeps"
            )


def _channel_groups(
    config: Config, task: Task, model: nn.Module, names: list[str]
) -> ChannelGroups | None:
    """Under ``pruning.granularity = "channel"``: the model's channel groups over the prunable
    weights, traced from the task's example input; refuses a model with none."""
    if config.pruning.granularity != "channel":
        return None
    what = "pruning.granularity = 'channel'"
    example = example_input(task)
    if example is None:
        raise ConfigError(
            f"{what} traces the model to find its coupled channels: pass an input batch of "
            "your model as example= (sparseavg.prune/imp/swamp/sms, UserTask)"
        )
    try:
        groups = channel_groups(model, example, names)
    except Exception as err:  # Torch-Pruning's tracer raises many kinds
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{what}: Torch-Pruning cannot trace the model ({reason})") from None
    if not groups:
        raise ConfigError(
            f"{what}: {type(model).__name__} has no channel that can be pruned (every group "
            "touches a layer kept dense, the output layer, or a layer other than conv, linear "
            "and BatchNorm)"
        )
    return groups


def _group_name(group: list[str]) -> str:
    return group[0] if len(group) == 1 else "the model"


def _load_initial_mask(path: str, names: list[str], model: nn.Module) -> Mask | None:
    """The user's starting mask, checked against the model and the prunable layers."""
    if not path:
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"pruning.initial_mask: {p} does not exist")
    mask = Mask.load(p)
    try:
        mask.validate(model)
    except MaskError as err:
        raise MaskError(f"pruning.initial_mask {p}: {err}") from None
    if set(mask) != set(names):
        extra = sorted(set(mask) - set(names))
        missing = sorted(set(names) - set(mask))
        raise MaskError(
            f"pruning.initial_mask {p}: covers other layers than the prunable ones "
            f"(not prunable: {extra[:5]}, missing: {missing[:5]})"
        )
    if mask.num_alive == 0:
        raise MaskError(f"pruning.initial_mask {p}: prunes every weight; nothing would train")
    return Mask({n: mask[n] for n in names})


def _source_mask_path(source: RunInfo, cycle: int) -> Path:
    """The mask of ``cycle`` in the source run (its lineage 0 when it has several)."""
    return source.rundir.member_dir(cycle, 0, source.members) / "mask.safetensors"


def _source_run(config: Config, names: list[str], model: nn.Module) -> RunInfo | None:
    """``pruning.masks_from``: a run directory with a complete cycle for each of ours whose
    masks fit this model's prunable weights."""
    if not config.pruning.masks_from:
        return None
    path = Path(config.pruning.masks_from).expanduser()
    where = f"pruning.masks_from: {path}"
    try:
        source = read_run(path)
    except (FileNotFoundError, RunDirError, CorruptFileError) as err:
        raise ConfigError(f"pruning.masks_from: {err}") from None
    for cycle in range(config.pruning.cycles + 1):
        if not source.rundir.is_complete(cycle):
            raise ConfigError(
                f"{where} has no complete cycle {cycle}; this run needs cycles 0 to "
                f"{config.pruning.cycles} (finish that run first)"
            )
        source.rundir.verify_manifest(source.rundir.cycle_dir(cycle))
    mask = Mask.load(_source_mask_path(source, config.pruning.cycles))
    try:
        mask.validate(model)
    except MaskError as err:
        raise MaskError(f"{where}: {err}") from None
    if list(mask) != names:
        raise MaskError(f"{where}: its masks cover other layers than this run's prunable ones")
    return source


# -- the run -------------------------------------------------------------------------------------


def run(
    config: Config,
    runs_dir: str | Path,
    reporter: Reporter | None = None,
    *,
    executor: Executor | None = None,
    task: Task | None = None,
) -> Path:
    """Run (or resume) the experiment ``config`` under ``runs_dir``; returns its directory.

    ``executor`` trains each cycle's ingredients (default: the one ``execution.mode`` names;
    the distributed launcher passes rank 0's :class:`~sparseavg.parallel.Distributed`).
    ``task`` is the user's model and loop (default: the config's data set, model and the
    built-in loop; see :mod:`.own`)."""
    ctx = prepare(config, runs_dir, reporter, executor, task)
    store, rep = ctx.store, ctx.reporter
    cycles = config.pruning.cycles + 1
    with store.rundir.lock():
        if store.open(config, cycles):
            rep.message(f"resuming {store.path}")
        rep.message(describe_prunable(ctx.model, ctx.prunable))
        bar = rep.task(f"{config.run_name()} cycles", cycles)
        for cycle in range(cycles):
            if store.is_complete(cycle):
                rep.message(f"cycle {cycle}: complete, skipped")
            else:
                _run_cycle(ctx, cycle)
            rep.update(bar, cycle + 1)
            store.write_results(cycles)  # every complete cycle, also those a resume skips
            if config.execution.tensorboard:
                store.write_tensorboard(cycle + 1)
        rep.finish(bar)
    return store.path


def serve(config: Config, runs_dir: str | Path, team: Team, task: Task | None = None) -> None:
    """A worker rank of a distributed run: train the ingredients rank 0 deals out, until it
    says stop. Reads the same data and files as rank 0 and writes nothing."""
    ctx = prepare(config, runs_dir, NullReporter(), Sequential(), task)

    def finish(work: Work, job: Job, result: TrainResult, seconds: float) -> Outcome:
        return finish_ingredient(ctx, work, job, result, seconds)

    serve_jobs(team, ctx.model, ctx.task.trainer, finish)


def describe_prunable(model: nn.Module, names: Sequence[str]) -> str:
    """One line: how many tensors and weights are prunable, and which (the first 8)."""
    params = dict(model.named_parameters())
    total = sum(params[n].numel() for n in names)
    shown = ", ".join(f"{n} {tuple(params[n].shape)}" for n in names[:8])
    more = f", ... ({len(names) - 8} more)" if len(names) > 8 else ""
    return f"prunable: {len(names)} tensors, {total:,} weights: {shown}{more}"


def _run_cycle(ctx: Context, cycle: int) -> None:
    """All lineages of one cycle, then the cycle's rows; the manifest marks it complete."""
    started = time.perf_counter()
    results = []
    for lineage in range(ctx.plan.lineages):
        plan = ctx.recipe.plan(ctx.config, lineage, cycle, ctx.rewind_step)
        if ctx.channels is not None:
            plan = with_channel_groups(plan, ctx.channels)
        needed = ctx.state_bytes() * (2 * len(plan.ingredients) + 4) + (1 << 20)
        ctx.store.rundir.check_free_space(needed, f"cycle {cycle}")
        results.append(_run_lineage(ctx, plan, lineage))
    tools = _Readouts(ctx, cycle, time.perf_counter() - started)
    rows = [row for readout in ctx.plan.readouts for row in readout(cycle, results, tools)]
    check_finite_rows(cycle, rows)
    for r in rows:
        if r["accuracy"] is not None and not math.isfinite(r["loss"]):
            r["loss"] = None
    ctx.store.finish_cycle(cycle, rows)


def check_finite_rows(cycle: int, rows: Sequence[dict[str, Any]]) -> None:
    """Raise :class:`RunError` naming the first non-finite metric of a cycle's rows: every
    value a user's ``eval_fn`` returned (``metrics``), and every row's ``accuracy``. A
    built-in evaluation's non-finite ``loss`` is left to be recorded as unknown (``null``)."""
    for r in rows:
        values = r.get("metrics") or {"accuracy": r["accuracy"]}
        source = "eval_fn's" if "metrics" in r else "the evaluation's"
        for name, value in values.items():
            if value is not None and not math.isfinite(value):
                where = f"role {r['role']}, lineage {r['lineage']}, ingredient {r['ingredient']}"
                raise RunError(
                    f"cycle {cycle}: {source} {name} is {value} ({where}); results hold finite "
                    "numbers only: make eval_fn return finite metrics"
                )


def _run_lineage(ctx: Context, plan: CyclePlan, lineage: int) -> LineageResult:
    """mask → start → train the ingredients → combine, each stage read back if it exists."""
    files = ctx.store.lineage(plan.cycle, lineage)
    sources = _Sources(ctx, plan.cycle, lineage)
    mask = _mask(plan, files, sources)
    if not plan.start.trains:
        done = files.combined()
        if done is None:
            state, _ = plan.start(sources, mask)
            files.save_combined(state, None)
            done = (state, None)
        return LineageResult(lineage, mask, done[0], {}, {}, 0, done[1])

    outcomes = _train_ingredients(ctx, plan, lineage, mask, files, sources)
    finals = {k: o.state for k, o in outcomes.items() if o.state is not None}
    if not finals:
        raise RunError(
            f"cycle {plan.cycle}: every ingredient diverged; nothing to combine (see {files.dir})"
        )
    if plan.during is not None:  # the mask the schedule ended with is the cycle's mask
        mask = next(o.mask for o in outcomes.values() if o.mask is not None)
        if plan.settle is not None:  # the ingredients' masks differ: settle on one
            kept = sorted(finals)
            moved = [outcomes[k].mask for k in kept]
            mask = plan.settle([finals[k] for k in kept], [m for m in moved if m is not None])
            finals = {k: mask.applied(finals[k]) for k in kept}
        if files.mask() is None:
            files.save_mask(mask)
    done = files.combined()
    if done is None:
        ctx.reporter.message(f"cycle {plan.cycle}: combining {len(finals)} model(s)")
        indices = sorted(finals)
        tools = _CombineTools(ctx, plan.cycle, lineage)
        state, selected = plan.combine([finals[i] for i in indices], indices, mask, tools)
        files.save_combined(state, selected)
        done = (state, selected)
    info = {k: o.info for k, o in outcomes.items()}
    return LineageResult(lineage, mask, done[0], finals, info, len(plan.ingredients), done[1])


def _mask(plan: CyclePlan, files: LineageFiles, sources: _Sources) -> Mask:
    """The mask the cycle trains under. A plan whose mask changes during training saves only
    the final mask, so its start mask is derived again on resume."""
    if plan.during is not None:
        return plan.mask(plan.cycle, sources)
    mask = files.mask()
    if mask is None:
        mask = plan.mask(plan.cycle, sources)
        files.save_mask(mask)
    return mask


class _Sources:
    """What mask and start rules may read, loaded on demand (``MaskSources``,
    ``StartSources``)."""

    def __init__(self, ctx: Context, cycle: int, lineage: int) -> None:
        self.ctx, self.cycle, self.lineage = ctx, cycle, lineage
        self._previous: tuple[State, Mask] | None = None

    @property
    def rewind_step(self) -> int:
        return self.ctx.rewind_step

    def dense(self) -> Mask:
        if self.ctx.initial_mask is not None:
            return self.ctx.initial_mask
        weights = self.ctx.pretrained or self.ctx.model.state_dict()
        return Mask.ones_like({n: weights[n] for n in self.ctx.prunable})

    def previous(self) -> tuple[State, Mask]:
        if self._previous is None:
            files = self.ctx.store.lineage(self.cycle - 1, self.lineage)
            done, mask = files.combined(), files.mask()
            if done is None or mask is None:
                raise CorruptFileError(f"{files.dir}: the previous cycle's model is missing")
            self._previous = (done[0], mask)
        return self._previous

    def previous_model(self) -> State:
        return self.previous()[0]

    def source(self, cycle: int) -> Mask:
        assert self.ctx.source is not None
        return Mask.load(_source_mask_path(self.ctx.source, cycle))

    def ticket(self) -> State:
        return _ticket(self.ctx, self.lineage)

    def initialisation(self, seed: int) -> State:
        return clone_state(self.ctx.task.build(seed), device="cpu")

    def pretrained(self) -> State:
        assert self.ctx.pretrained is not None
        return {k: v.clone() for k, v in self.ctx.pretrained.items()}

    def combined(self, lineage: int) -> State:
        done = self.ctx.store.lineage(self.cycle, lineage).combined()
        if done is None:
            raise CorruptFileError(f"cycle {self.cycle}: lineage {lineage}'s model is missing")
        return done[0]


def _ticket(ctx: Context, lineage: int) -> State:
    """θ_T0 of a lineage: its initialisation trained to the rewind step by the common run (the
    pretrained model itself when there is one)."""
    files = ctx.store.lineage(0, lineage)
    state = files.ticket()
    if state is not None:
        return state
    if ctx.pretrained is not None:
        state = {k: v.clone() for k, v in ctx.pretrained.items()}
    else:
        init_seed = derive_seed(ctx.config.seed, "lineage", lineage, "init")
        model = ctx.task.build(init_seed)
        if ctx.rewind_step > 0 and ctx.plan.common is not None:
            ctx.reporter.message(f"lineage {lineage}: common dense run to step {ctx.rewind_step}")
            try:
                ctx.task.train_ticket(
                    model,
                    ctx.plan.common,
                    derive_seed(ctx.config.seed, "lineage", lineage, "common"),
                    ctx.rewind_step,
                )
            except DivergenceError as err:
                raise RunError(
                    f"training diverged (NaN/inf loss) in the common dense run to the rewind "
                    f"point, step {err.step} (epoch {err.epoch}); lower train.lr"
                ) from None
        state = clone_state(model, device="cpu")
    files.save_ticket(state)
    return state


# -- training ------------------------------------------------------------------------------------


def _train_ingredients(
    ctx: Context,
    plan: CyclePlan,
    lineage: int,
    mask: Mask,
    files: LineageFiles,
    sources: _Sources,
) -> dict[int, Outcome]:
    """Every ingredient of the cycle: read back, or trained from the plan's start by the
    run's executor."""
    outcomes: dict[int, Outcome] = {}
    pending = []
    for ing in plan.ingredients:
        done = files.ingredient(ing.index).outcome()
        if done is None:
            pending.append(ing)
        else:
            outcomes[ing.index] = done
    if pending:
        start, start_step = plan.start(sources, mask)
        facts = StartFacts()
        if plan.adapt is not None:
            previous, _ = sources.previous()
            names = [n for n, _ in ctx.model.named_parameters()]
            facts = StartFacts(relative_norm_drop(previous, start, names))
        jobs = [
            Job(
                ing.index,
                ing.seed,
                ing.settings if plan.adapt is None else plan.adapt(ing.settings, facts),
            )
            for ing in pending
        ]
        work = Work(
            plan.cycle, lineage, start, start_step, mask, plan.during, ctx.config.execution.compile
        )
        hooks = _IngredientHooks(ctx, work, files, len(plan.ingredients))
        outcomes.update(ctx.executor.run(ctx.model, ctx.task.trainer, work, jobs, hooks))
    return outcomes


def finish_ingredient(
    ctx: Context, work: Work, job: Job, result: TrainResult, seconds: float
) -> Outcome:
    """A trained ingredient's outcome: its final state (SWA average or last iterate),
    recalibrated per ``bn.recalibrate``, and its info."""
    final = result.final_state
    averaged = result.swa_state is not None
    if ctx.config.bn.recalibrate == "always" or (
        averaged and ctx.config.bn.recalibrate == "averaged"
    ):
        tag = ("cycle", work.cycle, work.lineage, "ingredient", job.index)
        final = _recalibrated(ctx, final, tag)
    info = {
        "dropped": False,
        "seconds": seconds,
        "steps": result.steps,
        "swa_count": result.swa_count,
        "seed": job.seed,
        "lr": job.settings.lr,
        "final_loss": result.losses[-1] if result.losses else None,
        "epochs": [e.to_dict() for e in result.history],
    }
    final_mask = result.mask.to("cpu") if work.during is not None and result.mask else None
    return Outcome(final, info, final_mask)


class _IngredientHooks:
    """The engine's side of every job (:class:`~sparseavg.parallel.Hooks`) of one lineage's
    cycle: checkpoints and outcomes in its ``ingredient_<k>/`` directories, progress bars,
    the divergence policy."""

    def __init__(self, ctx: Context, work: Work, files: LineageFiles, count: int) -> None:
        self.ctx, self.work, self.files, self.count = ctx, work, files, count

    def resume(self, job: Job) -> tuple[TrainState, float] | None:
        return self.files.ingredient(job.index).checkpoint()

    def checkpoint(self, job: Job, state: TrainState, seconds: float) -> None:
        self.files.ingredient(job.index).save_checkpoint(state, seconds)

    def track(self, jobs: Sequence[Job]) -> _Tracker:
        label = f"cycle {self.work.cycle}"
        if self.ctx.plan.lineages > 1:
            label += f" member {self.work.lineage}"
        indices = [j.index + 1 for j in jobs]
        which = str(indices[0]) if len(indices) == 1 else f"{indices[0]}-{indices[-1]}"
        label += f" ingredient{'s' if len(indices) > 1 else ''} {which}/{self.count}"
        settings = jobs[0].settings
        spe = self.ctx.task.steps_per_epoch(settings.batch_size, settings.drop_last)
        return _Tracker(self.ctx.reporter, label, spe, settings.epochs)

    def finish(self, job: Job, result: TrainResult, seconds: float) -> Outcome:
        return finish_ingredient(self.ctx, self.work, job, result, seconds)

    def diverged(self, job: Job, error: DivergenceError) -> Outcome:
        where = (
            f"cycle {self.work.cycle}, ingredient {job.index}, step {error.step} "
            f"(epoch {error.epoch})"
        )
        if self.ctx.plan.lineages > 1:
            where = f"member {self.work.lineage}, " + where
        if self.ctx.config.execution.on_divergence == "stop":
            raise RunError(
                f"training diverged (NaN/inf loss) at {where}; finished artifacts are kept. "
                "Lower train.lr, or set execution.on_divergence = 'drop' to leave such "
                "ingredients out of the combine"
            )
        self.ctx.reporter.message(f"ingredient diverged at {where}; dropped from the combine")
        info = {"dropped": True, "step": error.step, "epoch": error.epoch, "seed": job.seed}
        return Outcome(None, info)

    def save(self, job: Job, outcome: Outcome) -> None:
        self.files.ingredient(job.index).save(outcome)

    def message(self, text: str) -> None:
        self.ctx.reporter.message(text)


class _Tracker:
    """A progress bar for jobs trained together: ``epoch e/E  loss x``."""

    def __init__(self, reporter: Reporter, label: str, spe: int, epochs: int) -> None:
        self.reporter, self.spe, self.epochs = reporter, spe, epochs
        self.task = reporter.task(label, epochs * spe)
        self.loss: float | None = None

    def __call__(self, step: int, total: int, loss: float | None) -> None:
        if loss is not None:
            self.loss = loss
        info = f"epoch {min(step // self.spe + 1, self.epochs)}/{self.epochs}"
        if self.loss is not None:
            info += f"  loss {self.loss:.3f}"
        self.reporter.update(self.task, step, info)

    def close(self) -> None:
        self.reporter.finish(self.task)


# -- BatchNorm, combining, reading out -----------------------------------------------------------


def _recalibrated(ctx: Context, state: State, tag: tuple[object, ...]) -> State:
    """``state`` with BatchNorm statistics recomputed on the training split per ``bn.*``;
    ``tag`` names the call so that its augmentation draws are the same on every resume."""
    if not has_batchnorm(ctx.model) or ctx.config.bn.recalibrate == "never":
        return state
    ctx.model.load_state_dict(state)
    ctx.task.recalibrate(ctx.model, tag)
    return clone_state(ctx.model, device="cpu")


class _CombineTools:
    """``CombineTools`` for one lineage's combine."""

    def __init__(self, ctx: Context, cycle: int, lineage: int) -> None:
        self.ctx, self.cycle, self.lineage = ctx, cycle, lineage
        self.calls = 0

    def recalibrate(self, state: State) -> State:
        self.calls += 1
        return _recalibrated(self.ctx, state, ("cycle", self.cycle, self.lineage, self.calls))

    def score(self, state: State) -> float:
        self.ctx.model.load_state_dict(self.recalibrate(state))
        return self.ctx.task.score(self.ctx.model)


class _Readouts:
    """``ReadoutTools`` for one finished cycle."""

    def __init__(self, ctx: Context, cycle: int, seconds: float) -> None:
        self.ctx, self.cycle, self.seconds = ctx, cycle, seconds
        self.calls = 0

    def evaluate(self, state: State) -> Evaluation:
        self.ctx.model.load_state_dict(state)
        return self.ctx.task.evaluate(self.ctx.model)

    def evaluate_ensemble(self, states: Sequence[State]) -> Evaluation:
        models = []
        for state in states:
            m = self.ctx.task.build(0)
            m.load_state_dict(state)
            models.append(m)
        return self.ctx.task.evaluate_ensemble(models)

    def recalibrate(self, state: State) -> State:
        self.calls += 1
        return _recalibrated(self.ctx, state, ("cycle", self.cycle, "readout", self.calls))

    def row(self, role: str, lineage: int, mask: Mask, evaluation: Evaluation | None) -> dict:
        c = self.ctx.config
        row = {
            "run": self.ctx.store.path.name,
            "recipe": c.recipe,
            "dataset": c.data.dataset,
            "model": c.model.name,
            "seed": c.seed,
            "cycle": self.cycle,
            "lineage": lineage,
            "role": role,
            "ingredient": None,
            "sparsity": round(mask.sparsity, 6),
            "alive": mask.num_alive,
            "total": mask.num_total,
            "accuracy": None if evaluation is None else evaluation.accuracy,
            "loss": None if evaluation is None else evaluation.loss,
            "seconds": round(self.seconds, 3),
            # CPU kernels reduce in another order with another thread count, and kernels
            # change between torch releases: a result is reproducible bit for bit only with both
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "selected": None,
            "dropped": False,
            "headline": False,
        }
        if evaluation is not None and evaluation.metrics:  # a user's eval_fn: all it returned
            row["metrics"] = evaluation.metrics
        return row


__all__ = [
    "RunError",
    "choose_executor",
    "prepare",
    "resolve_device",
    "run",
    "serve",
]
