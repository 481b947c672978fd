"""Training throughput: images per second of ResNet-20 epochs through ``sparseavg.train``.

A random CIFAR-shaped :class:`sparseavg.Split` on the device (5,000 samples on the CPU and
50,000 on CUDA by default), crop+flip augmentation, batches of 128, SGD with momentum, one
epoch per call, dense and under a 90 % sparse mask. ``train`` resolves the precision and
memory format as a run does (``auto``: bf16 autocast and channels-last on CUDA, fp32
elsewhere). Each epoch includes what ``train`` does once per call (optimizer, CPU copy of the
final weights).

    python benchmarks/throughput.py [--device cpu|cuda] [--repeats 3] [--samples N]
"""

from __future__ import annotations

import torch
from _common import describe, interleave, paired_ratio, parser, random_cifar, setup, table

from sparseavg import Mask, TrainSettings, build_model, magnitude_prune, train
from sparseavg.pruning import prunable_parameters


def main() -> None:
    p = parser(__doc__, repeats=3)
    p.add_argument("--samples", type=int, default=None, help="5000 on cpu, 50000 on cuda")
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    device = setup(args)
    samples = args.samples or (50_000 if device.type == "cuda" else 5_000)
    data = random_cifar(samples, torch.Generator().manual_seed(0), device)
    settings = TrainSettings(epochs=1, batch_size=args.batch, lr=0.05)

    torch.manual_seed(0)
    dense = build_model("resnet20", 10, (3, 32, 32)).to(device)
    torch.manual_seed(0)
    sparse = build_model("resnet20", 10, (3, 32, 32)).to(device)
    params = prunable_parameters(sparse)
    mask = magnitude_prune(params, Mask.ones_like(params), 0.9).to(device)
    mask.apply_(sparse)
    variants = {
        "train() dense": lambda: train(dense, data, settings, seed=0),
        "train() masked (90 %)": lambda: train(sparse, data, settings, seed=0, mask=mask),
    }
    times = interleave(variants, device, args.repeats)
    images = (samples // args.batch) * args.batch
    bf16, channels_last = settings.resolved(device)
    print(
        f"ResNet-20, {samples} CIFAR-shaped samples, batch {args.batch}, crop+flip, "
        f"bf16={bf16}, channels_last={channels_last}, {describe(device)}; "
        f"median of {args.repeats} epochs"
    )
    medians = table(
        times,
        "train() dense",
        unit="s/epoch",
        scale=1.0,
        extra={"images/s": lambda s: f"{images / s:.0f}"},
    )
    ratio = paired_ratio(times, "train() masked (90 %)", "train() dense")
    print(
        f"summary: {images / medians['train() dense']:.0f} images/s dense, "
        f"{images / medians['train() masked (90 %)']:.0f} images/s masked on {device} "
        f"(masked/dense time {ratio:.3f}, paired medians)"
    )


if __name__ == "__main__":
    main()
