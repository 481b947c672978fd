"""The distributed executor: 2 gloo processes on the CPU under torchrun reproduce the
sequential run bit for bit; a rank that dies stops the other one with a clear error in bounded
time, and the run resumes from what rank 0 kept."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine_helpers import only_run, rows, tiny_args
from sparseavg.data import Split
from sparseavg.parallel import Job, LoopTrainer
from sparseavg.parallel.distributed import _deal
from sparseavg.training import TrainSettings, train
from sparseavg.utils.files import load_tensors

pytestmark = pytest.mark.skipif(
    os.name != "posix" or not torch.distributed.is_gloo_available(),
    reason="needs POSIX signals and torch.distributed with gloo",
)

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"  # the same in every process, so results can match bitwise
    env.pop("RANK", None)
    env.update(extra)
    return env


def _args(recipe: str, runs: Path, *extra: str) -> list[str]:
    return tiny_args(recipe, runs, *extra, cycles=1)


def _torchrun(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    launcher = (
        [str(TORCHRUN)] if TORCHRUN.exists() else [sys.executable, "-m", "torch.distributed.run"]
    )
    cmd = [*launcher, "--nproc-per-node", "2", "-m", "sparseavg", *args]
    cmd += ["--set", "execution.mode=distributed"]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _sequential(args: list[str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "sparseavg", *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)


def _tensor_files(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {str(f.relative_to(run)): load_tensors(f) for f in sorted(run.rglob("*.safetensors"))}


def _assert_bitwise_equal(a: Path, b: Path) -> None:
    assert rows(a) == rows(b)
    fa, fb = _tensor_files(a), _tensor_files(b)
    assert fa.keys() == fb.keys() and len(fa) > 5
    for name in fa:
        assert fa[name].keys() == fb[name].keys(), name
        for key in fa[name]:
            assert torch.equal(fa[name][key], fb[name][key]), (name, key)


@pytest.mark.parametrize(
    "recipe, extra",
    [
        # 3 SWA particles over 2 ranks: rank 1 sits out the second round
        ("swamp", ("--set", "ingredients.count=3")),
        # pruning during training: 3 copies trained with DPF's feedback, each moving its own
        # mask; the masks come back from the ranks and are settled on their average's
        ("sms-dpf", ("--set", "ingredients.count=3", "--set", "pruning.gmp_interval=1")),
        # ingredients of different lengths (the ranks' epoch counts differ) and a greedy soup
        (
            "sms",
            (
                "--set",
                "ingredients.count=3",
                "--set",
                "ingredients.vary=length",
                "--set",
                "ingredients.combine=greedy",
                "--set",
                "bn.recalibrate=always",
            ),
        ),
        # the second of three ingredients diverges and is dropped from the soup
        (
            "sms",
            (
                "--set",
                "ingredients.count=3",
                "--set",
                "ingredients.vary=lr",
                "--set",
                "ingredients.values=[1.0, 100000.0, 1.0]",
                "--set",
                "execution.on_divergence=drop",
            ),
        ),
    ],
)
def test_torchrun_with_two_processes_reproduces_the_sequential_run_bitwise(
    tmp_path: Path, recipe: str, extra: tuple[str, ...]
) -> None:
    seq = _sequential(_args(recipe, tmp_path / "seq", *extra))
    assert seq.returncode == 0, seq.stderr
    dist = _torchrun(_args(recipe, tmp_path / "dist", *extra))
    assert dist.returncode == 0, dist.stderr[-3000:]
    _assert_bitwise_equal(only_run(tmp_path / "seq"), only_run(tmp_path / "dist"))


def test_divergence_stops_a_distributed_run_as_it_stops_a_sequential_one(tmp_path: Path) -> None:
    extra = (
        "--set", "ingredients.count=3", "--set", "ingredients.vary=lr",
        "--set", "ingredients.values=[1.0, 100000.0, 1.0]",
    )  # fmt: skip
    seq = _sequential(_args("sms", tmp_path / "seq", *extra))
    dist = _torchrun(_args("sms", tmp_path / "dist", *extra))
    assert seq.returncode == 1 and dist.returncode != 0
    message = seq.stderr.strip().splitlines()[-1]
    assert message.startswith("sparseavg: stopped: training diverged") and "ingredient 1" in message
    assert message in dist.stderr
    a, b = only_run(tmp_path / "seq"), only_run(tmp_path / "dist")
    kept = sorted(str(f.relative_to(a)) for f in a.rglob("*") if f.is_file())
    assert kept == sorted(str(f.relative_to(b)) for f in b.rglob("*") if f.is_file())
    assert "cycle_01/ingredient_0/final.safetensors" in kept


def test_distributed_without_torchrun_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    done = _sequential(_args("swamp", runs, "--set", "execution.mode=distributed"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "torchrun --nproc-per-node" in lines[0], done.stderr
    assert not runs.exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("victim", [1, 0])
def test_a_rank_that_dies_stops_the_other_with_a_clear_error_and_the_run_resumes(
    tmp_path: Path, victim: int
) -> None:
    """Two ranks started by hand (torchrun's variables, no torchrun agent to clean up), so the
    survivor's own error handling is what is tested."""
    runs = tmp_path / "runs"
    extra = ("--set", "ingredients.count=2", "--set", "train.epochs=6")
    args = _args("swamp", runs, *extra, "--set", "execution.mode=distributed")
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = _env(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
        )
        cmd = [sys.executable, "-m", "sparseavg", *args]
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    try:
        deadline = time.monotonic() + 120
        # kill once rank 0 has written a checkpoint of cycle 1 (training there is under way)
        while not list(runs.glob("*/cycle_01/ingredient_*/checkpoint.pt")):
            assert time.monotonic() < deadline, "no checkpoint of cycle 1 appeared"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.05)
        procs[victim].send_signal(signal.SIGKILL)
        survivor = procs[1 - victim]
        started = time.monotonic()
        _, err = survivor.communicate(timeout=60)
        waited = time.monotonic() - started
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert survivor.returncode == 1, err
    assert "lost contact" in err and f"rank {1 - victim} of 2" in err, err
    assert waited < 60
    # what rank 0 kept resumes, under torchrun or in one process, and ends as a run never killed
    run = only_run(runs)
    assert list(run.glob("cycle_01/ingredient_*/checkpoint.pt"))
    resume = _torchrun if victim == 1 else _sequential
    resumed = resume(_args("swamp", runs, *extra))
    assert resumed.returncode == 0, resumed.stderr
    fresh = _sequential(_args("swamp", tmp_path / "fresh", *extra))
    assert fresh.returncode == 0, fresh.stderr
    _assert_bitwise_equal(only_run(tmp_path / "fresh"), run)


