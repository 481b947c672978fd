"""How much to prune when: per-cycle fractions and gradual (cubic) sparsity schedules."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from torch import Tensor

from .mask import Mask
from .nm import nm_prune_to
from .strategies import Scope, magnitude_prune, magnitude_prune_to

#: How a gradual pruning step counts what it removes: to exactly ``round(s * total)`` pruned
#: (``"exact"``), or, as the BIMP code's ``torch.nn.utils.prune`` calls, ``round(f * alive)``
#: more with ``f = 1 - (1 - s) / (1 - s_prev)`` from the previous step's *nominal* sparsity
#: ``s_prev`` (``"bimp"``; rounding errors add up, so the end can miss ``round(goal * total)``).
GmpCounts = Literal["exact", "bimp"]
GMP_COUNTS: tuple[str, ...] = ("exact", "bimp")


def fraction_per_cycle(target_sparsity: float, cycles: int) -> float:
    """The per-cycle fraction that reaches ``target_sparsity`` after ``cycles`` cycles.

    Each cycle keeps ``1 - f`` of what survives, so ``f = 1 - (1 - s) ** (1 / n)``.
    """
    if not 0.0 <= target_sparsity < 1.0:
        raise ValueError(f"target_sparsity must be in [0, 1), got {target_sparsity}")
    if cycles < 1:
        raise ValueError(f"cycles must be >= 1, got {cycles}")
    return 1.0 - (1.0 - target_sparsity) ** (1.0 / cycles)


def sparsity_after(fraction: float, cycles: int) -> float:
    """Sparsity after ``cycles`` cycles that each remove ``fraction`` of the survivors."""
    return 1.0 - (1.0 - fraction) ** cycles


def cubic_sparsity(
    step: int,
    *,
    start_step: int,
    end_step: int,
    final_sparsity: float,
    initial_sparsity: float = 0.0,
) -> float:
    """Gradual magnitude pruning's target sparsity at ``step`` (Zhu & Gupta, 2017).

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0)) ** 3`` for ``t0 <= t <= t1``; ``s_i``
    before ``t0`` and ``s_f`` after ``t1``.
    """
    if end_step <= start_step:
        raise ValueError(f"end_step ({end_step}) must be after start_step ({start_step})")
    if step <= start_step:
        return initial_sparsity
    if step >= end_step:
        return final_sparsity
    progress = (step - start_step) / (end_step - start_step)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** 3


def gradual_step(
    weights: Mapping[str, Tensor],
    mask: Mask,
    target: float,
    previous: float,
    *,
    counts: GmpCounts = "exact",
    scope: Scope = "global",
    pattern: tuple[int, int] | None = None,
) -> Mask | None:
    """One step of gradual magnitude pruning from ``mask`` towards sparsity ``target``
    (``previous``: the schedule's sparsity at its previous step, 0 before the first).

    ``counts="exact"``: prune to exactly ``round(target * total)`` (N:M groups with
    ``pattern``); ``"bimp"``: remove ``round(f * alive)`` more, ``f = 1 - (1 - target) /
    (1 - previous)`` (see :data:`GmpCounts`). ``None`` when the step removes nothing.
    """
    if counts == "bimp":
        if pattern is not None:
            raise ValueError("counts 'bimp' removes a fraction of all alive weights; no N:M")
        fraction = 1.0 - (1.0 - target) / (1.0 - previous)
        return magnitude_prune(weights, mask, fraction, scope) if fraction > 0 else None
    if counts != "exact":
        raise ValueError(f"counts must be one of {GMP_COUNTS}, got {counts!r}")
    if target <= mask.sparsity:
        return None
    if pattern is not None:
        return nm_prune_to(weights, mask, *pattern, target, scope=scope)
    return magnitude_prune_to(weights, mask, target, scope=scope)


class MaskSchedule(Protocol):
    """Changes the mask while a model trains (gradual pruning; growth rules such as RigL).

    ``train`` calls :meth:`update` at the end of every epoch with the number of epochs done,
    the current weights and mask and, when :attr:`needs_gradients` is true, the dense gradients
    of the epoch's last step (before they were masked), ``name -> tensor`` for the masked
    parameters. A returned mask replaces the current one (weights and optimizer buffers that it
    prunes are zeroed); ``None`` keeps it.
    """

    @property
    def needs_gradients(self) -> bool: ...

    def update(
        self,
        epochs_done: int,
        weights: Mapping[str, Tensor],
        gradients: Mapping[str, Tensor] | None,
        mask: Mask,
    ) -> Mask | None: ...


@runtime_checkable
class StepMaskSchedule(MaskSchedule, Protocol):
    """A :class:`MaskSchedule` that also changes the mask at chosen optimizer steps (RigL's
    drop/grow every ΔT steps).

    ``train`` asks :meth:`updates_at` before every optimizer step, after ``backward``. At an
    update step it calls :meth:`update_step` with the current batch's dense gradients (of the
    masked weights, before masking), writes the new mask into the weights and optimizer state
    (weights it drops and weights it grows start at exactly 0 with zero optimizer state;
    weights alive before and after keep theirs) and takes *no* optimizer step for that batch,
    as rigl's ``SparseRigLOptimizerBase`` does: the batch's gradient only scores growth. The
    step counter still advances, so an epoch is ``steps_per_epoch`` batches either way.

    ``steps_per_epoch`` and ``total_steps`` are the run's (``train.epochs`` epochs of full
    batches), so a schedule can be given in fractions of training.
    """

    def updates_at(self, step: int, steps_per_epoch: int, total_steps: int) -> bool: ...

    def update_step(
        self,
        step: int,
        steps_per_epoch: int,
        total_steps: int,
        weights: Mapping[str, Tensor],
        gradients: Mapping[str, Tensor],
        mask: Mask,
    ) -> tuple[Mask, dict[str, Tensor]]:
        """``(new mask, grown)``: ``grown[name]`` (bool, the weight's shape) marks the weights
        alive now that were not alive before."""
        ...


@dataclass(frozen=True)
class Lockstep:
    """A :class:`StepMaskSchedule` for several models trained in lock step (swamp-rigl's
    particles, :func:`~sparseavg.training.train_together`): executors that see it train a
    cycle's ingredients together, step by step. With :attr:`shared`, each update of
    :attr:`schedule` is taken once, from the models' mean weights and mean dense gradients of
    that step, and written into every model, so they share one mask throughout; without, each
    model updates its own mask as :func:`~sparseavg.train` would. On one model it is
    :attr:`schedule` itself.

    Attributes:
        schedule: the step schedule (e.g. :class:`~sparseavg.pruning.rigl.RigLSchedule`); its
            epoch-end :meth:`update` must not need gradients.
        together: the fraction of training, in [0, 1), during which every model takes the
            first model's batches, so that models from one start train as one (SWAMP's
            particles start from one trained ticket) before each takes its own order.
        shared: whether the models share every decision (taken on their means).
    """

    schedule: StepMaskSchedule
    together: float = 0.0
    shared: bool = True

    def __post_init__(self) -> None:
        if self.schedule.needs_gradients:
            raise ValueError("shared decisions take no epoch-end gradients (needs_gradients)")
        if not 0.0 <= self.together < 1.0:
            raise ValueError(f"together must be in [0, 1), got {self.together}")

    def together_steps(self, total_steps: int) -> int:
        """The steps at the start that every model takes the first model's batches:
        ``round(together * total_steps)``."""
        return round(self.together * total_steps)

    @property
    def needs_gradients(self) -> bool:
        return False

    def updates_at(self, step: int, steps_per_epoch: int, total_steps: int) -> bool:
        return self.schedule.updates_at(step, steps_per_epoch, total_steps)

    def update_step(
        self,
        step: int,
        steps_per_epoch: int,
        total_steps: int,
        weights: Mapping[str, Tensor],
        gradients: Mapping[str, Tensor],
        mask: Mask,
    ) -> tuple[Mask, dict[str, Tensor]]:
        return self.schedule.update_step(
            step, steps_per_epoch, total_steps, weights, gradients, mask
        )

    def update(
        self,
        epochs_done: int,
        weights: Mapping[str, Tensor],
        gradients: Mapping[str, Tensor] | None,
        mask: Mask,
    ) -> Mask | None:
        return self.schedule.update(epochs_done, weights, gradients, mask)


@runtime_checkable
class FeedbackMaskSchedule(MaskSchedule, Protocol):
    """A :class:`MaskSchedule` whose mask is applied only in the forward pass (DPF's error
    feedback): the model keeps *dense* weights.

    ``train`` runs every forward and backward pass at ``w ⊙ m`` and applies the gradient
    found there to the dense ``w``, pruned coordinates included (no gradient, weight or
    optimizer-state masking); after every optimizer step it asks :meth:`recomputes_after`
    and, where true, replaces the mask with :meth:`recompute` of the dense weights. The
    epoch-end :meth:`~MaskSchedule.update` sees the dense weights too, and a mask it returns
    zeroes nothing. Checkpoints hold the dense weights and the mask; the final state
    :func:`~sparseavg.train` returns is ``w ⊙ m``.
    """

    def recomputes_after(self, steps_done: int) -> bool:
        """Whether to recompute the mask after the ``steps_done``-th (1-based) step of the
        run."""
        ...

    def recompute(
        self, steps_done: int, steps_per_epoch: int, weights: Mapping[str, Tensor], mask: Mask
    ) -> Mask:
        """The mask after ``steps_done`` steps, from the dense ``weights`` (``name -> tensor``
        of the masked parameters)."""
        ...


@dataclass(frozen=True)
class GradualMagnitudePruning:
    """Zhu & Gupta's gradual magnitude pruning: at each epoch end between ``start_epoch`` and
    ``end_epoch``, prune by magnitude to :func:`cubic_sparsity` of the epochs done.

    With ``pattern = (n, m)`` every step keeps the ``n`` largest alive weights of each group of
    ``m`` (:func:`~sparseavg.pruning.nm_prune_to`); ``final_sparsity`` must then be
    ``1 - n / m``, so the mask at ``end_epoch`` is exactly N:M. ``counts`` as
    :func:`gradual_step` (``"bimp"``: the previous step is the previous epoch's sparsity).
    """

    start_epoch: int
    end_epoch: int
    final_sparsity: float
    scope: Scope = "global"
    pattern: tuple[int, int] | None = None
    needs_gradients: bool = False
    counts: GmpCounts = "exact"

    def __post_init__(self) -> None:
        if self.counts not in GMP_COUNTS:
            raise ValueError(f"counts must be one of {GMP_COUNTS}, got {self.counts!r}")
        if self.pattern is not None and self.counts != "exact":
            raise ValueError("an N:M pattern needs counts 'exact'")
        if self.pattern is not None:
            n, m = self.pattern
            if abs(self.final_sparsity - (1 - n / m)) > 1e-12:
                raise ValueError(
                    f"final_sparsity {self.final_sparsity} is not that of the {n}:{m} pattern, "
                    f"{1 - n / m:g}"
                )

    def update(
        self,
        epochs_done: int,
        weights: Mapping[str, Tensor],
        gradients: Mapping[str, Tensor] | None,
        mask: Mask,
    ) -> Mask | None:
        if epochs_done <= self.start_epoch or epochs_done > self.end_epoch:
            return None
        target, previous = (
            cubic_sparsity(
                epoch,
                start_step=self.start_epoch,
                end_step=self.end_epoch,
                final_sparsity=self.final_sparsity,
            )
            for epoch in (epochs_done, epochs_done - 1)
        )
        return gradual_step(
            weights,
            mask,
            target,
            previous,
            counts=self.counts,
            scope=self.scope,
            pattern=self.pattern,
        )
