"""RigL (Evci et al., 2020), as google-research/rigl computes it: layer densities (ERK, ER or
uniform), the drop-fraction schedule, which iterations update the mask, and the drop/grow
update itself.

Reference: google-research/rigl at d39fc7d, ``rigl/sparse_utils.py`` (densities) and
``rigl/sparse_optimizers_base.py`` (``SparseRigLOptimizerBase``, ``_get_update_op``,
``is_mask_update_iter``, ``get_drop_fraction``). Every function here is pure but
:func:`apply_mask_update_`, which writes a mask update into live parameters and optimizer state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from .mask import Mask, MaskError

Distribution = Literal["erk", "er", "uniform"]
#: who takes several particles' drop/grow decisions (swamp-rigl): one on their average, or each
RiglDecide = Literal["each", "average"]
DISTRIBUTIONS: tuple[str, ...] = ("erk", "er", "uniform")
DropSchedule = Literal["cosine", "constant"]


def _n_zeros(size: int, sparsity: float) -> int:
    """rigl's ``get_n_zeros``: ``floor(sparsity * size)`` pruned entries."""
    return math.floor(sparsity * size)


def erk_densities(
    shapes: Mapping[str, tuple[int, ...]],
    density: float,
    *,
    distribution: Distribution = "erk",
    dense: Set[str] = frozenset(),
    erk_power_scale: float = 1.0,
) -> dict[str, float]:
    """Each layer's density (fraction alive, in (0, 1]) for an overall ``density``.

    ``"erk"`` (Erdős–Rényi-Kernel) makes layer ``l`` of shape ``(n_1, ..., n_k)`` alive with
    probability ``eps * (sum(n) / prod(n)) ** erk_power_scale``; ``"er"`` uses only the first
    two dimensions, ``(n_out + n_in) / (n_out * n_in)`` (rigl's TF kernels are
    ``[..., in, out]``: its last two dimensions are PyTorch's first two); ``"uniform"`` gives
    every layer ``density``. ``eps`` is chosen so the layers hold exactly as many alive weights
    as a uniform ``density`` would: ``sum_l eps * p_l * N_l = sum_l (N_l - floor(s * N_l))``
    with ``s = 1 - density``. A layer whose probability would exceed 1 is made dense, its
    ``floor(s * N_l)`` zeros are paid by the others, and ``eps`` is solved again (all layers
    tied at the largest raw probability at once), exactly as ``get_sparsities_erdos_renyi``.

    Args:
        shapes: ``name -> weight shape`` in model order (e.g. of the prunable parameters).
        density: overall fraction alive, in (0, 1].
        distribution: ``"erk"``, ``"er"`` or ``"uniform"`` (rigl's ``"random"``).
        dense: names kept fully dense and left out of the computation altogether, as rigl's
            ``custom_sparsity_map`` entries of 0 and its unmasked first layer: ``density``
            then holds over the other layers only. The RigL README keeps the first layer
            dense with ``"uniform"`` (and with ERK only at 99 % sparsity).
        erk_power_scale: exponent of the raw ERK probability (< 1 makes it softer).

    Returns:
        ``name -> density`` for every name of ``shapes``; 1.0 for ``dense`` and saturated
        layers. Per-layer counts: :func:`alive_counts`.

    Raises:
        ValueError: ``density`` outside (0, 1], an unknown distribution, a name of ``dense``
            that is not in ``shapes``, or an empty shape.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    unknown = sorted(set(dense) - set(shapes))
    if unknown:
        raise ValueError(f"dense names {unknown[:5]} are not among the layers")
    for name, shape in shapes.items():
        if len(shape) == 0 or math.prod(shape) == 0:
            raise ValueError(f"layer {name!r} has an empty shape {tuple(shape)}")
        if distribution == "er" and len(shape) < 2:
            raise ValueError(f"distribution 'er' needs 2-d or larger weights; {name!r} is 1-d")
    sparsity = 1.0 - density
    if distribution == "uniform" or density == 1.0:
        return {n: 1.0 if n in dense else density for n in shapes}

    saturated: set[str] = set()
    while True:
        divisor = 0.0
        rhs = 0
        raw: dict[str, float] = {}
        for name, shape in shapes.items():
            n_param = math.prod(shape)
            n_zeros = _n_zeros(n_param, sparsity)
            if name in saturated:
                rhs -= n_zeros
            elif name in dense:
                continue
            else:
                rhs += n_param - n_zeros
                if distribution == "erk":
                    raw[name] = (sum(shape) / n_param) ** erk_power_scale
                else:
                    n_out, n_in = shape[0], shape[1]
                    raw[name] = (n_in + n_out) / (n_in * n_out)
                divisor += raw[name] * n_param
        if not raw:  # every layer saturated: only possible at density 1, handled above
            raise ValueError(f"no layer can stay sparse at density {density}")
        eps = rhs / divisor
        max_prob = max(raw.values())
        if max_prob * eps > 1:
            saturated.update(n for n, p in raw.items() if p == max_prob)
            continue
        break
    return {n: 1.0 if (n in dense or n in saturated) else eps * raw[n] for n in shapes}


def alive_counts(
    shapes: Mapping[str, tuple[int, ...]],
    densities: Mapping[str, float],
    *,
    total_alive: int | None = None,
) -> dict[str, int]:
    """Alive weights per layer for the given densities.

    By default as rigl draws its masks: ``N - floor((1 - d) * N)`` (``get_mask_random_numpy``),
    which may keep up to one weight per layer more than ``sum d * N``. With ``total_alive``
    the counts are apportioned to sum to exactly that number instead: each layer gets
    ``floor(d * N)`` and the weights left go one each to the largest fractional parts (ties:
    the earlier layer), never above ``N``.

    Raises:
        ValueError: a name without a density, or ``total_alive`` outside what the layers hold.
    """
    missing = [n for n in shapes if n not in densities]
    if missing:
        raise ValueError(f"no density for layers {missing[:5]}")
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    if total_alive is None:
        return {n: sizes[n] - _n_zeros(sizes[n], 1.0 - densities[n]) for n in shapes}
    if not 0 <= total_alive <= sum(sizes.values()):
        raise ValueError(f"total_alive {total_alive} is not in [0, {sum(sizes.values())}]")
    exact = {n: densities[n] * sizes[n] for n in shapes}
    counts = {n: min(sizes[n], math.floor(exact[n])) for n in shapes}
    left = total_alive - sum(counts.values())
    # largest remainder first; sorted() is stable, so among equal remainders the earlier layer
    order = sorted(shapes, key=lambda n: exact[n] - counts[n], reverse=True)
    while left > 0:  # terminates: total_alive <= sum of sizes
        for n in order:
            if left > 0 and counts[n] < sizes[n]:
                counts[n] += 1
                left -= 1
    while left < 0:  # densities above total_alive: take from the smallest remainders
        for n in reversed(order):
            if left < 0 and counts[n] > 0:
                counts[n] -= 1
                left += 1
    return counts


def random_mask(
    shapes: Mapping[str, tuple[int, ...]],
    counts: Mapping[str, int],
    *,
    generator: torch.Generator,
) -> Mask:
    """A mask with exactly ``counts[name]`` alive weights per layer at uniformly random places
    (rigl's sparse initialisation: a flat mask with its first ``N - count`` entries zero,
    shuffled). Layers are drawn in ``shapes`` order with ``generator`` (CPU), so a seed fixes
    the mask."""
    out = {}
    for name, shape in shapes.items():
        size = math.prod(shape)
        if not 0 <= counts[name] <= size:
            raise ValueError(f"layer {name!r}: {counts[name]} alive of {size} is impossible")
        flat = torch.ones(size, dtype=torch.bool)
        flat[: size - counts[name]] = False
        out[name] = flat[torch.randperm(size, generator=generator)].reshape(shape)
    return Mask(out)


def rigl_drop_fraction(
    step: int,
    *,
    end_step: int,
    initial: float = 0.3,
    begin_step: int = 0,
    schedule: DropSchedule = "cosine",
) -> float:
    """The fraction of each layer's alive weights a mask update at global step ``step`` drops.

    ``"cosine"`` is TF's ``cosine_decay(initial, step, end_step - begin_step)`` as rigl calls
    it: ``initial * 0.5 * (1 + cos(pi * min(step, D) / D))`` with ``D = end_step -
    begin_step``. Note that rigl passes the global step, not ``step - begin_step``, so with
    ``begin_step > 0`` the decay does not start at ``initial`` (kept as the reference has it).
    ``"constant"`` is ``initial``. The RigL paper's default: ``initial = 0.3``, cosine, and
    ``end_step`` at 75 % of training. Computed in float64 (rigl: float32).

    Raises:
        ValueError: ``end_step <= begin_step``, or an unknown schedule.
    """
    if end_step <= begin_step:
        raise ValueError(f"end_step ({end_step}) must be after begin_step ({begin_step})")
    if schedule == "constant":
        return initial
    if schedule != "cosine":
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    decay_steps = end_step - begin_step
    completed = min(step, decay_steps) / decay_steps
    return initial * (0.5 * (1.0 + math.cos(math.pi * completed)))


def is_rigl_update_step(step: int, *, begin_step: int, end_step: int, frequency: int) -> bool:
    """Whether rigl updates the mask at global step ``step``: ``begin_step <= step <=
    end_step`` and ``step - begin_step`` a multiple of ``frequency`` (``begin_step >= 0``;
    rigl's last-update counter starts at ``-frequency``, so the first update is at
    ``begin_step`` itself, step 0 included).

    At such an iteration rigl's optimizer applies *no* gradient update (the batch's gradient
    only scores growth) and the global step does not advance: the next batch has the same
    step number and trains normally. :func:`rigl_iterations` spells that out.
    """
    if frequency < 1:
        raise ValueError(f"frequency must be >= 1, got {frequency}")
    return begin_step <= step <= end_step and (step - begin_step) % frequency == 0


def rigl_iterations(
    n_iterations: int, *, begin_step: int, end_step: int, frequency: int
) -> list[tuple[int, bool]]:
    """``(global step, is mask update)`` for each of ``n_iterations`` batches, as
    ``SparseRigLOptimizerBase.apply_gradients`` runs them: a mask-update iteration changes the
    mask only and leaves the global step where it is; any other iteration takes an optimizer
    step and advances it. (``end_step < 0`` means "never stop", as in rigl.)"""
    if frequency < 1:
        raise ValueError(f"frequency must be >= 1, got {frequency}")
    out = []
    step = 0
    last = -frequency
    for _ in range(n_iterations):
        in_range = step >= begin_step and (step <= end_step or end_step < 0)
        if in_range and last + frequency <= step:
            out.append((step, True))
            last = step
        else:
            out.append((step, False))
            step += 1
    return out


def _layer_update(
    alive: Tensor, weight: Tensor, gradient: Tensor, drop_fraction: float
) -> tuple[Tensor, Tensor]:
    """One layer's ``(new alive, grown)`` as flat bool tensors (see :func:`rigl_update`)."""
    n_total = alive.numel()
    n_ones = int(alive.sum())
    n_prune = int(
        torch.tensor(float(n_ones), dtype=torch.float32)
        * torch.tensor(drop_fraction, dtype=torch.float32)
    )
    n_keep = n_ones - n_prune
    neg_inf = torch.tensor(float("-inf"))
    score_drop = torch.where(alive, weight.abs().double(), neg_inf.double())
    keep_order = torch.sort(score_drop, descending=True, stable=True).indices
    kept = torch.zeros(n_total, dtype=torch.bool)
    kept[keep_order[:n_keep]] = True
    score_grow = torch.where(kept, neg_inf.double(), gradient.abs().double())
    grow_order = torch.sort(score_grow, descending=True, stable=True).indices
    regrown = torch.zeros(n_total, dtype=torch.bool)
    regrown[grow_order[:n_prune]] = True
    return kept | regrown, regrown & ~alive


