"""Runs: the cycle engine, the run directory, resume, results and reports."""

from .batch import run_many
from .engine import (
    RunError,
    choose_executor,
    prepare,
    resolve_device,
    run,
    serve,
)
from .launch import run_distributed
from .own import OwnRun, imp, prune, sms, swamp
from .progress import NullReporter, PlainReporter, Reporter
from .rundir import InsufficientDiskError, RunDir, RunLockedError
from .task import DataTask, EnsembleModule, Task, UserTask, load_pretrained, make_model

__all__ = [
    "DataTask",
    "EnsembleModule",
    "InsufficientDiskError",
    "NullReporter",
    "OwnRun",
    "PlainReporter",
    "Reporter",
    "RunDir",
    "RunError",
    "RunLockedError",
    "Task",
    "UserTask",
    "choose_executor",
    "imp",
    "load_pretrained",
    "make_model",
    "prepare",
    "prune",
    "resolve_device",
    "run",
    "run_distributed",
    "run_many",
    "serve",
    "sms",
    "swamp",
]
