"""The cycle loop of DESIGN.md: every recipe is this loop with other settings.

A cycle (IMP level) of one lineage: prune the previous combined model (cycle ≥ 1), start K
ingredients (rewind or fine-tune), train them, combine them, recalibrate BatchNorm, evaluate,
write. Every stage skips itself when its output exists, so calling :func:`run` again on an
interrupted run directory resumes it and ends with the same results.
"""

from __future__ import annotations

import math
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..averaging import (
    AcceptRule,
    evaluate_ensemble,
    greedy_soup,
    has_batchnorm,
    recalibrate_bn,
    uniform_average,
)
from ..config import Config, ConfigError, to_toml
from ..data import Dataset, available_datasets, load_dataset
from ..models import build_model
from ..pruning import (
    Mask,
    MaskError,
    Scope,
    cubic_sparsity,
    magnitude_prune,
    magnitude_prune_to,
    prunable_parameters,
    random_prune,
)
from ..recipes import CyclePlan, IngredientPlan, base_settings, get_recipe
from ..training import DivergenceError, TrainState, evaluate, steps_per_epoch, train
from ..utils.files import CorruptFileError, atomic_write_text, load_tensors, safe_torch_load
from ..utils.seeding import derive_seed, make_generator
from ..utils.state import State, clone_state
from .progress import NullReporter, Reporter
from .rundir import RunDir


class RunError(RuntimeError):
    """The run stopped; every finished artifact is kept and the same command resumes it."""


def resolve_device(name: str) -> torch.device:
    """``"auto"`` picks CUDA, then MPS, then the CPU; anything else must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"execution.device: {name!r} is not a device (cpu, cuda, cuda:1, mps, auto)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("execution.device: cuda was asked for but torch sees no CUDA device")
    return device


def make_model(config: Config, data: Dataset, seed: int) -> nn.Module:
    """The config's model, initialised from ``seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return build_model(
                config.model.name, data.num_classes, data.input_shape, **config.model.options
            )
        except (ValueError, TypeError) as err:
            raise ConfigError(f"model: {err}") from None


