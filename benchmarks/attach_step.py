"""Cost of ``sparseavg.attach`` (step hooks) against a bare step and against masking by hand.

Times training steps (forward, backward, ``optimizer.step()``) of a model on a fixed random
batch, interleaving the variants in one process (A B C A B C ...), and prints medians and
paired ratios:

- ``bare``: dense, no mask, no hooks;
- ``by hand``: :class:`sparseavg.MaskEnforcer` around ``step`` as ``train()`` does (gradients
  masked before, weights after);
- ``attach``: the same mask through :func:`sparseavg.attach`: the optimizer's step pre-hook
  masks the gradients, its post-hook the weights and every state tensor shaped like a weight;
- ``step only: no hooks`` / ``step only: attach``: ``optimizer.step()`` alone on fixed,
  masked gradients of the pruned model, with and without the hooks: the same arithmetic, so
  the difference is what the hooks cost per step.

A masked Adam/AdamW step costs more than a dense one on a CPU even without any masking call:
``sqrt`` of the zero second moments of pruned weights is about 5x slower per element than of
nonzero ones (torch 2.13, CPU). ``bare`` therefore differs from ``by hand`` by more than the
two masking calls; compare ``attach`` with ``by hand`` for what the hooks add to a loop that
already masks, and the step-only pair for their absolute cost.

Goal: attach step / by-hand step <= 1.02 for LeNet-300-100 on a CPU core.

    python benchmarks/attach_step.py [--model lenet300_100] [--optimizer adamw|sgd]
        [--batch 128] [--steps 20] [--repeats 15] [--threads 1]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import block, describe, interleave, median, paired_ratio, parser, setup, table

from sparseavg import Mask, MaskEnforcer, attach, build_model, magnitude_prune, prunable_parameters

SPARSITY = 0.9
SHAPES = {"lenet300_100": (1, 28, 28), "resnet20": (3, 32, 32), "conv1d": (1, 40)}


def make_step(
    model_name: str, optimizer: str, device: torch.device, batch: int, how: str
) -> Callable[[], None]:
    """One step of a fresh model (``how``: bare | by hand | attach | step-plain | step-attach)."""
    torch.manual_seed(0)
    shape = SHAPES[model_name]
    model = build_model(model_name, 10, shape).to(device)
    params = prunable_parameters(model)
    mask = magnitude_prune(params, Mask.ones_like(params), SPARSITY).to(device)
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4
        )
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *shape, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    enforcer = None
    if how == "by hand":
        mask.apply_(model)
        enforcer = MaskEnforcer(model, mask)
    elif how in ("attach", "step-attach"):
        attach(model, mask, opt)

    if how.startswith("step-"):
        mask.apply_(model)
        F.cross_entropy(model(x), y).backward()
        MaskEnforcer(model, mask).mask_gradients()  # pruned entries stay 0 without hooks too
        return opt.step

    def step() -> None:
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
    p = parser(__doc__, repeats=15)
    p.add_argument("--model", default="lenet300_100", choices=sorted(SHAPES))
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="steps per timed block")
    args = p.parse_args()
    device = setup(args)
    names = {
        "bare": "bare",
        "by hand": "by hand",
        "attach": "attach",
        "step only: no hooks": "step-plain",
        "step only: attach": "step-attach",
    }
    blocks = {
        name: block(make_step(args.model, args.optimizer, device, args.batch, how), args.steps)
        for name, how in names.items()
    }
    times = interleave(blocks, device, args.repeats)
    per_step = {name: [t / args.steps for t in ts] for name, ts in times.items()}
    print(
        f"{args.model}, {args.optimizer}, batch {args.batch}, {describe(device)}; "
        f"median of {args.repeats} blocks of {args.steps} steps"
    )
    table(per_step, "bare", unit="ms/step")
    vs_bare = paired_ratio(per_step, "attach", "bare")
    vs_hand = paired_ratio(per_step, "attach", "by hand")
    step_only = paired_ratio(per_step, "step only: attach", "step only: no hooks")
    with_hooks, without = per_step["step only: attach"], per_step["step only: no hooks"]
    added = [a - b for a, b in zip(with_hooks, without, strict=True)]
    print(
        f"summary: attach step / by-hand step = {vs_hand:.3f} (goal <= 1.02); attach step / "
        f"bare dense step = {vs_bare:.3f}; optimizer.step() alone with / without hooks = "
        f"{step_only:.3f}, {1e6 * median(added):.0f} us added per step (paired medians)"
    )


if __name__ == "__main__":
    main()
