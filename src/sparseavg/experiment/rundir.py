"""The run directory: where a run's files live, how they are written, and who may write them.

Layout (one lineage; the ensemble recipe nests ``member_<l>/`` inside each cycle)::

    <run>/config.toml                      the resolved config, written first
    <run>/run.lock                         PID of the process that owns the run
    <run>/cycle_00/ticket.safetensors      θ_T0, the shared rewind point
    <run>/cycle_03/mask.safetensors        the cycle's mask
    <run>/cycle_03/ingredient_2/checkpoint.pt   epoch-level, while it trains
    <run>/cycle_03/ingredient_2/final.safetensors + info.json (with its epochs' records)
    <run>/cycle_03/combined.safetensors    the cycle's combined model (BN recalibrated)
    <run>/cycle_03/rows.json               the cycle's evaluation rows
    <run>/cycle_03/manifest.json           SHA-256 of every file above; marks the cycle complete
    <run>/results.jsonl, results.csv       every complete cycle's rows
    <run>/epochs.jsonl, epochs.csv         every epoch of their ingredients (see .logs)
    <run>/tensorboard/                     with execution.tensorboard (see .logs)

Every file is written atomically (temporary file, fsync, ``os.replace``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..utils.files import (
    CorruptFileError,
    atomic_open,
    atomic_write_text,
    load_tensors,
    safe_torch_load,
    save_tensors,
)
from ..utils.state import State
from .logs import RESULT_COLUMNS, RESULTS_CSV, write_csv

LOCK_NAME = "run.lock"
MANIFEST = "manifest.json"


class RunLockedError(RuntimeError):
    """Another live process owns this run directory."""


class InsufficientDiskError(RuntimeError):
    """Not enough free space for the next cycle's files."""