def load_pretrained(path: str, model: nn.Module) -> State:
    """Read a pretrained state dict (safetensors, or a ``.pt`` read with ``weights_only``) and
    check it fits ``model``; a misfit lists the missing, unexpected and mis-shaped entries."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"model.pretrained: {p} does not exist")
    if p.suffix == ".safetensors":
        state = load_tensors(p)
    else:
        try:
            obj = safe_torch_load(p)
        except CorruptFileError as err:
            raise ConfigError(f"model.pretrained: {err}") from None
        for key in ("state_dict", "model"):
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ConfigError(f"model.pretrained: {p} does not hold a state_dict of tensors")
        state = dict(obj)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:6]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:6]}")
        if shapes:
            parts.append(f"shapes differ {shapes[:6]}")
        raise ConfigError(f"model.pretrained: {p} does not fit the model: " + "; ".join(parts))
    return {k: state[k].to(expected[k].dtype) for k in expected}


@dataclass
class Context:
    """What every stage of a run needs."""

    config: Config
    rundir: RunDir
    data: Dataset
    model: nn.Module
    device: torch.device
    reporter: Reporter
    members: int
    rewind_step: int
    prunable: list[str]
    pretrained: State | None
    initial_mask: Mask | None

    def state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.model.state_dict().values())


def prepare(config: Config, runs_dir: str | Path, reporter: Reporter | None = None) -> Context:
    """Check everything that can be checked before anything is written: device, data, model,
    pretrained checkpoint. Raises ConfigError / DataUnavailableError; writes nothing."""
    device = resolve_device(config.execution.device)
    known = available_datasets()
    if config.data.dataset not in known:
        raise ConfigError(f"data.dataset: {config.data.dataset!r} is not one of {', '.join(known)}")
    data = load_dataset(
        config.data.dataset,
        data_dir=config.execution.data_dir or None,
        device=device,
        val_fraction=config.data.val_fraction,
        split_seed=config.data.split_seed,
        download=config.execution.download,
    )
    model = make_model(config, data, derive_seed(config.seed, "lineage", 0, "init")).to(device)
    try:
        names = list(
            prunable_parameters(
                model,
                exclude_first=config.pruning.exclude_first,
                exclude_last=config.pruning.exclude_last,
                exclude=config.pruning.exclude,
            )
        )
    except ValueError as err:
        raise ConfigError(f"pruning: {err}") from None
    if not names:
        raise ConfigError("pruning: the exclusions leave no layer to prune")
    pretrained = (
        load_pretrained(config.model.pretrained, model) if config.model.pretrained else None
    )
    initial_mask = _load_initial_mask(config.pruning.initial_mask, names, model)
    recipe = get_recipe(config.recipe)
    spe = steps_per_epoch(data.train, config.train.batch_size)
    return Context(
        config=config,
        rundir=RunDir(Path(runs_dir) / config.run_name()),
        data=data,
        model=model,
        device=device,
        reporter=reporter or NullReporter(),
        members=recipe.members(config),
        # a pretrained model is its own ticket: cycles rewind to it and restart the schedule
        rewind_step=0 if pretrained is not None else round(config.pruning.rewind_epochs * spe),
        prunable=names,
        pretrained=pretrained,
        initial_mask=initial_mask,
    )


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
    return Mask({n: mask[n] for n in names})


def run(config: Config, runs_dir: str | Path, reporter: Reporter | None = None) -> Path:
    """Run (or resume) the experiment ``config`` under ``runs_dir``; returns its directory."""
    ctx = prepare(config, runs_dir, reporter)
    rd = ctx.rundir
    with rd.lock():
        _write_or_check_config(ctx)
        cycles = config.pruning.cycles + 1
        rep = ctx.reporter
        task = rep.task(f"{config.run_name()} cycles", cycles)
        for cycle in range(cycles):
            if rd.is_complete(cycle):
                rd.verify_manifest(rd.cycle_dir(cycle))
                rep.message(f"cycle {cycle}: complete, skipped")
            else:
                _run_cycle(ctx, cycle)
            rep.update(task, cycle + 1)
            rd.write_results(_all_rows(rd, cycle + 1))
        rep.finish(task)
    return rd.path


def _write_or_check_config(ctx: Context) -> None:
    rd = ctx.rundir
    if rd.config_path.exists():
        try:
            on_disk = tomllib.loads(rd.config_path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise CorruptFileError(f"{rd.config_path}: not valid TOML ({err})") from None
        on_disk.pop("execution", None)
        if on_disk != ctx.config.to_dict(hashed_only=True):
            raise RunError(f"{rd.config_path} holds another config than this run's; not resuming")
        ctx.reporter.message(f"resuming {rd.path}")
    else:
        atomic_write_text(rd.config_path, to_toml(ctx.config.to_dict()))


def _all_rows(rd: RunDir, cycles: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for c in range(cycles):
        path = rd.cycle_dir(c) / "rows.json"
        if rd.is_complete(c) and path.is_file():
            rows.extend(rd.read_json(path))
    return rows


# ---------------------------------------------------------------------------------------------
# one cycle


@dataclass
class MemberResult:
    mask: Mask
    combined: State
    ingredients: dict[int, State]
    info: dict[int, dict[str, Any]]
    plan: CyclePlan
    selected: list[int] | None


def _run_cycle(ctx: Context, cycle: int) -> None:
    rd, config = ctx.rundir, ctx.config
    recipe = get_recipe(config.recipe)
    cdir = rd.cycle_dir(cycle)
    cdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = []
    for lineage in range(ctx.members):
        plan = recipe.plan(config, lineage, cycle, ctx.rewind_step)
        needed = ctx.state_bytes() * (2 * len(plan.ingredients) + 4) + (1 << 20)
        rd.check_free_space(needed, f"cycle {cycle}")
        results.append(_run_member(ctx, plan, lineage))
    rows = _evaluate_cycle(ctx, cycle, results, time.perf_counter() - started)
    rd.write_json(cdir / "rows.json", rows)
    rd.write_manifest(cdir)


def _member_dir(ctx: Context, cycle: int, lineage: int) -> Path:
    return ctx.rundir.member_dir(cycle, lineage, ctx.members)


def _load_model_state(ctx: Context, state: State) -> None:
    ctx.model.load_state_dict(state)


def _ticket(ctx: Context, lineage: int) -> State:
    """θ_T0 of a lineage: the weights after the common dense run to the rewind step."""
    rd = ctx.rundir
    path = _member_dir(ctx, 0, lineage) / "ticket.safetensors"
    if path.is_file():
        return rd.load_state(path)
    if ctx.pretrained is not None:
        state = {k: v.clone() for k, v in ctx.pretrained.items()}
    else:
        init_seed = derive_seed(ctx.config.seed, "lineage", lineage, "init")
        model = make_model(ctx.config, ctx.data, init_seed).to(ctx.device)
        if ctx.rewind_step > 0:
            ctx.reporter.message(f"lineage {lineage}: common dense run to step {ctx.rewind_step}")
            try:
                train(
                    model,
                    ctx.data.train,
                    base_settings(ctx.config),
                    seed=derive_seed(ctx.config.seed, "lineage", lineage, "common"),
                    stop_step=ctx.rewind_step,
                )
            except DivergenceError as err:
                raise RunError(
                    f"training diverged (NaN/inf loss) in the common dense run to the rewind "
                    f"point, step {err.step} (epoch {err.epoch}); lower train.lr"
                ) from None
        state = clone_state(model, device="cpu")
    rd.save_state(path, state, "ticket")
    return state


def _previous_member(ctx: Context, cycle: int, lineage: int) -> tuple[State, Mask]:
    d = _member_dir(ctx, cycle - 1, lineage)
    return ctx.rundir.load_state(d / "combined.safetensors"), Mask.load(d / "mask.safetensors")


def _cycle_mask(ctx: Context, plan: CyclePlan, lineage: int) -> Mask:
    path = _member_dir(ctx, plan.cycle, lineage) / "mask.safetensors"
    if plan.gradual is None and path.is_file():
        return Mask.load(path)
    if plan.cycle == 0 and ctx.initial_mask is not None:
        mask = ctx.initial_mask
    elif plan.cycle == 0:
        weights = ctx.pretrained or ctx.model.state_dict()
        mask = Mask.ones_like({n: weights[n] for n in ctx.prunable})
    else:
        previous, previous_mask = _previous_member(ctx, plan.cycle, lineage)
        scope = cast(Scope, ctx.config.pruning.scope)
        if plan.prune_method == "random":
            g = make_generator(ctx.config.seed, "lineage", lineage, "cycle", plan.cycle, "prune")
            mask = random_prune(previous_mask, plan.prune_fraction, generator=g, scope=scope)
        else:
            mask = magnitude_prune(previous, previous_mask, plan.prune_fraction, scope=scope)
    if plan.gradual is None:
        mask.save(path)
    return mask


def _start_state(ctx: Context, plan: CyclePlan, lineage: int, mask: Mask) -> State:
    if plan.start == "finetune":
        previous, _ = _previous_member(ctx, plan.cycle, lineage)
        return mask.applied(previous)
    return mask.applied(_ticket(ctx, lineage))


def _run_member(ctx: Context, plan: CyclePlan, lineage: int) -> MemberResult:
    rd, rep = ctx.rundir, ctx.reporter
    mdir = _member_dir(ctx, plan.cycle, lineage)
    mdir.mkdir(parents=True, exist_ok=True)
    mask = _cycle_mask(ctx, plan, lineage)
    if plan.start == "pretrained":
        state = mask.applied(ctx.pretrained or {})
        if not (mdir / "combined.safetensors").is_file():
            rd.save_state(mdir / "ticket.safetensors", state, "ticket")
            rd.save_state(mdir / "combined.safetensors", state, "combined")
            mask.save(mdir / "mask.safetensors")
        return MemberResult(mask, state, {}, {}, plan, None)

    start = _start_state(ctx, plan, lineage, mask)
    finals: dict[int, State] = {}
    info: dict[int, dict[str, Any]] = {}
    for ing in plan.ingredients:
        idir = mdir / f"ingredient_{ing.index}"
        trained, meta, ing_mask = _train_ingredient(ctx, plan, ing, start, mask, idir, lineage)
        info[ing.index] = meta
        if trained is not None:
            finals[ing.index] = trained
        if plan.gradual is not None and ing_mask is not None:
            mask = ing_mask
    if plan.gradual is not None and not (mdir / "mask.safetensors").is_file():
        mask.save(mdir / "mask.safetensors")
    if not finals:
        raise RunError(
            f"cycle {plan.cycle}: every ingredient diverged; nothing to combine (see {mdir})"
        )
    combined_path = mdir / "combined.safetensors"
    selected: list[int] | None = None
    if combined_path.is_file():
        combined = rd.load_state(combined_path)
        if (mdir / "soup.json").is_file():
            selected = rd.read_json(mdir / "soup.json")["selected"]
    else:
        rep.message(f"cycle {plan.cycle}: combining {len(finals)} model(s) ({plan.combine})")
        combined, selected = _combine(ctx, plan, finals, mask)
        if selected is not None:
            rd.write_json(mdir / "soup.json", {"selected": selected})
        rd.save_state(combined_path, combined, "combined")
    return MemberResult(mask, combined, finals, info, plan, selected)


def _recalibrated(ctx: Context, state: State) -> State:
    """``state`` with BatchNorm statistics recomputed on the training split."""
    if not has_batchnorm(ctx.model):
        return state
    _load_model_state(ctx, state)
    bn = ctx.config.bn.batches
    recalibrate_bn(ctx.model, ctx.data.train, num_batches=bn or None)
    return clone_state(ctx.model, device="cpu")


def _combine(
    ctx: Context, plan: CyclePlan, finals: dict[int, State], mask: Mask
) -> tuple[State, list[int] | None]:
    indices = sorted(finals)
    states = [finals[i] for i in indices]
    if plan.combine == "single" or len(states) == 1:
        return states[0], None
    if plan.combine == "uniform":
        return _recalibrated(ctx, uniform_average(states, mask=mask)), None
    val = ctx.data.val
    if val is None:
        raise ConfigError("ingredients.combine = 'greedy' needs data.val_fraction > 0")

    def score(state: State) -> float:
        _load_model_state(ctx, _recalibrated(ctx, state))
        return evaluate(ctx.model, val).accuracy

    accept = cast(AcceptRule, ctx.config.ingredients.accept)
    soup = greedy_soup(states, score, accept=accept, mask=mask)
    return _recalibrated(ctx, soup.state), [indices[i] for i in soup.selected]


def _train_ingredient(
    ctx: Context,
    plan: CyclePlan,
    ing: IngredientPlan,
    start: State,
    mask: Mask,
    idir: Path,
    lineage: int,
) -> tuple[State | None, dict[str, Any], Mask | None]:
    """Train one ingredient, or read it back. Returns (final state or None if it diverged and
    was dropped, its info, its final mask under gradual pruning)."""
    rd, rep, config = ctx.rundir, ctx.reporter, ctx.config
    final_path, info_path = idir / "final.safetensors", idir / "info.json"
    mask_path = idir / "mask.safetensors"
    if info_path.is_file():
        meta = rd.read_json(info_path)
        if meta.get("dropped"):
            return None, meta, None
        if final_path.is_file():
            ing_mask = Mask.load(mask_path) if mask_path.is_file() else None
            return rd.load_state(final_path), meta, ing_mask
    idir.mkdir(parents=True, exist_ok=True)
    ckpt_path = idir / "checkpoint.pt"
    resume = None
    elapsed_before = 0.0
    if ckpt_path.is_file():
        payload = rd.load_checkpoint(ckpt_path)
        resume = TrainState.from_dict(payload)
        elapsed_before = float(payload.get("seconds", 0.0))
        rep.message(f"cycle {plan.cycle} ingredient {ing.index}: resuming at step {resume.step}")
    _load_model_state(ctx, start)
    label = f"cycle {plan.cycle}" + (f" member {lineage}" if ctx.members > 1 else "")
    label += f" ingredient {ing.index + 1}/{len(plan.ingredients)}"
    spe = steps_per_epoch(ctx.data.train, ing.settings.batch_size)
    task = rep.task(label, ing.settings.epochs * spe)
    t0 = time.perf_counter()

    def save(state: TrainState) -> None:
        # the training seconds so far travel with the checkpoint they belong to
        seconds = elapsed_before + time.perf_counter() - t0
        rd.save_checkpoint(ckpt_path, {**state.to_dict(), "seconds": seconds})

    last_loss: list[float] = []

    def progress(step: int, total: int, loss: float | None) -> None:
        if loss is not None:
            last_loss[:] = [loss]
        info = f"epoch {min(step // spe + 1, ing.settings.epochs)}/{ing.settings.epochs}"
        rep.update(task, step, info + (f"  loss {last_loss[0]:.3f}" if last_loss else ""))

    tighten = _gradual_tightener(ctx, plan) if plan.gradual is not None else None
    try:
        result = train(
            ctx.model,
            ctx.data.train,
            ing.settings,
            seed=ing.seed,
            mask=mask.to(ctx.device),
            start_step=plan.start_step,
            resume=resume,
            on_epoch_end=save,
            progress=progress,
            tighten_mask=tighten,
        )
    except DivergenceError as err:
        rep.finish(task)
        where = f"cycle {plan.cycle}, ingredient {ing.index}, step {err.step} (epoch {err.epoch})"
        if ctx.members > 1:
            where = f"member {lineage}, " + where
        if config.execution.on_divergence == "stop":
            raise RunError(
                f"training diverged (NaN/inf loss) at {where}; finished artifacts are kept. "
                "Lower train.lr, or set execution.on_divergence = 'drop' to leave such "
                "ingredients out of the combine"
            ) from None
        rep.message(f"ingredient diverged at {where}; dropped from the combine")
        meta = {"dropped": True, "step": err.step, "epoch": err.epoch, "seed": ing.seed}
        rd.write_json(info_path, meta)
        ckpt_path.unlink(missing_ok=True)
        return None, meta, None
    rep.finish(task)
    final = result.final_state
    if result.swa_state is not None:
        final = _recalibrated(ctx, final)
    seconds = elapsed_before + time.perf_counter() - t0
    meta = {
        "dropped": False,
        "seconds": seconds,
        "steps": result.steps,
        "swa_count": result.swa_count,
        "seed": ing.seed,
        "final_loss": result.losses[-1] if result.losses else None,
    }
    rd.save_state(final_path, final, "ingredient")
    ing_mask = None
    if plan.gradual is not None and result.mask is not None:
        ing_mask = result.mask.to("cpu")
        ing_mask.save(mask_path)
    rd.write_json(info_path, meta)
    ckpt_path.unlink(missing_ok=True)
    return final, meta, ing_mask


def _gradual_tightener(
    ctx: Context, plan: CyclePlan
) -> Callable[[int, nn.Module, Mask | None], Mask | None]:
    """Gradual magnitude pruning: at each epoch end, prune to the cubic schedule's sparsity."""
    assert plan.gradual is not None
    g = plan.gradual
    scope = cast(Scope, ctx.config.pruning.scope)

    def tighten(epochs_done: int, model: nn.Module, mask: Mask | None) -> Mask | None:
        if mask is None or epochs_done <= g.start_epoch or epochs_done > g.end_epoch:
            return None
        target = cubic_sparsity(
            epochs_done,
            start_step=g.start_epoch,
            end_step=g.end_epoch,
            final_sparsity=g.final_sparsity,
        )
        if target <= mask.sparsity:
            return None
        weights = {n: p.detach() for n, p in model.named_parameters() if n in mask}
        return magnitude_prune_to(weights, mask, target, scope=scope)

    return tighten


