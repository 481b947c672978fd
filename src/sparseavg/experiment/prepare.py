"""Everything a run needs before its first cycle, checked before anything is written: the
device, the executor, the task (data, model, loop), the prunable set and its channel groups,
the initial mask and ``pruning.masks_from``'s source run, and the run directory's store.
:func:`prepare` returns them as one :class:`Context`, which the cycle loop
(:mod:`.engine`) reads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..config import Config, ConfigError
from ..parallel import Auto, Executor, Sequential, Stacked
from ..parallel.distributed import NEEDS_TORCHRUN, launched_by_torchrun
from ..pruning import (
    Mask,
    MaskError,
    nonzeros_per_group,
    prunable_parameters,
    pruning_groups,
    ungroupable,
)
from ..pruning.channels import ChannelGroups, channel_groups
from ..recipes import (
    Recipe,
    RunPlan,
    get_recipe,
)
from ..training.evaluate import model_device
from ..utils.files import CorruptFileError
from ..utils.seeding import derive_seed
from ..utils.state import State
from .logs import TENSORBOARD_INSTALL, tensorboard_available, tensorboard_problem
from .progress import NullReporter, Reporter
from .rundir import RunDir
from .runinfo import RunDirError, RunInfo, read_run
from .store import RunStore
from .task import DataTask, Task, example_input, load_data
from .wandb_log import WANDB_INSTALL, wandb_problem


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
    if config.execution.wandb and (problem := wandb_problem()) is not None:
        raise ConfigError(
            f"execution.wandb = true needs wandb, which does not import ({problem}): "
            f"{WANDB_INSTALL}"
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


def describe_prunable(model: nn.Module, names: Sequence[str]) -> str:
    """One line: how many tensors and weights are prunable, and which (the first 8)."""
    params = dict(model.named_parameters())
    total = sum(params[n].numel() for n in names)
    shown = ", ".join(f"{n} {tuple(params[n].shape)}" for n in names[:8])
    more = f", ... ({len(names) - 8} more)" if len(names) > 8 else ""
    return f"prunable: {len(names)} tensors, {total:,} weights: {shown}{more}"
