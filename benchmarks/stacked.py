"""Throughput of the stacked executor's step against the same K steps one model at a time.

Times masked (90 % sparse) SGD steps of CIFAR ResNet-20s on random CIFAR-shaped batches: one
stacked step of K models (``sparseavg.parallel.stacked``: vmap over a (K, P) parameter tensor,
one SGD update) against K ordinary steps (model, ``torch.optim.SGD``, ``MaskEnforcer``), as
the sequential executor takes them. The variants are interleaved in one process (A B A B ...)
so machine noise hits them alike; medians of the timed blocks are printed as images/s.

    python benchmarks/stacked.py [--device cpu|cuda] [--k 4] [--batch 128] [--repeats 5]
                                 [--steps 3] [--compile]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from _common import block, describe, interleave, masked_step, paired_ratio, parser, setup, table

from sparseavg import Mask, MaskEnforcer, build_model, magnitude_prune, prunable_parameters
from sparseavg.parallel.stack import (
    Layout,
    StackedModel,
    flat_mask,
    make_loss,
    read_state,
    sgd_step,
    stack_inputs,
)

LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4


def masked_resnet(device: torch.device) -> tuple[torch.nn.Module, Mask]:
    """A ResNet-20 for (3, 32, 32) inputs and 10 classes, 90 % of its prunable weights pruned
    by magnitude (and zeroed)."""
    torch.manual_seed(0)
    model = build_model("resnet20", 10, (3, 32, 32)).to(device)
    params = prunable_parameters(model)
    mask = magnitude_prune(params, Mask.ones_like(params), 0.9).to(device)
    mask.apply_(model)
    return model, mask


def batches(
    k: int, batch: int, device: torch.device
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``k`` random batches: inputs ``(batch, 3, 32, 32)``, labels ``(batch,)`` in 0..9."""
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(batch, 3, 32, 32, generator=g).to(device) for _ in range(k)]
    ys = [torch.randint(0, 10, (batch,), generator=g).to(device) for _ in range(k)]
    return xs, ys


def sequential_steps(device: torch.device, k: int, batch: int) -> Callable[[], None]:
    """K ordinary masked SGD steps, one model after another (what ``train`` does per step)."""
    models = []
    for _ in range(k):
        model, mask = masked_resnet(device)
        opt = torch.optim.SGD(
            model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
        )
        models.append((model, opt, MaskEnforcer(model, mask)))
    xs, ys = batches(k, batch, device)

    def steps() -> None:
        for (model, opt, enforcer), x, y in zip(models, xs, ys, strict=True):
            masked_step(model, opt, enforcer, x, y)

    return steps


def stacked_step(device: torch.device, k: int, batch: int, compile: bool) -> Callable[[], None]:
    """One stacked step of K models (the stacked executor's step: vmapped loss, one backward,
    one SGD update over (K, P) with per-model lr and weight decay)."""
    model, mask = masked_resnet(device)
    model.train()
    layout = Layout.of(model)
    start = read_state(model, layout, model.state_dict())
    stack = StackedModel([start] * k)
    factors = flat_mask(mask, layout, stack.flat)
    loss_fn = make_loss(model, layout)
    xs, ys = batches(k, batch, device)
    x, y = stack_inputs(xs, channels_last=False), torch.stack(ys)
    lr = torch.full((k,), LR, device=device)
    weight_decay = torch.full((k,), WEIGHT_DECAY, device=device)
    momentum: list[torch.Tensor | None] = [None]

    def step(momentum_buffer: torch.Tensor | None) -> torch.Tensor | None:
        loss, _ = loss_fn(stack.flat, stack.stacked_buffers(), x, y)
        stack.flat.grad = None
        loss.sum().backward()
        assert stack.flat.grad is not None
        return sgd_step(
            stack.flat.detach(),
            stack.flat.grad,
            momentum_buffer,
            lr,
            weight_decay,
            factors,
            momentum=MOMENTUM,
            nesterov=False,
        )

    run = torch.compile(step) if compile else step

    def one() -> None:
        momentum[0] = run(momentum[0])

    return one


def main() -> None:
    p = parser(__doc__, repeats=5)
    p.add_argument("--k", type=int, default=4, help="models trained at once")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="stacked steps per timed block")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd")
    args = p.parse_args()
    device = setup(args)
    base = f"sequential ({args.k} models)"
    steps = {
        base: sequential_steps(device, args.k, args.batch),
        f"stacked K={args.k}": stacked_step(device, args.k, args.batch, compile=False),
    }
    if args.compile:
        steps[f"stacked K={args.k}, compiled"] = stacked_step(
            device, args.k, args.batch, compile=True
        )

    blocks = {n: block(s, args.steps) for n, s in steps.items()}
    times = interleave(blocks, device, args.repeats, warmup=1)
    per_step = {n: [t / args.steps for t in ts] for n, ts in times.items()}
    images = args.k * args.batch
    print(
        f"ResNet-20 (90 % sparse), batch {args.batch}, K={args.k}, {describe(device)}; "
        f"medians of {args.repeats} blocks of {args.steps} steps of all {args.k} models"
    )
    table(per_step, base, extra={"images/s": lambda m: f"{images / m:.0f}"})
    summary = ", ".join(
        f"{name} / sequential: {1 / paired_ratio(per_step, name, base):.2f}x throughput"
        for name in per_step
        if name != base
    )
    print(f"{summary} ({device}, batch {args.batch}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
