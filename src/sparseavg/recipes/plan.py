"""What the engine runs: a :class:`RunPlan` per run and a :class:`CyclePlan` per cycle and
lineage, filled in by a recipe.

A plan hands the engine behaviour, not flags to branch on. Each behaviour is a small frozen
dataclass with one method over plain values (see :mod:`.rules` and :mod:`.readouts`):

- :class:`MaskRule`: how a cycle's mask is derived (magnitude, random, shuffled, another run's);
- :class:`StartRule`: where the cycle's ingredients start (rewind, fine-tune, re-initialise,
  a pretrained model, another lineage's model);
- :class:`SettingsRule`: how training settings adapt to that start (SMS's adaptive ALLR peak);
- :class:`~sparseavg.pruning.MaskSchedule`: what changes the mask during training (gradual
  pruning; it sees dense gradients, so growth rules fit too);
- :class:`Combiner`: how the trained ingredients become the cycle's model;
- :class:`Readout`: which rows a finished cycle reports, and which of them is the headline.

The engine supplies what the rules need through the small ``*Sources`` and ``*Tools``
protocols below and never asks which kind of rule it holds, so a new method is a new recipe:
its defaults, its fixed settings and a plan function composed from these pieces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..pruning import Mask, MaskSchedule
from ..training import Evaluation, TrainSettings
from ..utils.state import State

Row = dict[str, Any]


@dataclass(frozen=True)
class IngredientPlan:
    """One model to train in a cycle: its index, its own seed and its hyperparameters."""

    index: int
    seed: int
    settings: TrainSettings


# -- what rules see ------------------------------------------------------------------------------


class MaskSources(Protocol):
    """What a :class:`MaskRule` may read (the engine loads each on demand)."""

    def dense(self) -> Mask:
        """All prunable weights alive, or the user's ``pruning.initial_mask``."""
        ...

    def previous(self) -> tuple[State, Mask]:
        """This lineage's combined model of the previous cycle and its mask."""
        ...

    def source(self, cycle: int) -> Mask:
        """The mask of ``cycle`` in the run named by ``pruning.masks_from``."""
        ...


class StartSources(MaskSources, Protocol):
    """What a :class:`StartRule` may read (the engine loads each on demand): the mask rules'
    sources too, so that a start can derive another mask than the cycle's
    (:class:`~.rules.RewindThrough`)."""

    @property
    def rewind_step(self) -> int:
        """T0: the global step of the ticket."""
        ...

    def ticket(self) -> State:
        """θ_T0 of this lineage: the weights after the common dense run to T0."""
        ...

    def previous_model(self) -> State:
        """This lineage's combined model of the previous cycle."""
        ...

    def initialisation(self, seed: int) -> State:
        """A freshly initialised model, drawn from ``seed``."""
        ...

    def pretrained(self) -> State:
        """The ``model.pretrained`` checkpoint."""
        ...

    def combined(self, lineage: int) -> State:
        """Another lineage's combined model of this cycle (it ran first)."""
        ...


@dataclass(frozen=True)
class StartFacts:
    """What a :class:`SettingsRule` may use: measured once the start state exists.

    Attributes:
        relative_norm_drop: ``sqrt(|‖θ‖² − ‖θ ⊙ m‖²|) / ‖θ‖`` over the model's parameters,
            between the previous cycle's model and the pruned start (0 for other starts).
    """

    relative_norm_drop: float = 0.0


class CombineTools(Protocol):
    """What a :class:`Combiner` may use."""

    def recalibrate(self, state: State) -> State:
        """``state`` with BatchNorm statistics recomputed (per ``bn.*``), for averages."""
        ...

    def score(self, state: State) -> float:
        """Held-out score of ``state`` after recalibration (greedy soups; built-in data:
        ``ingredients.soup_metric``)."""
        ...


class ReadoutTools(Protocol):
    """What a :class:`Readout` may use."""

    def evaluate(self, state: State) -> Evaluation:
        """Test accuracy and loss of one model."""
        ...

    def evaluate_ensemble(self, states: Sequence[State]) -> Evaluation:
        """Test accuracy and NLL of the models' averaged predicted probabilities."""
        ...

    def recalibrate(self, state: State) -> State:
        """``state`` with BatchNorm statistics recomputed (per ``bn.*``), for averages."""
        ...

    def row(self, role: str, lineage: int, mask: Mask, evaluation: Evaluation | None) -> Row:
        """A results row with the run's columns filled in; callers add fields to it."""
        ...


