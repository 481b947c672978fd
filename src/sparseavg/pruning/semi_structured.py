"""Run the 2:4-pruned linear layers of a model on sparse tensor cores.

Unstructured zeros make no GPU kernel faster; 2:4 semi-structured sparsity does, on NVIDIA
GPUs from Ampere (compute capability 8.0) on: ``torch.sparse.to_sparse_semi_structured``
stores a 2-D weight with at most 2 non-zeros in every 4 consecutive entries of a row as half
the values plus metadata and multiplies it with cuSPARSELt (or CUTLASS). For ``nn.Linear``'s
``(out, in)`` weight those groups run along ``in``, the layout of
:func:`~sparseavg.pruning.nm_prune` with ``n, m = 2, 4`` (a 1:4 mask qualifies too). Only
CUDA tensors of float16 or bfloat16 qualify here; the conversion is for inference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .nm import nonzeros_per_group

#: the dtypes this module converts (cuSPARSELt also takes int8 and float8, which need scales)
DTYPES = (torch.float16, torch.bfloat16)


class SemiStructuredError(RuntimeError):
    """The model cannot be converted as it is: no CUDA device, or weights not on it."""


@dataclass(frozen=True)
class SemiStructured:
    """What :func:`to_semi_structured` did.

    Attributes:
        converted: names of the ``nn.Linear`` modules whose weight is now a
            ``SparseSemiStructuredTensor``, in module order.
        dense: ``module name -> why its weight stays dense``, for the other linear layers.
    """

    converted: tuple[str, ...]
    dense: dict[str, str] = field(default_factory=dict)


def semi_structured_problem(weight: Tensor) -> str | None:
    """Why a linear ``weight`` ``(out, in)`` cannot be stored 2:4, or ``None`` when it can
    (as far as its values and dtype go; torch checks the shape when converting).

    Reasons: a dtype other than float16/bfloat16; not 2-D; ``in`` not a multiple of 4; a group
    of 4 consecutive entries of a row with more than 2 non-zeros (the first is named).
    """
    if weight.dim() != 2:
        return f"is not 2-D (shape {tuple(weight.shape)})"
    if weight.dtype not in DTYPES:
        return f"is {weight.dtype}; 2:4 kernels take float16 or bfloat16 (model.half())"
    if weight.shape[1] % 4:
        return f"has {weight.shape[1]} input features, not a multiple of 4"
    counts = nonzeros_per_group(weight.detach(), 4)
    over = torch.nonzero(counts > 2)
    if over.numel():
        g = int(over[0, 0])
        row, col = divmod(g * 4, weight.shape[1])
        return (
            f"is not 2:4: {int(counts[g])} non-zeros in row {row}, columns {col}-{col + 3} "
            f"({int((counts > 2).sum())} such groups of 4)"
        )
    return None


@torch.no_grad()
def to_semi_structured(model: nn.Module) -> SemiStructured:
    """Replace, in place, the weight of every 2:4-sparse ``nn.Linear`` of ``model`` by a
    ``torch.sparse.SparseSemiStructuredTensor`` (``to_sparse_semi_structured``); other linear
    layers stay dense and are listed with the reason.

    The model must already be on a CUDA GPU in float16 or bfloat16 (``model.half().cuda()``),
    Ampere or newer. Afterwards ``model(x)`` runs those layers on sparse tensor cores; use it
    for inference (``model.eval()``). Where torchao is installed,
    ``torchao.sparsity.sparsify_(model, semi_sparse_weight(), filter_fn)`` does the same
    conversion; it compresses every linear layer it is given without checking the pattern, so
    pass ``filter_fn=lambda mod, name: isinstance(mod, nn.Linear) and
    semi_structured_problem(mod.weight) is None``.

    Raises:
        SemiStructuredError: torch sees no CUDA device (the kernels have no CPU version), or a
            linear weight is not on a CUDA device.
    """
    if not torch.cuda.is_available():
        raise SemiStructuredError(
            "2:4 semi-structured weights need a CUDA GPU (Ampere or newer): "
            "torch.sparse.to_sparse_semi_structured has no CPU kernel, and torch sees no CUDA "
            "device"
        )
    from torch.sparse import to_sparse_semi_structured

    linears = [(n, mod) for n, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    elsewhere = [n or "(the model)" for n, mod in linears if not mod.weight.is_cuda]
    if elsewhere:
        raise SemiStructuredError(
            f"the weights of {', '.join(elsewhere[:5])} are not on a CUDA device; move the model "
            "first (model.half().cuda())"
        )
    converted: list[str] = []
    dense: dict[str, str] = {}
    for name, module in linears:
        problem = semi_structured_problem(module.weight)
        if problem is None:
            try:
                sparse = to_sparse_semi_structured(module.weight.detach().contiguous())
            except RuntimeError as err:  # a shape the kernels refuse, or an old GPU
                problem = str(err).splitlines()[0]
            else:
                module.weight = nn.Parameter(sparse, requires_grad=False)
                converted.append(name)
                continue
        dense[name] = problem
    return SemiStructured(tuple(converted), dense)
