"""Recipes on the user's own model and training loop: ``sparseavg.swamp(...)``,
``sparseavg.sms(...)``, ``sparseavg.imp(...)`` and :func:`prune` for every recipe.

The engine runs exactly as for ``sparseavg run`` (run directory, resume, results rows,
reports, the parallel executors); only the model, the training and the measurements are the
user's (:class:`~.task.UserTask`)::

    def train_fn(model, mask, seed, settings):      # one ingredient: train in place
        opt = torch.optim.AdamW(model.parameters(), lr=settings.lr)
        sparseavg.attach(model, mask, opt)           # pruned weights stay exactly 0
        for epoch in settings.epoch_range:
            ...                                      # your loop, batches drawn from seed
            settings.end_epoch(model, loss, accuracy=acc)  # SWA, progress, checks, log

    result = sparseavg.swamp(make_model, train_fn, eval_fn, runs_dir="runs",
                             config={"train": {"epochs": 10}, "pruning": {"cycles": 5}})
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..averaging import default_forward, has_batchnorm
from ..averaging.batchnorm import Forward
from ..config import Config, ConfigError, merge
from ..pruning import Lockstep, Mask
from ..recipes import get_recipe, resolve_config
from ..training.custom import TrainFn
from ..utils.state import State
from .engine import run
from .launch import run_distributed
from .progress import NullReporter, PlainReporter, Reporter
from .rundir import name_part_problem
from .runinfo import read_run
from .task import NEEDS_SCORE_FN, EvalFn, ScoreFn, UserTask, needs_bn_batches


@dataclass(frozen=True)
class OwnRun:
    """A finished run of the user's model.

    Attributes:
        path: its run directory (``sparseavg report`` / ``inspect`` / ``export`` read it).
        rows: its ``results.jsonl`` rows (``role``, ``cycle``, ``sparsity``, ``accuracy`` = the
            chosen metric, ``metrics`` = all that ``eval_fn`` returned, ``headline``, ...).
    """

    path: Path
    rows: list[dict[str, Any]]

    @property
    def headline(self) -> list[dict[str, Any]]:
        """The method's result: one row per cycle."""
        return [r for r in self.rows if r.get("headline")]

    def load(self, cycle: int = -1, member: int = 0) -> tuple[State, Mask]:
        """The combined model's state dict and its mask at ``cycle`` (default: the last)."""
        info = read_run(self.path)
        rd = info.rundir
        done = info.complete_cycles()
        if not done:
            raise FileNotFoundError(f"{self.path}: no complete cycle")
        c = done[cycle] if cycle < 0 else cycle
        if c not in done:
            raise FileNotFoundError(f"{self.path}: cycle {c} is not complete ({done})")
        d = rd.member_dir(c, member, info.members)
        return rd.load_state(d / "combined.safetensors"), Mask.load(d / "mask.safetensors")


