"""What ``sparseavg.train`` costs over a bare training loop.

Times one epoch of LeNet-300-100 on MNIST-shaped random data (60,000 samples by default,
batches of 128, SGD with momentum and weight decay) three ways, interleaved in one process:

- ``bare loop``: twenty lines of PyTorch over the same on-device tensors (a fresh optimizer,
  a random permutation, index, forward, backward, step);
- ``train()``: :func:`sparseavg.train` for one epoch, dense (cosine schedule, loss
  recording, divergence check, a CPU copy of the final weights);
- ``train() masked``: the same under a 90 % sparse mask.

The ratio ``train() / bare loop`` is the engine's per-step overhead (goal: <= 1.10).

    python benchmarks/engine_overhead.py [--device cpu|cuda] [--repeats 5] [--samples 60000]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import describe, interleave, paired_ratio, parser, setup, table
from torch import Tensor, nn

from sparseavg import Mask, Split, TrainSettings, build_model, magnitude_prune, train
from sparseavg.pruning import prunable_parameters


def bare_epoch(model: nn.Module, x: Tensor, y: Tensor, batch: int, seed: int) -> None:
    """One epoch of the plainest loop over on-device ``x``, ``y`` (full batches only)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(x.shape[0], generator=g).to(x.device)
    model.train()
    for i in range(x.shape[0] // batch):
        idx = order[i * batch : (i + 1) * batch]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def lenet(device: torch.device) -> nn.Module:
    """A freshly initialised LeNet-300-100 for MNIST on ``device``."""
    torch.manual_seed(0)
    return build_model("lenet300_100", 10, (1, 28, 28)).to(device)


def main() -> None:
    p = parser(__doc__, repeats=5)
    p.add_argument("--samples", type=int, default=60_000, help="training samples")
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    device = setup(args)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.samples, 1, 28, 28, generator=g).to(device)
    y = torch.randint(0, 10, (args.samples,), generator=g).to(device)
    data = Split(x, y)
    settings = TrainSettings(epochs=1, batch_size=args.batch, lr=0.05, augment=False)

    bare_model, dense_model, masked_model = lenet(device), lenet(device), lenet(device)
    params = prunable_parameters(masked_model)
    mask = magnitude_prune(params, Mask.ones_like(params), 0.9).to(device)
    mask.apply_(masked_model)
    variants = {
        "bare loop": lambda: bare_epoch(bare_model, x, y, args.batch, seed=0),
        "train()": lambda: train(dense_model, data, settings, seed=0),
        "train() masked": lambda: train(masked_model, data, settings, seed=0, mask=mask),
    }
    times = interleave(variants, device, args.repeats)

    steps = args.samples // args.batch
    print(
        f"LeNet-300-100, {args.samples} MNIST-shaped samples, batch {args.batch} "
        f"({steps} steps/epoch), {describe(device)}; median of {args.repeats} epochs"
    )
    table(times, "bare loop", unit="s/epoch", scale=1.0, extra={"us/step": _per_step(steps)})
    dense = paired_ratio(times, "train()", "bare loop")
    masked = paired_ratio(times, "train() masked", "bare loop")
    print(
        f"summary: train() epoch / bare loop epoch = {dense:.3f} (goal <= 1.10), "
        f"masked {masked:.3f} (paired medians)"
    )


def _per_step(steps: int) -> Callable[[float], str]:
    """Formats an epoch's seconds as microseconds per step."""
    return lambda seconds: f"{seconds / steps * 1e6:.0f}"


if __name__ == "__main__":
    main()
