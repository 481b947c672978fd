"""2:4 semi-structured linear layers against the same layers dense: inference on a CUDA GPU.

Builds a stack of large linear layers (default ``4096 -> 16384 -> 4096``, a transformer
feed-forward block's shape) in float16, prunes every weight to 2:4 with
:func:`sparseavg.nm_prune` (2 of every 4 input features per output), and times forward passes
of one batch through

- ``dense``: the pruned weights stored dense (zeros included): what a sparseavg export runs;
- ``2:4 semi-structured``: a copy converted by :func:`sparseavg.to_semi_structured`
  (``torch.sparse.to_sparse_semi_structured``, cuSPARSELt or CUTLASS),

interleaved in one process, and prints medians, minima and the paired ratio, plus the largest
difference between the two outputs. Needs an NVIDIA GPU of the Ampere generation or newer;
without CUDA it prints one line and exits with status 0 (so ``make bench`` passes on CPUs).

    python benchmarks/semi_structured.py [--features 4096,16384,4096] [--batch 8192]
        [--calls 10] [--repeats 20] [--dtype float16|bfloat16]
"""

from __future__ import annotations

import itertools
import sys

import torch
from _common import describe, interleave, paired_ratio, parser, setup, table
from torch import nn

from sparseavg import Mask, nm_prune, to_semi_structured


def build(features: list[int], dtype: torch.dtype, device: torch.device) -> nn.Sequential:
    """Linear layers ``features[0] -> features[1] -> ...`` with ReLUs between, every weight
    pruned to 2:4, in ``dtype`` on ``device``, in eval mode."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for k, (fan_in, fan_out) in enumerate(itertools.pairwise(features)):
        if k:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(fan_in, fan_out))
    model = nn.Sequential(*layers)
    weights = {n: p.detach() for n, p in model.named_parameters() if n.endswith("weight")}
    nm_prune(weights, Mask.ones_like(weights), 2, 4).apply_(model)
    return model.to(device=device, dtype=dtype).eval()


def main() -> int:
    p = parser(__doc__, repeats=20)
    p.add_argument("--features", default="4096,16384,4096", help="layer widths, comma-separated")
    p.add_argument("--batch", type=int, default=8192, help="rows per forward pass")
    p.add_argument("--calls", type=int, default=10, help="forward passes per timed block")
    p.add_argument("--dtype", choices=("float16", "bfloat16"), default="float16")
    args = p.parse_args()
    device = setup(args)
    if device.type != "cuda" or not torch.cuda.is_available():
        why = "torch sees no CUDA device" if not torch.cuda.is_available() else f"--device {device}"
        print(
            "semi_structured.py: skipped, 2:4 sparse kernels need a CUDA GPU (Ampere or newer): "
            f"{why} (torch {torch.__version__})"
        )
        return 0
    dtype = getattr(torch, args.dtype)
    features = [int(f) for f in args.features.split(",")]
    dense = build(features, dtype, device)
    sparse = build(features, dtype, device)
    report = to_semi_structured(sparse)
    if report.dense:
        print(f"left dense: {report.dense}")
    x = torch.randn(args.batch, features[0], device=device, dtype=dtype)

    @torch.inference_mode()
    def forward(model: nn.Module) -> None:
        for _ in range(args.calls):
            model(x)

    with torch.inference_mode():
        difference = float((dense(x) - sparse(x)).abs().max())
    times = interleave(
        {"dense": lambda: forward(dense), "2:4 semi-structured": lambda: forward(sparse)},
        device,
        args.repeats,
        warmup=2,
    )
    print(describe(device))
    print(
        f"{len(report.converted)} linear layers {args.features}, batch {args.batch}, "
        f"{args.dtype}, {args.calls} forward passes per block, {args.repeats} blocks"
    )
    table(times, "dense")
    ratio = paired_ratio(times, "2:4 semi-structured", "dense")
    print(
        f"2:4 / dense time, paired median: {ratio:.3f} (largest output difference {difference:.3g})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
