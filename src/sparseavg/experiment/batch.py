"""Many runs at once: independent configs (seeds, recipes) in parallel worker processes.

One small model rarely keeps more than one CPU core busy, so a study of many small runs is
faster as one run per core, each with one torch thread, than as one run after another with
all threads. Each worker calls :func:`~sparseavg.experiment.engine.run`, so every run keeps
its run directory, lock and resume; a second call skips finished runs.

A run's numbers depend on the number of torch threads it used (reductions are split
differently), so a run computed here with one thread is bitwise reproducible with
``OMP_NUM_THREADS=1 sparseavg run ...`` but may differ in the last digits from the same
config run with more threads.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Config
from .progress import NullReporter, Reporter

if TYPE_CHECKING:
    from .slurm import SlurmLauncher


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _start_worker() -> None:
    import torch

    from ..utils.malloc import tune_glibc_malloc

    torch.set_num_threads(1)
    tune_glibc_malloc()


def _cost(config: Config) -> float:
    """A run's training epochs, roughly: what the longest-first order sorts by."""
    c = config.train.epochs * config.ingredients.count * config.ingredients.length_factor
    return c * (config.pruning.cycles + 1)


def _run_one(values: dict[str, Any], runs_dir: str) -> str:
    from ..recipes import resolve_config
    from .engine import run

    return str(run(resolve_config(values), runs_dir, NullReporter()))


def run_many(
    configs: Sequence[Config],
    runs_dir: str | Path,
    *,
    workers: int = 1,
    reporter: Reporter | None = None,
    label: str = "runs",
    launcher: SlurmLauncher | None = None,
) -> list[Path]:
    """Run or resume every config into ``runs_dir``; return their run directories in order.

    ``launcher`` (a :class:`~sparseavg.experiment.slurm.SlurmLauncher`) submits the
    unfinished runs as SLURM jobs instead and waits for them (``workers`` is then unused).

    ``workers=1`` runs them one after another in this process (the reporter sees each run's
    progress). ``workers > 1`` runs up to that many at once in spawned processes with one
    torch thread each, the longest (epochs x ingredients x cycles) first; the reporter then
    sees one bar over the runs and a line per finished run. The first run that fails (a
    :class:`RunError`, bad data, ...) stops the batch: runs not yet started are cancelled,
    those under way finish, and its exception is raised here.
    Every finished run keeps its files, so the same call resumes.
    """
    from .engine import run

    reporter = reporter or NullReporter()
    if launcher is not None:
        return launcher.run(configs, runs_dir, reporter, label)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    task = reporter.task(label, len(configs))
    if workers == 1 or len(configs) <= 1:
        paths = []
        for i, config in enumerate(configs):
            paths.append(run(config, runs_dir, reporter))
            reporter.update(task, i + 1)
        reporter.finish(task)
        return paths

    context = multiprocessing.get_context("spawn")  # no fork of a process with torch threads
    done = 0
    with ProcessPoolExecutor(
        max_workers=min(workers, len(configs)), mp_context=context, initializer=_start_worker
    ) as pool:
        # longest first, so that the last worker does not end the batch alone on a long run
        order = sorted(range(len(configs)), key=lambda i: -_cost(configs[i]))
        futures: dict[Future[str], int] = {
            pool.submit(_run_one, configs[i].to_dict(), str(runs_dir)): i for i in order
        }
        results: dict[int, Path] = {}
        pending = set(futures)
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    error = future.exception()
                    if error is not None:
                        for other in pending:
                            other.cancel()
                        raise error
                    results[futures[future]] = Path(future.result())
                    done += 1
                    reporter.update(task, done)
                    reporter.message(f"done {done}/{len(configs)}: {results[futures[future]].name}")
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    reporter.finish(task)
    return [results[i] for i in range(len(configs))]
