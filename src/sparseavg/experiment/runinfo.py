"""Reading run directories: the one typed way ``report``, ``export`` and ``inspect`` (and the
engine's "same config?" check) read a run's ``config.toml`` and ``results.jsonl``.

:func:`read_run_config` parses ``config.toml``, validates it with the schema every config
goes through (unknown keys, types, ranges, a recipe's fixed settings), fills the defaults of
fields the file lacks (so a run written before a field existed still reads), and checks that
the config still hashes to the ``hash8`` at the end of the directory's name, so that a config
edited after the run started is refused rather than reported as what the run computed.
:func:`read_results` reads and checks ``results.jsonl``. Every problem is one message that
names the file and says what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError
from ..recipes import get_recipe, resolve_config
from ..utils.files import CorruptFileError
from .rundir import RunDir

PathLike = str | os.PathLike[str]

CONFIG_NAME = "config.toml"
RESULTS_NAME = "results.jsonl"

#: what a ``results.jsonl`` row may be: a cycle's ingredient, its combined model, an average
#: before re-pruning, the re-pruned model, or a prediction ensemble of the members.
ROLES = ("ensemble", "combined", "ingredient", "average", "reprune")

# <recipe>-<dataset>-<model>-<hash8>
_HASHED_NAME = re.compile(r"-(?P<hash8>[0-9a-f]{8})$")


class RunDirError(ValueError):
    """A run directory that cannot be read as what it claims to be (its config fails the
    schema, or was edited after the run started), or a request it cannot serve."""


def legacy_digest(values: dict[str, Any]) -> str:
    """The run hash of sparseavg before it hashed only non-default values: SHA-256 of the whole
    resolved config minus ``execution``. Run directories named by it still read."""
    kept = {k: v for k, v in values.items() if k != "execution"}
    text = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


#: fields added after runs existed, whose recipe defaults differ from the behaviour before
#: them (the field's own default): a run's ``config.toml`` that lacks one was written before
#: the field existed and is read with the field's default, the behaviour it ran with
LATER_FIELDS: tuple[tuple[str, str], ...] = (
    ("pruning", "rigl_decide"),
    ("pruning", "dpf_settle"),
    ("pruning", "rigl_together"),
)


def fields_as_written(values: dict[str, Any]) -> dict[str, Any]:
    """A run's ``config.toml`` values with each of :data:`LATER_FIELDS` it lacks set to the
    field's default, so that a recipe default given to the new field (swamp-rigl's
    ``pruning.rigl_decide = "average"``, sms-dpf's ``pruning.dpf_settle = "dense"``) does not
    apply to a run that started without it."""
    out = dict(values)
    for section, name in LATER_FIELDS:
        given = values.get(section)
        if isinstance(given, dict) and name not in given:
            default = getattr(getattr(Config(), section), name)
            out[section] = {**out[section], name: default}
    return out


def read_run_config(run_dir: PathLike) -> Config:
    """The validated :class:`Config` of a run directory.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``config.toml``.
        CorruptFileError: ``config.toml`` is not UTF-8 TOML (damaged, truncated).
        RunDirError: it fails the schema, or does not hash to the directory's name.
    """
    run = Path(run_dir)
    path = run / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{run}: not a run directory (no {CONFIG_NAME})")
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(
            f"{path}: not valid TOML ({err}); the file is damaged: restore it from the "
            "command that started the run (`sparseavg run ... --print-config` prints it)"
        ) from None
    try:
        config = resolve_config(fields_as_written(values))
    except ConfigError as err:
        raise RunDirError(f"{path}: {err}") from None
    match = _HASHED_NAME.search(run.absolute().name)
    if match is not None:
        hash8 = match["hash8"]
        digest = config.digest()
        if hash8 not in (digest[:8], legacy_digest(values)[:8]):
            raise RunDirError(
                f"{path}: this config hashes to {digest[:8]}, not to the {hash8} of its run "
                "directory's name: it was edited after the run started, so the results are "
                "not its results. Restore it, or run the edited config as a new run"
            )
    return config


def read_results(run_dir: PathLike) -> list[dict[str, Any]]:
    """The rows of a run's ``results.jsonl`` in file order (``[]`` when the run has not
    finished a cycle yet; blank lines are skipped).

    Each row must be a JSON object with an integer ``cycle``, a ``role`` from :data:`ROLES`
    and, if present, a boolean ``headline``.

    Raises:
        CorruptFileError: naming the file and line, and how to rewrite it.
    """
    run = Path(run_dir)
    path = run / RESULTS_NAME
    redo = (
        f"; `sparseavg run {run / CONFIG_NAME} --runs-dir {run.parent}` rewrites it from the "
        "complete cycles"
    )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except UnicodeDecodeError as err:
        raise CorruptFileError(f"{path}: not UTF-8 text ({err}){redo}") from None
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise CorruptFileError(f"{where}: malformed JSON ({err.msg}){redo}") from None
        if not isinstance(row, dict):
            raise CorruptFileError(f"{where}: expected a JSON object{redo}")
        cycle = row.get("cycle")
        if not isinstance(cycle, int) or isinstance(cycle, bool):
            raise CorruptFileError(f"{where}: missing or non-integer 'cycle'{redo}")
        if row.get("role") not in ROLES:
            raise CorruptFileError(
                f"{where}: 'role' must be one of {', '.join(ROLES)}, not {row.get('role')!r}{redo}"
            )
        if "headline" in row and not isinstance(row["headline"], bool):
            raise CorruptFileError(f"{where}: 'headline' must be true or false{redo}")
        rows.append(row)
    return rows


@dataclass(frozen=True)
class RunInfo:
    """A run directory read through :func:`read_run`: its path and validated config."""

    path: Path
    config: Config

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def members(self) -> int:
        """Independent lineages (ensemble members): ``member_<l>/`` inside each cycle when > 1."""
        return get_recipe(self.config.recipe).run(self.config).lineages

    @property
    def rundir(self) -> RunDir:
        """The run's files, with manifests checked against this run's id."""
        return RunDir(self.path, run_id=self.config.digest())

    def complete_cycles(self) -> list[int]:
        """The cycles whose manifest exists (not verified: see :meth:`RunDir.verify_manifest`)."""
        rd = RunDir(self.path)
        return [c for c in range(self.config.pruning.cycles + 1) if rd.is_complete(c)]

    def rows(self) -> list[dict[str, Any]]:
        """``results.jsonl``, checked (see :func:`read_results`)."""
        return read_results(self.path)


def read_run(run_dir: PathLike) -> RunInfo:
    """Read a run directory's config (see :func:`read_run_config`)."""
    return RunInfo(path=Path(run_dir), config=read_run_config(run_dir))
