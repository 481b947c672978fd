"""ImageNet-style folders ``<data_dir>/imagenet/{train,val}/<class>/*.JPEG`` via torchvision."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Subset

from sparseavg.data.dataset import Dataset
from sparseavg.data.errors import unavailable
from sparseavg.data.loader_split import LoaderSplit
from sparseavg.data.split import carve_indices

SUBDIR = "imagenet"
"""Folder of the data root holding ``train/`` and ``val/``."""

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
"""Per-channel normalisation of [0, 1] RGB pixels (the ImageNet statistics)."""

CROP = 224
RESIZE = 256


def import_torchvision() -> ModuleType:
    """Import torchvision, or explain how to install it."""
    try:
        return importlib.import_module("torchvision")
    except ImportError as e:
        raise ImportError(
            "the 'imagefolder' data set needs torchvision: pip install sparseavg[vision]"
        ) from e


def load(
    *,
    data_dir: Path,
    device: str | torch.device,
    val_fraction: float,
    split_seed: int,
    download: bool,
    num_workers: int | None = None,
) -> Dataset:
    """ImageFolder data: inputs ``(3, 224, 224)`` float32, classes from the folder names.

    Training batches with ``augment=True`` use RandomResizedCrop(224) and a random flip;
    everything else is resized to 256 and center-cropped to 224. ``val/`` is the test split;
    ``val_fraction`` carves a validation part out of ``train/``. Nothing is downloaded.

    Raises:
        ImportError: torchvision is missing.
        DataUnavailableError: ``train/`` or ``val/`` is missing.
    """
    del download
    tv = import_torchvision()
    transforms = tv.transforms
    root = data_dir / SUBDIR
    missing = [d for d in ("train", "val") if not (root / d).is_dir()]
    if missing:
        raise unavailable(
            "imagefolder", root, [f"{d}/<class>/*.JPEG" for d in missing], "no download for it"
        )
    normalize = transforms.Normalize(MEAN, STD)
    train_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(CROP),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize,
        ]
    )
    eval_tf = transforms.Compose(
        [transforms.Resize(RESIZE), transforms.CenterCrop(CROP), transforms.ToTensor(), normalize]
    )
    folder = tv.datasets.ImageFolder
    train_aug = folder(str(root / "train"), transform=train_tf)
    train_plain = folder(str(root / "train"), transform=eval_tf)
    test = folder(str(root / "val"), transform=eval_tf)
    workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers

    def source(plain: TorchDataset[Any], augmented: TorchDataset[Any] | None = None) -> LoaderSplit:
        return LoaderSplit(plain, augmented=augmented, device=device, num_workers=workers)

    val = None
    if val_fraction > 0:
        train_idx, val_idx = carve_indices(len(train_plain), val_fraction, split_seed)
        train = source(
            Subset(train_plain, train_idx.tolist()), Subset(train_aug, train_idx.tolist())
        )
        val = source(Subset(train_plain, val_idx.tolist()))
    else:
        train = source(train_plain, train_aug)
    return Dataset(
        name="imagefolder",
        train=train,
        val=val,
        test=source(test),
        num_classes=len(train_plain.classes),
        input_shape=(3, CROP, CROP),
    )
