"""scikit-learn's 8x8 handwritten digits (1797 images shipped inside scikit-learn)."""

from __future__ import annotations

from pathlib import Path

import torch

from sparseavg.data.dataset import Dataset, dataset_from_splits
from sparseavg.data.split import Split

NUM_TRAIN = 1437
"""Training images; the other 360 of the 1797 are the test split."""

PERMUTATION_SEED = 0
"""Seed of the fixed permutation that splits train from test."""


def load(
    *,
    data_dir: Path,
    device: str | torch.device,
    val_fraction: float,
    split_seed: int,
    download: bool,
) -> Dataset:
    """Digits: train ``(1437, 1, 8, 8)``, test ``(360, 1, 8, 8)`` float32, 10 classes.

    Pixels (0..16) are scaled to [0, 1], then standardised with the mean and std of all
    training pixels. ``data_dir`` and ``download`` are unused.
    """
    del data_dir, download
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(PERMUTATION_SEED))
    train_idx, test_idx = perm[:NUM_TRAIN], perm[NUM_TRAIN:]
    mean = x[train_idx].mean()
    std = x[train_idx].std()
    x = (x - mean) / std
    return dataset_from_splits(
        "digits",
        Split(x[train_idx], y[train_idx]),
        Split(x[test_idx], y[test_idx]),
        num_classes=10,
        device=device,
        val_fraction=val_fraction,
        split_seed=split_seed,
    )
