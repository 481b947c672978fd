"""The cycle loop of DESIGN.md: every recipe is this loop with other pieces.

A cycle (IMP level) of one lineage::

    mask ──► start ──► train the ingredients ──► combine ──► (recalibrate BN) ──► read out

The recipe's :class:`~sparseavg.recipes.CyclePlan` says how each stage is done (which mask
rule, which start, which combiner); the engine only runs the stages in order, hands the rules
what they ask for, and stores what they make. Every stage skips itself when its output
exists (:mod:`.store`), so calling :func:`run` again on an interrupted run directory resumes
it and ends with the same results.

The module reads top to bottom as that drawing: :func:`run` (the cycles of a run),
:func:`_run_cycle` (the lineages of a cycle, then its read-out rows), :func:`_run_lineage`
(mask, start, ingredients, combine), the ingredients' training and the executor's hooks.
What comes before the first cycle (device, executor, task, prunable set, initial mask and
source run, all checked before anything is written) is :mod:`.prepare`; what the rules read
and use (previous cycle, ticket, recalibration, scoring, evaluation) is :mod:`.rule_inputs`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import Config
from ..parallel import Executor, Job, Outcome, Sequential, Work
from ..parallel.distributed import Team
from ..parallel.distributed import serve as serve_jobs
from ..pruning import Mask, relative_norm_drop
from ..recipes import CyclePlan, LineageResult, StartFacts
from ..recipes.rules import with_channel_groups
from ..training import DivergenceError, TrainResult, TrainState
from .prepare import (
    Context,
    RunError,
    choose_executor,
    describe_prunable,
    prepare,
    resolve_device,
)
from .progress import NullReporter, Reporter
from .rule_inputs import _CombineTools, _Readouts, _recalibrated, _Sources
from .store import LineageFiles
from .task import Task
from .wandb_log import WandbLog

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
        tracker = (
            WandbLog(store.path, store.path.name, config.to_dict(), cycles)
            if config.execution.wandb
            else None
        )
        try:
            for cycle in range(cycles):
                if store.is_complete(cycle):
                    rep.message(f"cycle {cycle}: complete, skipped")
                else:
                    _run_cycle(ctx, cycle)
                rep.update(bar, cycle + 1)
                store.write_results(cycles)  # every complete cycle, also those a resume skips
                if config.execution.tensorboard:
                    store.write_tensorboard(cycle + 1)
                if tracker is not None:
                    tracker.log_cycle(
                        cycle, store.rows(cycle), store.epoch_rows(cycle), store.lineages
                    )
        finally:
            if tracker is not None:
                tracker.close()
        rep.finish(bar)
    return store.path


def serve(config: Config, runs_dir: str | Path, team: Team, task: Task | None = None) -> None:
    """A worker rank of a distributed run: train the ingredients rank 0 deals out, until it
    says stop. Reads the same data and files as rank 0 and writes nothing."""
    ctx = prepare(config, runs_dir, NullReporter(), Sequential(), task)

    def finish(work: Work, job: Job, result: TrainResult, seconds: float) -> Outcome:
        return finish_ingredient(ctx, work, job, result, seconds)

    serve_jobs(team, ctx.model, ctx.task.trainer, finish)


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
            dense = [outcomes[k].dense for k in kept]
            try:
                mask, settled = plan.settle(
                    [finals[k] for k in kept], [m for m in moved if m is not None], dense
                )
            except ValueError as err:
                raise RunError(f"cycle {plan.cycle}: {err} (see {files.dir})") from None
            finals = dict(zip(kept, settled, strict=True))
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
    recalibrated per ``bn.recalibrate``, its info and, under a mask schedule, its final mask
    (with the dense weights of the mask's tensors where training kept them: DPF)."""
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
    dense = None
    if final_mask is not None and result.dense_state is not None:
        dense = {name: result.dense_state[name] for name in final_mask}
    return Outcome(final, info, final_mask, dense)


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


__all__ = [
    "RunError",
    "choose_executor",
    "prepare",
    "resolve_device",
    "run",
    "serve",
]
