"""Effect of glibc malloc settings on a CPU training step.

Runs the same masked ResNet-20 step (CIFAR-shaped random batch, see ``masked_step.py``) in
three worker processes, which take turns (A B C A B C ...; the others wait, idle):

- ``default``: glibc's defaults (any ``MALLOC_*`` variables removed from the environment);
- ``env``: ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296
  MALLOC_TOP_PAD_=1073741824`` in the environment;
- ``mallopt``: :func:`sparseavg.utils.malloc.tune_glibc_malloc` called at the worker's start
  (after ``import torch``, as a CLI entry point would).

Prints the median step time, the ratio to ``default`` and the minor page faults per step.

    python benchmarks/malloc.py [--device cpu|cuda] [--repeats 7] [--steps 3]
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

import torch
from _common import describe, paired_ratio, parser, setup, sync, table

ENV_SETTINGS = {
    "MALLOC_MMAP_THRESHOLD_": "33554432",
    "MALLOC_TRIM_THRESHOLD_": "4294967296",
    "MALLOC_TOP_PAD_": "1073741824",
}
MODES = ("default", "env", "mallopt")


def worker(mode: str, device: torch.device, batch: int, steps: int) -> None:
    """Serve timed blocks of ``steps`` steps: one line ``seconds faults`` per ``go`` on stdin."""
    if mode == "mallopt":
        from sparseavg.utils.malloc import tune_glibc_malloc

        if not tune_glibc_malloc():
            raise SystemExit("tune_glibc_malloc did not apply (not glibc?)")
    from masked_step import make_step

    step = make_step(device, batch, masked=True)
    for _ in range(2):
        step()
    for line in sys.stdin:
        if line.strip() != "go":
            break
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        sync(device)
        t = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        seconds = time.perf_counter() - t
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        print(f"{seconds / steps} {faults / steps}", flush=True)


def start(mode: str, argv: list[str]) -> subprocess.Popen[str]:
    """A worker process for ``mode``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if mode == "env":
        env.update(ENV_SETTINGS)
    cmd = [sys.executable, __file__, *argv, "--worker", mode]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)


def ask(proc: subprocess.Popen[str]) -> tuple[float, float]:
    """One timed block from a worker: ``(seconds per step, minor faults per step)``."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"worker {proc.args} ended early")
    seconds, faults = line.split()
    return float(seconds), float(faults)


def main() -> None:
    p = parser(__doc__, repeats=7)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="steps per timed block")
    p.add_argument("--worker", choices=MODES, help="internal: run as the worker of one mode")
    args = p.parse_args()
    device = setup(args)
    if args.worker:
        worker(args.worker, device, args.batch, args.steps)
        return
    argv = ["--device", args.device, "--batch", str(args.batch), "--steps", str(args.steps)]
    if args.threads is not None:
        argv += ["--threads", str(args.threads)]
    procs = {mode: start(mode, argv) for mode in MODES}
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    faults: dict[str, list[float]] = {mode: [] for mode in MODES}
    try:
        for _ in range(args.repeats):
            for mode, proc in procs.items():
                seconds, count = ask(proc)
                times[mode].append(seconds)
                faults[mode].append(count)
    finally:
        for proc in procs.values():
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait()
    print(
        f"masked ResNet-20 step, batch {args.batch}, {describe(device)}; "
        f"median of {args.repeats} blocks of {args.steps} steps per process"
    )
    fault_medians = {mode: sorted(fs)[len(fs) // 2] for mode, fs in faults.items()}
    table(times, "default", unit="ms/step")
    print(
        "minor page faults per step: " + ", ".join(f"{m} {f:.0f}" for m, f in fault_medians.items())
    )
    env = paired_ratio(times, "env", "default")
    mallopt = paired_ratio(times, "mallopt", "default")
    print(
        f"summary: step time with the MALLOC_* variables / default = {env:.3f}, "
        f"with tune_glibc_malloc() / default = {mallopt:.3f} (paired medians)"
    )


if __name__ == "__main__":
    main()
