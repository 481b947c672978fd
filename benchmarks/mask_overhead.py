"""Cost of keeping a mask during training, and of the memory-format / precision options.

Times optimizer steps of a CIFAR ResNet-20 on random CIFAR-shaped batches, interleaving the
variants in one process (A B C A B C ...) so machine noise hits them alike, and prints medians
and ratios against the plain dense step.

    python benchmarks/mask_overhead.py [--device cpu|cuda] [--batch 128] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from sparseavg import Mask, MaskEnforcer, build_model, magnitude_prune, prunable_parameters


def make_step(
    device: torch.device, batch: int, *, masked: bool, channels_last: bool, bf16: bool
) -> Callable[[], None]:
    torch.manual_seed(0)
    model = build_model("resnet20", 10, (3, 32, 32)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    enforcer = None
    if masked:
        params = prunable_parameters(model)
        mask = magnitude_prune(params, Mask.ones_like(params), 0.9).to(device)
        mask.apply_(model)
        enforcer = MaskEnforcer(model, mask)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if enforcer is not None:
            enforcer.mask_gradients()
        opt.step()
        if enforcer is not None:
            enforcer.mask_weights()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=7, help="timed blocks per variant")
    args = parser.parse_args()
    device = torch.device(args.device)
    variants = {
        "dense": dict(masked=False, channels_last=False, bf16=False),
        "masked (90 % sparse)": dict(masked=True, channels_last=False, bf16=False),
        "masked + channels_last": dict(masked=True, channels_last=True, bf16=False),
        "masked + channels_last + bf16": dict(masked=True, channels_last=True, bf16=True),
    }
    steps = {name: make_step(device, args.batch, **kw) for name, kw in variants.items()}
    for step in steps.values():  # warm-up
        for _ in range(3):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(args.steps):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t) / args.steps)
    base = statistics.median(times["dense"])
    print(
        f"ResNet-20, batch {args.batch}, {device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; median of {args.repeats} blocks of {args.steps} steps"
    )
    print(f"{'variant':<32} {'ms/step':>9} {'vs dense':>9}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:<32} {m * 1e3:>9.1f} {m / base:>9.3f}")


if __name__ == "__main__":
    main()
