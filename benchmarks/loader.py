"""Cost of an epoch of augmented batches: on-device ``Split.batches`` vs a ``DataLoader``.

CIFAR-shaped random data (10,000 samples by default, to keep it short; the full 50,000 scale
linearly), batches of 128, random crop (zero padding 4) and horizontal flip:

- ``Split.batches``: :class:`sparseavg.data.Split` with the data on the device, a random
  permutation and the batched crop+flip of :mod:`sparseavg.data.augment`, on the device;
- ``DataLoader, N workers``: a ``torch.utils.data.DataLoader`` over the same tensors (on the
  CPU) with the same crop+flip written per sample in torch (as torchvision's ``RandomCrop`` and
  ``RandomHorizontalFlip`` do), batches collated and moved to the device (pinned on CUDA).
  With workers the loader keeps them between epochs (``persistent_workers``).

Only the data path is timed (no model). Goal: Split epoch / DataLoader epoch <= 0.05.

    python benchmarks/loader.py [--device cpu|cuda] [--repeats 5] [--samples 10000] [--workers 0 2]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import describe, interleave, paired_ratio, parser, random_cifar, setup, table
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from sparseavg.data import Split

PADDING = 4


class PerSampleCifar(Dataset[tuple[Tensor, Tensor]]):
    """``(x[i], y[i])`` with a random crop after zero padding and a random horizontal flip,
    one sample at a time, from torch's global random generator."""

    def __init__(self, x: Tensor, y: Tensor, padding: int = PADDING) -> None:
        self.x, self.y, self.padding = x, y, padding

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        img = self.x[i]
        _, h, w = img.shape
        p = self.padding
        padded = F.pad(img, (p, p, p, p))
        top, left = torch.randint(0, 2 * p + 1, (2,)).tolist()
        img = padded[:, top : top + h, left : left + w]
        if torch.rand(()) < 0.5:
            img = img.flip(-1)
        return img, self.y[i]


def split_epoch(data: Split, batch: int, seed: int) -> Callable[[], None]:
    """An epoch of augmented on-device batches, consumed (the device does the work)."""

    def run() -> None:
        g = torch.Generator().manual_seed(seed)
        for x, y in data.batches(batch, generator=g, augment=True, drop_last=True):
            del x, y

    return run


def loader_epoch(loader: DataLoader, device: torch.device) -> Callable[[], None]:
    """An epoch of the loader's batches, each moved to ``device``."""

    def run() -> None:
        for x, y in loader:
            x.to(device, non_blocking=True)
            y.to(device, non_blocking=True)

    return run


def main() -> None:
    p = parser(__doc__, repeats=5)
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers")
    args = p.parse_args()
    device = setup(args)
    cpu = random_cifar(args.samples, torch.Generator().manual_seed(0))
    x, y = cpu.x, cpu.y
    data = cpu.to(device)
    variants: dict[str, Callable[[], None]] = {
        "Split.batches": split_epoch(data, args.batch, seed=1)
    }
    for workers in args.workers:
        loader = DataLoader(
            PerSampleCifar(x, y),
            batch_size=args.batch,
            shuffle=True,
            drop_last=True,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=device.type == "cuda",
        )
        variants[f"DataLoader, {workers} workers"] = loader_epoch(loader, device)
    times = interleave(variants, device, args.repeats)
    print(
        f"{args.samples} CIFAR-shaped samples, batch {args.batch}, crop (padding {PADDING}) + "
        f"flip, {describe(device)}; median of {args.repeats} epochs"
    )
    table(times, "Split.batches", unit="ms/epoch")
    ratios = {k: paired_ratio(times, "Split.batches", k) for k in variants if k != "Split.batches"}
    best = min(ratios, key=lambda k: -ratios[k])  # the fastest loader gives the largest ratio
    print(
        f"summary: Split.batches epoch / fastest DataLoader epoch ({best}) = "
        f"{ratios[best]:.3f} (goal <= 0.05; paired medians; all: "
        + ", ".join(f"{k.removeprefix('DataLoader, ')} {r:.3f}" for k, r in ratios.items())
        + ")"
    )


if __name__ == "__main__":
    main()
