"""The embedded data sets (mnist1d, digits) and the registry."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from sparseavg.data import (
    Dataset,
    DataUnavailableError,
    Split,
    available_datasets,
    load_dataset,
    register_dataset,
    registry,
)
from sparseavg.data.sources import mnist1d


def test_mnist1d_shapes_and_no_global_random_trace() -> None:
    np.random.seed(123)
    random.seed(123)
    expected = (np.random.random(3).tolist(), random.random())
    np.random.seed(123)
    random.seed(123)
    data = load_dataset("mnist1d")
    assert (np.random.random(3).tolist(), random.random()) == expected
    assert data.name == "mnist1d" and data.num_classes == 10 and data.input_shape == (1, 40)
    assert isinstance(data.train, Split) and isinstance(data.test, Split)
    assert data.train.x.shape == (8000, 1, 40) and data.test.x.shape == (2000, 1, 40)
    assert data.train.x.dtype == torch.float32 and data.train.y.dtype == torch.int64
    assert data.val is None and not data.train.augmentation.enabled
    assert set(data.train.y.tolist()) == set(range(10))
    again = load_dataset("mnist1d")
    assert isinstance(again.train, Split)
    assert torch.equal(again.train.x, data.train.x) and again.train.x is not data.train.x


def test_mnist1d_generator_restores_global_state_even_when_cached_elsewhere() -> None:
    np.random.seed(7)
    random.seed(7)
    expected = (np.random.random(3).tolist(), random.random())
    np.random.seed(7)
    random.seed(7)
    x_train, y_train, x_test, y_test = mnist1d.generate.__wrapped__(500, 1)  # uncached
    assert (np.random.random(3).tolist(), random.random()) == expected
    assert x_train.shape == (400, 40) and x_test.shape == (100, 40)
    assert y_train.shape == (400,) and y_test.shape == (100,)


def test_mnist1d_validation_split() -> None:
    data = load_dataset("mnist1d", val_fraction=0.1, split_seed=1)
    assert data.val is not None
    assert len(data.train) == 7200 and len(data.val) == 800 and len(data.test) == 2000


def test_digits_shapes() -> None:
    data = load_dataset("digits")
    assert isinstance(data.train, Split) and isinstance(data.test, Split)
    assert data.train.x.shape == (1437, 1, 8, 8) and data.test.x.shape == (360, 1, 8, 8)
    assert data.num_classes == 10 and data.input_shape == (1, 8, 8)
    assert abs(float(data.train.x.mean())) < 1e-5 and abs(float(data.train.x.std()) - 1) < 1e-4
    again = load_dataset("digits").test
    assert isinstance(again, Split) and torch.equal(again.y, data.test.y)


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown data set 'nope'") as info:
        load_dataset("nope")
    for name in ("mnist1d", "digits", "mnist", "cifar10", "cifar100", "imagefolder"):
        assert name in available_datasets()
        assert name in str(info.value)


def test_bad_val_fraction() -> None:
    with pytest.raises(ValueError):
        load_dataset("digits", val_fraction=1.0)


def test_register_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_LOADERS", dict(registry._LOADERS))  # leave no trace
    seen: dict[str, object] = {}

    def loader(**options: object) -> Dataset:
        seen.update(options)
        s = Split(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64))
        return Dataset("tiny-test-set", s, None, s, 2, (3,))

    register_dataset("tiny-test-set", loader)
    with pytest.raises(ValueError):
        register_dataset("tiny-test-set", loader)
    assert "tiny-test-set" in available_datasets()
    assert load_dataset("tiny-test-set", data_dir=tmp_path).num_classes == 2
    assert seen["data_dir"] == tmp_path and seen["device"] == torch.device("cpu")


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARSEAVG_DATA", str(tmp_path / "env-root"))
    with pytest.raises(DataUnavailableError, match="env-root"):
        load_dataset("mnist", download=False)


def test_imagefolder_needs_torchvision_or_folders(tmp_path: Path) -> None:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install sparseavg\[vision\]"):
            load_dataset("imagefolder", data_dir=tmp_path)
    else:
        with pytest.raises(DataUnavailableError, match="imagenet"):
            load_dataset("imagefolder", data_dir=tmp_path)