def name_part_problem(value: object) -> str | None:
    """Why ``value`` cannot be part of a run directory's name (``<recipe>-<dataset>-<model>-
    <hash8>`` must be one folder inside the runs directory), or ``None`` when it can: it must
    be a non-empty string without path separators or control characters, not ``.`` or
    ``..``."""
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if value in (".", ".."):
        return f"{value!r} names a folder, not a run"
    separators = {"/", "\\", os.sep, os.altsep} - {None}
    bad = sorted({c for c in value if c in separators or ord(c) < 32 or ord(c) == 127})
    if bad:
        return (
            f"{value!r} holds {', '.join(map(repr, bad))}: a run directory's name is one folder "
            "inside the runs directory (no path separators or control characters)"
        )
    return None


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a run directory: a folder with a ``config.toml`` and a cycle folder,
    ``results.jsonl`` or a lock (a folder of the user's that merely holds a ``config.toml``
    is not)."""
    if not (path / "config.toml").is_file():
        return False
    return (
        (path / "results.jsonl").exists()
        or (path / LOCK_NAME).exists()
        or any(p.is_dir() for p in path.glob("cycle_[0-9][0-9]*"))
    )


def enclosing_run_dir(path: str | os.PathLike[str]) -> Path | None:
    """The run directory that ``path`` (a file to write; links resolved) lies in, or
    ``None``."""
    resolved = Path(path).resolve()
    for folder in resolved.parents:
        if is_run_dir(folder):
            return folder
    return None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class RunDir:
    """Paths and atomic I/O of one run directory.

    ``run_id`` (the config's :meth:`~sparseavg.config.Config.digest`) is written into every
    manifest, and a manifest that names another run is refused: a cycle folder copied in from
    another run directory is never taken for this run's.
    """

    def __init__(self, path: str | os.PathLike[str], run_id: str | None = None) -> None:
        self.path = Path(path)
        self.run_id = run_id

    # -- paths --------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.toml"

    @property
    def results_path(self) -> Path:
        return self.path / "results.jsonl"

    def cycle_dir(self, cycle: int) -> Path:
        return self.path / f"cycle_{cycle:02d}"

    def member_dir(self, cycle: int, lineage: int, members: int) -> Path:
        base = self.cycle_dir(cycle)
        return base / f"member_{lineage}" if members > 1 else base

    # -- lock ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Own the directory for the duration: a second live process is refused with the
        holder's PID; a lock left by a dead process is taken over with a warning."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock = self.path / LOCK_NAME
        me = str(os.getpid())
        while True:
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder = int(lock.read_text().strip() or "0")
                except (OSError, ValueError):
                    holder = 0
                if holder != os.getpid() and _pid_alive(holder):
                    raise RunLockedError(
                        f"{self.path} is in use by process {holder} (lock file {lock}); "
                        "wait for it to finish or stop it"
                    ) from None
                warnings.warn(
                    f"taking over the stale lock of process {holder or '?'} on {self.path}",
                    stacklevel=3,
                )
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me)
            break
        self._remove_partial_writes()
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                if lock.read_text().strip() == me:
                    lock.unlink()

    def _remove_partial_writes(self) -> None:
        """Delete temporary files a killed writer left behind (never read as data)."""
        for tmp in self.path.rglob(".*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()

    # -- files --------------------------------------------------------------------------------
    @staticmethod
    def save_state(path: Path, state: State, kind: str) -> None:
        save_tensors(path, state, metadata={"format": f"sparseavg-{kind}/1"})

    @staticmethod
    def load_state(path: Path, device: str | torch.device = "cpu") -> State:
        return load_tensors(path, device=device)

    @staticmethod
    def write_json(path: Path, value: Any) -> None:
        atomic_write_text(path, json.dumps(value, indent=1, sort_keys=True, allow_nan=False) + "\n")

    @staticmethod
    def read_json(path: Path) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CorruptFileError(f"{path}: not valid JSON ({err})") from None

    @staticmethod
    def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
        """An epoch-level training checkpoint (``torch.save``, atomic)."""
        with atomic_open(path, "wb") as f:
            torch.save(payload, f)

    @staticmethod
    def load_checkpoint(path: Path) -> dict[str, Any]:
        """Read a checkpoint with ``weights_only=True`` (no code runs); damage is reported."""
        payload = safe_torch_load(path)
        if not isinstance(payload, dict):
            raise CorruptFileError(f"{path}: not a sparseavg checkpoint")
        return payload

    # -- manifests ----------------------------------------------------------------------------
    def write_manifest(self, directory: Path) -> None:
        """Checksum every file below ``directory`` (checkpoints excluded) into its manifest,
        with this run's ``run_id`` when it has one."""
        entries = {}
        for p in sorted(directory.rglob("*")):
            if (
                p.is_file()
                and p.name != MANIFEST
                and not p.name.startswith(".")
                and (p.suffix != ".pt")
            ):
                entries[str(p.relative_to(directory))] = sha256_file(p)
        manifest: dict[str, Any] = {"files": entries}
        if self.run_id:
            manifest["run_id"] = self.run_id
        self.write_json(directory / MANIFEST, manifest)

    def verify_manifest(self, directory: Path) -> None:
        """Refuse a complete cycle whose files are missing or changed since it finished, or
        whose manifest names another run than ``run_id`` (manifests without one, written
        before run ids were recorded, are accepted)."""
        path = directory / MANIFEST
        manifest = self.read_json(path)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files", {}), dict):
            raise CorruptFileError(f"{path}: not a sparseavg manifest")
        theirs = manifest.get("run_id")
        if theirs and self.run_id and theirs != self.run_id:
            raise CorruptFileError(
                f"{directory}: its manifest names run {str(theirs)[:8]}, not this run "
                f"({self.run_id[:8]}): the folder was copied in from another run directory; "
                "remove it, and the same command recomputes it"
            )
        for rel, digest in manifest.get("files", {}).items():
            p = directory / rel
            if not p.is_file():
                raise CorruptFileError(f"{p}: listed in {directory / MANIFEST} but missing")
            if sha256_file(p) != digest:
                raise CorruptFileError(
                    f"{p}: checksum differs from {directory / MANIFEST} (the file was changed "
                    "or damaged)"
                )

    def is_complete(self, cycle: int) -> bool:
        return (self.cycle_dir(cycle) / MANIFEST).is_file()

    # -- disk ---------------------------------------------------------------------------------
    def check_free_space(self, needed_bytes: int, what: str) -> None:
        """Refuse to start ``what`` when the file system has less than ``needed_bytes`` free."""
        free = shutil.disk_usage(self.path).free
        if free < needed_bytes:
            raise InsufficientDiskError(
                f"{what} needs about {needed_bytes / 2**20:.1f} MiB in {self.path}, but only "
                f"{free / 2**20:.1f} MiB are free; free some space and run the same command "
                "again to resume"
            )

    # -- results ------------------------------------------------------------------------------
    def write_results(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite ``results.jsonl`` and its twin ``results.csv`` from all complete cycles'
        rows (atomically)."""
        text = "".join(json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in rows)
        atomic_write_text(self.results_path, text)
        write_csv(self.path / RESULTS_CSV, rows, RESULT_COLUMNS)