def rigl_update(
    weights: Mapping[str, Tensor],
    gradients: Mapping[str, Tensor],
    mask: Mask,
    drop_fraction: float,
) -> tuple[Mask, dict[str, Tensor]]:
    """One RigL mask update: per layer, drop the smallest-magnitude alive weights and grow as
    many where the dense gradient is largest.

    Per layer (as rigl's ``_get_update_op``): ``k = int(float32(alive) * float32(
    drop_fraction))``; keep the ``alive - k`` alive weights of largest ``|w|``; then grow the
    ``k`` positions of largest ``|g|`` among all positions not kept, the ones just dropped
    included (so a dropped weight can be grown straight back; it then keeps its value and its
    optimizer state, and is not in ``grown``). The alive count of every layer is unchanged.

    Ties: both selections rank by a stable descending sort, as TF's ``top_k`` (among equal
    scores the lower flat index ranks higher): among equal ``|w|`` the later weight is
    dropped; among equal ``|g|`` the earlier position grows. rigl adds N(0, 1e-5) noise to the
    drop scores, which breaks the drop ties at random (and, for alive weights with ``|w|``
    below the noise, can even keep a dead position); this function uses no noise and only
    ever drops alive weights.

    Args:
        weights: ``name -> weight`` for every name of ``mask`` (dense tensors holding zeros
            where pruned; only alive entries are read).
        gradients: ``name -> dense gradient`` of the loss with respect to the (masked) weight,
            before masking: rigl's ``masked_grads``.
        mask: the current mask.
        drop_fraction: in [0, 1], e.g. :func:`rigl_drop_fraction`.

    Returns:
        ``(new mask, grown)``: ``grown[name]`` (bool, the weight's shape) marks the new
        connections, alive now and not alive before; they must start at 0 with zero optimizer
        state (rigl's default ``grow_init='zeros'``, ``initial_acc_scale=0``):
        :func:`apply_mask_update_` does it.

    Raises:
        MaskError: a layer of ``mask`` missing from ``weights`` or ``gradients`` or shaped
            differently. ValueError: ``drop_fraction`` outside [0, 1] or a non-finite score.
    """
    if not 0.0 <= drop_fraction <= 1.0:
        raise ValueError(f"drop_fraction must be in [0, 1], got {drop_fraction}")
    for what, tensors in (("weights", weights), ("gradients", gradients)):
        for name in mask:
            if name not in tensors:
                raise MaskError(f"{what} lack the masked parameter {name!r}")
            if tuple(tensors[name].shape) != tuple(mask[name].shape):
                raise MaskError(
                    f"{name!r}: {what} shape {tuple(tensors[name].shape)} != mask shape "
                    f"{tuple(mask[name].shape)}"
                )
    new: dict[str, Tensor] = {}
    grown: dict[str, Tensor] = {}
    for name, alive in mask.items():
        flat_alive = alive.reshape(-1).cpu()
        w = weights[name].detach().reshape(-1).cpu()
        g = gradients[name].detach().reshape(-1).cpu()
        if not bool(torch.isfinite(w[flat_alive]).all()) or not bool(torch.isfinite(g).all()):
            raise ValueError(f"cannot update the mask: non-finite weights or gradients in {name}")
        layer_new, layer_grown = _layer_update(flat_alive, w, g, drop_fraction)
        new[name] = layer_new.reshape(alive.shape).to(alive.device)
        grown[name] = layer_grown.reshape(alive.shape).to(alive.device)
    return Mask(new), grown


