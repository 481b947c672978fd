"""Training one model under a mask: optimizer, schedules, SWA, rewind capture, evaluation, and
:func:`attach` to keep a mask inside any other training loop."""

from .attach import AttachedMask, attach
from .attach_feedback import AttachedFeedback
from .custom import LoopSettings, TrainFn, run_user_loop
from .evaluate import Evaluation, evaluate, evaluate_probabilities, model_device, predict_logits
from .history import EPOCH_KEYS, EpochLog
from .lockstep import train_together
from .loop import (
    DivergenceError,
    TrainResult,
    TrainState,
    build_optimizer,
    steps_per_epoch,
    train,
)
from .masking import MaskEnforcer
from .schedules import learning_rate, smallest_rate, warmup_steps
from .settings import (
    OPTIMIZERS,
    PRECISIONS,
    RETRAIN_SCHEDULES,
    SCHEDULES,
    SWA_SCHEDULES,
    TrainSettings,
)

__all__ = [
    "EPOCH_KEYS",
    "OPTIMIZERS",
    "PRECISIONS",
    "RETRAIN_SCHEDULES",
    "SCHEDULES",
    "SWA_SCHEDULES",
    "AttachedFeedback",
    "AttachedMask",
    "DivergenceError",
    "EpochLog",
    "Evaluation",
    "LoopSettings",
    "MaskEnforcer",
    "TrainFn",
    "TrainResult",
    "TrainSettings",
    "TrainState",
    "attach",
    "build_optimizer",
    "evaluate",
    "evaluate_probabilities",
    "learning_rate",
    "model_device",
    "predict_logits",
    "run_user_loop",
    "smallest_rate",
    "steps_per_epoch",
    "train",
    "train_together",
    "warmup_steps",
]
