"""Atomic file writes and safe tensor-file reads.

Every file is written to a temporary file in the same directory, flushed and fsynced, then
moved into place with ``os.replace``: a reader sees either the old file or the whole new one,
never a partial write.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

PathLike = str | os.PathLike[str]


class CorruptFileError(ValueError):
    """A file exists but cannot be read as what it should be (truncated, damaged, wrong kind)."""


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on a clean exit fsync it and ``os.replace`` it.

    The file gets the permissions a plain ``open`` would give it (0666 less the umask), not
    the 0600 of the temporary file: exported models are files to ship."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open supports 'w' and 'wb', not {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.chmod(handle.fileno(), 0o666 & ~_umask())
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


@contextlib.contextmanager
def all_or_nothing(targets: Sequence[PathLike]) -> Iterator[list[Path]]:
    """Write several files as one: yield a temporary path beside each target (created empty,
    so every target's folder is known writable before anything is written) for the block to
    write; when it ends cleanly, move each into place. If the block or a move fails, every
    temporary file is removed and every target already moved is put back as it was (removed,
    or the earlier file restored), so either all targets are written or none is changed.

    Raises:
        whatever the block raises, or the ``OSError`` of a failed move.
    """
    paths = [Path(t) for t in targets]
    temps: list[Path] = []
    backups: dict[Path, Path | None] = {}  # target -> its earlier file (hard link), if any
    moved: list[Path] = []
    try:
        for target in paths:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            os.close(fd)
            temps.append(Path(name))
        yield list(temps)
        for target, tmp in zip(paths, temps, strict=True):
            backups[target] = _backup(target)
            os.replace(tmp, target)
            moved.append(target)
        for target in paths:
            _fsync_dir(target.parent)
    except BaseException:
        for target in reversed(moved):
            earlier = backups.get(target)
            with contextlib.suppress(OSError):
                if earlier is not None:
                    os.replace(earlier, target)
                else:
                    target.unlink()
        for leftover in [*temps, *(b for b in backups.values() if b is not None)]:
            with contextlib.suppress(OSError):
                leftover.unlink()
        raise
    for earlier in backups.values():
        if earlier is not None:
            with contextlib.suppress(OSError):
                earlier.unlink()


def _backup(target: Path) -> Path | None:
    """A hard link to the file at ``target`` (a temporary name beside it), or ``None`` when
    there is no file there (or the file system cannot link)."""
    if not target.is_file():
        return None
    name = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        os.link(target, name)
    except OSError:
        return None
    return name


def _umask() -> int:
    """The process's umask: from /proc where Linux has it, else read by setting it and
    setting it back (there is no getter)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def save_tensors(
    path: PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Save a flat ``name -> tensor`` mapping as safetensors, atomically.

    Tensors are made contiguous and moved to the CPU first; shared storage is copied.
    """
    plain = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    atomic_write_bytes(path, save(plain, metadata=dict(metadata) if metadata else None))


def load_tensors(path: PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing, truncated or damaged file raises an error naming it."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    try:
        return load_file(str(p), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise CorruptFileError(f"{p}: not a readable safetensors file ({err})") from err


def safe_torch_load(path: PathLike) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors, numbers, strings, lists and
    dicts only, so no code in the file runs. Anything else, or a damaged file, raises
    :class:`CorruptFileError` with a one-line message naming the file. torch's warning about
    a pickle protocol it was not written with (any raw pickle) is not shown: the refusal, or
    the load, says what matters."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        text = str(err)
        if "Weights only load failed" in text:
            reason = "it holds objects other than tensors and plain containers, or is damaged"
        else:
            reason = text.strip().splitlines()[0] if text.strip() else type(err).__name__
        raise CorruptFileError(
            f"{path}: refused by torch.load(weights_only=True): {reason}"
        ) from None
