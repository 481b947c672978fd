"""Channel masks: zeros in whole output channels (conv filters, linear rows) and in the input
columns of every layer that reads them, coupled as Torch-Pruning's dependency graph groups
them (a residual block's convolutions, BatchNorms, the next layer's inputs).

The coupling is found once, from the model and an example input, by :func:`channel_groups`
(the optional ``torch-pruning`` package); it is plain data, a tuple of :class:`ChannelGroup`.
Pruning is then a pure function of the weights, the mask and those groups
(:func:`channel_prune`, :func:`channel_prune_to`), and the result is an ordinary
:class:`~sparseavg.pruning.Mask`: training, averaging and the executors keep it as they keep
any mask. :func:`slim_model` removes the pruned channels physically.

A channel is scored by the norm of the masked weights it touches, over every mask-covered
weight of its group (the producing layers' rows and the consuming layers' columns):
``l1`` the sum of absolute values, ``l2`` the square root of the sum of squares. BatchNorm
weights and biases are not in the mask: a pruned channel's BatchNorm emits a constant, but
every layer that reads the channel has that input column zeroed, so the constant reaches
nothing; the slim model drops the channel from the BatchNorm with its convolution and gives
the same outputs.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .mask import Mask
from .schedule import cubic_sparsity
from .strategies import Scope

#: What to run when the ``torch-pruning`` package is missing.
INSTALL = 'pip install "sparseavg[structured]"'

#: How a channel is scored: sum of |w| (``l1``) or sqrt of the sum of w² (``l2``).
Norm = Literal["l1", "l2"]
NORMS: tuple[str, ...] = ("l1", "l2")

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class ChannelError(ValueError):
    """A model or mask that channel pruning cannot serve."""


def torch_pruning_available() -> bool:
    """Whether the ``torch_pruning`` package can be imported (without importing it)."""
    return importlib.util.find_spec("torch_pruning") is not None


@dataclass(frozen=True)
class Coupled:
    """One parameter a channel group reaches.

    Attributes:
        name: the parameter's name, as in ``model.named_parameters()``.
        dim: the dimension the group's channels index: 0 for a layer's outputs (rows, the
            bias, BatchNorm's weight and bias), 1 for a layer's inputs (columns).
        index: for each channel of the group, the indices along ``dim`` (one, or several
            where a flatten maps a conv channel to many linear inputs).
    """

    name: str
    dim: int
    index: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class ChannelGroup:
    """Channels pruned together: channel ``j`` of the group is index ``index[j]`` along
    ``dim`` of every member.

    Attributes:
        root: the name of the module whose output channels are the group's channels.
        channels: how many channels the group has.
        members: every parameter the channels reach (weights, biases, BatchNorm).
    """

    root: str
    channels: int
    members: tuple[Coupled, ...]


ChannelGroups = tuple[ChannelGroup, ...]


# -- finding the groups (Torch-Pruning) ----------------------------------------------------------


def output_layer(model: nn.Module) -> str:
    """The name of the model's last conv or linear module (its rows are the classes)."""
    last = ""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, *_CONVS)):
            last = name
    if not last:
        raise ChannelError(f"{type(model).__name__} has no conv or linear layer")
    return last


def channel_groups(model: nn.Module, example: Any, prunable: Collection[str]) -> ChannelGroups:
    """The model's channel groups that a mask over ``prunable`` can prune.

    Torch-Pruning's ``DependencyGraph`` traces ``model(example)`` and couples every layer whose
    channels must go together. A group is kept when its members are conv (ungrouped,
    not transposed), linear and BatchNorm layers only, every conv or linear weight among them
    is in ``prunable`` (a layer kept dense keeps its channels and its inputs), and it does not
    contain the output layer's rows; the network's input channels are never a group.

    Args:
        model: the model (its weights do not matter; it is not changed).
        example: an input batch (a tensor, or a tuple of positional inputs).
        prunable: the names of the masked parameters.

    Raises:
        ModuleNotFoundError: ``torch_pruning`` is not installed (message: :data:`INSTALL`).
    """
    if not torch_pruning_available():
        raise ModuleNotFoundError(f"channel pruning needs the torch-pruning package: {INSTALL}")
    import torch_pruning as tp

    names = {module: name for name, module in model.named_modules()}
    last = dict(model.named_modules())[output_layer(model)]
    was_training = model.training
    model.eval()
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        groups = list(
            graph.get_all_groups(ignored_layers=[last], root_module_types=[nn.Linear, *_CONVS])
        )
    finally:
        model.train(was_training)
    out: list[ChannelGroup] = []
    allowed = set(prunable)
    for group in groups:
        found = _group(group, names, last, allowed)
        if found is not None:
            out.append(found)
    return tuple(out)