# -- the behaviours ------------------------------------------------------------------------------


class MaskRule(Protocol):
    """Derives the mask a cycle trains under."""

    def __call__(self, cycle: int, sources: MaskSources) -> Mask: ...


class StartRule(Protocol):
    """Where a cycle's ingredients start: ``(state, global step)`` under ``mask``.

    :attr:`trains` is false for starts that are already the cycle's model (a pretrained
    checkpoint, another lineage's shared model): the cycle then trains nothing.
    """

    @property
    def trains(self) -> bool: ...

    def __call__(self, sources: StartSources, mask: Mask) -> tuple[State, int]: ...


class SettingsRule(Protocol):
    """Adapts an ingredient's settings to its start (e.g. SMS's adaptive ALLR peak)."""

    def __call__(self, settings: TrainSettings, facts: StartFacts) -> TrainSettings: ...


class MaskSettle(Protocol):
    """The cycle's one mask when a mask schedule left the ingredients with masks of their own
    (DPF moves each copy's mask), and the ingredients to combine on it: from their final
    states, their masks and their dense weights (the mask's tensors as error feedback kept
    them, ``None`` where training kept none), in index order. Returns ``(mask, states)``:
    every returned state is on the mask (pruned weights exactly 0), so the soup keeps it;
    the engine combines those states and reports them as the cycle's ingredients."""

    def __call__(
        self, states: Sequence[State], masks: Sequence[Mask], dense: Sequence[State | None]
    ) -> tuple[Mask, list[State]]: ...


class Combiner(Protocol):
    """Turns the trained ingredients (in index order) into the cycle's model; also returns
    the indices it kept (greedy soups) or ``None``."""

    def __call__(
        self, states: Sequence[State], indices: Sequence[int], mask: Mask, tools: CombineTools
    ) -> tuple[State, list[int] | None]: ...


@dataclass(frozen=True)
class LineageResult:
    """One lineage's finished cycle, as readouts see it.

    Attributes:
        lineage: its index (0 unless the run has several independent lineages).
        mask: the cycle's mask.
        combined: the cycle's model (what the next cycle starts from or prunes).
        ingredients: the trained ingredients that were not dropped, by index.
        info: every planned ingredient's info (``dropped``, ``seconds``, ...), by index.
        planned: how many ingredients the plan had.
        selected: the indices a greedy soup kept, else ``None``.
    """

    lineage: int
    mask: Mask
    combined: State
    ingredients: dict[int, State]
    info: dict[int, dict[str, Any]]
    planned: int
    selected: list[int] | None = None


class Readout(Protocol):
    """Rows a finished cycle reports; rows of a ``headline`` readout are the method's result."""

    @property
    def headline(self) -> bool: ...

    def __call__(
        self, cycle: int, results: Sequence[LineageResult], tools: ReadoutTools
    ) -> list[Row]: ...


# -- plans ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CyclePlan:
    """One IMP level of one lineage.

    Attributes:
        cycle: 0 for the dense cycle.
        mask: derives the cycle's mask (before training; a ``during`` schedule may tighten it).
        start: where the ingredients start; a start that does not train is the cycle's model.
        ingredients: the models trained under the mask (empty when ``start`` does not train).
        combine: how they become one model.
        adapt: adapts each ingredient's settings to the start, or ``None``.
        during: changes the mask while the ingredients train, or ``None``.
        settle: the cycle's mask from the ingredients' final masks when ``during`` can leave
            them different (several ingredients), or ``None``: the first ingredient's.
    """

    cycle: int
    mask: MaskRule
    start: StartRule
    ingredients: tuple[IngredientPlan, ...]
    combine: Combiner
    adapt: SettingsRule | None = None
    during: MaskSchedule | None = None
    settle: MaskSettle | None = None


@dataclass(frozen=True)
class RunPlan:
    """What holds for the whole run.

    Attributes:
        lineages: independent IMP lineages (ensemble members, IMP-AVG's runs); 1 for most.
        readouts: the rows every cycle reports, in order; exactly the rows of readouts with
            ``headline`` true are the method's result.
        common: settings of the common dense run to the rewind point T0 that makes each
            lineage's ticket (those of cycle 0's first ingredient), or ``None`` when the run
            never trains from a ticket.
    """

    lineages: int
    readouts: tuple[Readout, ...]
    common: TrainSettings | None = field(default=None)
