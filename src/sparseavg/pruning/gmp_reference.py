"""Gradual magnitude pruning as the BIMP code (ZIB-IOL/BIMP at 7bad593, the SMS paper's
baselines) schedules it: the sparsity at each pruning step, the counts its rounding gives, and
a :class:`~sparseavg.pruning.MaskSchedule` that prunes on that schedule.

The reference (``strategies/scratchStrategies.py``, class ``GMP``, lines 250-302) prunes at the
end of epochs ``interval, 2 interval, ..., n interval`` with ``n = n_epochs // interval - 1``,
to ``goal * (1 - (1 - t / (n interval)) ** 3)`` at epoch ``t``, globally over every module
weight but BatchNorm2d's, through ``torch.nn.utils.prune`` (L1, ``round(amount * alive)``
weights per call). DPF (same file, lines 305-362) uses the same schedule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor

from .mask import Mask
from .schedule import GMP_COUNTS, GmpCounts, gradual_step
from .strategies import Scope


def bimp_gmp_schedule(
    n_epochs: int, interval: int, goal_sparsity: float
) -> list[tuple[int, float]]:
    """``(epoch, sparsity)`` for each pruning step of the BIMP code's GMP (and DPF).

    Steps come after epochs ``t = interval, 2 interval, ..., n interval`` (1-based epochs
    trained) with ``n = n_epochs // interval - 1``, so at least ``interval`` epochs train at the
    final sparsity; the sparsity is ``goal + (0 - goal) * (1 - t / (n interval)) ** 3``,
    reaching ``goal_sparsity`` at the last step (``GMP.__init__`` and ``sparsity_schedule``).

    Raises:
        ValueError: ``2 * interval > n_epochs`` (the reference asserts it), ``interval < 1`` or
            ``goal_sparsity`` outside [0, 1).
    """
    if interval < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    if 2 * interval > n_epochs:
        raise ValueError(f"pruning interval {interval} too large for {n_epochs} epochs")
    if not 0.0 <= goal_sparsity < 1.0:
        raise ValueError(f"goal_sparsity must be in [0, 1), got {goal_sparsity}")
    n_steps = n_epochs // interval - 1
    span = interval * n_steps
    return [
        (t, goal_sparsity + (0 - goal_sparsity) * (1 - t / span) ** 3)
        for t in (k * interval for k in range(1, n_steps + 1))
    ]


def _step_fractions(schedule: Sequence[tuple[int, float]], allow_recovering: bool) -> list[float]:
    """The ``amount`` each step hands to ``prune.global_unstructured``: ``1 - (1 - s_k) /
    (1 - s_prev)``, where ``s_prev`` is the previous step's sparsity, or 0 when recovering
    (``GMP.pruning_scheduler``)."""
    fractions = []
    current = 0.0
    for _, required in schedule:
        fractions.append(1.0 - (1 - required) / (1 - current))
        current = 0.0 if allow_recovering else required
    return fractions


def bimp_pruned_counts(
    total: int, schedule: Sequence[tuple[int, float]], *, allow_recovering: bool
) -> list[int]:
    """Pruned weights (of ``total``, one global group) after each step of ``schedule``, with
    ``torch.nn.utils.prune``'s rounding (Python's ``round``, half to even):

    - ``allow_recovering``: the mask is recomputed from scratch, ``round(f_k * total)``;
    - otherwise the mask is extended, ``pruned += round(f_k * (total - pruned))``; the count
      can then end below ``round(goal * total)`` (e.g. 12 weights, goal 0.9: 10, not 11).

    ``f_k`` as :func:`_step_fractions`.
    """
    counts = []
    pruned = 0
    for fraction in _step_fractions(schedule, allow_recovering):
        if allow_recovering:
            pruned = round(fraction * total)
        else:
            pruned += round(fraction * (total - pruned))
        counts.append(pruned)
    return counts


def required_sparsity(epochs_done: int, schedule: Sequence[tuple[int, float]]) -> float:
    """The sparsity in force after ``epochs_done`` epochs: that of the last step at or before
    it, 0 before the first (DPF's ``currently_required_sparsity``)."""
    current = 0.0
    for epoch, sparsity in schedule:
        if epoch <= epochs_done:
            current = sparsity
    return current


@dataclass(frozen=True)
class IntervalGradualPruning:
    """The BIMP code's GMP as a mask schedule: at the end of each epoch of
    :func:`bimp_gmp_schedule`, prune by magnitude to that epoch's sparsity.

    ``counts="bimp"`` (the reference's): each step removes ``round(f_k * alive)`` more with the
    reference's ``amount`` ``f_k`` (:func:`bimp_pruned_counts`); ``"exact"``: each step prunes
    to exactly ``round(s_k * total)`` (:func:`~sparseavg.pruning.schedule.gradual_step`, N:M
    groups with ``pattern``). With ``allow_recovering`` the mask is recomputed from scratch from
    ``weights`` at every step (``s_prev = 0``), so a pruned weight can return; that needs the
    *dense* values of the pruned weights (the reference keeps them in ``weight_orig``, decayed
    by weight decay), so it serves DPF or an engine that keeps a dense copy: on weights stored
    as exact zeros it prunes what extending would.

    ``scope="layerwise"`` applies each step per layer (the reference: global). The engine
    clears the optimizer state of newly pruned weights, as the reference's ``prune_momentum``
    does after each step.
    """

    n_epochs: int
    interval: int
    goal_sparsity: float
    allow_recovering: bool = False
    scope: Scope = "global"
    needs_gradients: bool = False
    counts: GmpCounts = "bimp"
    pattern: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        bimp_gmp_schedule(self.n_epochs, self.interval, self.goal_sparsity)  # validates
        if self.counts not in GMP_COUNTS:
            raise ValueError(f"counts must be one of {GMP_COUNTS}, got {self.counts!r}")
        if self.pattern is not None and self.counts != "exact":
            raise ValueError("an N:M pattern needs counts 'exact'")

    @property
    def schedule(self) -> list[tuple[int, float]]:
        """``(epoch, sparsity)`` of every pruning step."""
        return bimp_gmp_schedule(self.n_epochs, self.interval, self.goal_sparsity)

    def update(
        self,
        epochs_done: int,
        weights: Mapping[str, Tensor],
        gradients: Mapping[str, Tensor] | None,
        mask: Mask,
    ) -> Mask | None:
        schedule = self.schedule
        epochs = [e for e, _ in schedule]
        if epochs_done not in epochs:
            return None
        k = epochs.index(epochs_done)
        previous = 0.0 if k == 0 or self.allow_recovering else schedule[k - 1][1]
        start = Mask.ones_like(mask) if self.allow_recovering else mask
        return gradual_step(
            weights,
            start,
            schedule[k][1],
            previous,
            counts=self.counts,
            scope=self.scope,
            pattern=self.pattern,
        )
