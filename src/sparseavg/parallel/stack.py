"""K copies of one model as one stack: where each tensor lives, the batched loss, the SGD
step over all copies at once, and checkpoints in :func:`~sparseavg.train` 's format.

The pieces :mod:`.stacked` trains with; each works on plain tensors of shape ``(K, ...)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..pruning import Mask
from ..training import (
    TrainSettings,
    build_optimizer,
)
from ..training.loop import correct_predictions, optimizer_state_to_cpu
from ..utils.state import State

# -- where a model's state lives in a stack ------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where a model's state lives in a stack of K copies.

    The trainable parameters of copy k are row k of one ``(K, P)`` tensor, concatenated in
    ``named_parameters`` order (the optimizer's order); each buffer is one ``(K, *shape)``
    tensor.

    Attributes:
        params: the parameter names, in ``named_parameters`` order.
        shapes: their shapes.
        buffers: the buffer names, in ``named_buffers`` order (non-persistent ones included).
        keys: the ``state_dict`` keys, in order.
    """

    params: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    buffers: tuple[str, ...]
    keys: tuple[str, ...]

    @classmethod
    def of(cls, model: nn.Module) -> Layout:
        """The layout of ``model``."""
        named = list(model.named_parameters())
        return cls(
            params=tuple(n for n, _ in named),
            shapes=tuple(p.shape for _, p in named),
            buffers=tuple(n for n, _ in model.named_buffers()),
            keys=tuple(model.state_dict().keys()),
        )

    @property
    def sizes(self) -> list[int]:
        """Elements of each parameter; they sum to P."""
        return [math.prod(s) for s in self.shapes]

    def views(self, flat: Tensor) -> dict[str, Tensor]:
        """Parameter name -> view ``(*lead, *shape)`` of a ``(*lead, P)`` tensor (one
        ``split``, so autograd gathers the gradients of all views with one ``cat``)."""
        lead = flat.shape[:-1]
        pieces = torch.split(flat, self.sizes, dim=-1)
        return {
            n: t.view(*lead, *s) for n, t, s in zip(self.params, pieces, self.shapes, strict=True)
        }

    def flatten(self, tensors: Mapping[str, Tensor]) -> Tensor:
        """The ``(P,)`` row of the parameters in ``tensors`` (name -> tensor)."""
        return torch.cat([tensors[n].detach().reshape(-1) for n in self.params])

    def state(self, copy: Copy) -> State:
        """The CPU ``state_dict`` of one copy (keys in order, fresh tensors)."""
        found = {
            **self.views(copy.row.detach()),
            **dict(zip(self.buffers, copy.buffers, strict=True)),
        }
        return {k: found[k].detach().to("cpu").clone() for k in self.keys}


def read_state(model: nn.Module, layout: Layout, state: Mapping[str, Tensor]) -> Copy:
    """``state`` as ``model`` holds it once loaded (its dtypes, its device): loads it into
    ``model`` (scratch space) and reads the parameter row and the buffers back."""
    model.load_state_dict(state)
    with torch.no_grad():
        named = dict(model.named_buffers())
        return Copy(
            layout.flatten(dict(model.named_parameters())).clone(),
            [named[n].detach().clone() for n in layout.buffers],
        )


@dataclass(frozen=True)
class Copy:
    """One copy of the model in stack form: ``row`` ``(P,)`` and its buffers."""

    row: Tensor
    buffers: list[Tensor]


class StackedModel(nn.Module):
    """K copies of a model's state: the parameter ``flat`` ``(K, P)`` and one ``(K, *shape)``
    buffer per model buffer (``buffer_<i>`` in :attr:`Layout.buffers` order).

    A module, so that :class:`~torch.optim.swa_utils.AveragedModel` averages it exactly as
    :func:`~sparseavg.train` averages a model (its update is elementwise, so averaging the
    stack averages each copy).
    """

    def __init__(self, copies: Sequence[Copy]) -> None:
        super().__init__()
        self.flat = nn.Parameter(torch.stack([c.row for c in copies]))
        for i in range(len(copies[0].buffers)):
            self.register_buffer(f"buffer_{i}", torch.stack([c.buffers[i] for c in copies]))

    def stacked_buffers(self) -> list[Tensor]:
        """The ``(K, *shape)`` buffers, in :attr:`Layout.buffers` order."""
        return list(self.buffers())

    def copy(self, k: int) -> Copy:
        """Copy ``k`` (views, not clones)."""
        return Copy(self.flat.detach()[k], [b[k] for b in self.buffers()])

    @torch.no_grad()
    def select(self, keep: Sequence[int]) -> None:
        """Keep only the copies ``keep`` (in that order)."""
        index = torch.tensor(list(keep), device=self.flat.device)
        self.flat = nn.Parameter(self.flat.detach()[index], self.flat.requires_grad)
        for name, b in list(self.named_buffers()):
            setattr(self, name, b[index])


# -- one step ------------------------------------------------------------------------------------


LossFn = Callable[[Tensor, Sequence[Tensor], Tensor, Tensor], tuple[Tensor, Tensor]]


def make_loss(model: nn.Module, layout: Layout) -> LossFn:
    """The stacked loss: ``(flat (K, P), buffers [(K, ...)], x (K, B, ...), y (K, B))`` ->
    ``(losses, hits)``: ``(K,)`` mean cross-entropies, copy k's loss of its own batch under
    its own parameters, and ``(K,)`` int64 counts of copy k's samples whose argmax prediction
    was the label. Running statistics of the buffers are updated in place (``model`` must be
    in train mode).
    """

    def one(
        params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, y: Tensor
    ) -> tuple[Tensor, Tensor]:
        logits = functional_call(model, (params, buffers), (x,))
        hits = correct_predictions(logits.detach(), y).sum()
        return F.cross_entropy(logits, y), hits

    batched = torch.vmap(one, randomness="different")

    def loss(
        flat: Tensor, buffers: Sequence[Tensor], x: Tensor, y: Tensor
    ) -> tuple[Tensor, Tensor]:
        out: tuple[Tensor, Tensor] = batched(
            layout.views(flat), dict(zip(layout.buffers, buffers, strict=True)), x, y
        )
        return out

    return loss