# ---------------------------------------------------------------------------------------------
# evaluation


def _row(
    ctx: Context,
    cycle: int,
    lineage: int,
    role: str,
    mask: Mask,
    ev: Any,
    seconds: float | None,
    ingredient: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    c = ctx.config
    row = {
        "run": ctx.rundir.path.name,
        "recipe": c.recipe,
        "dataset": c.data.dataset,
        "model": c.model.name,
        "seed": c.seed,
        "cycle": cycle,
        "lineage": lineage,
        "role": role,
        "ingredient": ingredient,
        "sparsity": round(mask.sparsity, 6),
        "alive": mask.num_alive,
        "total": mask.num_total,
        "accuracy": None if ev is None else ev.accuracy,
        "loss": None if ev is None else ev.loss,
        "seconds": None if seconds is None else round(seconds, 3),
        "selected": None,
        "dropped": False,
    }
    row.update(extra)
    return row


def _evaluate_cycle(
    ctx: Context, cycle: int, results: list[MemberResult], seconds: float
) -> list[dict[str, Any]]:
    test = ctx.data.test
    rows = []
    models = []
    for lineage, res in enumerate(results):
        if len(res.plan.ingredients) > 1:
            for idx in sorted(res.info):
                state = res.ingredients.get(idx)
                ev = None
                if state is not None:
                    _load_model_state(ctx, state)
                    ev = evaluate(ctx.model, test)
                seconds_k = res.info[idx].get("seconds")
                rows.append(
                    _row(
                        ctx,
                        cycle,
                        lineage,
                        "ingredient",
                        res.mask,
                        ev,
                        seconds_k,
                        idx,
                        dropped=state is None,
                    )
                )
        _load_model_state(ctx, res.combined)
        rows.append(
            _row(
                ctx,
                cycle,
                lineage,
                "combined",
                res.mask,
                evaluate(ctx.model, test),
                seconds,
                selected=res.selected,
            )
        )
        if ctx.members > 1:
            m = make_model(ctx.config, ctx.data, 0).to(ctx.device)
            m.load_state_dict(res.combined)
            models.append(m)
    if ctx.members > 1:
        masks = [r.mask for r in results]
        mean_mask = masks[0]
        rows.append(
            _row(
                ctx,
                cycle,
                0,
                "ensemble",
                mean_mask,
                evaluate_ensemble(models, test),
                seconds,
                members=len(models),
            )
        )
    for r in rows:
        if r["accuracy"] is not None and not math.isfinite(r["loss"]):
            r["loss"] = None
    return rows


__all__ = ["RunError", "load_pretrained", "make_model", "prepare", "resolve_device", "run"]
