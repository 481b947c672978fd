"""Sparse linear layers for inference: a pruned ``nn.Linear``'s weight in CSR form.

Measured on one CPU thread (``benchmarks/sparse_inference.py``; ``benchmarks/README.md`` has
the table), CSR products against dense ``F.linear``, at random unstructured sparsity: at batch
128 CSR takes 0.49-0.58x the dense time from 90 % sparsity and 0.04-0.27x from 98 %; at batch 1
it wins for 1024x1024 layers from 95 % (0.77x) and 4096x4096 from 90 % (0.76x), and loses for
LeNet-300-100 at every sparsity (1.13-1.66x: three small products, each with a sparse call's
fixed cost). :func:`sparse_linear` therefore converts only layers at least ``min_sparsity``
sparse, and is opt-in. Training keeps dense weights with zeros: CSR weights take no gradient.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import Tensor, nn

#: the sparsity from which :func:`sparse_linear` converts a layer by default
DEFAULT_MIN_SPARSITY = 0.95


class SparseLinear(nn.Module):
    """``nn.Linear``'s function with the weight held as a ``torch.sparse_csr`` tensor.

    Args:
        weight: ``(out_features, in_features)`` dense weight, zeros where pruned.
        bias: ``(out_features,)`` or ``None``.

    Input ``(*, in_features)``, output ``(*, out_features)``, as ``nn.Linear``; for a 2-D
    input the output is a transposed (non-contiguous) view. Float32 and float64 only (CSR
    products on a CPU support no half precision).
    """

    weight: Tensor
    bias: Tensor | None

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(f"weight: (out_features, in_features), not {tuple(weight.shape)}")
        if weight.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"weight: float32 or float64, not {weight.dtype}")
        self.out_features, self.in_features = weight.shape
        with warnings.catch_warnings():  # torch calls its CSR support beta, once per process
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
            csr = weight.detach().to_sparse_csr()
        self.register_buffer("weight", csr)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        """``x @ weight.T + bias`` computed as ``(weight @ x.T).T`` with a sparse ``weight``."""
        flat = x.reshape(-1, self.in_features).t()
        if self.bias is None:
            out = torch.sparse.mm(self.weight, flat)
        else:
            out = torch.addmm(self.bias.unsqueeze(1), self.weight, flat)
        return out.t().reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        nnz = self.weight._nnz()
        total = self.out_features * self.in_features
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, sparsity={1 - nnz / total:.4f}"
        )


def sparse_linear(model: nn.Module, *, min_sparsity: float = DEFAULT_MIN_SPARSITY) -> nn.Module:
    """A copy of ``model`` for inference whose ``nn.Linear`` layers at least ``min_sparsity``
    sparse (share of exact zeros in the weight, in [0, 1]) are :class:`SparseLinear`.

    Its outputs equal ``model``'s up to float rounding (the sums run in another order). The
    copy is in eval mode; ``model`` is left as it was. Layers of other kinds, and float16 or
    bfloat16 linear layers, stay as they are.

    Raises:
        ValueError: ``min_sparsity`` outside [0, 1].
    """
    if not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity: a share in [0, 1], not {min_sparsity}")
    out = copy.deepcopy(model).eval()
    if isinstance(out, nn.Linear):
        return _convert(out, min_sparsity)
    for name, module in list(out.named_modules()):
        if isinstance(module, nn.Linear):
            parent_name, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent_name), child, _convert(module, min_sparsity))
    return out


def _convert(layer: nn.Linear, min_sparsity: float) -> nn.Module:
    """``layer`` as a :class:`SparseLinear` if it is float32/64 and sparse enough, else itself."""
    w = layer.weight.detach()
    if w.dtype not in (torch.float32, torch.float64) or not w.numel():
        return layer
    if int((w == 0).sum()) / w.numel() < min_sparsity:
        return layer
    return SparseLinear(w, layer.bias)