# -- the bookkeeping that keeps the ranks' collectives matched ------------------------------------


@pytest.mark.parametrize("start_step", [0, 3, 8, 10, 11, 24, 40])
def test_epoch_end_count_matches_the_checkpoints_train_makes(start_step: int) -> None:
    g = torch.Generator().manual_seed(0)
    data = Split(torch.randn(40, 5, generator=g), torch.randint(0, 3, (40,), generator=g))
    settings = TrainSettings(epochs=5, batch_size=4, lr=0.01, schedule="constant")
    model = torch.nn.Linear(5, 3)
    calls: list[int] = []
    train(
        model,
        data,
        settings,
        seed=1,
        start_step=start_step,
        on_epoch_end=lambda s: calls.append(s.step),
    )
    job = Job(0, 1, settings)
    assert LoopTrainer(data).epoch_ends(job, start_step) == len(calls)


def test_jobs_are_dealt_in_rounds_rank_p_takes_every_p_th() -> None:
    jobs = [Job(i, i, TrainSettings()) for i in range(5)]
    assert [[j.index for j in r] for r in _deal(jobs, 2)] == [[0, 1], [2, 3], [4]]
    assert [[j.index for j in r] for r in _deal(jobs, 8)] == [[0, 1, 2, 3, 4]]


def test_execution_timeout_reaches_the_process_group(monkeypatch, tmp_path: Path) -> None:
    import sparseavg.experiment.launch as launch
    from engine_helpers import tiny_config
    from sparseavg.parallel.distributed import TORCHRUN_ENV

    seen: dict[str, object] = {}

    class Joined(Exception):
        pass

    def connect(timeout_s: float, cuda: bool):
        seen.update(timeout=timeout_s, cuda=cuda)
        raise Joined

    monkeypatch.setattr(launch, "connect", connect)
    for name in TORCHRUN_ENV:
        monkeypatch.setenv(name, "0")
    with pytest.raises(Joined):
        launch.run_distributed(tiny_config({"execution": {"timeout": 12.5}}), tmp_path)
    assert seen == {"timeout": 12.5, "cuda": False}
    assert not any(tmp_path.iterdir())


def _hand_started(rank: int, port: int) -> dict[str, str]:
    """torchrun's variables for one hand-started rank of 2 whose peer never starts."""
    return {
        "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
    }  # fmt: skip


