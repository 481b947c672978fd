"""Training one model under a mask: optimizer, schedules, SWA, rewind capture, evaluation."""

from .evaluate import Evaluation, evaluate, evaluate_probabilities, model_device, predict_logits
from .loop import (
    DivergenceError,
    TrainResult,
    TrainState,
    build_optimizer,
    steps_per_epoch,
    train,
)
from .masking import MaskEnforcer
from .schedules import learning_rate
from .settings import OPTIMIZERS, PRECISIONS, SCHEDULES, TrainSettings

__all__ = [
    "OPTIMIZERS",
    "PRECISIONS",
    "SCHEDULES",
    "DivergenceError",
    "Evaluation",
    "MaskEnforcer",
    "TrainResult",
    "TrainSettings",
    "TrainState",
    "build_optimizer",
    "evaluate",
    "evaluate_probabilities",
    "learning_rate",
    "model_device",
    "predict_logits",
    "steps_per_epoch",
    "train",
]
