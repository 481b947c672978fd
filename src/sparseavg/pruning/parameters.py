"""Which parameters are pruned: conv and linear weights; never biases or norm layers."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from torch import nn

PRUNABLE_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)


def prunable_parameters(
    model: nn.Module,
    *,
    exclude_first: bool = False,
    exclude_last: bool = False,
    exclude: Sequence[str] = (),
) -> dict[str, nn.Parameter]:
    """The weights that pruning may remove, by name, in module order.

    Args:
        model: any module; its conv (1d/2d/3d, transposed included) and linear layers' ``weight``
            parameters are prunable. Biases and normalisation layers never are.
        exclude_first: keep the first prunable layer (in module registration order) dense.
        exclude_last: keep the last prunable layer dense (usually the classifier).
        exclude: glob patterns (``fnmatch``) on parameter names to keep dense, e.g. ``"fc.*"``.

    Returns:
        ``{name: parameter}`` with names as in ``model.named_parameters()``.

    Raises:
        ValueError: the model has no conv or linear layer, or a pattern of ``exclude`` matches
            none of its prunable weights (a typo would otherwise keep nothing dense silently).
    """
    found: list[tuple[str, nn.Parameter]] = []
    for module_name, module in model.named_modules():
        if isinstance(module, PRUNABLE_MODULES) and isinstance(module.weight, nn.Parameter):
            name = f"{module_name}.weight" if module_name else "weight"
            found.append((name, module.weight))
    if not found:
        raise ValueError(f"{type(model).__name__} has no conv or linear layers to prune")
    names = [n for n, _ in found]
    for pattern in exclude:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise ValueError(f"exclude pattern {pattern!r} matches no prunable weight ({shown})")
    if exclude_last:
        found = found[:-1]
    if exclude_first:
        found = found[1:]
    if exclude:
        found = [
            (n, p) for n, p in found if not any(fnmatch.fnmatchcase(n, pat) for pat in exclude)
        ]
    return dict(found)
