"""What the recipe's rules read and use at each stage of a cycle (the ``MaskSources``,
``StartSources``, ``CombineTools`` and ``ReadoutTools`` protocols of :mod:`~sparseavg.recipes`),
loaded on demand from the run's store: the previous cycle's model and mask, a lineage's
ticket (made by the common dense run the first time it is asked for), BatchNorm
recalibration, scoring and evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..averaging import has_batchnorm
from ..pruning import (
    Mask,
)
from ..training import DivergenceError, Evaluation
from ..utils.files import CorruptFileError
from ..utils.seeding import derive_seed
from ..utils.state import State, clone_state
from .prepare import Context, RunError, _source_mask_path


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
