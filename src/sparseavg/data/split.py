"""In-memory splits: tensors on the training device, batched by index slices of a permutation."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from sparseavg.data.augment import Augmentation, host_to_device


@runtime_checkable
class BatchSource(Protocol):
    """What the training loop consumes: a sized source of ``(inputs, labels)`` batches."""

    def __len__(self) -> int:
        """Number of samples."""
        ...

    def batches(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        augment: bool = False,
        drop_last: bool = False,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield one epoch of ``(x, y)`` batches, both on the source's device.

        ``x`` is ``(b, *input_shape)`` float32 and ``y`` ``(b,)`` int64, ``b <= batch_size``.

        ``generator=None`` gives the fixed original order and no augmentation; a CPU generator
        gives the order ``torch.randperm(len(self), generator=generator)`` and, when
        ``augment`` is true, the augmentation's randomness from the same generator.
        The final partial batch is yielded unless ``drop_last``.
        """
        ...

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        """Number of batches :meth:`batches` yields per epoch."""
        ...


def count_batches(num_samples: int, batch_size: int, drop_last: bool) -> int:
    """``floor`` (``drop_last``) or ``ceil`` of ``num_samples / batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if drop_last:
        return num_samples // batch_size
    return math.ceil(num_samples / batch_size)


@dataclass(frozen=True, eq=False)
class Split:
    """A split held as two tensors on one device; implements :class:`BatchSource`.

    Attributes:
        x: ``(N, *input_shape)`` floating point inputs, already normalised.
        y: ``(N,)`` int64 class labels, on the same device as ``x``.
        augmentation: applied to training batches when ``batches(augment=True)`` is given a
            generator.
    """

    x: Tensor
    y: Tensor
    augmentation: Augmentation = field(default_factory=Augmentation)

    def __post_init__(self) -> None:
        if self.y.dim() != 1 or self.x.dim() < 1 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"x must be (N, ...) and y (N,), "
                f"got {tuple(self.x.shape)} and {tuple(self.y.shape)}"
            )
        if self.x.device != self.y.device:
            raise ValueError(f"x is on {self.x.device} but y on {self.y.device}")
        if not self.x.is_floating_point():
            raise ValueError(f"x must be floating point, got {self.x.dtype}")
        if self.y.dtype != torch.int64:
            raise ValueError(f"y must be int64, got {self.y.dtype}")

    def __len__(self) -> int:
        """Number of samples ``N``."""
        return self.y.shape[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-sample shape, ``x.shape[1:]``."""
        return tuple(self.x.shape[1:])

    @property
    def device(self) -> torch.device:
        """The device both tensors live on."""
        return self.x.device

    def to(self, device: str | torch.device) -> Split:
        """This split with both tensors on ``device`` (``self`` if already there)."""
        device = torch.device(device)
        if self.x.device == device:
            return self
        return Split(self.x.to(device), self.y.to(device), self.augmentation)

    def subset(self, indices: Tensor, augmentation: Augmentation | None = None) -> Split:
        """The samples at ``indices`` (``(M,)`` int64), keeping or replacing the augmentation."""
        indices = indices.to(self.x.device)
        aug = self.augmentation if augmentation is None else augmentation
        return Split(self.x[indices], self.y[indices], aug)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        """Number of batches :meth:`batches` yields per epoch."""
        return count_batches(len(self), batch_size, drop_last)

    def batches(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        augment: bool = False,
        drop_last: bool = False,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield one epoch of ``(x, y)`` batches, ``x`` ``(b, *input_shape)``, ``y`` ``(b,)``.

        Args:
            batch_size: samples per batch; the last batch may be smaller unless ``drop_last``.
            generator: CPU generator for the order (``torch.randperm``) and the augmentation.
                ``None``: original order, no augmentation (``augment`` is then ignored), and
                the batches are views of ``x``/``y`` rather than copies.
            augment: apply :attr:`augmentation` to the inputs (needs ``generator``).
            drop_last: skip the final batch if it has fewer than ``batch_size`` samples.
        """
        n = len(self)
        count = self.num_batches(batch_size, drop_last)
        if generator is None:
            for i in range(count):
                start = i * batch_size
                yield self.x[start : start + batch_size], self.y[start : start + batch_size]
            return
        order = host_to_device(torch.randperm(n, generator=generator), self.x.device)
        apply_aug = augment and self.augmentation.enabled
        for i in range(count):
            idx = order[i * batch_size : (i + 1) * batch_size]
            xb = self.x[idx]
            if apply_aug:
                xb = self.augmentation(xb, generator)
            yield xb, self.y[idx]


def carve_indices(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split ``range(n)`` into training and validation indices.

    A ``torch.Generator`` seeded with ``seed`` permutes ``range(n)``; the first
    ``round(fraction * n)`` go to validation, the rest to training.

    Args:
        n: number of samples.
        fraction: share held out, ``0 <= fraction < 1``.
        seed: seed of the permutation.

    Returns:
        ``(train_idx, val_idx)``: sorted int64 CPU tensors, disjoint, covering ``range(n)``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    n_val = round(fraction * n)
    if n_val >= n:
        raise ValueError(f"fraction {fraction} leaves no training samples out of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def carve_validation(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Hold out a deterministic random part of ``split`` for validation.

    A ``torch.Generator`` seeded with ``seed`` permutes ``range(N)``; the first
    ``round(fraction * N)`` indices go to validation, the rest to training (see
    :func:`carve_indices`). Each part keeps the original relative order of its samples.

    Args:
        split: the full training split.
        fraction: share of samples held out, ``0 <= fraction < 1``.
        seed: seed of the permutation.

    Returns:
        ``(train, val)``: ``train`` keeps ``split.augmentation``, ``val`` has none.
    """
    train_idx, val_idx = carve_indices(len(split), fraction, seed)
    return split.subset(train_idx), split.subset(val_idx, Augmentation())
