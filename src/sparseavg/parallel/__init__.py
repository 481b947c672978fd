"""Training a cycle's independent ingredients at once (see :mod:`.base` for the interface).

Executors, chosen by ``execution.mode``:

- :class:`Sequential`: one after another, the reference.
- :class:`Stacked`: the ingredients as one batched model on one device (``torch.func``).
- :class:`Distributed`: spread over torchrun's processes, GPUs and nodes (rank 0's side;
  the other ranks run :func:`~.distributed.serve`).
- :class:`Auto`: stacked on a GPU when the copies fit, else sequential.
"""

from .auto import Auto, stacked_fits
from .base import Executor, Hooks, Job, Outcome, Tracker, Trainer, Work
from .distributed import Distributed, DistributedError, Team
from .sequential import Sequential, train_job
from .stacked import Stacked
from .trainers import FunctionTrainer, LoopTrainer

__all__ = [
    "Auto",
    "Distributed",
    "DistributedError",
    "Executor",
    "FunctionTrainer",
    "Hooks",
    "Job",
    "LoopTrainer",
    "Outcome",
    "Sequential",
    "Stacked",
    "Team",
    "Tracker",
    "Trainer",
    "Work",
    "stacked_fits",
    "train_job",
]
