"""The :class:`Mask`: which weights of a model are alive.

A mask is a plain, immutable mapping from parameter name (as in ``model.named_parameters()``)
to a bool tensor of that parameter's shape; ``True`` means the weight is alive. Weights stay
ordinary dense tensors holding exact zeros where the mask is ``False``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from safetensors import safe_open
from torch import Tensor, nn

from ..utils.files import load_tensors, save_tensors

_FORMAT = "sparseavg-mask/1"


class MaskError(ValueError):
    """A mask that does not fit what it is applied to (names, shapes or dtypes)."""


class DeadLayerWarning(UserWarning):
    """A pruning step left a layer with no weight alive: its output no longer depends on its
    input (a dead classifier trains to chance). Layer-wise pruning, a lower rate for the
    layer, or leaving it out of the prunable set avoids it."""


def dead_layers(before: Mask, after: Mask) -> list[str]:
    """The layers that had weights alive in ``before`` and have none in ``after``."""
    return [n for n, keep in after.items() if not bool(keep.any()) and bool(before[n].any())]


@dataclass(frozen=True)
class LayerSparsity:
    """One row of a sparsity report."""

    name: str
    shape: tuple[int, ...]
    total: int
    alive: int

    @property
    def density(self) -> float:
        """Fraction of weights alive, in [0, 1]."""
        return self.alive / self.total if self.total else 1.0

    @property
    def sparsity(self) -> float:
        """Fraction of weights pruned, in [0, 1]."""
        return 1.0 - self.density


class Mask(Mapping[str, Tensor]):
    """An immutable ``name -> bool tensor`` mapping (``True`` = alive).

    Build one with :meth:`ones_like` (all alive) or :meth:`from_weights` (alive where a weight is
    non-zero); get the next one from :func:`~sparseavg.pruning.magnitude_prune`.
    """

    __slots__ = ("_tensors",)

    def __init__(self, tensors: Mapping[str, Tensor]) -> None:
        checked: dict[str, Tensor] = {}
        for name, t in tensors.items():
            if not isinstance(t, Tensor):
                raise MaskError(f"mask entry {name!r} is a {type(t).__name__}, not a tensor")
            if t.dtype != torch.bool:
                raise MaskError(
                    f"mask entry {name!r} has dtype {t.dtype}; masks must be torch.bool"
                )
            checked[name] = t.detach()
        self._tensors = checked

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def ones_like(cls, params: Mapping[str, Tensor]) -> Mask:
        """All weights alive, for the given ``name -> tensor`` mapping (e.g. prunable params)."""
        return cls({n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()})

    @classmethod
    def from_weights(cls, params: Mapping[str, Tensor]) -> Mask:
        """Alive exactly where the weight is non-zero."""
        return cls({n: p.detach() != 0 for n, p in params.items()})

    # -- Mapping ------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Tensor:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __repr__(self) -> str:
        return f"Mask({len(self)} tensors, density={self.density:.4f})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mask):
            return NotImplemented
        return self.keys() == other.keys() and all(
            self[n].shape == other[n].shape and bool(torch.equal(self[n].cpu(), other[n].cpu()))
            for n in self
        )

    __hash__ = None  # type: ignore[assignment]

    # -- counts -------------------------------------------------------------------------------
    @property
    def num_total(self) -> int:
        """Number of weights the mask covers."""
        return sum(t.numel() for t in self._tensors.values())

    @property
    def num_alive(self) -> int:
        """Number of weights alive (``True``)."""
        return int(sum(int(t.sum()) for t in self._tensors.values()))

    @property
    def num_pruned(self) -> int:
        """Number of weights pruned (``False``)."""
        return self.num_total - self.num_alive

    @property
    def density(self) -> float:
        """Fraction alive over all covered weights, in [0, 1] (1.0 for an empty mask)."""
        total = self.num_total
        return self.num_alive / total if total else 1.0

    @property
    def sparsity(self) -> float:
        """Fraction pruned over all covered weights, in [0, 1]."""
        return 1.0 - self.density

    def report(self) -> list[LayerSparsity]:
        """Per-layer counts, in the mask's order."""
        return [
            LayerSparsity(n, tuple(t.shape), t.numel(), int(t.sum()))
            for n, t in self._tensors.items()
        ]

    def format_report(self) -> str:
        """The per-layer report as an aligned text table."""
        rows = self.report()
        width = max([len(r.name) for r in rows] + [5])
        lines = [f"{'layer':<{width}}  {'shape':<20} {'alive':>10} {'total':>10} {'sparsity':>9}"]
        for r in rows:
            shape = "x".join(map(str, r.shape))
            lines.append(
                f"{r.name:<{width}}  {shape:<20} {r.alive:>10} {r.total:>10} {r.sparsity:>9.2%}"
            )
        lines.append(
            f"{'total':<{width}}  {'':<20} {self.num_alive:>10} {self.num_total:>10} "
            f"{self.sparsity:>9.2%}"
        )
        return "\n".join(lines)

    # -- use ----------------------------------------------------------------------------------
    def to(self, device: str | torch.device) -> Mask:
        """The same mask with its tensors on ``device``."""
        return Mask({n: t.to(device) for n, t in self._tensors.items()})

    def validate(self, target: nn.Module | Mapping[str, Tensor]) -> None:
        """Check that every entry names a tensor of ``target`` with the same shape.

        ``target`` is a module (its parameters) or a state dict. Raises :class:`MaskError`
        listing every problem.
        """
        params = dict(target.named_parameters()) if isinstance(target, nn.Module) else target
        problems = []
        for name, t in self._tensors.items():
            if name not in params:
                problems.append(f"{name!r} is not a parameter of the model")
            elif tuple(params[name].shape) != tuple(t.shape):
                problems.append(
                    f"{name!r} has shape {tuple(t.shape)} but the model's is "
                    f"{tuple(params[name].shape)}"
                )
        if problems:
            raise MaskError("mask does not fit the model: " + "; ".join(problems))

    @torch.no_grad()
    def apply_(self, target: nn.Module | Mapping[str, Tensor]) -> None:
        """Zero, in place, every weight of ``target`` that the mask prunes."""
        self.validate(target)
        params = dict(target.named_parameters()) if isinstance(target, nn.Module) else target
        for name, t in self._tensors.items():
            p = params[name]
            p.mul_(t.to(device=p.device, dtype=p.dtype))

    def applied(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A copy of ``state`` with pruned weights set to exactly zero."""
        self.validate(state)
        return {
            n: (t * self._tensors[n].to(device=t.device, dtype=t.dtype)) if n in self else t.clone()
            for n, t in state.items()
        }

    # -- files --------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the mask as a safetensors file (atomically)."""
        save_tensors(
            path, self._tensors, metadata={"format": _FORMAT, "names": json.dumps(list(self))}
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Mask:
        """Read a mask written by :meth:`save`; refuses a file that is not a bool mask."""
        tensors = load_tensors(path, device=device)
        bad = [n for n, t in tensors.items() if t.dtype != torch.bool]
        if bad:
            raise MaskError(f"{path}: not a mask (entries {bad[:5]} are not bool)")
        # safetensors sorts names; restore the model order the mask was saved in
        with safe_open(str(path), framework="pt") as f:
            saved = json.loads((f.metadata() or {}).get("names", "[]"))
        order = [n for n in saved if n in tensors] + [n for n in tensors if n not in saved]
        return cls({n: tensors[n] for n in order})
