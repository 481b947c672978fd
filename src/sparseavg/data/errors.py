"""The errors of data sets: files neither on disk nor downloadable, or on disk but unusable."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sparseavg.data.paths import DATA_DIR_ENV


class DataUnavailableError(RuntimeError):
    """A data set's files are missing and could not be downloaded.

    The message is one line that says which files to put in which directory.
    """


class DataFileError(DataUnavailableError, ValueError):
    """A data set's file is on disk but cannot be used: truncated, malformed, or a pickle that
    names code other than numpy arrays (refused before anything is imported or called).

    The message is one line that names the file and what is wrong with it. A subclass of
    :class:`DataUnavailableError` (the data set cannot be loaded) and of ``ValueError``.
    """


def unavailable(
    dataset: str, directory: Path, files: Sequence[str], reason: str
) -> DataUnavailableError:
    """Build a one-line :class:`DataUnavailableError` for ``dataset``.

    Args:
        dataset: the registry name, e.g. ``"mnist"``.
        directory: the folder the files must be in, e.g. ``<data_dir>/mnist``.
        files: the file names that are missing there.
        reason: why they were not fetched (``"download=False"`` or the download error).
    """
    reason = " ".join(reason.split())  # one line, whatever the underlying error said
    return DataUnavailableError(
        f"{dataset}: put {', '.join(files)} in {directory} "
        f"(or point --data-dir / ${DATA_DIR_ENV} at a folder that holds "
        f"{directory.name}/); not downloaded: {reason}"
    )
