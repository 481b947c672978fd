"""The GPU check: the CUDA tests and the GPU rows of the benchmarks, in one report.

Runs, each as a subprocess with its own time limit (together at most ``--budget`` seconds,
7.5 minutes by default):

1. ``pytest -m device -rs``: every device path on the CPU and on CUDA (tests/test_devices.py,
   the stacked executor's float64 equality in tests/test_stacked.py);
2. ``stacked.py``: the stacked executor's step, K=4 ResNet-20s, against 4 sequential steps;
3. ``distributed.py``: the wall time of a 4-particle SWAMP cycle against an IMP cycle
   (ResNet-20, 2048 random CIFAR-shaped samples, one process on the one GPU);
4. ``throughput.py``: images/s of ResNet-20 epochs under ``auto`` (bf16 + channels-last);
5. ``semi_structured.py``: 2:4 semi-structured linear layers against dense, float16;
6. ``structured.py``: the slim export against the channel-masked model, ResNet-20 and VGG-11;

and writes one markdown report (``benchmarks/gpu-report.md``, ``--out`` to change): the
machine (GPU, torch, CUDA), then per command its exit status, wall time and output tail.
On a machine where torch sees no CUDA device it prints one line and exits 0, running nothing.

    python benchmarks/gpu_check.py [--out benchmarks/gpu-report.md] [--budget 450]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TAIL_LINES = 40


@dataclass(frozen=True)
class Check:
    """One command of the check: what it measures, its arguments and its limit in seconds."""

    title: str
    args: tuple[str, ...]
    timeout: float


@dataclass(frozen=True)
class Outcome:
    """How a command ended: exit status (``None``: killed at its limit or never started), wall
    seconds and the last lines of its stdout and stderr together."""

    check: Check
    status: int | None
    seconds: float
    tail: str
    note: str = ""


def checks(python: str) -> list[Check]:
    """The commands, with the settings that keep each to a minute or two on one GPU (every
    flag is one the script's argparse takes)."""
    bench = f"{ROOT / 'benchmarks'}/"
    return [
        Check(
            "device tests (CPU and CUDA)",
            (python, "-m", "pytest", "-m", "device", "-rs", "-q", "-p", "no:cacheprovider"),
            120,
        ),
        Check(
            "stacked K=4 / sequential, ResNet-20 90 % sparse, batch 128",
            (python, bench + "stacked.py", "--device", "cuda", "--k", "4", "--repeats", "3"),
            60,
        ),
        Check(
            "4-particle SWAMP cycle / IMP cycle, ResNet-20, 2048 samples, 1 epoch",
            (
                python,
                bench + "distributed.py",
                "--device",
                "cuda",
                "--nproc",
                "1",
                "--particles",
                "4",
                "--repeats",
                "1",
                "--samples",
                "2048",
            ),
            150,
        ),
        Check(
            "throughput, ResNet-20 epochs, auto = bf16 + channels_last",
            (
                python,
                bench + "throughput.py",
                "--device",
                "cuda",
                "--repeats",
                "2",
                "--samples",
                "20000",
            ),
            60,
        ),
        Check(
            "2:4 semi-structured / dense, float16 linear layers",
            (python, bench + "semi_structured.py", "--device", "cuda", "--repeats", "5"),
            45,
        ),
        Check(
            "slim export / channel-masked model, ResNet-20 and VGG-11",
            (
                python,
                bench + "structured.py",
                "--device",
                "cuda",
                "--repeats",
                "3",
                "--removed",
                "50,90",
            ),
            45,
        ),
    ]


def run_check(check: Check, limit: float) -> Outcome:
    """Run ``check`` from the repository root with ``src`` on the path, in its own process
    group so that a limit kills its children too (torchrun's ranks)."""
    path = [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    start = time.perf_counter()
    proc = subprocess.Popen(
        check.args,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=limit)
        status: int | None = proc.returncode
        note = ""
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        status, note = None, f"killed at its limit of {limit:.0f} s"
    seconds = time.perf_counter() - start
    return Outcome(check, status, seconds, tail(out or ""), note)


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def machine() -> list[str]:
    """What the figures were measured on: GPU, compute capability, memory, torch, CUDA."""
    import torch

    props = torch.cuda.get_device_properties(0)
    return [
        f"GPU: {props.name} (compute capability {props.major}.{props.minor}, "
        f"{props.total_memory / 2**30:.0f} GiB), {torch.cuda.device_count()} device(s)",
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"cuDNN {torch.backends.cudnn.version()}",
        f"Python {platform.python_version()}, {platform.platform()}, {os.cpu_count()} CPUs",
    ]


def report(lines: list[str], outcomes: list[Outcome], when: str) -> str:
    """The markdown report: the machine, a summary table, then each command's output tail."""
    out = ["# GPU check", "", f"Run {when} by `benchmarks/gpu_check.py`.", ""]
    out += [f"- {line}" for line in lines]
    out += ["", "| check | exit status | wall time |", "|---|---:|---:|"]
    for o in outcomes:
        status = o.note or str(o.status)
        out.append(f"| {o.check.title} | {status} | {o.seconds:.1f} s |")
    for o in outcomes:
        command = " ".join(_short(a) for a in o.check.args)
        out += ["", f"## {o.check.title}", "", f"`{command}`", ""]
        status = o.note or f"exit status {o.status}"
        out += [f"{status}, {o.seconds:.1f} s. Output tail:", "", "```", o.tail, "```"]
    return "\n".join(out) + "\n"


def _short(arg: str) -> str:
    """An argument as a reader would type it: paths relative to the repository, ``python``."""
    if arg == sys.executable:
        return "python"
    return arg.replace(f"{ROOT}/", "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "gpu-report.md")
    p.add_argument("--budget", type=float, default=450.0, help="seconds for all the commands")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device; nothing run (it needs an NVIDIA GPU)")
        return 0
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = machine()
    outcomes: list[Outcome] = []
    deadline = time.perf_counter() + args.budget
    for check in checks(sys.executable):
        left = deadline - time.perf_counter()
        if left < 10:
            outcomes.append(Outcome(check, None, 0.0, "", "not run: the budget was spent"))
            continue
        print(f"gpu_check: {check.title} ...", flush=True)
        outcomes.append(run_check(check, min(check.timeout, left)))
        print(f"  {outcomes[-1].note or f'exit status {outcomes[-1].status}'}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(lines, outcomes, when))
    print(f"gpu_check: wrote {args.out}")
    return 0 if all(o.status == 0 for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
