"""Runs: the cycle engine, the run directory, resume, results and reports."""

from .batch import run_many
from .engine import (
    RunError,
    choose_executor,
    load_pretrained,
    make_model,
    prepare,
    resolve_device,
    run,
    serve,
)
from .launch import run_distributed
from .progress import NullReporter, PlainReporter, Reporter
from .rundir import InsufficientDiskError, RunDir, RunLockedError

__all__ = [
    "InsufficientDiskError",
    "NullReporter",
    "PlainReporter",
    "Reporter",
    "RunDir",
    "RunError",
    "RunLockedError",
    "choose_executor",
    "load_pretrained",
    "make_model",
    "prepare",
    "resolve_device",
    "run",
    "run_distributed",
    "run_many",
    "serve",
]
