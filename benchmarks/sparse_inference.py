"""Does a pruned model run faster with sparse weights? Dense ``F.linear`` against CSR and BSR.

Times inference forwards (``torch.inference_mode``) of fully connected networks whose every
layer has the same share of its weights pruned at random positions (what magnitude pruning
of a trained model looks like to a sparse kernel: no structure), interleaving the variants in
one process (A B C A B C ...) and printing medians and ratios against the dense forward:

- ``dense``: the network as it is, zeros included (``nn.Linear``: ``F.linear``);
- ``csr S %``: :func:`sparseavg.models.sparse_linear.sparse_linear` at ``S`` % sparsity, every
  weight as ``torch.sparse_csr`` and the product ``torch.addmm(bias, W, x.T).T``;
- ``bsr S %``: the same with ``to_sparse_bsr`` in 4x4 blocks, which stores every block
  holding an alive weight (at 90 % random sparsity, 81 % of the blocks).

Networks: ``lenet``, LeNet-300-100 (784-300-100-10, ReLU between); ``1024`` and ``4096``, one
square linear layer. Each at batch 1 and 128, with one thread and with all of them.

    python benchmarks/sparse_inference.py [--nets lenet,1024,4096] [--batches 1,128]
        [--sparsities 90,95,98,99] [--threads N] [--repeats 7] [--block-ms 20]
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import torch
from _common import block, describe, interleave, paired_ratio, parser, table
from torch import Tensor, nn

from sparseavg import Mask, build_model, prunable_parameters, random_prune
from sparseavg.experiment.batch import available_cores
from sparseavg.models.sparse_linear import sparse_linear

NETS = ("lenet", "1024", "4096")


class BSRLinear(nn.Module):
    """``nn.Linear``'s function with a block-sparse (BSR, 4x4) weight."""

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        self.weight = layer.weight.detach().to_sparse_bsr((4, 4))
        self.bias = layer.bias.detach().unsqueeze(1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.addmm(self.bias, self.weight, x.t()).t()


def bsr_linear(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` whose sizes 4 divides as a
    :class:`BSRLinear`."""
    model = copy.deepcopy(model)
    if isinstance(model, nn.Linear):
        return BSRLinear(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and module.in_features % 4 == module.out_features % 4 == 0:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, BSRLinear(module))
    return model


def build(net: str, sparsity: float) -> tuple[nn.Module, int]:
    """The network ``net`` with ``sparsity`` of each layer's weights pruned at random positions,
    in eval mode, and its input width."""
    torch.manual_seed(0)
    if net == "lenet":
        model: nn.Module = build_model("lenet300_100", 10, (1, 28, 28))
        width = 784
    else:
        width = int(net)
        model = nn.Linear(width, width)
    params = prunable_parameters(model)
    g = torch.Generator().manual_seed(1)
    mask = random_prune(Mask.ones_like(params), sparsity, generator=g, scope="layerwise")
    mask.apply_(model)
    return model.eval(), width


def calls_per_block(fn: Callable[[], object], block_s: float) -> int:
    """How many calls of ``fn`` take about ``block_s`` seconds (at least 1)."""
    import time

    fn()
    t = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t, 1e-7)
    return max(1, min(10_000, round(block_s / once)))


def forward_of(model: nn.Module, x: Tensor) -> Callable[[], object]:
    return lambda: model(x)


def thread_counts(args: argparse.Namespace) -> list[int]:
    if args.threads is not None:
        return [args.threads]
    return sorted({1, available_cores()})


def main() -> None:
    p = parser(__doc__, repeats=7)
    p.description = (p.description or "") + "\n--threads N times N threads only."
    p.add_argument("--nets", default=",".join(NETS), help="comma-separated: lenet, 1024, 4096")
    p.add_argument("--batches", default="1,128", help="comma-separated batch sizes")
    p.add_argument("--sparsities", default="90,95,98,99", help="comma-separated percentages")
    p.add_argument("--block-ms", type=float, default=20.0, help="length of a timed block, ms")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type != "cpu":
        raise SystemExit("sparse_inference.py measures CPU kernels: use --device cpu")
    nets = args.nets.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    sparsities = [int(s) for s in args.sparsities.split(",")]
    grid: dict[tuple[str, int, int], dict[str, float]] = {}
    for threads in thread_counts(args):
        torch.set_num_threads(threads)
        for net in nets:
            models = {s: build(net, s / 100) for s in sparsities}
            dense_model, width = models[sparsities[0]]
            for batch in batches:
                x = torch.randn(batch, width, generator=torch.Generator().manual_seed(2))
                forwards = {"dense": forward_of(dense_model, x)}
                with torch.inference_mode():
                    for s, (m, _) in models.items():
                        csr, bsr = sparse_linear(m, min_sparsity=0.0), bsr_linear(m)
                        for kind, sparse in (("csr", csr), ("bsr", bsr)):
                            torch.testing.assert_close(sparse(x), m(x), msg=f"{kind} {s} %")
                            forwards[f"{kind} {s} %"] = forward_of(sparse, x)
                    calls = calls_per_block(forwards["dense"], args.block_ms / 1e3)
                    blocks = {name: block(fn, calls) for name, fn in forwards.items()}
                    times = interleave(blocks, device, args.repeats)
                per_call = {n: [t / calls for t in ts] for n, ts in times.items()}
                print(
                    f"\n{net}, batch {batch}, {describe(device)}; "
                    f"median of {args.repeats} blocks of {calls} forwards"
                )
                table(per_call, "dense", unit="us", scale=1e6)
                grid[(net, batch, threads)] = {
                    f"{kind} {s}": paired_ratio(per_call, f"{kind} {s} %", "dense")
                    for s in sparsities
                    for kind in ("csr", "bsr")
                }
    print("\nsparse forward time / dense forward time (paired medians; < 1: sparse is faster)")
    head = f"{'net':<6} {'batch':>5} {'threads':>7}"
    head += "".join(f" {'csr ' + str(s) + ' %':>9}" for s in sparsities)
    head += "".join(f" {'bsr ' + str(s) + ' %':>9}" for s in sparsities)
    print(head)
    for (net, batch, threads), ratios in grid.items():
        row = f"{net:<6} {batch:>5} {threads:>7}"
        row += "".join(f" {ratios[f'csr {s}']:>9.2f}" for s in sparsities)
        row += "".join(f" {ratios[f'bsr {s}']:>9.2f}" for s in sparsities)
        print(row)
    wins = [(k, s) for k, r in grid.items() for s in sparsities if r[f"csr {s}"] < 0.9]
    print(
        f"summary: CSR is at least 10 % faster than dense in {len(wins)} of "
        f"{len(grid) * len(sparsities)} settings; slowest CSR/dense "
        f"{max(r[f'csr {s}'] for r in grid.values() for s in sparsities):.2f}, fastest "
        f"{min(r[f'csr {s}'] for r in grid.values() for s in sparsities):.2f}"
    )


if __name__ == "__main__":
    main()
