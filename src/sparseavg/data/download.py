"""Fetch files over HTTP(S) (or ``file://``) with a progress bar, and unpack tarballs safely."""

from __future__ import annotations

import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path, PurePosixPath

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

DOWNLOAD_TIMEOUT_S = 20.0
"""Seconds to wait for a server to answer (per connection and per read)."""

_CHUNK = 1 << 20

DownloadError = (OSError, ValueError, http.client.HTTPException)
"""What a failed :func:`download_file` raises (URLError and timeouts are OSErrors)."""


def download_file(
    url: str, dest: Path, *, timeout: float = DOWNLOAD_TIMEOUT_S, progress: bool = True
) -> Path:
    """Download ``url`` to ``dest`` atomically: into a temporary file beside it, then rename.

    Args:
        url: ``https://``, ``http://`` or ``file://`` address.
        dest: the final path; its folder is created. Never left half-written.
        timeout: seconds before an unresponsive server counts as failed.
        progress: show a rich progress bar on stderr.

    Returns:
        ``dest``.

    Raises:
        OSError, ValueError, http.client.HTTPException: the download failed (see
            :data:`DownloadError`); ``dest`` is then untouched.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
                disable=not progress,
            ) as bar:
                task = bar.add_task(dest.name, total=total)
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    bar.advance(task, len(chunk))
        if total is not None and tmp.stat().st_size != total:
            raise OSError(f"{url}: got {tmp.stat().st_size} of {total} bytes")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def download_first(
    urls: tuple[str, ...], dest: Path, *, timeout: float = DOWNLOAD_TIMEOUT_S
) -> Path:
    """Try each of ``urls`` in turn until one downloads to ``dest``.

    Raises:
        OSError: listing every URL's error, if all fail.
    """
    errors: list[str] = []
    for url in urls:
        try:
            return download_file(url, dest, timeout=timeout)
        except DownloadError as e:
            errors.append(f"{url}: {e}")
    raise OSError("; ".join(errors) or "no URL given")


def check_tar_members(archive: tarfile.TarFile, name: str) -> list[tarfile.TarInfo]:
    """The members of ``archive``, after checking each is a plain file or folder inside it.

    Raises:
        ValueError: naming the archive and member, for an absolute path, a ``..`` component,
            or a link / device / other special member.
    """
    members = archive.getmembers()
    for m in members:
        path = PurePosixPath(m.name)
        if path.is_absolute() or m.name.startswith(("/", "\\")) or ".." in path.parts:
            raise ValueError(f"{name}: refusing tar member with unsafe path {m.name!r}")
        if not (m.isfile() or m.isdir()):
            raise ValueError(f"{name}: refusing tar member {m.name!r} (not a file or folder)")
    return members


def extract_tar(archive_path: Path, dest: Path) -> None:
    """Unpack a (compressed) tarball into ``dest`` after :func:`check_tar_members`.

    Files are unpacked into a temporary folder inside ``dest`` and then renamed into place,
    so ``dest`` never holds half-written files. Existing files are replaced.

    Raises:
        ValueError: naming the archive, if it is unreadable or has an unsafe member.
    """
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        try:
            with tarfile.open(archive_path, "r:*") as archive:
                members = check_tar_members(archive, str(archive_path))
                if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: a second defence
                    archive.extractall(staging, members=members, filter="data")
                else:  # pragma: no cover
                    archive.extractall(staging, members=members)
        except tarfile.TarError as e:
            raise ValueError(f"{archive_path}: not a readable tar archive ({e})") from e
        for m in members:
            if m.isfile():
                target = dest / m.name
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / m.name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download_and_extract(
    urls: tuple[str, ...], dest: Path, *, timeout: float = DOWNLOAD_TIMEOUT_S
) -> None:
    """Download a tarball from the first working URL of ``urls`` and unpack it into ``dest``.

    The tarball itself is deleted afterwards.
    """
    dest.mkdir(parents=True, exist_ok=True)
    name = PurePosixPath(urls[0]).name if urls else "archive"
    archive = dest / f".{name}"
    try:
        download_first(urls, archive, timeout=timeout)
        extract_tar(archive, dest)
    finally:
        archive.unlink(missing_ok=True)
