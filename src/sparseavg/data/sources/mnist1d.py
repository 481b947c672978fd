"""MNIST-1D, generated offline by the ``mnist1d`` package: the embedded default data set."""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from sparseavg.data.dataset import Dataset, dataset_from_splits
from sparseavg.data.split import Split

NUM_SAMPLES = 10_000
"""Samples generated: 8000 train (``train_split=0.8``) and 2000 test."""

SEED = 42
"""Generation seed (the ``mnist1d`` default)."""


@lru_cache(maxsize=4)
def generate(
    num_samples: int = NUM_SAMPLES, seed: int = SEED
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Generate MNIST-1D, leaving numpy's and Python's global random state as they were.

    ``mnist1d.data.make_dataset`` seeds the global generators; their states are saved before
    and restored after. Cached per process (generation takes about 1.5 s for 10k samples).

    Returns:
        Read-only ``(x_train, y_train, x_test, y_test)``: x float64 ``(n, 40)`` (standardised by
        the generator), y int64 ``(n,)``.
    """
    from mnist1d.data import get_dataset_args, make_dataset  # slow import (scipy)

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    arrays = (
        np.asarray(data["x"], dtype=np.float64),
        np.asarray(data["y"], dtype=np.int64),
        np.asarray(data["x_test"], dtype=np.float64),
        np.asarray(data["y_test"], dtype=np.int64),
    )
    for a in arrays:
        a.setflags(write=False)
    return arrays


def load(
    *,
    data_dir: Path,
    device: str | torch.device,
    val_fraction: float,
    split_seed: int,
    download: bool,
) -> Dataset:
    """MNIST-1D: train ``(8000, 1, 40)``, test ``(2000, 1, 40)`` float32, 10 classes.

    ``data_dir`` and ``download`` are unused (nothing is read from disk).
    """
    del data_dir, download
    x_train, y_train, x_test, y_test = generate()

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        return Split(
            torch.tensor(x, dtype=torch.float32).unsqueeze(1), torch.tensor(y, dtype=torch.int64)
        )

    return dataset_from_splits(
        "mnist1d",
        split(x_train, y_train),
        split(x_test, y_test),
        num_classes=10,
        device=device,
        val_fraction=val_fraction,
        split_seed=split_seed,
    )
