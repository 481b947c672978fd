"""What ``train(..., compile=True)`` costs and buys: torch.compile of the forward.

A masked (90 % sparse) ResNet-20 step on a CIFAR-shaped random batch, as ``train`` runs it:
the model's forward through ``torch.compile`` (backward through AOTAutograd), the mask and the
optimizer eager. Measures

- the cold start: the first compiled step minus an eager step, with a fresh, empty inductor
  cache (a temporary ``TORCHINDUCTOR_CACHE_DIR``);
- the warm start: the same in a second process that finds the first one's cache;
- the speed-up: eager and compiled steps interleaved, medians and ratio.

    python benchmarks/compile.py [--device cpu|cuda] [--repeats 5] [--steps 3]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

if __name__ == "__main__" and "--cache-dir" not in sys.argv:
    # before torch is imported: a fresh cache makes the first compilation a cold one
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-bench-")

import torch
from _common import (
    block,
    describe,
    interleave,
    masked_step,
    median,
    paired_ratio,
    parser,
    setup,
    table,
    timed,
)

from sparseavg import Mask, MaskEnforcer, build_model, magnitude_prune, prunable_parameters


def make_step(device: torch.device, batch: int, *, compiled: bool) -> Callable[[], None]:
    """One masked SGD step of a fresh ResNet-20, its forward compiled or not."""
    torch.manual_seed(0)
    model = build_model("resnet20", 10, (3, 32, 32)).to(device)
    params = prunable_parameters(model)
    mask = magnitude_prune(params, Mask.ones_like(params), 0.9).to(device)
    mask.apply_(model)
    enforcer = MaskEnforcer(model, mask)
    forward = torch.compile(model) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    bf16 = device.type == "cuda"  # train()'s precision = "auto"

    def step() -> None:
        masked_step(forward, opt, enforcer, x, y, bf16)

    return step


def start_seconds(device: torch.device, batch: int) -> float:
    """Seconds the first compiled step takes beyond an eager step."""
    eager = make_step(device, batch, compiled=False)
    eager()
    eager_seconds = min(timed(eager, device) for _ in range(2))
    compiled = make_step(device, batch, compiled=True)
    return timed(compiled, device) - eager_seconds


def main() -> None:
    p = parser(__doc__, repeats=5)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="steps per timed block")
    p.add_argument("--cache-dir", help="internal: measure only the start with this cache")
    args = p.parse_args()
    device = setup(args)
    if args.cache_dir:
        print(f"{start_seconds(device, args.batch):.3f}")
        return
    cold = start_seconds(device, args.batch)
    argv = ["--device", args.device, "--batch", str(args.batch)]
    if args.threads is not None:
        argv += ["--threads", str(args.threads)]
    cache = os.environ["TORCHINDUCTOR_CACHE_DIR"]
    t = time.perf_counter()
    out = subprocess.run(
        [sys.executable, __file__, *argv, "--cache-dir", cache],
        env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache},
        capture_output=True,
        text=True,
        check=True,
    )
    warm = float(out.stdout.strip().splitlines()[-1])
    warm_process = time.perf_counter() - t

    steps = {
        "eager": make_step(device, args.batch, compiled=False),
        "compiled forward": make_step(device, args.batch, compiled=True),
    }

    times = interleave({k: block(s, args.steps) for k, s in steps.items()}, device, args.repeats)
    per_step = {k: [t / args.steps for t in ts] for k, ts in times.items()}
    print(
        f"masked ResNet-20 step, batch {args.batch}, {describe(device)}; "
        f"median of {args.repeats} blocks of {args.steps} steps"
    )
    table(per_step, "eager", unit="ms/step")
    speedup = 1 / paired_ratio(per_step, "compiled forward", "eager")
    saved = median(per_step["eager"]) - median(per_step["compiled forward"])
    even = f"{cold / saved:.0f} steps" if saved > 0 else "never"
    print(
        f"first compiled step beyond an eager one: cold cache {cold:.1f} s, "
        f"warm cache {warm:.1f} s (that process: {warm_process:.1f} s in all)"
    )
    print(
        f"summary: torch.compile costs {cold:.1f} s cold ({warm:.1f} s with a warm cache) and "
        f"makes a step {speedup:.2f}x as fast (paired medians); pays back after {even}"
    )
    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
