"""Where data sets live on disk."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "SPARSEAVG_DATA"
"""Environment variable naming the data root when no ``data_dir`` is passed."""

DEFAULT_DATA_DIR = Path("~/.cache/sparseavg/data")
"""Data root used when neither ``data_dir`` nor ``$SPARSEAVG_DATA`` is set."""


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the data root: ``data_dir`` if given, else ``$SPARSEAVG_DATA``, else the default.

    Each data set lives in a sub-directory of the root named for it (``mnist/``,
    ``cifar-10-batches-py/``, ...). ``~`` is expanded; the folder is not created.
    """
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return DEFAULT_DATA_DIR.expanduser()
