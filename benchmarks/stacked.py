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

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from sparseavg import Mask, MaskEnforcer, build_model, magnitude_prune, prunable_parameters
from sparseavg.parallel.stacked import (
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
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            enforcer.mask_gradients()
            opt.step()
            enforcer.mask_weights()

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
        loss = loss_fn(stack.flat, stack.stacked_buffers(), x, y)
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
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--k", type=int, default=4, help="models trained at once")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="stacked steps per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per variant")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd")
    args = parser.parse_args()
    device = torch.device(args.device)
    variants = {
        f"sequential ({args.k} models)": sequential_steps(device, args.k, args.batch),
        f"stacked K={args.k}": stacked_step(device, args.k, args.batch, compile=False),
    }
    if args.compile:
        variants[f"stacked K={args.k}, compiled"] = stacked_step(
            device, args.k, args.batch, compile=True
        )
    for step in variants.values():  # warm-up (and compilation)
        for _ in range(2):
            step()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, step in variants.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(args.steps):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t) / args.steps)
    images = args.k * args.batch
    print(
        f"ResNet-20 (90 % sparse), batch {args.batch}, K={args.k}, {device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"median of {args.repeats} blocks of {args.steps} steps of all {args.k} models"
    )
    print(f"{'variant':<28} {'ms/step':>9} {'images/s':>10}")
    rates = {}
    for name, ts in times.items():
        m = statistics.median(ts)
        rates[name] = images / m
        print(f"{name:<28} {m * 1e3:>9.1f} {rates[name]:>10.0f}")
    base = rates[f"sequential ({args.k} models)"]
    summary = ", ".join(
        f"{name} / sequential: {rate / base:.2f}x"
        for name, rate in rates.items()
        if name.startswith("stacked")
    )
    print(f"{summary} ({device}, batch {args.batch}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
