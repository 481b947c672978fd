"""MNIST from the four standard IDX files in ``<data_dir>/mnist/`` (raw or ``.gz``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sparseavg.data.dataset import Dataset, dataset_from_splits
from sparseavg.data.download import DownloadError, download_first
from sparseavg.data.errors import DataFileError, unavailable
from sparseavg.data.idx import read_idx
from sparseavg.data.split import Split

SUBDIR = "mnist"
"""Folder of the data root that holds the IDX files."""

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
"""Base names of the four IDX files; each may be stored raw or with a ``.gz`` suffix."""

MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
"""Base URLs tried in order; ``<mirror><file>.gz`` is fetched for each missing file."""

MEAN = 0.1307
STD = 0.3081
"""Normalisation of [0, 1] pixels: ``(pixel / 255 - MEAN) / STD``."""


def find_file(directory: Path, base: str) -> Path | None:
    """``directory/base`` if it exists, else ``directory/base.gz`` if that does, else None."""
    for candidate in (directory / base, directory / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def fetch(directory: Path, mirrors: tuple[str, ...] = MIRRORS, timeout: float = 20.0) -> None:
    """Download each of the four ``.gz`` files missing from ``directory``.

    Args:
        directory: ``<data_dir>/mnist``.
        mirrors: base URLs (ending in ``/``) tried in order for each file.
        timeout: seconds before a server counts as unresponsive.

    Raises:
        OSError: if a file could be fetched from none of the mirrors.
    """
    for base in FILES:
        if find_file(directory, base) is None:
            name = f"{base}.gz"
            download_first(tuple(m + name for m in mirrors), directory / name, timeout=timeout)


def normalise(pixels: np.ndarray) -> torch.Tensor:
    """uint8 images ``(N, 28, 28)`` to float32 ``(N, 1, 28, 28)``: ``(p / 255 - MEAN) / STD``."""
    x = torch.tensor(pixels, dtype=torch.float32).unsqueeze(1)
    return (x / 255.0 - MEAN) / STD


def read_split(images_path: Path, labels_path: Path) -> Split:
    """Read one images/labels pair of IDX files into a normalised :class:`Split`.

    Raises:
        DataFileError: naming the files, for malformed IDX files, images that are not 28x28,
            mismatched counts, or labels outside 0..9.
    """
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if images.shape[1:] != (28, 28):
        raise DataFileError(f"{images_path}: images of {images.shape[1:]}, expected (28, 28)")
    if images.shape[0] != labels.shape[0]:
        raise DataFileError(
            f"{images_path} has {images.shape[0]} images but {labels_path} {labels.shape[0]} labels"
        )
    if labels.size and labels.max() > 9:
        raise DataFileError(f"{labels_path}: label {labels.max()} outside 0..9")
    return Split(normalise(images), torch.tensor(labels, dtype=torch.int64))


def load(
    *,
    data_dir: Path,
    device: str | torch.device,
    val_fraction: float,
    split_seed: int,
    download: bool,
    mirrors: tuple[str, ...] = MIRRORS,
) -> Dataset:
    """MNIST: train ``(60000, 1, 28, 28)``, test ``(10000, 1, 28, 28)`` float32, 10 classes.

    Missing files are downloaded from ``mirrors`` when ``download`` is true.

    Raises:
        DataUnavailableError: files missing and not downloaded.
        DataFileError: a file is malformed (one line naming it).
    """
    directory = data_dir / SUBDIR
    missing = [base for base in FILES if find_file(directory, base) is None]
    if missing and download:
        try:
            fetch(directory, mirrors)
        except DownloadError as e:
            raise unavailable(
                "mnist", directory, [f"{b}.gz" for b in missing], f"download failed ({e})"
            ) from e
    elif missing:
        raise unavailable("mnist", directory, [f"{b}.gz" for b in missing], "download=False")
    paths = [find_file(directory, base) or directory / base for base in FILES]
    train_images, train_labels, test_images, test_labels = paths
    return dataset_from_splits(
        "mnist",
        read_split(train_images, train_labels),
        read_split(test_images, test_labels),
        num_classes=10,
        device=device,
        val_fraction=val_fraction,
        split_seed=split_seed,
    )
