"""The distributed executor: a cycle's ingredients spread over processes, GPUs and nodes.

Launched with ``torchrun`` (one process per GPU, or per group of CPU cores). Rank 0 (the
*leader*) runs the engine and alone reads and writes the run directory; the other ranks
(*workers*) run :func:`serve`, which waits for work from the leader. When the engine hands
the leader a cycle's pending ingredients, they are dealt out in rounds: in round ``r``, rank
``p`` trains job ``r * P + p`` (so rank ``p`` trains jobs ``p, p + P, ...``). Every rank
finishes its own job where it trained (BatchNorm recalibration included) and the leader
gathers the outcomes, saves them and hands them to the engine, which combines them: a uniform
soup averages the gathered models in index order, exactly as the sequential executor does, so
the result is bitwise the same on CPUs (an all-reduce would sum in another order); a greedy
soup is scored on rank 0.

Checkpoints: at each epoch end every rank sends its job's :class:`~sparseavg.training.TrainState`
to the leader, which writes it, so an interrupted run resumes under any executor. Ranks whose
job ended (or that had none in the round) send nothing the same number of times, so the
collectives stay matched.

Failure: every collective has the process group's timeout (``execution.timeout``); a rank
that dies closes its connections and the others stop at their next collective with
:class:`DistributedError`, naming the rank they lost; torchrun also stops the remaining
processes of a job whose process failed.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..pruning import Lockstep
from ..training import DivergenceError, TrainResult, TrainState
from .base import Hooks, Job, Outcome, Tracker, Trainer, Work

# Imported with sparseavg, so before a script creates its process group: the functions of
# torch.distributed.nn.functional take ``group=group.WORLD`` as a default argument, and when
# that module is first imported after the default group exists (the first optimizer step
# imports it, through torch.distributed._shard) they hold the group for good.
# destroy_process_group then cannot free it, gloo's worker threads outlive it, and one still
# releasing a collective's tensor when the interpreter shuts down aborts the process
# ("terminate called without an active exception").
if dist.is_available():
    import torch.distributed.nn.functional

#: environment variables torchrun sets for every process
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: what to tell a user who asks for the distributed mode outside torchrun
NEEDS_TORCHRUN = (
    "execution.mode = 'distributed' runs under torchrun, one process per GPU (or group of CPU "
    "cores), e.g. `torchrun --nproc-per-node 2 -m sparseavg run CONFIG --set "
    "execution.mode=distributed`"
)


class DistributedError(RuntimeError):
    """Another rank stopped answering (it died, or exceeded ``execution.timeout``)."""


@dataclass(frozen=True)
class Team:
    """This process's place in a torchrun job.

    Attributes:
        rank: 0 for the leader, which owns the run directory.
        size: the number of processes ``P``.
        local_rank: the rank on this node (picks the GPU).
        group: a gloo process group for the leader's messages (CPU tensors and objects, also
            when the default group uses NCCL for GPUs).
        owns_default_group: whether :func:`connect` created the default process group (and
            :func:`disconnect` destroys it); ``False`` when the user's script had already
            initialized it, which it then keeps using after the run.
    """

    rank: int
    size: int
    local_rank: int
    group: Any
    owns_default_group: bool = True

    @property
    def leader(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Whether this process runs under torchrun (its environment variables are set)."""
    return all(name in os.environ for name in TORCHRUN_ENV)


def connect(timeout_s: float, cuda: bool) -> Team:
    """Join the torchrun job this process belongs to: NCCL for GPU tensors when ``cuda``, gloo
    for everything the ranks exchange. Each collective waits at most ``timeout_s`` seconds.

    If the script already initialized the default process group, the run joins that job and
    exchanges its messages over a gloo group of its own, which :func:`disconnect` destroys;
    the script's group stays as it was."""
    if not launched_by_torchrun():
        missing = [n for n in TORCHRUN_ENV if n not in os.environ]
        raise RuntimeError(f"not launched by torchrun ({', '.join(missing)} unset)")
    timeout = timedelta(seconds=timeout_s)
    local_rank = int(os.environ["LOCAL_RANK"])
    owns = not dist.is_initialized()
    if owns:
        if cuda:
            torch.cuda.set_device(local_rank)
        _wait_for_leader(timeout_s)
        try:
            dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=timeout)
        except RuntimeError as err:  # DistStoreError, DistNetworkError: a rank never came
            raise DistributedError(_unjoined(timeout_s, err)) from None
    if owns and not cuda:
        group = dist.group.WORLD
    else:  # gloo for the messages, with the run's timeout (every rank creates it)
        group = dist.new_group(backend="gloo", timeout=timeout)
    return Team(dist.get_rank(), dist.get_world_size(), local_rank, group, owns)


