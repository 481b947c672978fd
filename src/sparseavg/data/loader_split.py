"""A :class:`BatchSource` over a torch ``Dataset``, for data that does not fit in memory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from sparseavg.data.split import count_batches


class LoaderSplit:
    """Batches from a map-style torch dataset through a ``DataLoader``; a :class:`BatchSource`.

    Args:
        dataset: yields ``(x, y)`` samples with ``x`` of the per-sample input shape and ``y`` an
            int; used for fixed-order and non-augmented batches.
        augmented: the same samples with random training transforms, used when
            ``batches(augment=True)`` gets a generator; ``None`` to always use ``dataset``.
        device: where batches are moved (pinned memory on CUDA).
        num_workers: DataLoader worker processes. With workers, their random transforms are
            seeded from the loader's generator; with 0, they use torch's global generator.
    """

    def __init__(
        self,
        dataset: TorchDataset[Any],
        *,
        augmented: TorchDataset[Any] | None = None,
        device: str | torch.device = "cpu",
        num_workers: int = 0,
    ) -> None:
        self.dataset = dataset
        self.augmented = augmented
        self.device = torch.device(device)
        self.num_workers = num_workers

    def __len__(self) -> int:
        """Number of samples."""
        return len(self.dataset)  # type: ignore[arg-type]

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
        """Yield one epoch of ``(x, y)`` batches on :attr:`device`.

        ``x`` is ``(b, *input_shape)`` float32 and ``y`` ``(b,)`` int64, ``b <= batch_size``.

        ``generator=None``: original order, no augmentation. Otherwise the order is shuffled by
        a DataLoader generator seeded with one draw from ``generator``.
        """
        source = self.dataset
        loader_generator = None
        if generator is not None:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            loader_generator = torch.Generator().manual_seed(seed)
            if augment and self.augmented is not None:
                source = self.augmented
        loader = DataLoader(
            source,
            batch_size=batch_size,
            shuffle=generator is not None,
            generator=loader_generator,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for x, y in loader:
            yield (
                x.to(self.device, non_blocking=True),
                y.to(self.device, dtype=torch.int64, non_blocking=True),
            )
