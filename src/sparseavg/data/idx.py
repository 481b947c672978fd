"""A strict reader for the IDX format of the MNIST files (raw or gzip-compressed)."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from sparseavg.data.errors import DataFileError

UBYTE_CODE = 0x08
"""IDX type code of unsigned bytes, the only type the MNIST files use."""


def read_bytes(path: Path) -> bytes:
    """The content of ``path``, decompressed if its name ends in ``.gz``.

    Raises:
        DataFileError: naming the file, if it is not a readable gzip stream.
    """
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataFileError(f"{path}: not a complete gzip file ({e})") from e


def read_idx(path: Path, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file of unsigned bytes.

    The layout is: two zero bytes, the type code (0x08), the number of dims, then each dim as
    a big-endian uint32, then exactly ``prod(dims)`` bytes of data.

    Args:
        path: the file; ``*.gz`` is decompressed first.
        ndim: required number of dims (3 for images, 1 for labels), or ``None`` for any.

    Returns:
        uint8 array of shape ``dims`` (read-only view of the file's bytes).

    Raises:
        DataFileError: naming the file, for a wrong magic number, type code, dim count, or a
            byte count that is not exactly the header plus ``prod(dims)``.
    """
    data = read_bytes(path)
    if len(data) < 4:
        raise DataFileError(f"{path}: {len(data)} bytes, too short for an IDX header")
    zero0, zero1, code, dims_count = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise DataFileError(f"{path}: bad IDX magic number 0x{data[:4].hex()}")
    if code != UBYTE_CODE:
        raise DataFileError(f"{path}: IDX type code 0x{code:02x}, expected 0x08 (unsigned byte)")
    if ndim is not None and dims_count != ndim:
        raise DataFileError(f"{path}: IDX file has {dims_count} dims, expected {ndim}")
    header = 4 + 4 * dims_count
    if len(data) < header:
        raise DataFileError(f"{path}: truncated IDX header ({len(data)} bytes)")
    dims = struct.unpack(f">{dims_count}I", data[4:header])
    expected = header + math.prod(dims)
    if len(data) != expected:
        raise DataFileError(
            f"{path}: {len(data)} bytes, expected {expected} for dims {dims} "
            "(truncated or wrong file)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)