def _group(
    group: Any, names: Mapping[nn.Module, str], last: nn.Module, prunable: set[str]
) -> ChannelGroup | None:
    """One Torch-Pruning group as a :class:`ChannelGroup`, or ``None`` if it may not be pruned."""
    root_module = group.items[0].dep.target.module
    channels = len(group.items[0].idxs)
    members: list[Coupled] = []
    for item in group.items:
        module = item.dep.target.module
        if not isinstance(module, nn.Module) or module not in names:
            continue  # a graph node of Torch-Pruning's: add, flatten, concat, ...
        if next(module.parameters(recurse=False), None) is None:
            continue  # a module without parameters: ReLU, pooling, ...
        if module is last and not _is_input(item):
            return None
        if isinstance(module, _CONVS):
            if module.groups != 1:
                return None
        elif not isinstance(module, (nn.Linear, *_NORMS)):
            return None
        dim = 1 if _is_input(item) and not isinstance(module, _NORMS) else 0
        index: list[list[int]] = [[] for _ in range(channels)]
        for idx, root in zip(item.idxs, item.root_idxs, strict=True):
            if root is None or not 0 <= root < channels:
                return None
            index[root].append(int(idx))
        if any(not ix for ix in index):
            return None
        frozen = tuple(tuple(ix) for ix in index)
        prefix = names[module]
        for pname, _ in module.named_parameters(recurse=False):
            if pname not in ("weight", "bias") or (dim == 1 and pname == "bias"):
                continue
            full = f"{prefix}.{pname}" if prefix else pname
            if pname == "weight" and not isinstance(module, _NORMS) and full not in prunable:
                return None
            members.append(Coupled(full, dim, frozen))
    if not members:
        return None
    return ChannelGroup(names[root_module], channels, tuple(_dedupe(members)))


def _is_input(item: Any) -> bool:
    return getattr(item.dep.handler, "__name__", "") == "prune_in_channels"


def _dedupe(members: list[Coupled]) -> list[Coupled]:
    seen: set[tuple[str, int]] = set()
    out = []
    for m in members:
        if (m.name, m.dim) not in seen:
            seen.add((m.name, m.dim))
            out.append(m)
    return out


# -- scoring and pruning (pure) ------------------------------------------------------------------


def _flat(member: Coupled) -> tuple[Tensor, Tensor]:
    """``(indices along dim, the channel each belongs to)`` as flat int64 tensors."""
    idx = [i for ix in member.index for i in ix]
    owner = [j for j, ix in enumerate(member.index) for _ in ix]
    return torch.tensor(idx, dtype=torch.long), torch.tensor(owner, dtype=torch.long)


def _per_index(t: Tensor, dim: int) -> Tensor:
    """``t`` with ``dim`` first and the rest flattened: ``(size, rest)``."""
    return t.movedim(dim, 0).reshape(t.shape[dim], -1)