@torch.no_grad()
def sgd_step(
    flat: Tensor,
    grad: Tensor,
    buffer: Tensor | None,
    lr: Tensor,
    weight_decay: Tensor | None,
    mask: Tensor | None,
    *,
    momentum: float,
    nesterov: bool,
) -> Tensor | None:
    """One ``torch.optim.SGD`` step (dampening 0) of K copies at once, under a shared mask.

    Args:
        flat: ``(K, P)`` parameters, updated in place.
        grad: ``(K, P)`` their gradients; masked in place.
        buffer: ``(K, P)`` momentum buffers (updated in place), or ``None`` before the first
            step, where the buffer becomes the gradient (as in SGD).
        lr: ``(K,)`` learning rates.
        weight_decay: ``(K,)`` L2 factors, or ``None`` when all are 0.
        mask: ``(P,)`` 1 where a weight is alive, 0 where pruned (``None``: dense); applied to
            the gradients before and to the weights after the update.
        momentum: the shared momentum (0: plain SGD, no buffer).
        nesterov: Nesterov momentum.

    Returns:
        The momentum buffer (``None`` without momentum).
    """
    if mask is not None:
        grad.mul_(mask)
    d_p = grad if weight_decay is None else torch.addcmul(grad, flat, weight_decay[:, None])
    if momentum != 0:
        if buffer is None:
            buffer = d_p.clone()
        else:
            buffer.mul_(momentum).add_(d_p)
        d_p = d_p.add(buffer, alpha=momentum) if nesterov else buffer
    flat.addcmul_(d_p, lr[:, None], value=-1)
    if mask is not None:
        flat.mul_(mask)
    return buffer


def stack_inputs(xs: Sequence[Tensor], channels_last: bool) -> Tensor:
    """``(K, B, ...)`` of K batches ``(B, ...)``. With ``channels_last``, 4-D batches are laid
    out as ``(B, H, W, K, C)`` in memory, so that vmap's grouped convolution, which sees them as
    ``(B, K * C, H, W)``, gets a channels-last input without a copy."""
    if channels_last and xs[0].dim() == 4:
        return torch.stack([x.permute(0, 2, 3, 1) for x in xs], dim=3).permute(3, 0, 4, 1, 2)
    return torch.stack(list(xs))


def flat_mask(mask: Mask, layout: Layout, like: Tensor) -> Tensor | None:
    """The ``(P,)`` factor row of ``mask`` (1 for unmasked parameters) in ``like`` 's dtype and
    device, or ``None`` for an empty mask."""
    if len(mask) == 0:
        return None
    factors = {
        n: (mask[n] if n in mask else torch.ones(s, dtype=torch.bool))
        for n, s in zip(layout.params, layout.shapes, strict=True)
    }
    return torch.cat([f.reshape(-1).to(like.device, like.dtype) for f in factors.values()])


# -- checkpoints in train()'s format -------------------------------------------------------------


def optimizer_state(
    model: nn.Module, layout: Layout, settings: TrainSettings, lr: float, buffer: Tensor | None
) -> dict[str, object]:
    """The CPU ``state_dict`` of the ``torch.optim.SGD`` that :func:`~sparseavg.train` would
    hold: its param group with the last step's ``lr``, and momentum buffers from ``buffer``
    (``(P,)``; ``None``: none yet)."""
    optimizer = build_optimizer(model, settings)
    for group in optimizer.param_groups:
        group["lr"] = lr
    if buffer is not None:
        params = [p for p in model.parameters() if p.requires_grad]
        for p, b in zip(params, layout.views(buffer).values(), strict=True):
            optimizer.state[p]["momentum_buffer"] = b
    return optimizer_state_to_cpu(optimizer)


def momentum_row(
    model: nn.Module, layout: Layout, settings: TrainSettings, saved: dict[str, object]
) -> Tensor | None:
    """The ``(P,)`` momentum buffers of a saved SGD state (loaded by a real SGD, so in the
    parameters' dtype and device); zeros where one is missing, which the next step treats
    exactly as SGD's first step; ``None`` without momentum."""
    if settings.momentum == 0:
        return None
    optimizer = build_optimizer(model, settings)
    optimizer.load_state_dict(saved)
    params = dict(model.named_parameters())
    return torch.cat(
        [
            optimizer.state[params[n]]
            .get("momentum_buffer", torch.zeros_like(params[n]))
            .detach()
            .reshape(-1)
            for n in layout.params
        ]
    )


def swa_state_dict(layout: Layout, n_averaged: Tensor, average: Copy) -> dict[str, Tensor]:
    """``AveragedModel.state_dict()`` of one copy, on the CPU: ``n_averaged``, then the
    averaged model's state under ``module.``."""
    state = layout.state(average)
    return {
        "n_averaged": n_averaged.detach().to("cpu").clone(),
        **{f"module.{k}": v for k, v in state.items()},
    }


def swa_copy(model: nn.Module, layout: Layout, saved: Mapping[str, Tensor]) -> tuple[Copy, int]:
    """A saved ``AveragedModel.state_dict()`` as a copy and its ``n_averaged``."""
    state = {k.removeprefix("module."): v for k, v in saved.items() if k.startswith("module.")}
    return read_state(model, layout, state), int(saved["n_averaged"])
