"""Running one experiment as a torchrun job (``execution.mode = "distributed"``)."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

from ..config import Config, ConfigError
from ..parallel.distributed import (
    NEEDS_TORCHRUN,
    Distributed,
    DistributedError,
    connect,
    disconnect,
    launched_by_torchrun,
)
from .engine import resolve_device, run, serve
from .progress import Reporter
from .task import Task


def run_distributed(
    config: Config,
    runs_dir: str | Path,
    reporter: Reporter | None = None,
    *,
    task: Task | None = None,
) -> Path | None:
    """Run (or resume) ``config`` as this process's part of a torchrun job: rank 0 runs the
    engine, reports to ``reporter`` and writes the run directory, whose path it returns; the
    other ranks train the ingredients it deals out and return ``None``. Every rank calls this
    with the same config (and, for a user's model and loop, an equal ``task``). On CUDA each
    process takes the GPU of its local rank. A process group the caller initialized stays
    as it was; one this call creates is destroyed before it returns.

    Raises:
        ConfigError: not launched by torchrun.
        DistributedError: another rank stopped answering.
    """
    if not launched_by_torchrun():
        raise ConfigError(NEEDS_TORCHRUN)
    cuda = resolve_device(config.execution.device).type == "cuda"
    team = connect(config.execution.timeout, cuda)
    if cuda:  # one GPU per process, by its rank on the node
        execution = dataclasses.replace(config.execution, device=f"cuda:{team.local_rank}")
        config = dataclasses.replace(config, execution=execution)
    finished = False
    try:
        if not team.leader:
            serve(config, runs_dir, team, task)
            finished = True
            return None
        executor = Distributed(team)
        try:
            if reporter is not None:
                reporter.message(f"distributed over {team.size} processes")
            path = run(config, runs_dir, reporter, executor=executor, task=task)
        finally:
            with contextlib.suppress(DistributedError):
                executor.close()  # the workers return, also when this rank failed
        finished = True
        return path
    finally:
        disconnect(team, finished)
