"""Training a cycle's independent ingredients at once (see :mod:`.base` for the interface).

Executors, chosen by ``execution.mode``:

- :class:`Sequential`: one after another, the reference.
"""

from .base import Executor, Hooks, Job, Outcome, Tracker, Work
from .sequential import Sequential, train_job

__all__ = ["Executor", "Hooks", "Job", "Outcome", "Sequential", "Tracker", "Work", "train_job"]
