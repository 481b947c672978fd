"""Budgeted IMP (BIMP; Zimmer et al., ICLR 2023): how a fixed epoch budget is split between
training from scratch and IMP's phases, as ZIB-IOL/BIMP (7bad593) splits it.

BIMP is two runs of the reference: a dense run of ``n_epochs`` from scratch
(``runners/scratchRunner.py``, strategy ``Dense``), then IMP on that model
(``runners/pretrainedRunner.py``, ``strategies/pretrainedStrategies.py`` class ``IMP``) whose
``n_phases`` prune-retrain phases share ``n_epochs_to_split`` epochs (lines 22-31). Each phase
prunes ``1 - (1 - goal) ** (1 / n_phases)`` of the remaining weights (line 37, our
:func:`~sparseavg.pruning.fraction_per_cycle`) and retrains with the configured schedule;
ALLR's is the SMS code's, formula for formula (``runners/baseRunner.py`` lines 534-541), with
the dense run's ``n_epochs`` as the original length.
"""

from __future__ import annotations

from dataclasses import dataclass

from .schedule import fraction_per_cycle


def split_epochs(n_epochs_to_split: int, n_phases: int) -> tuple[int, ...]:
    """Each phase's retraining epochs, as ``IMP.__init__`` splits ``n_epochs_to_split``:
    ``n_epochs_to_split // n_phases`` each, the last phase taking the remainder as well
    (10 over 3: ``(3, 3, 4)``). The parts sum to ``n_epochs_to_split``.

    Raises:
        ValueError: ``n_phases < 1`` or ``n_epochs_to_split < 0``.
    """
    if n_phases < 1:
        raise ValueError(f"n_phases must be >= 1, got {n_phases}")
    if n_epochs_to_split < 0:
        raise ValueError(f"n_epochs_to_split must be >= 0, got {n_epochs_to_split}")
    each = n_epochs_to_split // n_phases
    return (each,) * (n_phases - 1) + (n_epochs_to_split - (n_phases - 1) * each,)


@dataclass(frozen=True)
class BimpBudget:
    """A BIMP run's epochs: ``dense_epochs`` from scratch, then ``phase_epochs[i]`` retraining
    after the ``i``-th pruning step, each pruning ``prune_fraction`` of the remaining weights
    so that ``goal_sparsity`` holds after the last."""

    dense_epochs: int
    phase_epochs: tuple[int, ...]
    goal_sparsity: float

    @property
    def n_phases(self) -> int:
        return len(self.phase_epochs)

    @property
    def total_epochs(self) -> int:
        """The whole budget: the dense run and every phase."""
        return self.dense_epochs + sum(self.phase_epochs)

    @property
    def prune_fraction(self) -> float:
        """Share of the remaining weights each phase prunes: ``1 - (1 - goal) ** (1 / n)``."""
        return fraction_per_cycle(self.goal_sparsity, self.n_phases)

    def allr_floor(self, phase: int) -> float:
        """ALLR's lower clip for ``phase`` (0-based) as a fraction of the dense run's peak lr:
        ``min(phase epochs / dense epochs, 1)`` (the reference's ``minLRThreshold / maxLR``)."""
        return min(float(self.phase_epochs[phase]) / self.dense_epochs, 1.0)


def bimp_budget(
    dense_epochs: int, n_epochs_to_split: int, n_phases: int, goal_sparsity: float
) -> BimpBudget:
    """The budget of a BIMP run with the reference's settings ``n_epochs`` (here
    ``dense_epochs``), ``n_epochs_to_split``, ``n_phases`` and ``goal_sparsity``; its
    ``total_epochs`` is ``dense_epochs + n_epochs_to_split`` exactly.

    Raises:
        ValueError: ``dense_epochs < 1``, ``goal_sparsity`` outside [0, 1), or bad
            ``n_phases`` / ``n_epochs_to_split`` (:func:`split_epochs`).
    """
    if dense_epochs < 1:
        raise ValueError(f"dense_epochs must be >= 1, got {dense_epochs}")
    if not 0.0 <= goal_sparsity < 1.0:
        raise ValueError(f"goal_sparsity must be in [0, 1), got {goal_sparsity}")
    return BimpBudget(dense_epochs, split_epochs(n_epochs_to_split, n_phases), goal_sparsity)
