"""The data set registry: names to loader functions, and :func:`load_dataset`."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from sparseavg.data.dataset import Dataset
from sparseavg.data.paths import resolve_data_dir
from sparseavg.data.sources import cifar, digits, imagefolder, mnist, mnist1d

DatasetLoader = Callable[..., Dataset]
"""``loader(*, data_dir: Path, device: torch.device, val_fraction: float, split_seed: int,
download: bool) -> Dataset``; ``data_dir`` is the resolved data root."""

_LOADERS: dict[str, DatasetLoader] = {
    "mnist1d": mnist1d.load,
    "digits": digits.load,
    "mnist": mnist.load,
    "cifar10": cifar.load_cifar10,
    "cifar100": cifar.load_cifar100,
    "imagefolder": imagefolder.load,
}


def available_datasets() -> list[str]:
    """Registered data set names, sorted."""
    return sorted(_LOADERS)


def register_dataset(name: str, loader: DatasetLoader, *, replace: bool = False) -> None:
    """Make ``load_dataset(name, ...)`` call ``loader``.

    Args:
        name: the data set's name.
        loader: called with keyword arguments ``data_dir`` (resolved root, a ``Path``),
            ``device`` (``torch.device``), ``val_fraction``, ``split_seed`` and ``download``;
            returns a :class:`Dataset`.
        replace: allow replacing an already registered name.

    Raises:
        ValueError: ``name`` is taken and ``replace`` is false.
    """
    if name in _LOADERS and not replace:
        raise ValueError(f"data set {name!r} is already registered (pass replace=True)")
    _LOADERS[name] = loader


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    val_fraction: float = 0.0,
    split_seed: int = 0,
    download: bool = True,
) -> Dataset:
    """Load a registered data set with its tensors on ``device``.

    Args:
        name: one of :func:`available_datasets`.
        data_dir: data root; default ``$SPARSEAVG_DATA``, else ``~/.cache/sparseavg/data``.
            Each data set reads its own sub-directory (``mnist/``, ``cifar-10-batches-py/``, ...).
        device: where the split tensors (or, for folder data, the batches) go.
        val_fraction: share of the training split held out as ``Dataset.val`` (0: none).
        split_seed: seed of that held-out permutation.
        download: fetch missing files from the standard sources.

    Raises:
        ValueError: unknown ``name`` (the message lists the known ones) or a bad fraction.
        DataUnavailableError: files missing and not downloaded.
    """
    try:
        loader = _LOADERS[name]
    except KeyError:
        known = ", ".join(available_datasets())
        raise ValueError(f"unknown data set {name!r}; known: {known}") from None
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    return loader(
        data_dir=resolve_data_dir(data_dir),
        device=torch.device(device),
        val_fraction=val_fraction,
        split_seed=split_seed,
        download=download,
    )
