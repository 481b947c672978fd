"""Cost of keeping a mask during training, against a dense step and against torch's pruning.

Times optimizer steps of a CIFAR ResNet-20 on random CIFAR-shaped batches (SGD with momentum
and weight decay), interleaving the variants in one process (A B C A B C ...) so machine
noise hits them alike, and prints medians and ratios against the plain dense step:

- ``dense``: no mask;
- ``masked (90 % sparse)``: :class:`sparseavg.MaskEnforcer` as ``train()`` uses it, one
  ``torch._foreach_mul_`` over the gradients before and one over the weights after the step;
- ``torch.nn.utils.prune``: the same mask through ``prune.custom_from_mask``, which recomputes
  ``weight = weight_orig * weight_mask`` in a forward pre-hook of every layer;
- ``masked + channels_last`` and ``masked + channels_last + bf16``: the memory-format and
  precision options (``train.channels_last``, ``train.precision``).

Goals: masked / dense <= 1.02, masked / torch.nn.utils.prune <= 0.95.

    python benchmarks/masked_step.py [--device cpu|cuda] [--batch 128] [--steps 4] [--repeats 7]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import block, describe, interleave, paired_ratio, parser, setup, table
from torch.nn.utils import prune

from sparseavg import Mask, MaskEnforcer, build_model, magnitude_prune, prunable_parameters

SPARSITY = 0.9


def make_step(
    device: torch.device,
    batch: int,
    *,
    masked: bool = False,
    torch_prune: bool = False,
    channels_last: bool = False,
    bf16: bool = False,
) -> Callable[[], None]:
    """One optimizer step of a fresh ResNet-20 on a fixed random batch, as a closure."""
    torch.manual_seed(0)
    model = build_model("resnet20", 10, (3, 32, 32)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = prunable_parameters(model)
    mask = magnitude_prune(params, Mask.ones_like(params), SPARSITY).to(device)
    enforcer = None
    if masked:
        mask.apply_(model)
        enforcer = MaskEnforcer(model, mask)
    if torch_prune:
        modules = dict(model.named_modules())
        for name in mask:
            module_name = name.removesuffix(".weight")
            prune.custom_from_mask(modules[module_name], "weight", mask[name])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
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
    p = parser(__doc__, repeats=7)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=4, help="steps per timed block")
    args = p.parse_args()
    device = setup(args)
    variants: dict[str, dict[str, bool]] = {
        "dense": {},
        "masked (90 % sparse)": {"masked": True},
        "torch.nn.utils.prune": {"torch_prune": True},
        "masked + channels_last": {"masked": True, "channels_last": True},
        "masked + channels_last + bf16": {"masked": True, "channels_last": True, "bf16": True},
    }
    blocks = {
        name: block(make_step(device, args.batch, **kw), args.steps)
        for name, kw in variants.items()
    }
    times = interleave(blocks, device, args.repeats)
    per_step = {name: [t / args.steps for t in ts] for name, ts in times.items()}
    print(
        f"ResNet-20, batch {args.batch}, {describe(device)}; "
        f"median of {args.repeats} blocks of {args.steps} steps"
    )
    table(per_step, "dense", unit="ms/step")
    vs_dense = paired_ratio(per_step, "masked (90 % sparse)", "dense")
    vs_prune = paired_ratio(per_step, "masked (90 % sparse)", "torch.nn.utils.prune")
    print(
        f"summary: masked step / dense step = {vs_dense:.3f} (goal <= 1.02); "
        f"masked step / torch.nn.utils.prune step = {vs_prune:.3f} (goal <= 0.95) "
        "(paired medians)"
    )


if __name__ == "__main__":
    main()