def channel_scores(
    weights: Mapping[str, Tensor], mask: Mask, groups: Sequence[ChannelGroup], norm: Norm = "l1"
) -> list[Tensor]:
    """Each group's channel scores, float64 ``(channels,)``, over the masked weights of every
    mask-covered member at the channel's indices (pruned weights count as zeros): their mean
    absolute value (``l1``) or root mean square (``l2``). Per weight, so that channels of
    layers with different fan-ins compare under a global ranking."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    out = []
    for g in groups:
        total = torch.zeros(g.channels, dtype=torch.float64)
        count = torch.zeros(g.channels, dtype=torch.float64)
        for m in g.members:
            if m.name not in mask:
                continue
            w = weights[m.name].detach().to("cpu", torch.float64) * mask[m.name].cpu()
            rows = _per_index(w, m.dim)
            per = rows.abs().sum(1) if norm == "l1" else rows.pow(2).sum(1)
            idx, owner = _flat(m)
            total.index_add_(0, owner, per[idx])
            size = torch.full((len(idx),), float(rows.shape[1]), dtype=torch.float64)
            count.index_add_(0, owner, size)
        mean = total / count.clamp(min=1.0)
        out.append(mean if norm == "l1" else mean.sqrt())
    return out


def alive_channels(mask: Mask, groups: Sequence[ChannelGroup]) -> list[Tensor]:
    """Each group's alive channels, bool ``(channels,)``: those with a mask-covered weight
    alive."""
    out = []
    for g in groups:
        count = torch.zeros(g.channels, dtype=torch.long)
        for m in g.members:
            if m.name not in mask:
                continue
            any_alive = _per_index(mask[m.name].cpu(), m.dim).any(1).long()
            idx, owner = _flat(m)
            count.index_add_(0, owner, any_alive[idx])
        out.append(count > 0)
    return out


def channel_sparsity(mask: Mask, groups: Sequence[ChannelGroup]) -> float:
    """Pruned channels over all channels of ``groups`` (0.0 when there are none)."""
    alive = alive_channels(mask, groups)
    total = sum(a.numel() for a in alive)
    return 1.0 - sum(int(a.sum()) for a in alive) / total if total else 0.0


def remove_channels(
    mask: Mask, groups: Sequence[ChannelGroup], removed: Sequence[Collection[int]]
) -> Mask:
    """``mask`` with channels ``removed[i]`` of group ``i`` zeroed in every mask-covered
    member (rows of the producing layers, columns of the consuming ones)."""
    tensors = {n: t.clone() for n, t in mask.items()}
    for g, channels in zip(groups, removed, strict=True):
        if not channels:
            continue
        for m in g.members:
            if m.name not in tensors:
                continue
            idx = [i for j in sorted(channels) for i in m.index[j]]
            where = torch.tensor(idx, dtype=torch.long, device=tensors[m.name].device)
            tensors[m.name].index_fill_(m.dim, where, False)
    return Mask(tensors)


def _lowest(scores: list[Tensor], alive: list[Tensor], counts: list[int] | int) -> list[list[int]]:
    """Which alive channels to remove, lowest score first (ties: group order, then channel
    order); never a group's last alive channel. ``counts``: per group, or one global count."""
    removed: list[list[int]] = [[] for _ in scores]
    if isinstance(counts, list):
        for i, (s, a, n) in enumerate(zip(scores, alive, counts, strict=True)):
            candidates = torch.nonzero(a).flatten()
            n = min(n, len(candidates) - 1)
            if n > 0:
                order = torch.sort(s[candidates], stable=True).indices[:n]
                removed[i] = sorted(int(c) for c in candidates[order])
        return removed
    left = [int(a.sum()) for a in alive]
    group_of = torch.cat([torch.full((len(s),), i, dtype=torch.long) for i, s in enumerate(scores)])
    channel_of = torch.cat([torch.arange(len(s)) for s in scores])
    keep = torch.cat(alive)
    flat = torch.cat(scores)[keep]
    group_of, channel_of = group_of[keep], channel_of[keep]
    n = counts
    for k in torch.sort(flat, stable=True).indices.tolist():
        if n <= 0:
            break
        g = int(group_of[k])
        if left[g] <= 1:
            continue
        removed[g].append(int(channel_of[k]))
        left[g] -= 1
        n -= 1
    return [sorted(r) for r in removed]


