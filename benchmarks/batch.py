"""Many small runs: one process per core with one thread each, or one after another.

Times the same batch of small runs (the demo's four recipes at a shorter budget: MNIST-1D,
conv1d width 32, 2 epochs, 1 pruning cycle) two ways, interleaved, each round into fresh
run directories:

- ``sequential``: :func:`sparseavg.run_many` with ``workers=1`` in this process, with torch's
  default thread count (all cores): how ``sparseavg demo`` ran before;
- ``parallel``: ``workers`` = the cores, each a spawned process with one torch thread (the
  process start-up included): how ``sparseavg demo`` and ``sparseavg study`` run now.

Small models keep one core busy at best, so the ratio ``parallel / sequential`` is well
below 1 on a CPU (goal: <= 0.6 on 2 cores).

    python benchmarks/batch.py [--repeats 3] [--epochs 2]
"""

from __future__ import annotations

import tempfile

from _common import describe, interleave, paired_ratio, parser, setup, table

from sparseavg import resolve_config, run_many
from sparseavg.experiment.batch import available_cores


def main() -> None:
    p = parser(__doc__, repeats=3)
    p.add_argument("--epochs", type=int, default=2, help="epochs per training run")
    args = p.parse_args()
    device = setup(args)
    base = {
        "data": {"dataset": "mnist1d"},
        "model": {"name": "conv1d", "options": {"width": 32}},
        "train": {"epochs": args.epochs},
        "pruning": {"cycles": 1, "fraction": 0.5, "rewind_epochs": 1.0},
        "execution": {"device": "cpu"},
    }
    recipes = [("imp", 1), ("swamp", 4), ("sms", 3), ("ensemble", 2)]
    configs = [
        resolve_config({**base, "recipe": r, "ingredients": {"count": k}, "seed": s})
        for r, k in recipes
        for s in (0, 1)
    ]
    cores = available_cores()

    def batch(workers: int) -> None:
        with tempfile.TemporaryDirectory() as out:
            run_many(configs, out, workers=workers)

    variants = {"sequential": lambda: batch(1), "parallel": lambda: batch(cores)}
    times = interleave(variants, device, args.repeats, warmup=0)
    print(
        f"{len(configs)} runs (imp, swamp x4, sms x3, ensemble x2; 2 seeds), {args.epochs} "
        f"epochs, 1 cycle; {describe(device)} in this process, {cores} workers with 1 thread "
        f"each; median of {args.repeats} rounds"
    )
    table(times, "sequential", unit="s", scale=1.0)
    ratio = paired_ratio(times, "parallel", "sequential")
    print(f"summary: parallel / sequential = {ratio:.3f} (goal <= 0.6 on 2 cores)")


if __name__ == "__main__":
    main()