def particle_mean(
    states: Sequence[Mapping[str, Tensor]], names: Iterable[str]
) -> dict[str, Tensor]:
    """The uniform mean of every entry ``names`` of the particles' ``states`` (weights or
    gradients), ``name -> tensor`` in the first state's dtype, on the CPU: summed in float64
    in index order, then divided (one particle: exactly its own values).

    Raises:
        MaskError: a state lacks one of ``names``.
    """
    out = {}
    for name in names:
        missing = [i for i, state in enumerate(states) if name not in state]
        if missing:
            raise MaskError(f"particle {missing[0]} lacks the masked parameter {name!r}")
        total = states[0][name].detach().double().cpu()
        for state in states[1:]:
            total = total + state[name].detach().double().cpu()
        out[name] = (total / len(states)).to(states[0][name].dtype)
    return out


def shared_rigl_update(
    particle_weights: Sequence[Mapping[str, Tensor]],
    particle_gradients: Sequence[Mapping[str, Tensor]],
    mask: Mask,
    drop_fraction: float,
) -> tuple[Mask, dict[str, Tensor]]:
    """One RigL update that N particles share (SWAMP on RigL, our reading of "the particles
    share the mask schedule's decisions"): :func:`rigl_update` on the particles' uniform
    weight average and their mean (signed) gradient (:func:`particle_mean`), the gradient of
    their mean loss. Every particle then gets the same mask and the same ``grown``, so they
    stay averageable and the alive count stays constant. (Intersecting per-particle updates
    would not keep the count.) :func:`~sparseavg.training.train_together` takes this update
    at every step of :class:`RigLSchedule` under :class:`~sparseavg.pruning.Lockstep`.

    Raises:
        ValueError: no particles, or different numbers of weights and gradients.
        MaskError: a particle lacks a masked parameter.
    """
    if not particle_weights or len(particle_weights) != len(particle_gradients):
        raise ValueError(
            f"need as many gradients as weights, at least one: got {len(particle_weights)} "
            f"weights and {len(particle_gradients)} gradients"
        )
    weights = particle_mean(particle_weights, mask)
    gradients = particle_mean(particle_gradients, mask)
    return rigl_update(weights, gradients, mask, drop_fraction)


