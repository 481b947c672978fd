"""Runs as SLURM jobs, through submitit (the optional ``slurm`` extra): a launcher for
:func:`~sparseavg.experiment.batch.run_many` and ``sparseavg study --launcher slurm``, for
studies larger than one machine.

Each unfinished run becomes one task of a SLURM job array (``submitit``'s ``map_array``) that
calls :func:`~sparseavg.experiment.engine.run` on the shared runs directory, so a job keeps the
run directory, lock and resume of a local run; finished runs are not submitted again, so the
same call resumes a study after a failure or a timeout. The call waits for every job and then
names each run that failed, with its job's log. ``cluster="local"`` runs the jobs as local
processes (submitit's local executor), which is how the tests run it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..utils.imports import import_problem
from .progress import NullReporter, Reporter

#: what to run when the SLURM launcher is asked for and submitit is missing
SLURM_INSTALL = 'pip install "sparseavg[slurm]"'


class LaunchError(RuntimeError):
    """Some runs of a batch failed; the message names each with its log."""


def submitit_problem() -> str | None:
    """Why ``submitit`` does not import, in one line, or ``None`` when it does."""
    return import_problem("submitit")


@dataclass(frozen=True)
class SlurmLauncher:
    """How to submit runs as SLURM jobs.

    ``folder``: where submitit keeps the jobs' scripts, pickles and logs (default:
    ``<runs_dir>/slurm``); ``partition``: the SLURM partition (``None``: the cluster's
    default); ``time``: minutes a job may run; ``gpus``: GPUs per job; ``cpus``: CPU cores per
    job; ``parallelism``: at most this many array tasks at once; ``cluster``: ``None`` for
    SLURM (submitit's auto-detection), ``"local"`` for local processes, ``"debug"`` to run in
    this process.
    """

    folder: str | None = None
    partition: str | None = None
    time: int = 240
    gpus: int = 0
    cpus: int = 1
    parallelism: int = 64
    cluster: str | None = None

    def __post_init__(self) -> None:
        for name in ("time", "cpus", "parallelism"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.gpus < 0:
            raise ValueError(f"gpus must be >= 0, got {self.gpus}")

    def run(
        self,
        configs: Sequence[Config],
        runs_dir: str | Path,
        reporter: Reporter | None = None,
        label: str = "runs",
    ) -> list[Path]:
        """Submit every unfinished config, wait for the jobs, return the run directories in
        order. Raises :class:`LaunchError` naming each failed run and its log."""
        problem = submitit_problem()
        if problem is not None:
            raise LaunchError(f"the SLURM launcher needs submitit ({problem}): {SLURM_INSTALL}")
        import submitit

        from .batch import _run_one
        from .rundir import RunDir

        reporter = reporter or NullReporter()
        runs = Path(runs_dir)
        paths = [runs / c.run_name() for c in configs]
        todo = [
            i
            for i, (c, p) in enumerate(zip(configs, paths, strict=True))
            if not RunDir(p).is_complete(c.pruning.cycles)
        ]
        task = reporter.task(label, len(configs))
        reporter.update(task, len(configs) - len(todo))
        if todo:
            executor = submitit.AutoExecutor(
                folder=self.folder or runs / "slurm", cluster=self.cluster
            )
            executor.update_parameters(
                name="sparseavg",
                timeout_min=self.time,
                gpus_per_node=self.gpus,
                cpus_per_task=self.cpus,
                slurm_array_parallelism=self.parallelism,
                **({"slurm_partition": self.partition} if self.partition else {}),
            )
            reporter.message(f"submitting {len(todo)} of {len(configs)} runs ({label})")
            jobs = executor.map_array(
                _run_one, [configs[i].to_dict() for i in todo], [str(runs)] * len(todo)
            )
            failed = []
            for done, (i, job) in enumerate(zip(todo, jobs, strict=True), start=1):
                try:
                    job.result()
                except Exception as err:  # the job's own error, or submitit's (timeout, ...)
                    first = str(err).strip().splitlines()[-1] if str(err).strip() else ""
                    failed.append(f"{paths[i].name} ({first}; log {job.paths.stderr})")
                reporter.update(task, len(configs) - len(todo) + done)
            if failed:
                raise LaunchError(
                    f"{len(failed)} of {len(todo)} submitted runs failed: " + "; ".join(failed)
                )
        reporter.finish(task)
        return paths