def model_signature(model: nn.Module) -> str:
    """12 hex digits of the hash of the model's state names, shapes and dtypes: a run of
    another architecture gets another run directory instead of resuming this one."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
    return h.hexdigest()[:12]


def prune(
    recipe: str,
    model_fn: Callable[[], nn.Module],
    train_fn: TrainFn,
    eval_fn: EvalFn,
    *,
    runs_dir: str | Path = "runs",
    name: str = "custom",
    config: Mapping[str, Any] | None = None,
    prunable: Sequence[str] | None = None,
    metric: str = "accuracy",
    bn_batches: Iterable[Any] | Callable[[], Iterable[Any]] | None = None,
    forward: Forward = default_forward,
    score_fn: ScoreFn | None = None,
    pretrained: bool = False,
    progress: bool | Reporter = True,
    example: Any = None,
) -> OwnRun:
    """Run (or resume) ``recipe`` on the user's model, loop and metrics.

    Args:
        recipe: any recipe of ``sparseavg inspect --recipes`` but ``swamp-rigl`` (whose
            particles train in lock step); ``gmp``, ``dpf``, ``sms-dpf`` and ``rigl`` change
            the mask during training: keep it with ``settings.attach(model, optimizer)``
            (dpf, sms-dpf, rigl: ``steps_per_epoch=`` too).
        model_fn: ``model_fn() -> nn.Module`` on its training device. Called with torch's
            generator seeded, so each lineage's initialisation is fixed by the run's seed.
        train_fn: ``train_fn(model, mask, seed, settings) -> None`` trains one ingredient in
            place; see :class:`~sparseavg.LoopSettings` for ``settings``. It keeps the mask
            (``settings.attach(model, optimizer)``) and calls ``settings.end_epoch(model,
            loss)`` after every epoch (``accuracy=`` too, for the training accuracy in
            ``epochs.jsonl``).
        eval_fn: ``eval_fn(model) -> dict`` of test metrics (eval mode, no gradients),
            holding ``metric`` and optionally ``"loss"``.
        runs_dir: where the run directory goes (``<recipe>-<name>-<Model>-<hash8>``).
        name: a label for the data/task in the run's name and rows: part of a folder name,
            so no path separators (``/``, ``\\``), control characters, ``.`` or ``..``.
        config: config values as in a TOML file (``train``, ``pruning``, ``ingredients``,
            ``bn``, ``execution``, ``seed``); the ``train`` values reach ``train_fn`` through
            ``settings``. ``data`` and ``model`` are set here.
        prunable: names or glob patterns of the parameters to prune (``pruning.include``);
            default: every conv and linear weight. Printed before the first cycle.
        metric: the key of ``eval_fn``'s dict that is the result (``accuracy`` column).
        bn_batches: batches for BatchNorm recalibration of averaged models (a DataLoader, a
            list, or a function returning an iterator); needed if the model has BatchNorm.
        forward: how one of those batches runs through the model.
        score_fn: ``score_fn(model) -> float`` on held-out data; greedy soups need it.
        pretrained: ``model_fn`` returns a trained model: cycle 0 is that model (SMS's
            start), and rewinding recipes rewind to it.
        progress: log lines on stderr (True), nothing (False), or a reporter.
        example: an input batch of the model (a tensor, or a tuple of positional inputs);
            ``pruning.granularity = "channel"`` traces the model with it to find the
            channels pruned together.

    Returns:
        The run's directory and rows. Under torchrun with ``execution.mode = "distributed"``,
        ranks other than 0 return an :class:`OwnRun` with ``rows`` empty.

    Raises:
        ConfigError: a config value or argument is refused, before anything is written.
    """
    problem = name_part_problem(name)
    if problem is not None:
        raise ConfigError(f"name: {problem}")
    values = dict(config or {})
    for section in ("data", "model", "recipe"):
        if section in values:
            raise ConfigError(
                f"config: {section!r} is set by sparseavg.{recipe.replace('-', '_')}(...) for "
                "your own model (use name=, model_fn, the recipe argument)"
            )
    pruning = dict(values.get("pruning", {}))
    if prunable is not None:
        if "include" in pruning:
            raise ConfigError("give the prunable set once: prunable= or pruning.include")
        if isinstance(prunable, str):
            raise ConfigError("prunable: a list of names or glob patterns, not one string")
        pruning["include"] = list(prunable)
    _check_batches(bn_batches)
    task = UserTask(
        model_fn,
        train_fn,
        eval_fn,
        metric=metric,
        bn_batches=bn_batches,
        forward=forward,
        score_fn=score_fn,
        example=example,
    )
    probe = task.build(0)
    problem = name_part_problem(type(probe).__name__)
    if problem is not None:
        raise ConfigError(f"model_fn's model class name (part of the run's name): {problem}")
    values = merge(
        values,
        {
            "recipe": recipe,
            "pruning": pruning,
            "data": {"dataset": name},
            "model": {
                "name": type(probe).__name__,
                "options": {"signature": model_signature(probe)},
                "pretrained": "model_fn" if pretrained else "",
            },
        },
    )
    resolved = resolve_config(values)
    _check_own(resolved)
    _check_task(resolved, probe, bn_batches, score_fn)
    del probe
    reporter: Reporter
    if isinstance(progress, bool):
        reporter = PlainReporter() if progress else NullReporter()
    else:
        reporter = progress
    bn = resolved.bn
    task = dataclasses.replace(task, bn_momentum=bn.momentum or None, bn_limit=bn.batches or None)
    if resolved.execution.mode == "distributed":
        path = run_distributed(resolved, runs_dir, reporter, task=task)
        if path is None:
            return OwnRun(Path(runs_dir) / resolved.run_name(), [])
    else:
        path = run(resolved, runs_dir, reporter, task=task)
    return OwnRun(path, read_run(path).rows())


def _check_batches(batches: Any) -> None:
    if batches is None or callable(batches):
        return
    try:
        if iter(batches) is batches:
            raise ConfigError(
                "bn_batches: a one-shot iterator is used up by the first recalibration; pass "
                "a DataLoader, a list, or a function returning a new iterator"
            )
    except TypeError:
        raise ConfigError(
            f"bn_batches: {type(batches).__name__} is not iterable; pass a DataLoader, a list, "
            "or a function returning an iterator"
        ) from None


def _check_own(config: Config) -> None:
    """What the user's loop cannot do, refused before anything is written."""
    p = config.pruning
    if p.rewind_epochs != int(p.rewind_epochs) and not config.model.pretrained:
        raise ConfigError(
            f"pruning.rewind_epochs = {p.rewind_epochs}: your own training loop rewinds to "
            "whole epochs (its steps are epochs)"
        )
    during = get_recipe(config.recipe).plan(config, 0, min(p.cycles, 1), 0).during
    if isinstance(during, Lockstep):
        raise ConfigError(
            f"recipe {config.recipe!r} changes the mask inside the built-in training loop: it "
            "trains its models in lock step; it cannot run your own train_fn (gmp, dpf, "
            "sms-dpf and rigl can: keep their mask with settings.attach)"
        )