def channel_prune(
    weights: Mapping[str, Tensor],
    mask: Mask,
    groups: Sequence[ChannelGroup],
    fraction: float,
    *,
    norm: Norm = "l1",
    scope: Scope = "global",
) -> Mask:
    """Remove ``fraction`` of the alive channels with the lowest :func:`channel_scores`.

    ``scope="global"`` ranks the channels of all groups together and removes
    ``round(fraction * alive)`` of them; ``"layerwise"`` removes ``round(fraction * alive_g)``
    of each group's. A group's last alive channel is never removed (a global count that would
    need it removes fewer). Weights the mask already prunes stay pruned.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    return _prune_lowest(
        weights, mask, groups, lambda alive: round(fraction * int(alive.sum())), norm, scope
    )


def channel_prune_to(
    weights: Mapping[str, Tensor],
    mask: Mask,
    groups: Sequence[ChannelGroup],
    sparsity: float,
    *,
    norm: Norm = "l1",
    scope: Scope = "global",
) -> Mask:
    """Prune channels until ``round(sparsity * channels)`` of them are pruned (``"global"``:
    over all groups; ``"layerwise"``: in each group), lowest score first, never a group's last;
    already pruned channels count."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    return _prune_lowest(
        weights,
        mask,
        groups,
        lambda alive: round(sparsity * alive.numel()) - int((~alive).sum()),
        norm,
        scope,
    )


def _prune_lowest(
    weights: Mapping[str, Tensor],
    mask: Mask,
    groups: Sequence[ChannelGroup],
    count: Callable[[Tensor], int],
    norm: Norm,
    scope: Scope,
) -> Mask:
    """Remove the lowest-scoring alive channels: ``count(alive)`` of them, ``alive`` (bool, one
    entry per channel) over all groups' channels together (``"global"``) or each group's
    (``"layerwise"``)."""
    scores = channel_scores(weights, mask, groups, norm)
    alive = alive_channels(mask, groups)
    return remove_channels(mask, groups, _lowest(scores, alive, _counts(alive, count, scope)))


def _counts(alive: list[Tensor], count: Callable[[Tensor], int], scope: Scope) -> list[int] | int:
    """How many channels to remove: ``count`` of all groups' alive channels together
    (``"global"``, one number) or of each group's (``"layerwise"``, one per group)."""
    if scope == "global":
        return count(torch.cat(alive)) if alive else 0
    if scope == "layerwise":
        return [count(a) for a in alive]
    raise ValueError(f"scope must be 'global' or 'layerwise', got {scope!r}")


def random_channel_prune(
    mask: Mask,
    groups: Sequence[ChannelGroup],
    fraction: float,
    *,
    generator: torch.Generator,
    scope: Scope = "global",
) -> Mask:
    """Remove ``fraction`` of the alive channels chosen uniformly at random: as many as
    :func:`channel_prune` removes (``round(fraction * alive)``, over all groups or per group),
    coupled layers together, never a group's last alive channel (the random-channel
    baseline). ``generator`` fixes the draw: one uniform score per channel of every group, in
    group order."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    alive = alive_channels(mask, groups)
    scores = [torch.rand(g.channels, generator=generator, dtype=torch.float64) for g in groups]
    count = _counts(alive, lambda a: round(fraction * int(a.sum())), scope)
    return remove_channels(mask, groups, _lowest(scores, alive, count))


@dataclass(frozen=True)
class ChannelGradualPruning:
    """Gradual pruning of whole channels: at each epoch end between ``start_epoch`` and
    ``end_epoch``, prune channels to :func:`cubic_sparsity` of the epochs done
    (:func:`channel_prune_to`; the sparsity counts channels of ``groups``).

    ``groups`` is ``None`` until the engine binds the model's groups
    (:func:`~sparseavg.recipes.rules.with_channel_groups`).
    """

    start_epoch: int
    end_epoch: int
    final_sparsity: float
    scope: Scope = "global"
    norm: Norm = "l1"
    groups: ChannelGroups | None = None
    needs_gradients: bool = False

    def update(
        self,
        epochs_done: int,
        weights: Mapping[str, Tensor],
        gradients: Mapping[str, Tensor] | None,
        mask: Mask,
    ) -> Mask | None:
        if epochs_done <= self.start_epoch or epochs_done > self.end_epoch:
            return None
        groups = bound(self.groups)
        target = cubic_sparsity(
            epochs_done,
            start_step=self.start_epoch,
            end_step=self.end_epoch,
            final_sparsity=self.final_sparsity,
        )
        new = channel_prune_to(weights, mask, groups, target, norm=self.norm, scope=self.scope)
        return None if new == mask else new


def bound(groups: ChannelGroups | None) -> ChannelGroups:
    """``groups``, or a :class:`ChannelError` if the engine has not bound them."""
    if groups is None:
        raise ChannelError("channel groups are not bound: the engine binds them before a cycle")
    return groups


# -- the slim model ------------------------------------------------------------------------------


def pruned_channels(mask: Mask, groups: Sequence[ChannelGroup]) -> dict[str, list[int]]:
    """The pruned channels of each group with any, by the group's root module name."""
    out = {}
    for g, alive in zip(groups, alive_channels(mask, groups), strict=True):
        dead = torch.nonzero(~alive).flatten().tolist()
        if dead:
            out[g.root] = dead
    return out


