"""Which parameters are pruned: conv and linear weights by default, never biases or norm
layers; or the parameters that name patterns choose."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from torch import nn

PRUNABLE_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)


def prunable_parameters(
    model: nn.Module,
    *,
    include: Sequence[str] = (),
    exclude_first: bool = False,
    exclude_last: bool = False,
    exclude: Sequence[str] = (),
) -> dict[str, nn.Parameter]:
    """The weights that pruning may remove, by name.

    Args:
        model: any module.
        include: glob patterns (``fnmatch``) on parameter names choosing the prunable
            parameters, of any kind (embeddings, attention projections such as
            ``in_proj_weight``), in ``named_parameters()`` order. Empty (the default): the
            ``weight`` of every conv (1d/2d/3d, transposed included) and linear layer, in module
            order; biases and normalisation layers never are.
        exclude_first: keep the first prunable layer dense.
        exclude_last: keep the last prunable layer dense (usually the classifier).
        exclude: glob patterns on parameter names to keep dense, e.g. ``"fc.*"``.

    A parameter shared by several modules (tied embeddings) appears once, under its first name
    in ``model.named_parameters()``, however many of its names match.

    Returns:
        ``{name: parameter}`` with names as in ``model.named_parameters()``.

    Raises:
        ValueError: nothing is prunable (no conv or linear layer, or ``include`` matches only
            non-float parameters), or a pattern of ``include`` or ``exclude`` matches no
            parameter (a typo would otherwise change the prunable set silently).
    """
    first = {id(p): n for n, p in model.named_parameters()}  # tied: the first name
    every = list(model.named_parameters(remove_duplicate=False))
    candidates: list[tuple[str, nn.Parameter]]
    if include:
        for pattern in include:
            if not any(fnmatch.fnmatchcase(n, pattern) for n, _ in every):
                shown = ", ".join(n for n, _ in every[:8]) + (", ..." if len(every) > 8 else "")
                raise ValueError(f"include pattern {pattern!r} matches no parameter ({shown})")
        candidates = [
            (n, p)
            for n, p in every
            if p.is_floating_point() and any(fnmatch.fnmatchcase(n, pat) for pat in include)
        ]
        what = "parameters matching pruning.include"
    else:
        candidates = []
        for module_name, module in model.named_modules(remove_duplicate=False):
            if isinstance(module, PRUNABLE_MODULES) and isinstance(module.weight, nn.Parameter):
                candidates.append(
                    (f"{module_name}.weight" if module_name else "weight", module.weight)
                )
        what = "conv or linear layers"
    seen: set[int] = set()
    found: list[tuple[str, nn.Parameter]] = []
    for _, p in candidates:
        if id(p) not in seen:
            seen.add(id(p))
            found.append((first[id(p)], p))
    if not found:
        raise ValueError(f"{type(model).__name__} has no {what} to prune")
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
