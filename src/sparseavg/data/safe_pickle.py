"""Load the CIFAR "python version" pickles without letting them run arbitrary code.

``pickle.load`` calls whatever callable a file names. This unpickler resolves only the few
globals a dict of numpy arrays needs and refuses everything else before it is imported; a
refused, truncated or otherwise broken pickle raises one :class:`DataFileError` line.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from sparseavg.data.errors import DataFileError

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]


class _Refused(Exception):
    """A global or codec the unpickler does not allow; becomes a :class:`DataFileError`."""


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """The one use of ``_codecs.encode`` in protocol-2 pickles: bytes stored as latin-1 text."""
    if encoding.replace("_", "-").lower() not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin-1")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only numpy array reconstruction globals.

    Args:
        file: binary file object to read from.
        name: the file's path, named in errors.
    """

    def __init__(self, file: Any, name: str) -> None:
        super().__init__(file, encoding="bytes")
        self._name = name

    def find_class(self, module: str, name: str) -> Any:
        """Return an allowed global; refuse any other without importing it."""
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(
                f"refusing to load global {module}.{name} "
                "(only numpy arrays are allowed in data pickles)"
            ) from None


def load_pickle(path: Path) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (byte-string keys kept as bytes).

    Raises:
        DataFileError: one line naming the file, if it references a global that is not
            allowed (nothing is imported or called), or is not a complete, valid pickle.
    """
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f, str(path)).load()
        except _Refused as e:
            raise DataFileError(f"{path}: {e}") from None
        except (
            pickle.UnpicklingError,
            EOFError,
            ValueError,
            TypeError,
            IndexError,
            KeyError,
            AttributeError,
            OverflowError,
            MemoryError,
        ) as e:
            reason = " ".join(str(e).split()) or type(e).__name__
            raise DataFileError(
                f"{path}: not a valid data pickle, damaged or truncated ({reason}); "
                "delete it to download it again"
            ) from None
