"""Training a cycle's independent ingredients at once (see :mod:`.base` for the interface).

Executors, chosen by ``execution.mode``:

- :class:`Sequential`: one after another, the reference.
- :class:`Stacked`: all at once as one batched model (``torch.vmap``) on one device.
"""

from .base import Executor, Hooks, Job, Outcome, Tracker, Work
from .sequential import Sequential, train_job
from .stacked import Stacked

__all__ = [
    "Executor",
    "Hooks",
    "Job",
    "Outcome",
    "Sequential",
    "Stacked",
    "Tracker",
    "Work",
    "train_job",
]
