"""Cost of swamp-rigl's lock step against training its particles one after another.

Trains K RigL particles of one model from one sparse start on the same random data, and times
the whole training of the K, interleaving the variants in one process (A B C A B C ...):

- ``one after another``: ``train()`` per particle with ``RigLSchedule`` (each decides on its
  own; the reference cost of K runs);
- ``lock step``: ``train_together`` with every decision shared (mean weights and gradients
  at each update), parting at step 0 (``pruning.rigl_together = 0``);
- ``lock step, together 0.5``: the same with the particles one trajectory for the first half
  (swamp-rigl's default), where only the first is trained and the others take its state.

Goal: lock step / one after another <= 1.05 (interleaving K models costs nothing but the
shared updates); together 0.5 / one after another about (1 + K) / (2K): 0.625 for K = 4.

    python benchmarks/lockstep.py [--model conv1d] [--k 4] [--epochs 2] [--samples 2048]
        [--batch 128] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import torch
from _common import describe, interleave, paired_ratio, parser, setup, table

from sparseavg import Mask, build_model, prunable_parameters
from sparseavg.data import Split
from sparseavg.pruning import Lockstep
from sparseavg.pruning.rigl import RigLSchedule, alive_counts, erk_densities, random_mask
from sparseavg.training import TrainSettings, steps_per_epoch, train, train_together

SHAPES = {"lenet300_100": (1, 28, 28), "resnet20": (3, 32, 32), "conv1d": (1, 40)}


def variants(args, device: torch.device):
    """``name -> fn`` training K particles from one fresh start each call."""
    shape = SHAPES[args.model]
    g = torch.Generator().manual_seed(1)
    data = Split(
        torch.randn(args.samples, *shape, generator=g).to(device),
        torch.randint(0, 10, (args.samples,), generator=g).to(device),
    )
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch, lr=0.05, momentum=0.9)
    total = args.epochs * steps_per_epoch(data, args.batch)

    def start() -> tuple[torch.nn.Module, Mask]:
        torch.manual_seed(0)
        model = build_model(args.model, 10, shape).to(device)
        shapes = {n: tuple(p.shape) for n, p in prunable_parameters(model).items()}
        counts = alive_counts(shapes, erk_densities(shapes, 0.1))
        mask = random_mask(shapes, counts, generator=torch.Generator().manual_seed(0))
        mask = mask.to(device)
        mask.apply_(model)
        return model, mask

    def one_after_another() -> None:
        for seed in range(args.k):
            model, mask = start()
            train(model, data, settings, seed=seed, mask=mask, mask_schedule=RigLSchedule())

    def lock_step(together: float) -> None:
        models, masks = zip(*(start() for _ in range(args.k)), strict=True)
        train_together(
            list(models),
            data,
            [settings] * args.k,
            seeds=list(range(args.k)),
            mask=masks[0],
            mask_schedule=Lockstep(RigLSchedule(), together),
            shared_steps=round(together * total),
        )

    return {
        "one after another": one_after_another,
        "lock step": lambda: lock_step(0.0),
        "lock step, together 0.5": lambda: lock_step(0.5),
    }


def main() -> None:
    p = parser(__doc__, repeats=5)
    p.add_argument("--model", default="conv1d", choices=sorted(SHAPES))
    p.add_argument("--k", type=int, default=4, help="particles")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--samples", type=int, default=2048)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    device = setup(args)
    times = interleave(variants(args, device), device, args.repeats)
    print(
        f"{args.model}, K = {args.k} particles, {args.epochs} epochs of {args.samples} samples, "
        f"batch {args.batch}, {describe(device)}; median of {args.repeats} rounds"
    )
    table(times, "one after another", unit="s", scale=1.0)
    lock = paired_ratio(times, "lock step", "one after another")
    half = paired_ratio(times, "lock step, together 0.5", "one after another")
    print(
        f"summary: lock step / one after another = {lock:.3f} (goal <= 1.05); together 0.5 / "
        f"one after another = {half:.3f} (expected {(1 + args.k) / (2 * args.k):.3f})"
    )


if __name__ == "__main__":
    main()
