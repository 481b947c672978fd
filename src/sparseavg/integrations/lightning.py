"""A Lightning callback: keep a mask through ``Trainer.fit`` and, optionally, average weights.

Needs Lightning (``pip install lightning``, or ``pip install 'sparseavg[lightning]'``);
``import sparseavg`` does not import this module.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from ..pruning import Mask, MaskError
from ..training.attach import AttachedMask, attach

try:
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError as error:
    raise ImportError(
        "sparseavg.integrations.lightning needs Lightning: pip install lightning "
        "(or pip install 'sparseavg[lightning]')"
    ) from error

__all__ = ["SparseTraining"]


class SparseTraining(Callback):
    """Keeps ``mask`` through every optimizer step of a fit, and takes SWA snapshots.

    At fit start the mask is attached (:func:`sparseavg.attach`) to each of the trainer's
    optimizers, for the entries whose parameters that optimizer holds: pruned weights and their
    momentum / Adam moments are zeroed and stay exactly zero through every step, gradient
    accumulation, AMP and manual optimization included. The gradients of pruned weights are
    also zeroed in ``on_before_optimizer_step``, before Lightning clips gradients, so the
    clipping norm counts the surviving weights only. At fit end (or on an exception) the hooks
    are removed. Mask names are those of ``pl_module.named_parameters()``.

    With ``swa_start``, the parameters are averaged (``torch.optim.swa_utils.AveragedModel``,
    equal weight per snapshot) at the end of every training epoch from that epoch on; averages
    of exact zeros are exact zeros, so the average is as sparse as the mask. Each fit starts a
    new average. Only parameters are averaged: BatchNorm statistics of the averaged weights
    must be recomputed after :meth:`load_averaged`, with :func:`sparseavg.recalibrate_bn` (for
    a :class:`sparseavg.data.Split`) or ``torch.optim.swa_utils.update_bn(loader, module)``
    (for a DataLoader).

    Args:
        mask: ``name -> bool tensor`` (``True`` = alive) over the module's parameters.
        swa_start: ``None`` for no averaging; an ``int`` is the first epoch (0-based) whose end
            is averaged; a ``float`` in ``[0, 1)`` is that epoch as a fraction of
            ``max_epochs`` (``int(swa_start * max_epochs)``, as :class:`sparseavg.TrainSettings`
            counts it: 0.75 averages the last quarter of the epochs).
    """

    def __init__(
        self, mask: Mask | Mapping[str, Tensor], swa_start: int | float | None = None
    ) -> None:
        if isinstance(swa_start, bool) or not isinstance(swa_start, int | float | None):
            raise TypeError(f"swa_start must be None, an int or a float, got {swa_start!r}")
        if isinstance(swa_start, int) and swa_start < 0:
            raise ValueError(f"swa_start as an epoch must be >= 0, got {swa_start}")
        if isinstance(swa_start, float) and not 0 <= swa_start < 1:
            raise ValueError(
                f"swa_start as a fraction of the epochs must be in [0, 1), got {swa_start}; "
                "give an int for an epoch index"
            )
        self.mask = mask if isinstance(mask, Mask) else Mask(mask)
        self.swa_start = swa_start
        self._attached: list[AttachedMask] = []
        self._start_epoch: int | None = None
        self._names: list[str] = []
        self._live: nn.ParameterList | None = None
        self._average: AveragedModel | None = None

    # -- what it exposes ------------------------------------------------------------------------
    @property
    def num_snapshots(self) -> int:
        """How many epoch ends the average holds (0 before the first)."""
        return 0 if self._average is None else int(self._average.n_averaged)

    @property
    def swa_start_epoch(self) -> int | None:
        """The first epoch (0-based) whose end is averaged, once a fit has started."""
        return self._start_epoch

    def averaged_state_dict(self) -> dict[str, Tensor]:
        """The averaged parameters, ``name -> tensor`` (copies, on the module's device);
        buffers are not included. Raises ``RuntimeError`` before the first snapshot."""
        if self._average is None:
            raise RuntimeError("no SWA snapshot yet: set swa_start and fit past it")
        averaged = self._average.module.parameters()
        return {n: p.detach().clone() for n, p in zip(self._names, averaged, strict=True)}

    @torch.no_grad()
    def load_averaged(self, module: nn.Module) -> None:
        """Copy the averaged parameters into ``module`` in place (buffers untouched: recompute
        BatchNorm statistics afterwards, see the class docstring)."""
        params = dict(module.named_parameters())
        for name, value in self.averaged_state_dict().items():
            params[name].copy_(value)

    # -- Lightning hooks ------------------------------------------------------------------------
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._detach()
        self.mask.validate(pl_module)
        optimizers = list(trainer.optimizers)
        if not optimizers:
            raise MaskError("SparseTraining needs an optimizer: configure_optimizers gave none")
        named = dict(pl_module.named_parameters())
        held = [{id(p) for g in opt.param_groups for p in g["params"]} for opt in optimizers]
        orphans = [n for n in self.mask if not any(id(named[n]) in ids for ids in held)]
        if orphans:
            raise MaskError(
                "; ".join(f"mask entry {n!r} is not a parameter of any optimizer" for n in orphans)
            )
        for opt, ids in zip(optimizers, held, strict=True):
            part = {n: t for n, t in self.mask.items() if id(named[n]) in ids}
            if part:
                self._attached.append(attach(pl_module, part, opt))

        self._average = None
        self._start_epoch = self._resolve_start(trainer.max_epochs)
        if self._start_epoch is not None:
            self._names = list(named)
            self._live = nn.ParameterList(named.values())  # the module's own parameters

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        for attached in self._attached:  # gradients are complete here; clipping comes next
            attached.mask_gradients()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._start_epoch is None or self._live is None:
            return
        if trainer.current_epoch < self._start_epoch:
            return
        if self._average is None:  # a copy of the parameters only, not of the whole module
            self._average = AveragedModel(self._live, use_buffers=False)
        self._average.update_parameters(self._live)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._detach()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        self._detach()

    # -- helpers --------------------------------------------------------------------------------
    def _detach(self) -> None:
        for attached in self._attached:
            attached.remove()
        self._attached = []
        self._live = None

    def _resolve_start(self, max_epochs: int | None) -> int | None:
        if self.swa_start is None or isinstance(self.swa_start, int):
            return self.swa_start
        if max_epochs is None or max_epochs < 1:
            raise ValueError(
                f"swa_start={self.swa_start} is a fraction of max_epochs, but the trainer has "
                f"max_epochs={max_epochs}; give an epoch index (int) instead"
            )
        return int(self.swa_start * max_epochs)
