"""What a training run records about each epoch it finishes: :class:`EpochLog`.

A run keeps one :class:`EpochLog` per finished epoch (``TrainResult.history``), and its
checkpoints carry the list (``TrainState.history``), so a resumed run ends with the same
records as an uninterrupted one (all but ``seconds``, the wall clock). The experiment layer
writes them to each ingredient's ``info.json`` and to the run's ``epochs.jsonl``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: the keys of :meth:`EpochLog.to_dict`, in the order the run's ``epochs.csv`` shows them
EPOCH_KEYS: tuple[str, ...] = ("epoch", "step", "train_loss", "train_accuracy", "lr", "seconds")


@dataclass(frozen=True)
class EpochLog:
    """One finished epoch of a training run.

    Attributes:
        epoch: the epoch's index, 0-based, counted from the start of the schedule (a run that
            starts at a rewind point inside epoch 0 records epoch 0 over the steps it took).
        step: global optimizer steps done at the epoch's end (1-based count; in a user's own
            loop, whose steps are epochs, ``epoch + 1``).
        loss: mean training loss (nats) over the epoch's steps, as the loop computed it for
            the step (augmented batches, train mode); ``None`` if not reported.
        accuracy: share (0 to 1) of the epoch's training samples whose argmax prediction was
            their label, from the same forward passes as ``loss``; ``None`` if not reported.
        lr: the learning rate of the epoch's last step; ``None`` if unknown (a user's loop).
        seconds: wall-clock seconds the epoch took (its steps and batch preparation).
    """

    epoch: int
    step: int
    loss: float | None
    accuracy: float | None
    lr: float | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The record as plain numbers under the column names of ``epochs.jsonl``
        (:data:`EPOCH_KEYS`); ``seconds`` rounded to the millisecond."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "train_loss": self.loss,
            "train_accuracy": self.accuracy,
            "lr": self.lr,
            "seconds": round(self.seconds, 3),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EpochLog:
        """Inverse of :meth:`to_dict`."""

        def number(key: str) -> float | None:
            value = d.get(key)
            return None if value is None else float(value)

        return cls(
            epoch=int(d["epoch"]),
            step=int(d["step"]),
            loss=number("train_loss"),
            accuracy=number("train_accuracy"),
            lr=number("lr"),
            seconds=float(d.get("seconds", 0.0)),
        )
