"""CIFAR-10 and CIFAR-100 from the standard "python version" pickles."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from sparseavg.data.augment import Augmentation
from sparseavg.data.dataset import Dataset, dataset_from_splits
from sparseavg.data.download import DownloadError, download_and_extract
from sparseavg.data.errors import DataFileError, unavailable
from sparseavg.data.safe_pickle import load_pickle
from sparseavg.data.split import Split


@dataclass(frozen=True)
class CifarSpec:
    """Where one CIFAR variant lives and how it is normalised.

    ``mean`` and ``std`` are the SMS code's (``config.py``; CIFAR-10's std is the widely
    copied (0.2023, 0.1994, 0.2010), not the pixels' std (0.2470, 0.2435, 0.2616)).

    Attributes:
        name: registry name.
        subdir: folder of the data root the tarball extracts to.
        train_files: pickles of the training split, in order.
        test_files: pickles of the test split.
        label_key: dict key of the labels in each pickle.
        num_classes: number of classes.
        mean: per-channel mean of [0, 1] pixels (R, G, B).
        std: per-channel std of [0, 1] pixels (R, G, B).
        urls: tarball URLs tried in order.
    """

    name: str
    subdir: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    urls: tuple[str, ...]


CIFAR10_URLS = ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)
CIFAR100_URLS = ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",)

CIFAR10 = CifarSpec(
    name="cifar10",
    subdir="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    label_key=b"labels",
    num_classes=10,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2023, 0.1994, 0.2010),
    urls=CIFAR10_URLS,
)
CIFAR100 = CifarSpec(
    name="cifar100",
    subdir="cifar-100-python",
    train_files=("train",),
    test_files=("test",),
    label_key=b"fine_labels",
    num_classes=100,
    mean=(0.5071, 0.4867, 0.4408),
    std=(0.2675, 0.2565, 0.2761),
    urls=CIFAR100_URLS,
)


def normalise(pixels: torch.Tensor, spec: CifarSpec) -> torch.Tensor:
    """``(pixels / 255 - mean[c]) / std[c]`` in float32: uint8 ``(N, 3, H, W)`` to the model's
    input, as torchvision's ``ToTensor`` then ``Normalize``."""
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
    return (pixels.to(torch.float32) / 255.0 - mean) / std


def train_augmentation(spec: CifarSpec) -> Augmentation:
    """The standard CIFAR training augmentation: a random 32x32 crop of the image padded by 4
    black pixels, then a random horizontal flip (the SMS code's ``RandomCrop(32, padding=4)``,
    ``RandomHorizontalFlip()`` before ``Normalize``). The data set is stored normalised, so
    the padding is black normalised: ``-mean[c] / std[c]`` in channel ``c``."""
    black = normalise(torch.zeros(1, 3, 1, 1, dtype=torch.uint8), spec).view(3)
    return Augmentation(crop_padding=4, horizontal_flip=True, fill=tuple(black.tolist()))


def read_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR pickle with the restricted unpickler.

    Returns:
        ``(images, labels)``: uint8 ``(n, 3, 32, 32)`` and int64 ``(n,)``.

    Raises:
        DataFileError: naming the file, if it is not a valid pickle, names code other than
            numpy arrays, or is not a dict with uint8 ``(n, 3072)`` ``b"data"`` and ``n``
            labels in ``0 .. num_classes - 1`` under ``label_key``.
    """
    batch = load_pickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise DataFileError(f"{path}: expected a dict with keys b'data' and {label_key!r}")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataFileError(f"{path}: b'data' is not a 2-D uint8 array")
    if data.shape[1] != 3 * 32 * 32:
        raise DataFileError(f"{path}: b'data' has {data.shape[1]} values per image, expected 3072")
    labels = np.asarray(batch[label_key])
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataFileError(f"{path}: {label_key!r} is not {data.shape[0]} integer labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataFileError(f"{path}: labels outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def read_split(
    directory: Path, files: tuple[str, ...], spec: CifarSpec, augmentation: Augmentation
) -> Split:
    """Concatenate the pickles ``files`` of ``directory`` into one normalised :class:`Split`.

    Inputs are float32 ``(N, 3, 32, 32)``: ``(pixel / 255 - mean[c]) / std[c]``.
    """
    parts = [read_batch(directory / f, spec.label_key, spec.num_classes) for f in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    x = normalise(torch.from_numpy(images), spec)
    return Split(x, torch.tensor(labels, dtype=torch.int64), augmentation)


def load(
    *,
    spec: CifarSpec,
    data_dir: Path,
    device: str | torch.device,
    val_fraction: float,
    split_seed: int,
    download: bool,
    urls: tuple[str, ...] | None = None,
) -> Dataset:
    """CIFAR-10/100: train ``(50000, 3, 32, 32)``, test ``(10000, 3, 32, 32)`` float32.

    The training split carries :func:`train_augmentation`. When files are missing and
    ``download`` is true, the tarball is fetched from ``urls`` (default ``spec.urls``) and
    unpacked into ``data_dir``.

    Raises:
        DataUnavailableError: files missing and not downloaded.
        DataFileError: a file is damaged, malformed or names code other than numpy arrays
            (one line naming it; nothing in it is run).
    """
    directory = data_dir / spec.subdir
    wanted = spec.train_files + spec.test_files
    missing = [f for f in wanted if not (directory / f).is_file()]
    if missing and download:
        try:
            download_and_extract(spec.urls if urls is None else urls, data_dir)
        except DownloadError as e:
            raise unavailable(spec.name, directory, missing, f"download failed ({e})") from e
        missing = [f for f in wanted if not (directory / f).is_file()]
        if missing:
            raise unavailable(spec.name, directory, missing, "the archive lacked them")
    elif missing:
        raise unavailable(spec.name, directory, missing, "download=False")
    return dataset_from_splits(
        spec.name,
        read_split(directory, spec.train_files, spec, train_augmentation(spec)),
        read_split(directory, spec.test_files, spec, Augmentation()),
        num_classes=spec.num_classes,
        device=device,
        val_fraction=val_fraction,
        split_seed=split_seed,
    )


load_cifar10 = partial(load, spec=CIFAR10)
load_cifar100 = partial(load, spec=CIFAR100)
