"""Readers of on-disk formats (MNIST IDX, CIFAR pickles) and downloads from file:// URLs."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sparseavg.cli.main import main
from sparseavg.data import DataFileError, DataUnavailableError, Split, load_dataset
from sparseavg.data.download import extract_tar
from sparseavg.data.safe_pickle import load_pickle
from sparseavg.data.sources import cifar, mnist

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"

# ---------------------------------------------------------------- MNIST IDX


def _idx(array: np.ndarray) -> bytes:
    magic = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    return magic + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def _mnist_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, np.uint8)


def _write_mnist(directory: Path, compress: bool) -> dict[str, np.ndarray]:
    directory.mkdir(parents=True, exist_ok=True)
    train_x, train_y = _mnist_arrays(7, 0)
    test_x, test_y = _mnist_arrays(3, 1)
    arrays = dict(zip(mnist.FILES, (train_x, train_y, test_x, test_y), strict=True))
    for base, array in arrays.items():
        if compress:
            (directory / f"{base}.gz").write_bytes(gzip.compress(_idx(array)))
        else:
            (directory / base).write_bytes(_idx(array))
    return arrays


def _expected_mnist(pixels: np.ndarray) -> torch.Tensor:
    return ((torch.from_numpy(pixels.astype(np.float32)) / 255 - 0.1307) / 0.3081).unsqueeze(1)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_exact_values(tmp_path: Path, compress: bool) -> None:
    arrays = _write_mnist(tmp_path / "mnist", compress)
    data = load_dataset("mnist", data_dir=tmp_path, download=False)
    train_x, train_y, test_x, test_y = arrays.values()
    assert isinstance(data.train, Split) and isinstance(data.test, Split)
    assert data.train.x.shape == (7, 1, 28, 28) and data.input_shape == (1, 28, 28)
    assert torch.equal(data.train.x, _expected_mnist(train_x))
    assert torch.equal(data.test.x, _expected_mnist(test_x))
    assert data.train.y.tolist() == train_y.tolist() and data.test.y.tolist() == test_y.tolist()
    assert data.train.y.dtype == torch.int64 and data.num_classes == 10


def test_mnist_truncated_or_wrong_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "mnist"
    arrays = _write_mnist(directory, compress=False)
    images = directory / "train-images-idx3-ubyte"
    images.write_bytes(_idx(arrays["train-images-idx3-ubyte"])[:-5])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", data_dir=tmp_path, download=False)
    wrong = bytearray(_idx(arrays["train-images-idx3-ubyte"]))
    wrong[2] = 0x0D  # float type code
    images.write_bytes(bytes(wrong))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", data_dir=tmp_path, download=False)
    images.unlink()
    gz = directory / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(_idx(arrays["train-images-idx3-ubyte"]))[:-20])
    with pytest.raises(DataFileError, match=r"train-images-idx3-ubyte\.gz"):
        load_dataset("mnist", data_dir=tmp_path, download=False)
    # the command line says it in one line, no traceback
    sets = ["data.dataset=mnist", f"execution.data_dir='{tmp_path}'", "execution.download=false"]
    rc = main(["run", *(a for v in sets for a in ("--set", v)), "--runs-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert err.startswith(f"sparseavg: error: {gz}: not a complete gzip file")


def test_mnist_missing_files_without_download(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError) as info:
        load_dataset("mnist", data_dir=tmp_path, download=False)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "mnist") in message
    for base in mnist.FILES:
        assert f"{base}.gz" in message


def test_mnist_download_from_file_urls(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    arrays = _write_mnist(mirror, compress=True)
    root = tmp_path / "root"
    broken = (tmp_path / "nowhere").as_uri() + "/"
    data = mnist.load(
        data_dir=root,
        device="cpu",
        val_fraction=0.0,
        split_seed=0,
        download=True,
        mirrors=(broken, mirror.as_uri() + "/"),  # the first mirror fails, the second works
    )
    assert sorted(os.listdir(root / "mnist")) == sorted(f"{b}.gz" for b in mnist.FILES)
    assert isinstance(data.test, Split)
    assert data.test.y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    with pytest.raises(DataUnavailableError, match="download failed"):
        mnist.load(
            data_dir=tmp_path / "other",
            device="cpu",
            val_fraction=0.0,
            split_seed=0,
            download=True,
            mirrors=(broken,),
        )
    assert not list((tmp_path / "other" / "mnist").glob("*"))  # no half-written files


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"real MNIST not at {SHARED_MNIST}")
def test_real_mnist() -> None:
    data = load_dataset("mnist", data_dir=SHARED_MNIST.parent, download=False)
    assert len(data.train) == 60000 and len(data.test) == 10000
    assert isinstance(data.train, Split) and isinstance(data.test, Split)
    train_counts = torch.bincount(data.train.y, minlength=10).tolist()
    test_counts = torch.bincount(data.test.y, minlength=10).tolist()
    assert train_counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert test_counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert abs(float(data.train.x.mean())) < 1e-3 and abs(float(data.train.x.std()) - 1) < 1e-3


# ---------------------------------------------------------------- CIFAR pickles


def _cifar_batch(n: int, num_classes: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    return data, [int(v) for v in rng.integers(0, num_classes, n)]


def _write_pickle(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _write_cifar(root: Path, spec: cifar.CifarSpec) -> dict[str, tuple[np.ndarray, list[int]]]:
    batches = {}
    for i, name in enumerate(spec.train_files + spec.test_files):
        data, labels = _cifar_batch(2 + i, spec.num_classes, seed=i)
        _write_pickle(
            root / spec.subdir / name,
            {b"batch_label": b"x", spec.label_key: labels, b"data": data, b"filenames": []},
        )
        batches[name] = (data, labels)
    return batches


def _expected_cifar(data: np.ndarray, spec: cifar.CifarSpec) -> torch.Tensor:
    x = torch.from_numpy(data.astype(np.float32)).view(-1, 3, 32, 32) / 255
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    return (x - mean) / torch.tensor(spec.std).view(1, 3, 1, 1)


@pytest.mark.parametrize(
    ("name", "spec"), [("cifar10", cifar.CIFAR10), ("cifar100", cifar.CIFAR100)]
)
def test_cifar_exact_values(tmp_path: Path, name: str, spec: cifar.CifarSpec) -> None:
    batches = _write_cifar(tmp_path, spec)
    data = load_dataset(name, data_dir=tmp_path, download=False)
    assert isinstance(data.train, Split) and isinstance(data.test, Split)
    train = [batches[f] for f in spec.train_files]
    test = batches[spec.test_files[0]]
    expected_x = _expected_cifar(np.concatenate([d for d, _ in train]), spec)
    torch.testing.assert_close(data.train.x, expected_x, rtol=0, atol=1e-6)
    torch.testing.assert_close(data.test.x, _expected_cifar(test[0], spec), rtol=0, atol=1e-6)
    assert data.train.y.tolist() == [v for _, labels in train for v in labels]
    assert data.test.y.tolist() == test[1]
    assert data.num_classes == spec.num_classes and data.input_shape == (3, 32, 32)
    black = tuple(float((0.0 - m) / s) for m, s in zip(spec.mean, spec.std, strict=True))
    assert data.train.augmentation == cifar.train_augmentation(spec)
    assert data.train.augmentation.crop_padding == 4 and data.train.augmentation.horizontal_flip
    assert data.train.augmentation.fill == pytest.approx(black, abs=1e-6)
    assert not data.test.augmentation.enabled
    # the red channel of image 0 is its first 1024 bytes
    raw = train[0][0][0, :1024].reshape(32, 32).astype(np.float32) / 255
    red = (torch.from_numpy(raw) - spec.mean[0]) / spec.std[0]
    torch.testing.assert_close(data.train.x[0, 0], red, rtol=0, atol=1e-6)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_and_not_run(tmp_path: Path) -> None:
    batches = _write_cifar(tmp_path, cifar.CIFAR10)
    marker = tmp_path / "pwned"
    evil = tmp_path / cifar.CIFAR10.subdir / "data_batch_3"
    data, labels = batches["data_batch_3"]
    _write_pickle(evil, {b"data": data, b"labels": labels, b"x": _Evil(marker)})
    with pytest.raises(DataFileError, match=r"data_batch_3.*system"):
        load_dataset("cifar10", data_dir=tmp_path, download=False)
    assert not marker.exists()


def _cli_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> str:
    rc = main(
        [
            "run",
            "--set",
            "data.dataset=cifar10",
            "--set",
            f"execution.data_dir='{tmp_path}'",
            "--set",
            "execution.download=false",
            "--runs-dir",
            str(tmp_path / "runs"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "\n" not in err and "Traceback" not in err
    return err


def test_malicious_pickle_is_one_line_in_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a batch that asks pickle to call os.system: refused by name, never run, no traceback
    _write_cifar(tmp_path, cifar.CIFAR10)
    marker = tmp_path / "pwned"
    evil = tmp_path / cifar.CIFAR10.subdir / "data_batch_1"
    _write_pickle(evil, {b"data": _Evil(marker)})
    err = _cli_one_line(capsys, tmp_path)
    assert err.startswith(f"sparseavg: error: {evil}: refusing to load global posix.system")
    assert not marker.exists()


def test_truncated_pickle_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_cifar(tmp_path, cifar.CIFAR10)
    batch = tmp_path / cifar.CIFAR10.subdir / "test_batch"
    batch.write_bytes(batch.read_bytes()[:300])
    with pytest.raises(DataFileError, match=re.escape(f"{batch}: not a valid data pickle")):
        load_dataset("cifar10", data_dir=tmp_path, download=False)
    err = _cli_one_line(capsys, tmp_path)
    assert err.startswith(f"sparseavg: error: {batch}: not a valid data pickle")


def test_pickle_codecs_only_latin1(tmp_path: Path) -> None:
    path = tmp_path / "p"
    # protocol 2 stores bytes as _codecs.encode(text, "latin1"); any other codec is refused
    path.write_bytes(
        b"\x80\x02c_codecs\nencode\nq\x00X\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R."
    )
    with pytest.raises(DataFileError, match="rot13"):
        load_pickle(path)


def test_cifar_malformed_batch_is_refused(tmp_path: Path) -> None:
    _write_cifar(tmp_path, cifar.CIFAR100)
    bad = tmp_path / cifar.CIFAR100.subdir / "test"
    _write_pickle(bad, {b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1]})
    # the message names the bad file itself ("test" alone would match tmp_path's name too)
    with pytest.raises(DataFileError, match=re.escape(f"{bad}: ") + ".*expected 3072"):
        load_dataset("cifar100", data_dir=tmp_path, download=False)


def test_cifar_missing_files_without_download(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError) as info:
        load_dataset("cifar100", data_dir=tmp_path, download=False)
    message = str(info.value)
    assert str(tmp_path / "cifar-100-python") in message and "train, test" in message
    assert "\n" not in message


def _tar_gz(path: Path, source: Path, arcname: str) -> None:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(source, arcname=arcname)


def test_cifar_download_from_file_url(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    batches = _write_cifar(staging, cifar.CIFAR10)
    archive = tmp_path / "cifar-10-python.tar.gz"
    _tar_gz(archive, staging / cifar.CIFAR10.subdir, cifar.CIFAR10.subdir)
    root = tmp_path / "root"
    data = cifar.load(
        spec=cifar.CIFAR10,
        data_dir=root,
        device="cpu",
        val_fraction=0.0,
        split_seed=0,
        download=True,
        urls=(archive.as_uri(),),
    )
    assert isinstance(data.test, Split)
    assert data.test.y.tolist() == batches["test_batch"][1]
    assert sorted(os.listdir(root)) == ["cifar-10-batches-py"]  # tarball and staging removed
    assert len(os.listdir(root / "cifar-10-batches-py")) == 6


def test_unsafe_tar_members_are_refused(tmp_path: Path) -> None:
    for name in ("../escape.txt", "/abs/escape.txt", "ok/../../escape.txt"):
        archive = tmp_path / "bad.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
        dest = tmp_path / "dest"
        with pytest.raises(ValueError, match="unsafe path"):
            extract_tar(archive, dest)
        assert not (tmp_path / "escape.txt").exists()
        assert not list(dest.iterdir())
    link = tmp_path / "link.tar"
    with tarfile.open(link, "w") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(ValueError, match="not a file or folder"):
        extract_tar(link, tmp_path / "dest2")