def test_a_rank_whose_leader_never_starts_stops_within_execution_timeout(monkeypatch) -> None:
    """Rank 1 of 2 started by hand, rank 0 never: a DistStoreError traceback after 48 s with
    execution.timeout = 20 (torch retries its connect for twice its timeout); now one line
    within the timeout."""
    from sparseavg.parallel.distributed import DistributedError, connect

    for name, value in _hand_started(1, _free_port()).items():
        monkeypatch.setenv(name, value)
    started = time.monotonic()
    with pytest.raises(DistributedError, match=r"^rank 1 of 2: rank 0 did not answer at "):
        connect(2.0, cuda=False)
    assert time.monotonic() - started < 2.0 + 1.0
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize("rank", [1, 0])
def test_a_hand_started_rank_alone_says_so_in_one_line(tmp_path: Path, rank: int) -> None:
    runs = tmp_path / "runs"
    args = _args("swamp", runs, "--set", "execution.mode=distributed")
    cmd = [sys.executable, "-m", "sparseavg", *args, "--set", "execution.timeout=2"]
    env = _env(**_hand_started(rank, _free_port()))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sparseavg: stopped: rank {rank} of 2: ")
    assert "within execution.timeout = 2 s; start all 2 ranks" in lines[0]
    assert not runs.exists()


@pytest.mark.parametrize("mode", ["auto", "sequential", "stacked"])
def test_torchrun_without_the_distributed_mode_is_refused(tmp_path, monkeypatch, capsys, mode):
    """Every rank would run the whole experiment and race for the run's lock, with no hint."""
    from sparseavg.cli.main import main

    for name, value in _hand_started(1, _free_port()).items():
        monkeypatch.setenv(name, value)
    runs = tmp_path / "runs"
    assert main(_args("swamp", runs, "--set", f"execution.mode={mode}")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("sparseavg: error: this process is rank 1 of 2 under torchrun")
    assert 'set execution.mode = "distributed"' in err[0]
    assert not runs.exists()


OWN_SCRIPT = """
import os
import sys

import torch
from torch import nn

import sparseavg

g = torch.Generator().manual_seed(0)
X = torch.randn(96, 6, generator=g)
Y = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()


def model_fn():
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def train_fn(model, mask, seed, settings):
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=0.9)
    sparseavg.attach(model, mask, opt)
    gen = torch.Generator().manual_seed(seed)
    for epoch in settings.epoch_range:
        order = torch.randperm(96, generator=gen)
        for i in range(3):
            idx = order[32 * i : 32 * (i + 1)]
            loss = nn.functional.cross_entropy(model(X[idx]), Y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        settings.end_epoch(model, loss.item())


def eval_fn(model):
    return {"accuracy": float((model(X).argmax(1) == Y).float().mean())}


mode, own_group = sys.argv[2], sys.argv[3:] == ["own-group"]
if own_group:  # the script uses torch.distributed itself, before and after the run
    torch.distributed.init_process_group("gloo")
sparseavg.swamp(
    model_fn, train_fn, eval_fn, particles=3, runs_dir=sys.argv[1], bn_batches=[X[:48], X[48:]],
    config={"train": {"epochs": 4, "lr": 0.05}, "pruning": {"cycles": 1, "rewind_epochs": 1},
            "execution": {"mode": mode}},
    progress=False,
)
if own_group:
    ones = torch.ones(1)
    torch.distributed.all_reduce(ones)
    sys.stdout.write(f"the script's group still works: {ones.item()}\\n")  # one write: ranks
    sys.stdout.flush()  # share the pipe
    torch.distributed.destroy_process_group()
# gloo's worker threads: joined once the groups are destroyed (the run's when it returns, the
# script's when it destroys it), so none can still be releasing a collective's tensor when
# the interpreter shuts down (that aborts the process)
tasks = "/proc/self/task"
if os.path.isdir(tasks):
    names = [open(f"{tasks}/{t}/comm").read().strip() for t in os.listdir(tasks)]
    sys.stdout.write(f"gloo threads left: {sum('gloo' in n for n in names)}\\n")
    sys.stdout.flush()
"""


@pytest.mark.parametrize("own_group", [False, True])
def test_own_model_and_loop_under_torchrun_reproduce_the_sequential_run_bitwise(
    tmp_path: Path, own_group: bool
) -> None:
    """sparseavg.swamp(model_fn, train_fn, ...) in a user's script, launched by torchrun
    with 2 processes: 3 particles dealt over the ranks, the same files as one process. A
    script that initialized torch.distributed itself keeps its process group."""
    script = tmp_path / "own.py"
    script.write_text(OWN_SCRIPT)
    seq = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "seq"), "sequential"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert seq.returncode == 0, seq.stderr
    launcher = (
        [str(TORCHRUN)] if TORCHRUN.exists() else [sys.executable, "-m", "torch.distributed.run"]
    )
    dist = subprocess.run(
        [*launcher, "--nproc-per-node", "2", str(script), str(tmp_path / "dist"), "distributed"]
        + (["own-group"] if own_group else []),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert dist.returncode == 0, dist.stderr[-3000:]
    _assert_bitwise_equal(only_run(tmp_path / "seq"), only_run(tmp_path / "dist"))
    if own_group:
        assert dist.stdout.count("the script's group still works: 2.0") == 2, dist.stdout
    if Path("/proc/self/task").is_dir():
        assert dist.stdout.count("gloo threads left: 0") == 2, dist.stdout[-2000:]