@torch.no_grad()
def apply_mask_update_(
    params: Mapping[str, Tensor],
    mask: Mask,
    grown: Mapping[str, Tensor],
    optimizer_state: Mapping[Tensor, Mapping[str, Any]] | None = None,
) -> None:
    """Write a mask update into live tensors, in place: every weight outside ``mask`` and every
    ``grown`` weight becomes 0, and so do the same entries of every optimizer-state tensor
    shaped like its parameter (SGD momentum, Adam moments; ``step`` is left alone).

    ``params`` maps names to the optimizer's own parameter tensors (e.g.
    ``dict(model.named_parameters())``) and ``optimizer_state`` is ``optimizer.state`` (keyed
    by those tensors). Weights alive before and after (also dropped-and-regrown ones) keep
    value and state.
    """
    mask.validate(params)
    for name, alive in mask.items():
        p = params[name]
        keep = alive.to(p.device) & ~grown[name].to(p.device)
        targets = [p]
        if optimizer_state is not None:
            state = optimizer_state.get(p, {})
            targets += [
                t
                for key, t in state.items()
                if key != "step" and isinstance(t, Tensor) and t.shape == p.shape
            ]
        for t in targets:
            t.mul_(keep.to(t.dtype))


#: rigl's ΔT (``mask_update_freq``, ImageNet and CIFAR flags): 100 steps
RIGL_INTERVAL = 100
#: the automatic ΔT aims at this many updates before the end step when 100 steps would give
#: fewer (small data sets: MNIST-1D's 10 epochs are 290 steps)
RIGL_MIN_UPDATES = 20


