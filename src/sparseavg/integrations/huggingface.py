"""Hugging Face Transformers: keep a mask through ``Trainer.train()``, and run sparseavg's
recipes with the ``Trainer`` you already have.

- :class:`MaskCallback`: a ``TrainerCallback`` that keeps a mask through a fit (pruned weights
  and their optimizer state stay exactly 0; gradient clipping counts surviving weights only).
- :func:`trainer_train_fn`: a ``train_fn`` for ``sparseavg.swamp/sms/imp/prune`` that trains
  each ingredient with a ``Trainer`` your function builds, under the recipe's epochs, learning
  rate schedule, weight decay and seed.

Needs ``transformers`` and ``accelerate`` (which the ``Trainer`` needs):
``pip install 'sparseavg[transformers]'``. ``import sparseavg`` does not import this module.
Batches of a Hugging Face model are dicts (``input_ids``, ``attention_mask``, ``labels``);
sparseavg's default ``forward`` (BatchNorm recalibration) already calls ``model(**batch)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from ..pruning import Mask
from ..training.attach import AttachedMask, attach
from ..training.custom import LoopSettings, TrainFn

try:
    from transformers import (
        Trainer,
        TrainerCallback,
        TrainerControl,
        TrainerState,
        TrainingArguments,
    )
except ImportError as error:
    raise ImportError(
        "sparseavg.integrations.huggingface needs Transformers: pip install transformers "
        "accelerate (or pip install 'sparseavg[transformers]')"
    ) from error

__all__ = ["MaskCallback", "trainer_train_fn"]

#: ``make_trainer(model, args) -> Trainer``: your Trainer (data, collator, metrics) for
#: ``model`` with ``args``
MakeTrainer = Callable[[nn.Module, TrainingArguments], Trainer]


class MaskCallback(TrainerCallback):
    """Keeps ``mask`` through every optimizer step of ``Trainer.train()``.

    At train begin the mask is attached (:func:`sparseavg.attach`) to the trainer's optimizer,
    so pruned weights and their Adam moments / momentum are zeroed and stay exactly 0 through
    every step (gradient accumulation and mixed precision included). The gradient of each
    pruned weight is also zeroed as soon as backward has accumulated it, so the Trainer's
    gradient clipping (``max_grad_norm``) and its logged ``grad_norm`` count the surviving
    weights only. At train end the hooks are removed; if training raises, call
    :meth:`remove`.

    Args:
        mask: ``name -> bool tensor`` (``True`` = alive) over ``trainer.model``'s parameters
            (``model.named_parameters()``); moved to the model's device at train begin.
    """

    def __init__(self, mask: Mask | Mapping[str, Tensor]) -> None:
        self.mask = mask if isinstance(mask, Mask) else Mask(mask)
        self._attached: AttachedMask | None = None

    @property
    def attached(self) -> bool:
        """Whether the mask is attached (between train begin and train end)."""
        return self._attached is not None

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        self.remove()
        if model is None or optimizer is None:
            raise RuntimeError("MaskCallback needs the trainer's model and optimizer")
        device = next(model.parameters()).device
        mask = self.mask.to(device)
        self._attached = attach(model, mask, optimizer)  # unwraps accelerate's optimizer
        self._attached.mask_gradients_on_backward()

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.remove()

    def remove(self) -> None:
        """Detach the optimizer hooks and the gradient hooks (nothing if none are attached)."""
        if self._attached is not None:
            self._attached.remove()
            self._attached = None


class _RecipeCallback(TrainerCallback):
    """The recipe's side of one ingredient's ``Trainer.train()``: its learning-rate schedule
    (replacing the Trainer's) and ``settings.end_epoch`` after every epoch, with the epoch's
    mean training loss as the Trainer logs it."""

    def __init__(self, trainer: Trainer, settings: LoopSettings) -> None:
        self.trainer = trainer
        self.settings = settings
        self._pending: nn.Module | None = None
        self._pending_lr: float | None = None
        self._first = 0  # the schedule's step at this call's first optimizer step
        self._per_epoch = 1

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        optimizer: torch.optim.Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        settings = self.settings
        epochs = len(settings.epoch_range)
        if optimizer is None:
            raise RuntimeError("the Trainer passed no optimizer to its callbacks")
        if state.max_steps % epochs:
            raise RuntimeError(
                f"the Trainer plans {state.max_steps} optimizer steps for {epochs} epochs; "
                "trainer_train_fn needs the same number of steps in every epoch"
            )
        per_epoch = state.max_steps // epochs
        first = settings.start_epoch * per_epoch  # the schedule counts from epoch 0
        self._first, self._per_epoch = first, per_epoch
        peak = settings.lr

        def factor(step: int) -> float:
            return settings.learning_rate(first + step, per_epoch) / peak if peak else 0.0

        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds it
        scheduler = LambdaLR(inner, factor)  # base rates: the groups' initial_lr (= lr)
        self.trainer.lr_scheduler = scheduler
        self.trainer.callback_handler.lr_scheduler = scheduler

    def on_epoch_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        self.flush()  # an earlier epoch whose loss was never logged
        self._pending = model  # end_epoch once the Trainer logs this epoch's loss
        self._pending_lr = self.settings.learning_rate(
            self._first + state.global_step - 1, self._per_epoch
        )  # the rate of the epoch's last optimizer step (the Trainer logs the next one's)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if self._pending is not None and logs is not None and "loss" in logs:
            model, self._pending = self._pending, None
            self.settings.end_epoch(model, float(logs["loss"]), lr=self._pending_lr)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.flush()

    def flush(self) -> None:
        """``end_epoch`` without a loss for an epoch whose loss was not logged."""
        if self._pending is not None:
            model, self._pending = self._pending, None
            self.settings.end_epoch(model, lr=self._pending_lr)


def trainer_train_fn(make_trainer: MakeTrainer, args: TrainingArguments) -> TrainFn:
    """A ``train_fn`` for :func:`sparseavg.swamp` (and ``sms``, ``imp``, ``prune``) that trains
    each ingredient with the Hugging Face ``Trainer`` that ``make_trainer(model, args)``
    builds: your data, collator, optimizer choice (``args.optim``), gradient clipping and
    accumulation, mixed precision.

    For each ingredient the recipe decides, replacing the values of ``args``:

    - the epochs (``num_train_epochs`` = the epochs this call trains; ``max_steps`` off),
    - the learning rate: peak ``train.lr`` and the recipe's schedule (warm-up, decay, SWA's
      constant ``swa_lr``) by optimizer step, instead of ``lr_scheduler_type`` and
      ``warmup_*``; a rewound ingredient continues the schedule at its start epoch,
    - ``weight_decay`` (``train.weight_decay``: SMS may vary it per ingredient),
    - ``seed`` and ``data_seed``: the ingredient's seed modulo 2**32 (batch order, dropout:
      SWAMP's particles differ in it),
    - ``logging_strategy = "epoch"`` (the epoch's mean loss goes to ``settings.end_epoch``,
      with the rate of its last optimizer step),
      ``save_strategy = "no"`` (sparseavg saves whole ingredients; the Trainer's checkpoints
      would be overwritten by the next ingredient and never read).

    The mask is kept with :class:`MaskCallback`, and ``settings.end_epoch`` is called after
    every epoch (SWA snapshots, the mask check, progress). Set ``report_to=[]`` and an
    ``output_dir`` of your choice in ``args``; with ``save_strategy = "no"`` the Trainer writes
    nothing there unless you ask it to. ``model_fn`` should put the model on ``args.device``.

    Args:
        make_trainer: ``make_trainer(model, args) -> Trainer`` for exactly this ``model`` (the
            one sparseavg trains and reads back) and these ``args``.
        args: your ``TrainingArguments``; ``load_best_model_at_end`` is refused (the recipe's
            model is the last epoch's, or its SWA average).

    Returns:
        ``train_fn(model, mask, seed, settings)``.

    Raises:
        ValueError: ``args.load_best_model_at_end`` is set (here), or ``make_trainer`` built a
            Trainer around another model, or the recipe changes the mask during training
            (gmp, rigl, dpf, sms-dpf; when called).
    """
    if args.load_best_model_at_end:
        raise ValueError(
            "trainer_train_fn: load_best_model_at_end would replace the recipe's model (the "
            "last epoch's, or its SWA average) by a checkpoint; set it to False"
        )

    def train_fn(model: nn.Module, mask: Mask, seed: int, settings: LoopSettings) -> None:
        epochs = len(settings.epoch_range)
        if epochs == 0:  # e.g. the dense run to a rewind point at epoch 0
            return
        if settings.schedule is not None:
            raise ValueError(
                "trainer_train_fn keeps the mask it is given; this recipe changes it during "
                "training (gmp, rigl, dpf): train it with a loop of your own that keeps the "
                "mask with settings.attach, or with the built-in loop"
            )
        run_args = dataclasses.replace(
            args,
            num_train_epochs=epochs,
            max_steps=-1,
            learning_rate=settings.lr,
            weight_decay=settings.weight_decay,
            seed=seed % 2**32,
            data_seed=seed % 2**32,
            logging_strategy="epoch",
            save_strategy="no",
        )
        trainer = make_trainer(model, run_args)
        if trainer.model is not model:
            raise ValueError(
                "make_trainer(model, args) must build its Trainer around the model it is given "
                f"(got a Trainer of {type(trainer.model).__name__} at another object)"
            )
        keep = MaskCallback(mask)
        recipe = _RecipeCallback(trainer, settings)
        trainer.add_callback(keep)
        trainer.add_callback(recipe)
        try:
            trainer.train()
        finally:
            keep.remove()
            trainer.remove_callback(keep)
            trainer.remove_callback(recipe)

    return train_fn