def _check_task(config: Config, model: nn.Module, bn_batches: Any, score_fn: Any) -> None:
    """What the recipe will ask of the user's callables, asked before anything is written."""
    bn = config.bn
    averages = config.train.swa or config.ingredients.count > 1
    if (
        has_batchnorm(model)
        and bn_batches is None
        and (bn.recalibrate == "always" or (bn.recalibrate == "averaged" and averages))
    ):
        raise ConfigError(needs_bn_batches(model))
    if has_batchnorm(model) and isinstance(bn_batches, Sized) and len(bn_batches) == 0:
        raise ConfigError(
            "bn_batches is empty: recalibrating on no batches would reset the BatchNorm "
            "statistics to mean 0, variance 1; pass at least one batch"
        )
    if config.ingredients.combine == "greedy" and score_fn is None:
        raise ConfigError(NEEDS_SCORE_FN)


def swamp(
    model_fn: Callable[[], nn.Module],
    train_fn: TrainFn,
    eval_fn: EvalFn,
    *,
    particles: int = 4,
    **kwargs: Any,
) -> OwnRun:
    """SWAMP on your own model and loop: ``particles`` copies per cycle from the ticket with
    different seeds, SWA over the last 25 % of epochs (``train_fn`` must call
    ``settings.end_epoch`` every epoch), averaged, pruned. Other arguments as :func:`prune`."""
    config = merge({"ingredients": {"count": particles}}, dict(kwargs.pop("config", None) or {}))
    return prune("swamp", model_fn, train_fn, eval_fn, config=config, **kwargs)


def sms(
    model_fn: Callable[[], nn.Module],
    train_fn: TrainFn,
    eval_fn: EvalFn,
    *,
    ingredients: int = 3,
    combine: str = "uniform",
    vary: str = "seed",
    **kwargs: Any,
) -> OwnRun:
    """Sparse Model Soups on your own model and loop: each cycle prunes the last soup,
    retrains ``ingredients`` copies that differ in ``vary`` (seed, weight_decay, lr, length)
    and soups them (``combine``: uniform, or greedy with ``score_fn``). Pass
    ``pretrained=True`` when ``model_fn`` loads a trained model, as the paper starts. Other
    arguments as :func:`prune`."""
    config = merge(
        {"ingredients": {"count": ingredients, "combine": combine, "vary": vary}},
        dict(kwargs.pop("config", None) or {}),
    )
    return prune("sms", model_fn, train_fn, eval_fn, config=config, **kwargs)


def imp(
    model_fn: Callable[[], nn.Module],
    train_fn: TrainFn,
    eval_fn: EvalFn,
    **kwargs: Any,
) -> OwnRun:
    """IMP with rewinding (lottery tickets) on your own model and loop; arguments as
    :func:`prune`."""
    return prune("imp", model_fn, train_fn, eval_fn, **kwargs)


__all__ = ["OwnRun", "imp", "model_signature", "prune", "sms", "swamp"]
