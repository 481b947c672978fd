"""Wall time of one pruning cycle of a SWAMP run: distributed over P processes / sequential.

Runs the same config (cycle 0 dense, cycle 1 pruned) as separate processes, alternating
sequential and distributed repeats, and reads the cycle-1 time each run records in its
``results.jsonl``, so process start-up and data loading are not counted. The sequential run
gets all the threads the P distributed processes get together (``--threads`` each), so the
ratio compares two ways of using the same cores. An IMP cycle (one particle) is timed the same
way for the cost of SWAMP over IMP.

    python benchmarks/distributed.py [--nproc 2] [--particles 4] [--repeats 3]
        [--dataset random-cifar10 --model resnet20 --samples 2048] [--device cpu|cuda]

``random-cifar10`` is CIFAR-shaped random data (3x32x32, 10 classes) registered by this script,
for machines that cannot download CIFAR-10. The script is also its own torchrun entry point
(``--role run``), which is how the distributed runs register that data set too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def register_random_cifar(samples: int) -> None:
    """``random-cifar10``: ``samples`` training and ``samples // 4`` test images of shape
    ``(3, 32, 32)``, 10 classes, crop+flip augmentation, drawn from a fixed seed."""
    from _common import random_cifar

    from sparseavg.data import register_dataset
    from sparseavg.data.dataset import dataset_from_splits

    def load(*, device, val_fraction, split_seed, **_):
        g = torch.Generator().manual_seed(0)
        train = random_cifar(samples, g)
        test = random_cifar(max(1, samples // 4), g)
        return dataset_from_splits(
            "random-cifar10",
            train,
            test,
            num_classes=10,
            device=device,
            val_fraction=val_fraction,
            split_seed=split_seed,
        )

    register_dataset("random-cifar10", load, replace=True)


def run_args(args: argparse.Namespace, runs: Path, particles: int, mode: str) -> list[str]:
    recipe = "swamp" if particles > 1 else "imp"
    sets = {
        "data.dataset": f'"{args.dataset}"',
        "model.name": f'"{args.model}"',
        "train.epochs": str(args.epochs),
        "train.batch_size": str(args.batch),
        "pruning.cycles": "1",
        "pruning.rewind_epochs": "0",
        "ingredients.count": str(particles),
        "execution.device": f'"{args.device}"',
        "execution.mode": f'"{mode}"',
    }
    out = ["run", "--recipe", recipe, "--runs-dir", str(runs), "--quiet"]
    for key, value in sets.items():
        out += ["--set", f"{key}={value}"]
    return out


def cycle_seconds(runs: Path) -> float:
    """The recorded wall time of cycle 1 of the only run under ``runs``."""
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    return max(r["seconds"] for r in rows if r["cycle"] == 1)


def timed(args: argparse.Namespace, particles: int, mode: str, nproc: int, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    me = [str(Path(__file__).resolve()), "--role", "run", "--samples", str(args.samples)]
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        inner = run_args(args, runs, particles, mode)
        if mode == "distributed":
            launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node"]
            cmd = [*launcher, str(nproc), *me, "--", *inner]
        else:
            cmd = [sys.executable, *me, "--", *inner]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        return cycle_seconds(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--role", choices=["bench", "run"], default="bench")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="threads per process")
    parser.add_argument("--particles", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dataset", default="random-cifar10")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--samples", type=int, default=2048, help="random-cifar10 train size")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args, rest = parser.parse_known_args()
    if args.role == "run":  # one run, as a plain process or a torchrun rank
        register_random_cifar(args.samples)
        from sparseavg.cli.main import main as cli

        raise SystemExit(cli([a for a in rest if a != "--"]))

    total_threads = args.nproc * args.threads
    times: dict[str, list[float]] = {"imp": [], "sequential": [], "distributed": []}
    for _ in range(args.repeats):
        times["imp"].append(timed(args, 1, "sequential", 1, total_threads))
        times["sequential"].append(timed(args, args.particles, "sequential", 1, total_threads))
        times["distributed"].append(
            timed(args, args.particles, "distributed", args.nproc, args.threads)
        )
    med = {k: statistics.median(v) for k, v in times.items()}
    where = f"{args.device}, {args.model} on {args.dataset}, batch {args.batch}"
    print(f"one cycle, {args.epochs} epoch(s), {where}; medians of {args.repeats}:")
    print(f"  IMP (1 model), sequential           {med['imp']:8.2f} s")
    print(f"  SWAMP ({args.particles} particles), sequential  {med['sequential']:8.2f} s")
    print(f"  SWAMP ({args.particles} particles), distributed {med['distributed']:8.2f} s")
    ratio = med["distributed"] / med["sequential"]
    print(
        f"distributed P={args.nproc} / sequential: {ratio:.2f}x wall time; SWAMP distributed / "
        f"IMP: {med['distributed'] / med['imp']:.2f}x ({args.device}, "
        f"{args.threads} thread(s) per process, {total_threads} for sequential)"
    )


if __name__ == "__main__":
    main()
