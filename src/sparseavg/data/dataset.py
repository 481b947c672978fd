"""The :class:`Dataset` value: train / validation / test sources plus what a model needs to know."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparseavg.data.split import BatchSource, Split, carve_validation


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded data set.

    Attributes:
        name: registry name, e.g. ``"mnist1d"``.
        train: the training split (minus the validation part if one was carved).
        val: held-out part of the training set, or ``None``.
        test: the test split.
        num_classes: number of classes; labels are ``0 .. num_classes - 1``.
        input_shape: per-sample input shape, e.g. ``(1, 40)`` for mnist1d, ``(3, 32, 32)``
            for CIFAR.
    """

    name: str
    train: BatchSource
    val: BatchSource | None
    test: BatchSource
    num_classes: int
    input_shape: tuple[int, ...]


def dataset_from_splits(
    name: str,
    train: Split,
    test: Split,
    *,
    num_classes: int,
    device: str | torch.device,
    val_fraction: float,
    split_seed: int,
) -> Dataset:
    """Carve validation from ``train`` (if ``val_fraction > 0``), move all splits to ``device``.

    Args:
        name: registry name of the data set.
        train: full training split, any device.
        test: test split, any device.
        num_classes: number of classes.
        device: target device of every tensor.
        val_fraction: share of ``train`` held out (see :func:`carve_validation`); 0 for none.
        split_seed: seed of the held-out permutation.
    """
    val: Split | None = None
    if val_fraction > 0:
        train, val = carve_validation(train, val_fraction, split_seed)
        val = val.to(device)
    elif val_fraction < 0:
        raise ValueError(f"val_fraction must be >= 0, got {val_fraction}")
    return Dataset(
        name=name,
        train=train.to(device),
        val=val,
        test=test.to(device),
        num_classes=num_classes,
        input_shape=train.input_shape,
    )