def slim_model(model: nn.Module, example: Any, mask: Mask) -> nn.Module:
    """``model`` (weights already masked) with the channels ``mask`` prunes removed
    physically by Torch-Pruning: a smaller dense model with the same outputs.

    A channel is removed when ``mask`` prunes every weight of it that the mask covers (the
    producing rows and the consuming columns: :func:`alive_channels`), so the channel reaches
    no output and removing it changes none; any mask may be slimmed, and a weight mask
    usually has no such channel. Each removed channel leaves the producing layers (rows,
    biases), their BatchNorms (weight, bias, running statistics) and the consuming layers'
    columns. The model is changed in place and returned.

    Raises:
        ModuleNotFoundError: ``torch_pruning`` is not installed.
    """
    import torch_pruning as tp

    groups = channel_groups(model, example, list(mask))
    dead = pruned_channels(mask, groups)
    modules = dict(model.named_modules())
    was_training = model.training
    model.eval()
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        with torch.no_grad():
            for root, channels in dead.items():
                module = modules[root]
                group = graph.get_pruning_group(
                    module, graph.get_pruner_of_module(module).prune_out_channels, idxs=channels
                )
                group.prune()
    finally:
        model.train(was_training)
    return model


def parameter_count(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def expected_removed(model: nn.Module, mask: Mask, groups: Sequence[ChannelGroup]) -> int:
    """How many parameters :func:`slim_model` removes: for each pruned channel, its indices
    along ``dim`` of every member, times that member's size across the other dimensions
    (an input column of a layer whose row is also removed counted once)."""
    params = dict(model.named_parameters())
    dead = {g.root: set(c) for g, c in zip(groups, _dead_list(mask, groups), strict=True)}
    removed_rows: dict[str, set[int]] = {}
    removed_cols: dict[str, set[int]] = {}
    for g in groups:
        for m in g.members:
            target = removed_rows if m.dim == 0 else removed_cols
            target.setdefault(m.name, set()).update(i for j in dead[g.root] for i in m.index[j])
    total = 0
    for name, p in params.items():
        rows, cols = removed_rows.get(name, set()), removed_cols.get(name, set())
        shape = list(p.shape)
        kept = (shape[0] - len(rows)) * (shape[1] - len(cols) if len(shape) > 1 else 1)
        kept *= math.prod(shape[2:])
        total += p.numel() - kept
    return total


def _dead_list(mask: Mask, groups: Sequence[ChannelGroup]) -> list[list[int]]:
    return [torch.nonzero(~a).flatten().tolist() for a in alive_channels(mask, groups)]
