"""The behaviours plans are made of: mask rules, start rules, settings rules and combiners.

Each is a frozen dataclass holding its parameters, with one method over plain values; see
:mod:`.plan` for the protocols they implement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch

from ..averaging import AcceptRule, greedy_soup, uniform_average
from ..pruning import (
    Mask,
    Rounding,
    Scope,
    magnitude_prune,
    magnitude_prune_to,
    nm_prune,
    random_nm_prune,
    random_prune,
    shuffle_within_layers,
)
from ..pruning.channels import (
    ChannelGradualPruning,
    ChannelGroups,
    Norm,
    bound,
    channel_prune,
    random_channel_prune,
)
from ..pruning.rigl import Distribution, alive_counts, erk_densities, random_mask
from ..training import TrainSettings
from ..utils.seeding import make_generator
from ..utils.state import State
from .plan import CombineTools, CyclePlan, MaskRule, MaskSources, StartFacts, StartSources

# -- mask rules ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DenseMask:
    """Cycle 0: every prunable weight alive (or the user's initial mask)."""

    def __call__(self, cycle: int, sources: MaskSources) -> Mask:
        return sources.dense()


@dataclass(frozen=True)
class MagnitudePrune:
    """Remove ``fraction`` of the previous model's surviving weights with the smallest
    magnitude (IMP's rule; :func:`~sparseavg.pruning.magnitude_prune`), counted by
    ``rounding``."""

    fraction: float
    scope: Scope = "global"
    layer_fractions: Mapping[str, float] = field(default_factory=dict)
    rounding: Rounding = "round"

    def __call__(self, cycle: int, sources: MaskSources) -> Mask:
        state, mask = sources.previous()
        return magnitude_prune(
            state, mask, self.fraction, self.scope, self.layer_fractions, self.rounding
        )


@dataclass(frozen=True)
class MagnitudePruneTo:
    """Prune the previous model's smallest alive weights until exactly ``round(sparsity *
    total)`` are pruned (a gradual schedule's step, :func:`~sparseavg.pruning.
    magnitude_prune_to`)."""

    sparsity: float
    scope: Scope = "global"

    def __call__(self, cycle: int, sources: MaskSources) -> Mask:
        state, mask = sources.previous()
        weights = {name: state[name] for name in mask}
        return magnitude_prune_to(weights, mask, self.sparsity, self.scope)


@dataclass(frozen=True)
class AverageMask:
    """A :class:`~.plan.MaskSettle`: the mask of the ingredients' uniform average (each
    ingredient ``w_i ⊙ m_i``), pruned by magnitude to exactly ``round(sparsity * total)``,
    and the ingredients ``w_i ⊙ m_i`` projected onto it (sms-dpf's ``masked`` reading,
    ``pruning.dpf_settle``: the copies' moved masks become one, at the phase's count)."""

    sparsity: float
    scope: Scope = "global"

    def __call__(
        self, states: Sequence[State], masks: Sequence[Mask], dense: Sequence[State | None]
    ) -> tuple[Mask, list[State]]:
        names = list(masks[0])
        average = uniform_average([{n: s[n] for n in names} for s in states])
        mask = magnitude_prune_to(average, Mask.ones_like(average), self.sparsity, self.scope)
        return mask, [mask.applied(s) for s in states]


@dataclass(frozen=True)
class DenseAverageMask:
    """A :class:`~.plan.MaskSettle` on the ingredients' dense weights ``w_i`` (error feedback
    keeps them; their final states hold ``w_i ⊙ m_i``): the mask of their uniform average
    ``w̄``, pruned by magnitude to exactly ``round(sparsity * total)``, and each ingredient's
    dense weights projected onto it, ``w_i ⊙ m`` (its other tensors from its final state), so
    that their uniform soup is ``w̄ ⊙ m``: what DPF reports for the averaged dense weights
    (sms-dpf's ``dense`` reading, ``pruning.dpf_settle``).

    Raises:
        ValueError: an ingredient has no dense weights (it finished before they were kept).
    """

    sparsity: float
    scope: Scope = "global"

    def __call__(
        self, states: Sequence[State], masks: Sequence[Mask], dense: Sequence[State | None]
    ) -> tuple[Mask, list[State]]:
        kept = [w for w in dense if w is not None]
        if len(kept) != len(states):
            raise ValueError(
                "an ingredient has no dense weights (dense.safetensors; it finished before they "
                "were kept): delete this cycle's ingredient_* directories to retrain them, or "
                "start a new run with pruning.dpf_settle = 'masked'"
            )
        average = uniform_average(kept)
        mask = magnitude_prune_to(average, Mask.ones_like(average), self.sparsity, self.scope)
        return mask, [mask.applied({**s, **w}) for s, w in zip(states, kept, strict=True)]


@dataclass(frozen=True)
class AverageMaskPerLayer:
    """A :class:`~.plan.MaskSettle` for ingredients whose masks moved but kept every layer's
    alive count (RigL's drop and grow): the mask of their uniform average that keeps, in each
    layer, as many weights as the first ingredient's mask has alive there, the largest
    ``|average|`` (ties: the lower flat index), and the ingredients projected onto it
    (``dense`` is not used). swamp-rigl: the particles' masks become one with RigL's
    per-layer (ERK) densities unchanged."""

    def __call__(
        self, states: Sequence[State], masks: Sequence[Mask], dense: Sequence[State | None]
    ) -> tuple[Mask, list[State]]:
        names = list(masks[0])
        average = uniform_average([{n: s[n] for n in names} for s in states])
        out = {}
        for n in names:
            keep = int(masks[0][n].sum())
            order = torch.sort(average[n].abs().flatten(), descending=True, stable=True).indices
            flat = torch.zeros(masks[0][n].numel(), dtype=torch.bool)
            flat[order[:keep].cpu()] = True
            out[n] = flat.view(masks[0][n].shape).to(masks[0][n].device)
        mask = Mask(out)
        return mask, [mask.applied(s) for s in states]


@dataclass(frozen=True)
class ChannelPrune:
    """Remove ``fraction`` of the previous model's alive channels with the lowest ``norm``
    score, coupled layers together (:func:`~sparseavg.pruning.channels.channel_prune`).
    ``groups`` (the model's channel groups) is ``None`` until the engine binds it
    (:func:`with_channel_groups`)."""

    fraction: float
    scope: Scope = "global"
    norm: Norm = "l1"
    groups: ChannelGroups | None = None

    def __call__(self, cycle: int, sources: MaskSources) -> Mask:
        state, mask = sources.previous()
        return channel_prune(
            state, mask, bound(self.groups), self.fraction, norm=self.norm, scope=self.scope
        )


@dataclass(frozen=True)
class RandomChannelPrune:
    """Remove a random ``fraction`` of the previous mask's alive channels, as many as
    :class:`ChannelPrune` removes, coupled layers together
    (:func:`~sparseavg.pruning.channels.random_channel_prune`; the random-channel baseline);
    ``seed`` fixes the draw, ``groups`` is bound by the engine (:func:`with_channel_groups`)."""

    fraction: float
    seed: tuple[object, ...]
    scope: Scope = "global"
    groups: ChannelGroups | None = None

    def __call__(self, cycle: int, sources: MaskSources) -> Mask:
        _, mask = sources.previous()
        generator = make_generator(*self.seed)
        return random_channel_prune(
            mask, bound(self.groups), self.fraction, generator=generator, scope=self.scope
        )


def with_channel_groups(plan: CyclePlan, groups: ChannelGroups) -> CyclePlan:
    """``plan`` with the model's channel groups given to its channel rules (a
    :class:`ChannelPrune` or :class:`RandomChannelPrune` mask rule, a
    :class:`~sparseavg.pruning.channels.ChannelGradualPruning` schedule); other plans are
    returned as they are."""
    mask, during = plan.mask, plan.during
    if isinstance(mask, ChannelPrune | RandomChannelPrune):
        mask = replace(mask, groups=groups)
    if isinstance(during, ChannelGradualPruning):
        during = replace(during, groups=groups)
    return replace(plan, mask=mask, during=during)


@dataclass(frozen=True)
class RandomPrune:
    """Remove a random ``fraction`` of the surviving weights, with magnitude pruning's counts
    (the random-pruning baseline); ``seed`` fixes the draw."""

    fraction: float
    seed: tuple[object, ...]
    scope: Scope = "global"
    layer_fractions: Mapping[str, float] = field(default_factory=dict)
    rounding: Rounding = "round"

    def __call__(self, cycle: int, sources: MaskSources) -> Mask:
        _, mask = sources.previous()
        generator = make_generator(*self.seed)
        return random_prune(
            mask,
            self.fraction,
            generator=generator,
            scope=self.scope,
            layer_fractions=self.layer_fractions,
            rounding=self.rounding,
        )


@dataclass(frozen=True)
class NMPrune:
    """Prune the previous model by magnitude towards an N:M mask
    (:func:`~sparseavg.pruning.nm_prune`): remove ``fraction`` of the survivors but never one
    of the ``n`` largest of its group of ``m``; ``fraction = None`` (the last cycle) keeps
    exactly those ``n``."""

    n: int
    m: int
    fraction: float | None
    scope: Scope = "global"

    def __call__(self, cycle: int, sources: MaskSources) -> Mask:
        state, mask = sources.previous()
        return nm_prune(state, mask, self.n, self.m, self.fraction, self.scope)


@dataclass(frozen=True)
class RandomNMPrune:
    """:class:`NMPrune` with random scores (:func:`~sparseavg.pruning.random_nm_prune`):
    the random-mask baseline under an N:M pattern; ``seed`` fixes the draw."""

    n: int
    m: int
    fraction: float | None
    seed: tuple[object, ...]
    scope: Scope = "global"

    def __call__(self, cycle: int, sources: MaskSources) -> Mask:
        _, mask = sources.previous()
        generator = make_generator(*self.seed)
        return random_nm_prune(
            mask, self.n, self.m, self.fraction, generator=generator, scope=self.scope
        )


@dataclass(frozen=True)
class ShuffleLayers:
    """Another rule's mask with its alive weights moved to random positions within each
    layer: its layer-wise sparsities at random (the lottery-ticket random-pruning control)."""

    rule: MaskRule
    seed: tuple[object, ...]

    def __call__(self, cycle: int, sources: MaskSources) -> Mask:
        return shuffle_within_layers(
            self.rule(cycle, sources), generator=make_generator(*self.seed)
        )


@dataclass(frozen=True)
class SparseStart:
    """RigL's sparse start: the prunable weights (:meth:`MaskSources.dense`) at overall
    ``density``, spread over the layers by ``distribution``
    (:func:`~sparseavg.pruning.rigl.erk_densities`), each layer with ``N - floor((1 - d) *
    N)`` alive weights at random places drawn from ``seed`` (rigl's sparse initialisation)."""

    density: float
    distribution: Distribution
    seed: tuple[object, ...]

    def __call__(self, cycle: int, sources: MaskSources) -> Mask:
        shapes = {name: tuple(alive.shape) for name, alive in sources.dense().items()}
        densities = erk_densities(shapes, self.density, distribution=self.distribution)
        counts = alive_counts(shapes, densities)
        return random_mask(shapes, counts, generator=make_generator(*self.seed))


@dataclass(frozen=True)
class SourceMask:
    """The mask of the same cycle in another run (``pruning.masks_from``)."""

    def __call__(self, cycle: int, sources: MaskSources) -> Mask:
        return sources.source(cycle)


# -- start rules ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rewind:
    """Start from the ticket θ_T0 ⊙ m at step T0 (lottery-ticket rewinding; cycle 0 too)."""

    trains: bool = True

    def __call__(self, sources: StartSources, mask: Mask) -> tuple[State, int]:
        return mask.applied(sources.ticket()), sources.rewind_step


@dataclass(frozen=True)
class RewindThrough:
    """Start from the ticket pruned by another mask first, θ_T0 ⊙ m_L ⊙ m: open_lth's
    random-mask branch (``lottery/branch/randomly_prune.py``) loads the level's saved start
    θ_T0 ⊙ m_L and applies the shuffled mask m to it, so a weight alive in m but pruned in m_L
    starts at exactly 0. ``rule`` derives m_L for ``cycle`` (e.g. the magnitude mask a
    :class:`ShuffleLayers` shuffles)."""

    rule: MaskRule
    cycle: int
    trains: bool = True

    def __call__(self, sources: StartSources, mask: Mask) -> tuple[State, int]:
        ticket_mask = self.rule(self.cycle, sources)
        return mask.applied(ticket_mask.applied(sources.ticket())), sources.rewind_step


@dataclass(frozen=True)
class FineTune:
    """Start from the previous cycle's model ⊙ m at step 0 (prune-retrain; SMS)."""

    trains: bool = True

    def __call__(self, sources: StartSources, mask: Mask) -> tuple[State, int]:
        return mask.applied(sources.previous_model()), 0


@dataclass(frozen=True)
class Reinit:
    """Start from a random initialisation ⊙ m at step 0; ``seed`` draws it: the lottery-ticket
    re-initialisation control (a new one), and the dense cycle 0 of fine-tuning recipes (the
    lineage's own, trained in one run)."""

    seed: int
    trains: bool = True

    def __call__(self, sources: StartSources, mask: Mask) -> tuple[State, int]:
        return mask.applied(sources.initialisation(self.seed)), 0


@dataclass(frozen=True)
class Pretrained:
    """Cycle 0 is the user's checkpoint (⊙ the initial mask); nothing is trained."""

    trains: bool = False

    def __call__(self, sources: StartSources, mask: Mask) -> tuple[State, int]:
        return mask.applied(sources.pretrained()), 0


@dataclass(frozen=True)
class Borrow:
    """This cycle's model is another lineage's (IMP-AVG's lineages share the dense model)."""

    lineage: int = 0
    trains: bool = False

    def __call__(self, sources: StartSources, mask: Mask) -> tuple[State, int]:
        return sources.combined(self.lineage), 0


# -- settings rules ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdaptivePeak:
    """SMS's ALLR: an LLR schedule whose peak is ``max_lr`` scaled by the relative norm the
    pruning removed, ``d / sqrt(fraction)``, clipped to ``[min(E_r / E_o, 1) · max_lr,
    max_lr]`` (``E_r`` the ingredient's own retraining epochs, ``E_o`` the original's), as
    the SMS code chooses it: its ``n_epochs_finetune`` is the split's ``retrain_length``
    when it varies the length (``runners/baseRunner.py`` ``fine_tuning``)."""

    max_lr: float
    fraction: float
    original_epochs: int

    def peak(self, relative_norm_drop: float, retrain_epochs: int) -> float:
        """The schedule's peak for a measured relative norm drop and a retraining of
        ``retrain_epochs`` epochs."""
        low = min(retrain_epochs / max(self.original_epochs, 1), 1.0) * self.max_lr
        scaled = relative_norm_drop / self.fraction**0.5 * self.max_lr
        return min(max(scaled, low), self.max_lr)

    def __call__(self, settings: TrainSettings, facts: StartFacts) -> TrainSettings:
        peak = self.peak(facts.relative_norm_drop, settings.epochs)
        return replace(settings, schedule="llr", lr=peak)


# -- combiners -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Single:
    """One model: it is the cycle's model."""

    def __call__(
        self, states: Sequence[State], indices: Sequence[int], mask: Mask, tools: CombineTools
    ) -> tuple[State, list[int] | None]:
        return states[0], None


@dataclass(frozen=True)
class Uniform:
    """The uniform average of all ingredients (SWAMP's particles, SMS's uniform soup), with
    BatchNorm recalibrated."""

    def __call__(
        self, states: Sequence[State], indices: Sequence[int], mask: Mask, tools: CombineTools
    ) -> tuple[State, list[int] | None]:
        if len(states) == 1:
            return states[0], None
        return tools.recalibrate(uniform_average(states, mask=mask)), None


@dataclass(frozen=True)
class Greedy:
    """A greedy soup on the held-out split: candidates best first, each kept if the
    recalibrated soup's score is ``>=`` (``"ge"``, the SMS code) or ``>`` (``"gt"``); the
    score is the task's (``ingredients.soup_metric``: macro accuracy by default)."""

    accept: AcceptRule = "ge"

    def __call__(
        self, states: Sequence[State], indices: Sequence[int], mask: Mask, tools: CombineTools
    ) -> tuple[State, list[int] | None]:
        soup = greedy_soup(states, tools.score, accept=self.accept, mask=mask, ids=indices)
        selected = [indices[i] for i in soup.selected]
        state = soup.state if len(soup.selected) == 1 else tools.recalibrate(soup.state)
        return state, selected