def rigl_interval(end_step: int) -> int:
    """The automatic ΔT for a run whose mask updates end at ``end_step``: rigl's 100 steps
    where that leaves at least :data:`RIGL_MIN_UPDATES` updates before ``end_step``, else
    ``end_step // 20`` (at least 1), so a short run still updates its mask about 20 times
    (21 with step 0). MNIST-1D, 10 epochs of 29 steps, ends at step 218: ΔT = 10."""
    return max(1, min(RIGL_INTERVAL, end_step // RIGL_MIN_UPDATES))


@dataclass(frozen=True)
class RigLSchedule:
    """RigL's mask schedule (a :class:`~sparseavg.pruning.StepMaskSchedule`): at global steps
    ``0, ΔT, 2ΔT, ... <= end_step`` drop the smallest-magnitude alive weights of each layer
    and grow as many where the batch's dense gradient is largest (:func:`rigl_update`), the
    fraction :func:`rigl_drop_fraction` of ``drop_fraction`` on a cosine decay to 0 at
    ``end_step = max(1, round(end * total_steps))``.

    Attributes:
        drop_fraction: the initial drop fraction (rigl: 0.3), in [0, 1].
        end: where the updates end, as a fraction of training, in (0, 1] (paper: 0.75).
        interval: ΔT in optimizer steps; 0 = :func:`rigl_interval` of the end step.
    """

    drop_fraction: float = 0.3
    end: float = 0.75
    interval: int = 0
    needs_gradients: bool = False  # the epoch-end hook does nothing

    def __post_init__(self) -> None:
        if not 0.0 <= self.drop_fraction <= 1.0:
            raise ValueError(f"drop_fraction must be in [0, 1], got {self.drop_fraction}")
        if not 0.0 < self.end <= 1.0:
            raise ValueError(f"end must be in (0, 1], got {self.end}")
        if self.interval < 0:
            raise ValueError(f"interval must be >= 0, got {self.interval}")

    def end_step(self, total_steps: int) -> int:
        """The last step that may update the mask."""
        return max(1, round(self.end * total_steps))

    def frequency(self, total_steps: int) -> int:
        """ΔT in steps."""
        return self.interval or rigl_interval(self.end_step(total_steps))

    def update_steps(self, total_steps: int) -> list[int]:
        """Every step (0-based) of a ``total_steps`` run that updates the mask."""
        end = min(self.end_step(total_steps), total_steps - 1)
        return list(range(0, end + 1, self.frequency(total_steps)))

    def updates_at(self, step: int, steps_per_epoch: int, total_steps: int) -> bool:
        return is_rigl_update_step(
            step,
            begin_step=0,
            end_step=self.end_step(total_steps),
            frequency=self.frequency(total_steps),
        )

    def update_step(
        self,
        step: int,
        steps_per_epoch: int,
        total_steps: int,
        weights: Mapping[str, Tensor],
        gradients: Mapping[str, Tensor],
        mask: Mask,
    ) -> tuple[Mask, dict[str, Tensor]]:
        fraction = rigl_drop_fraction(
            step, end_step=self.end_step(total_steps), initial=self.drop_fraction
        )
        return rigl_update(weights, gradients, mask, fraction)

    def update(
        self,
        epochs_done: int,
        weights: Mapping[str, Tensor],
        gradients: Mapping[str, Tensor] | None,
        mask: Mask,
    ) -> Mask | None:
        """Nothing at epoch ends: RigL changes the mask at steps only."""
        return None
