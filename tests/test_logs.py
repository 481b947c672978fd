"""Logs where users look: each epoch's training loss, accuracy and learning rate (``train``,
the stacked executor, a user's loop), kept through checkpoints."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from torch import nn

from sparseavg.data import Split
from sparseavg.training import (
    EPOCH_KEYS,
    EpochLog,
    LoopSettings,
    TrainSettings,
    TrainState,
    learning_rate,
    train,
)
from sparseavg.training.custom import run_user_loop

# -- train(): one record per finished epoch ------------------------------------------------------


def _margin_problem() -> tuple[nn.Module, Split]:
    """A linear model that predicts the larger of two features, on 8 points far from the
    decision boundary, 5 of them labelled as it predicts: a small learning rate changes no
    prediction, so every epoch's training accuracy is exactly 5/8."""
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x = torch.tensor([[9.0, 0], [0, 9], [9, 1], [1, 9], [8, 0], [0, 8], [9, 2], [2, 9]])
    y = torch.tensor([0, 1, 0, 1, 0, 0, 1, 0])  # right, right, right, right, right, wrong x3
    return model, Split(x, y)


def test_train_records_accuracy_loss_and_lr_of_each_epoch():
    model, data = _margin_problem()
    settings = TrainSettings(epochs=3, batch_size=4, lr=1e-3, momentum=0.0, augment=False)
    result = train(model, data, settings, seed=0)
    history = result.history
    assert [(e.epoch, e.step) for e in history] == [(0, 2), (1, 4), (2, 6)]
    assert [e.accuracy for e in history] == [0.625, 0.625, 0.625]
    assert [e.loss for e in history] == result.losses
    # the cosine rate of each epoch's last step (steps 1, 3, 5 of 6): all different
    assert [e.lr for e in history] == [learning_rate(settings, s, 6, None) for s in (1, 3, 5)]
    assert len({e.lr for e in history}) == 3
    assert all(e.seconds >= 0 for e in history)


def test_a_partial_epoch_is_not_recorded_and_a_late_start_records_its_steps_only():
    model, data = _margin_problem()
    settings = TrainSettings(epochs=2, batch_size=4, lr=1e-3, momentum=0.0, augment=False)
    stopped = train(model, data, settings, seed=0, stop_step=3)  # the common run's shape
    assert [(e.epoch, e.step) for e in stopped.history] == [(0, 2)]
    model, data = _margin_problem()
    late = train(model, data, settings, seed=0, start_step=1)  # a rewind point in epoch 0
    assert [(e.epoch, e.step) for e in late.history] == [(0, 2), (1, 4)]
    # epoch 0 of this run is its one step: 4 samples, so a multiple of 1/4
    assert late.history[0].accuracy is not None and late.history[0].accuracy * 4 % 1 == 0


def test_checkpoints_carry_the_records_and_a_resumed_run_ends_with_the_same():
    model, data = _margin_problem()
    settings = TrainSettings(epochs=4, batch_size=4, lr=0.05, momentum=0.9, augment=False)
    kept: list[TrainState] = []
    full = train(model, data, settings, seed=3, on_epoch_end=kept.append)
    buffer = io.BytesIO()  # as the run directory keeps a checkpoint
    torch.save(kept[1].to_dict(), buffer)
    buffer.seek(0)
    checkpoint = TrainState.from_dict(torch.load(buffer, weights_only=True))
    assert [(e.epoch, e.step) for e in checkpoint.history] == [(0, 2), (1, 4)]
    fresh, _ = _margin_problem()
    again = train(fresh, data, settings, seed=3, resume=checkpoint)

    def comparable(history: list[EpochLog]) -> list[tuple]:
        return [(e.epoch, e.step, e.loss, e.accuracy, e.lr) for e in history]

    assert comparable(again.history) == comparable(full.history)
    assert len(full.history) == 4


def test_epoch_log_round_trips_under_the_column_names():
    record = EpochLog(2, 30, 0.5, 0.75, 0.01, 1.23456)
    d = record.to_dict()
    assert list(d) == list(EPOCH_KEYS)
    assert d == {
        "epoch": 2,
        "step": 30,
        "train_loss": 0.5,
        "train_accuracy": 0.75,
        "lr": 0.01,
        "seconds": 1.235,
    }
    assert EpochLog.from_dict(d) == EpochLog(2, 30, 0.5, 0.75, 0.01, 1.235)
    assert EpochLog.from_dict({**d, "lr": None}).lr is None


# -- a user's loop reports through end_epoch -----------------------------------------------------


def _user_loop_history(reports: list[tuple[Any, Any]]) -> list[EpochLog]:
    model, _ = _margin_problem()
    settings = TrainSettings(epochs=len(reports), lr=0.1)

    def train_fn(model: nn.Module, mask: Any, seed: int, loop: LoopSettings) -> None:
        for epoch, (loss, accuracy) in zip(loop.epoch_range, reports, strict=True):
            assert epoch == loop.start_epoch + loop.epochs_done
            loop.end_epoch(model, loss, accuracy=accuracy)

    from sparseavg.pruning import Mask

    return run_user_loop(train_fn, model, Mask({}), 0, settings).history


def test_end_epoch_records_the_loss_and_accuracy_a_user_loop_reports():
    history = _user_loop_history([(0.5, 0.25), (torch.tensor(0.25), torch.tensor(0.5)), (None, 1)])
    assert [(e.epoch, e.step, e.loss, e.accuracy, e.lr) for e in history] == [
        (0, 1, 0.5, 0.25, None),
        (1, 2, 0.25, 0.5, None),
        (2, 3, None, 1.0, None),
    ]


@pytest.mark.parametrize("accuracy", [97.5, -0.1, float("nan")])
def test_end_epoch_refuses_an_accuracy_that_is_not_a_share(accuracy):
    with pytest.raises(ValueError, match="between 0 and 1"):
        _user_loop_history([(0.5, accuracy)])