def _wait_for_leader(timeout_s: float) -> None:
    """On a worker rank, wait up to ``timeout_s`` seconds for rank 0 to listen at
    ``MASTER_ADDR:MASTER_PORT`` (torch's own connect retries for about twice its timeout and
    prints a C++ stack while it does), else raise :class:`DistributedError` in one line."""
    if int(os.environ["RANK"]) == 0:
        return
    address = (os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]))
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection(address, timeout=max(min(left, 1.0), 0.05)):
                return
        except OSError:
            if time.monotonic() + 0.2 >= deadline:
                raise DistributedError(_unjoined(timeout_s, None)) from None
            time.sleep(0.2)


def _unjoined(timeout_s: float, err: BaseException | None) -> str:
    """Why this rank could not join its job, in one line."""
    rank, size = os.environ["RANK"], os.environ["WORLD_SIZE"]
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    if err is None:
        what = f"rank 0 did not answer at {where}"
    else:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        what = f"the ranks did not all meet at {where} ({first})"
    return (
        f"rank {rank} of {size}: {what} within execution.timeout = {timeout_s:g} s; start "
        f"all {size} ranks with the same MASTER_ADDR and MASTER_PORT (torchrun starts them "
        "together)"
    )


def disconnect(team: Team, finished: bool) -> None:
    """Leave the process group (every rank calls this once at the end). A rank whose part
    ``finished`` normally first waits until every rank is done exchanging, so no rank tears
    its connections down while another still reads from them (gloo then aborts the process);
    a rank that failed leaves at once, and the others learn it from the closed connections.
    The default group goes only if :func:`connect` created it."""
    if not dist.is_initialized():
        return
    if finished:
        with contextlib.suppress(RuntimeError, ValueError):
            dist.barrier(group=team.group)
    if team.owns_default_group:
        dist.destroy_process_group()
    else:  # the script's default group stays; only the run's own group goes
        dist.destroy_process_group(team.group)


# -- messages ------------------------------------------------------------------------------------


def _broadcast(team: Team, obj: Any) -> Any:
    """The leader's ``obj`` on every rank."""
    box = [obj if team.leader else None]
    try:
        dist.broadcast_object_list(box, src=0, group=team.group)
    except (RuntimeError, ValueError) as err:
        raise DistributedError(_lost(team, err)) from None
    return box[0]


