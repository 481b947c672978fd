"""Does a channel-pruned model run faster? The masked model against its slim export.

A weight mask leaves every tensor its shape, so a masked model costs what the dense one costs
(``sparse_inference.py``). A channel mask (``pruning.granularity = "channel"``) removes whole
output channels, and ``sparseavg export --slim`` writes the model without them: a smaller
dense model. This script times inference forwards (``torch.inference_mode``, eval mode) of

- ``masked``: the model at full size, the pruned channels' weights zero (what a run trains
  and ``export`` writes without ``--slim``; as fast as the dense model);
- ``slim``: :func:`sparseavg.pruning.channels.slim_model` of it (what ``export --slim``
  writes), the same outputs (checked here, max difference printed);

interleaved in one process (A B A B ...), at ``S`` % of every layer's channels removed
(``channel_prune_to(..., scope="layerwise")``: each coupled group keeps ``1 - S`` of its
channels; the classifier's rows and the input channels are never removed), for each model
and batch size. With ``--onnx`` (needs onnx and onnxruntime) the same two models also run
in onnxruntime (one intra-op thread per torch thread).

Models: ``resnet20`` (CIFAR ResNet-20, residual adds couple the block outputs), ``vgg11``
(VGG-style plain convs with BatchNorm), both on ``(3, 32, 32)``.

    python benchmarks/structured.py [--models resnet20,vgg11] [--batches 1,128]
        [--removed 50,70,90] [--threads N] [--repeats 7] [--block-ms 20] [--onnx]

Needs the ``structured`` extra (torch-pruning).
"""

from __future__ import annotations

import copy
import functools
import io
import time
from collections.abc import Callable

import torch
from _common import block, describe, interleave, paired_ratio, parser
from torch import nn

from sparseavg import Mask, build_model, prunable_parameters
from sparseavg.pruning.channels import (
    channel_groups,
    channel_prune_to,
    channel_sparsity,
    parameter_count,
    slim_model,
    torch_pruning_available,
)

SHAPE = (3, 32, 32)


def channel_masked(
    name: str, removed: float, seed: int
) -> tuple[nn.Module, nn.Module, Mask, float]:
    """``(masked, slim, mask, channel sparsity)``: model ``name`` (trained-looking random
    BatchNorm statistics) with ``removed`` of each group's channels pruned by L1 norm."""
    torch.manual_seed(seed)
    model = build_model(name, 10, SHAPE)
    with torch.no_grad():  # BatchNorms with non-trivial statistics, so slimming is checked
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    model.eval()
    params = prunable_parameters(model)
    example = torch.zeros(2, *SHAPE)
    groups = channel_groups(model, example, list(params))
    state = {n: p.detach() for n, p in params.items()}
    mask = channel_prune_to(
        state, Mask.ones_like(state), groups, removed, norm="l1", scope="layerwise"
    )
    mask.apply_(model)
    slim = slim_model(copy.deepcopy(model), example, mask).eval()
    return model, slim, mask, channel_sparsity(mask, groups)


def onnx_session(model: nn.Module, threads: int) -> Callable[[torch.Tensor], object]:
    """``x -> outputs`` of ``model`` exported to ONNX and run by onnxruntime's CPU provider."""
    import onnxruntime as ort

    from sparseavg.experiment.onnx_export import to_onnx

    data = to_onnx(model, torch.zeros(2, *SHAPE))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(io.BytesIO(data).getvalue(), options, ["CPUExecutionProvider"])
    return lambda x: session.run(None, {"input": x.numpy()})


def steps_for(fn: Callable[[], object], block_ms: float) -> int:
    """How many calls of ``fn`` make a timed block of about ``block_ms``."""
    fn()
    t = time.perf_counter()
    fn()
    once = time.perf_counter() - t
    return max(1, int(block_ms / 1e3 / max(once, 1e-7)))


def main() -> None:
    p = parser(__doc__, repeats=7)
    p.add_argument("--models", default="resnet20,vgg11")
    p.add_argument("--batches", default="1,128")
    p.add_argument("--removed", default="50,70,90", help="%% of each layer's channels removed")
    p.add_argument("--block-ms", type=float, default=20.0, help="length of one timed block")
    p.add_argument("--onnx", action="store_true", help="also time onnxruntime (CPU only)")
    args = p.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if not torch_pruning_available():
        print('structured.py needs torch-pruning: pip install "sparseavg[structured]"')
        return
    if args.onnx and device.type != "cpu":
        raise SystemExit("--onnx times onnxruntime's CPU provider: use --device cpu")
    print(describe(device))
    head = (
        f"{'model':<9} {'batch':>5} {'removed':>8} {'params':>17} {'masked ms':>10} "
        f"{'slim ms':>9} {'slim/masked':>12} {'max |diff|':>10}"
    )
    if args.onnx:
        head += f" {'ort masked':>10} {'ort slim':>9} {'ort ratio':>9}"
    print(head)
    summary: list[float] = []
    for name in args.models.split(","):
        for pct in (int(s) for s in args.removed.split(",")):
            masked, slim, _, sparsity = channel_masked(name, pct / 100, seed=0)
            masked, slim = masked.to(device), slim.to(device)
            params = f"{parameter_count(masked) / 1e3:.0f}k->{parameter_count(slim) / 1e3:.0f}k"
            forwards: dict[str, Callable[[torch.Tensor], object]] = {"masked": masked, "slim": slim}
            if args.onnx:
                threads = torch.get_num_threads()
                forwards["ort masked"] = onnx_session(masked, threads)
                forwards["ort slim"] = onnx_session(slim, threads)
            for batch in (int(b) for b in args.batches.split(",")):
                x = torch.randn(batch, *SHAPE, device=device)
                with torch.inference_mode():
                    diff = float((masked(x) - slim(x)).abs().max())
                    variants: dict[str, Callable[[], object]] = {
                        k: functools.partial(f, x) for k, f in forwards.items()
                    }
                    steps = steps_for(variants["masked"], args.block_ms)
                    times = interleave(
                        {k: block(f, steps) for k, f in variants.items()}, device, args.repeats
                    )
                per_call = {k: sorted(v)[len(v) // 2] / steps * 1e3 for k, v in times.items()}
                ratio = paired_ratio(times, "slim", "masked")
                summary.append(ratio)
                row = (
                    f"{name:<9} {batch:>5} {sparsity:>7.0%} {params:>17} "
                    f"{per_call['masked']:>10.3f} {per_call['slim']:>9.3f} {ratio:>12.3f} "
                    f"{diff:>10.1e}"
                )
                if args.onnx:
                    ort_ratio = paired_ratio(times, "ort slim", "ort masked")
                    row += (
                        f" {per_call['ort masked']:>10.3f} {per_call['ort slim']:>9.3f} "
                        f"{ort_ratio:>9.3f}"
                    )
                print(row, flush=True)
    print(
        "summary: slim / masked forward time, median over rows "
        f"{sorted(summary)[len(summary) // 2]:.3f}"
        f" (range {min(summary):.3f}-{max(summary):.3f}); 'removed' is the share of channels "
        "pruned; the max |diff| column is the slim model's largest output difference"
    )


if __name__ == "__main__":
    main()