def _gather(team: Team, obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` on the leader, in rank order (``None`` on the other ranks)."""
    out: list[Any] | None = [None] * team.size if team.leader else None
    try:
        dist.gather_object(obj, out, dst=0, group=team.group)
    except (RuntimeError, ValueError) as err:
        raise DistributedError(_lost(team, err)) from None
    return out


def _lost(team: Team, err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    # gloo: "[.../pair.cc:553] Connection closed by peer [127.0.0.1]:1234. This is ..."
    first = re.sub(r"^\[[^\]]*\.cc:\d+\]\s*", "", first).split(". ")[0]
    who = "the leader (rank 0)" if not team.leader else "a worker rank"
    return (
        f"rank {team.rank} of {team.size}: lost contact with {who} ({first}); it died, or "
        "exceeded execution.timeout. Finished artifacts are kept: the same command resumes."
    )


# -- one round: every rank trains at most one job -------------------------------------------------


@dataclass(frozen=True)
class _Diverged:
    step: int
    epoch: int


def _train_round(
    team: Team,
    model: nn.Module,
    trainer: Trainer,
    work: Work,
    mine: Job | None,
    resume: tuple[TrainState, float] | None,
    boundaries: int,
    finish: Callable[[Job, TrainResult, float], Outcome],
    on_checkpoint: Callable[[list[Any]], None],
    tracker: Tracker | None,
) -> Outcome | _Diverged | None:
    """Train this rank's job of a round (if any), sending a checkpoint to the leader at each
    epoch end; then pad to ``boundaries`` checkpoint messages. Never raises DivergenceError."""
    sent = 0

    def send(payload: Any) -> None:
        nonlocal sent
        sent += 1
        gathered = _gather(team, payload)
        if gathered is not None:
            on_checkpoint(gathered)

    result: Outcome | _Diverged | None = None
    if mine is not None:
        state, before = resume if resume is not None else (None, 0.0)
        t0 = time.perf_counter()
        try:
            trained = trainer(
                model,
                work,
                mine,
                state,
                lambda s: send((mine.index, s, before + time.perf_counter() - t0)),
                tracker,
            )
            result = finish(mine, trained, before + time.perf_counter() - t0)
        except DivergenceError as err:
            result = _Diverged(err.step, err.epoch)
    while sent < boundaries:
        send(None)
    return result


def _deal(jobs: Sequence[Job], size: int) -> list[list[Job]]:
    """Rounds of at most ``size`` jobs: round ``r`` holds jobs ``r * size ... r * size + size - 1``
    and rank ``p`` trains the ``p``-th of each round."""
    return [list(jobs[i : i + size]) for i in range(0, len(jobs), size)]


def _round_boundaries(
    jobs: Sequence[Job],
    work: Work,
    resumes: dict[int, tuple[TrainState, float] | None],
    trainer: Trainer,
) -> int:
    counts = []
    for job in jobs:
        r = resumes.get(job.index)
        counts.append(trainer.epoch_ends(job, r[0].step if r is not None else work.start_step))
    return max(counts, default=0)


def _play(
    team: Team,
    model: nn.Module,
    trainer: Trainer,
    work: Work,
    jobs: Sequence[Job],
    resumes: dict[int, tuple[TrainState, float] | None],
    finish: Callable[[Job, TrainResult, float], Outcome],
    on_checkpoint: Callable[[list[Any]], None],
    on_round: Callable[[list[Job], list[Any]], bool],
    track: Callable[[list[Job]], Tracker] | None,
) -> None:
    """The rounds, as every rank plays them. After each round the leader's ``on_round`` gets
    the round's results (one per rank) and says whether to go on, which the others learn."""
    for round_jobs in _deal(jobs, team.size):
        mine = round_jobs[team.rank] if team.rank < len(round_jobs) else None
        boundaries = _round_boundaries(round_jobs, work, resumes, trainer)
        tracker = track(round_jobs) if track is not None else None
        try:
            result = _train_round(
                team,
                model,
                trainer,
                work,
                mine,
                resumes.get(mine.index) if mine is not None else None,
                boundaries,
                finish,
                on_checkpoint,
                tracker,
            )
        finally:
            if tracker is not None:
                tracker.close()
        gathered = _gather(team, result)
        go = on_round(round_jobs, gathered) if gathered is not None else True
        if not _broadcast(team, go):
            return


# -- the two sides -------------------------------------------------------------------------------


class Distributed:
    """The leader's side (rank 0): an :class:`~sparseavg.parallel.Executor` whose jobs train
    on all ranks of ``team``. Call :meth:`close` when the run ends, so the workers return."""

    name = "distributed"

    def __init__(self, team: Team) -> None:
        if not team.leader:
            raise ValueError("Distributed is the leader's executor; other ranks call serve()")
        self.team = team
        self.closed = False

    def run(
        self, model: nn.Module, trainer: Trainer, work: Work, jobs: Sequence[Job], hooks: Hooks
    ) -> dict[int, Outcome]:
        if isinstance(work.during, Lockstep):
            raise ValueError(
                "ingredients that share mask decisions train in lock step in one process; "
                "the distributed executor deals them out one by one"
            )
        by_index = {job.index: job for job in jobs}
        resumes = {job.index: hooks.resume(job) for job in jobs}
        for index, r in resumes.items():
            if r is not None:
                hooks.message(
                    f"cycle {work.cycle} ingredient {index}: resuming at step {r[0].step}"
                )
        _broadcast(self.team, ("train", work, list(jobs), resumes))
        outcomes: dict[int, Outcome] = {}

        def on_checkpoint(gathered: list[Any]) -> None:
            for item in gathered:
                if item is not None:
                    index, state, seconds = item
                    hooks.checkpoint(by_index[index], state, seconds)

        def on_round(round_jobs: list[Job], results: list[Any]) -> bool:
            try:
                for job, result in zip(round_jobs, results, strict=False):
                    if isinstance(result, _Diverged):
                        outcome = hooks.diverged(job, DivergenceError(result.step, result.epoch))
                    else:
                        outcome = result
                    hooks.save(job, outcome)
                    outcomes[job.index] = outcome
            except BaseException:
                _broadcast(self.team, False)  # the workers stop this call and wait for the next
                raise
            return True

        _play(
            self.team,
            model,
            trainer,
            work,
            jobs,
            resumes,
            hooks.finish,
            on_checkpoint,
            on_round,
            hooks.track,
        )
        return outcomes

    def close(self) -> None:
        """Tell the workers the run is over (idempotent)."""
        if not self.closed:
            self.closed = True
            _broadcast(self.team, ("stop",))


def serve(
    team: Team,
    model: nn.Module,
    trainer: Trainer,
    finish: Callable[[Work, Job, TrainResult, float], Outcome],
) -> None:
    """A worker's side (rank > 0): train the jobs the leader deals out until it says stop.

    Args:
        team: this process's place; not the leader.
        model: scratch model of the run's architecture on this rank's device.
        trainer: how a job trains (each rank holds its own, on its own copy of the data).
        finish: turns a trained job into its outcome, as the leader's ``hooks.finish`` does
            (recalibration included), with the :class:`Work` it belongs to.
    """
    if team.leader:
        raise ValueError("serve() is for the worker ranks; rank 0 runs the engine")
    while True:
        message = _broadcast(team, None)
        if message[0] == "stop":
            return
        _, work, jobs, resumes = message

        def done(job: Job, result: TrainResult, seconds: float, work: Work = work) -> Outcome:
            return finish(work, job, result, seconds)

        _play(
            team,
            model,
            trainer,
            work,
            jobs,
            resumes,
            done,
            lambda gathered: None,
            lambda round_jobs, results: True,
            None,
        )
