"""The engine's storage: what a cycle has already made, read back, and what it makes, saved.

The engine asks cycle-level questions ("is this lineage's mask there?", "this ingredient's
outcome?") and hands over what it made; this module knows the file names and formats
(:class:`~.rundir.RunDir` does the atomic writes, checksums and locking). Every ``load``
returns ``None`` when the file does not exist yet, so each stage of the cycle loop skips itself
when its output exists: that is how a run resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Config, ConfigError, to_toml
from ..parallel import Outcome
from ..pruning import Mask
from ..training import TrainState
from ..utils.files import atomic_write_text
from ..utils.state import State
from . import logs
from .rundir import RunDir
from .runinfo import RunDirError, read_run_config


class IngredientFiles:
    """``<lineage dir>/ingredient_<k>/``: checkpoint while it trains, then final + info (and
    the final mask and dense weights where training moved the mask and kept dense weights)."""

    def __init__(self, rundir: RunDir, directory: Path) -> None:
        self.rundir = rundir
        self.dir = directory

    def outcome(self) -> Outcome | None:
        """The finished ingredient, or ``None`` if it has not finished."""
        info_path = self.dir / "info.json"
        if not info_path.is_file():
            return None
        info = self.rundir.read_json(info_path)
        if info.get("dropped"):
            return Outcome(None, info)
        final = self.dir / "final.safetensors"
        if not final.is_file():
            return None
        mask_path = self.dir / "mask.safetensors"
        mask = Mask.load(mask_path) if mask_path.is_file() else None
        dense_path = self.dir / "dense.safetensors"
        dense = self.rundir.load_state(dense_path) if dense_path.is_file() else None
        return Outcome(self.rundir.load_state(final), info, mask, dense)

    def checkpoint(self) -> tuple[TrainState, float] | None:
        """The last epoch checkpoint and the training seconds spent up to it."""
        path = self.dir / "checkpoint.pt"
        if not path.is_file():
            return None
        payload = self.rundir.load_checkpoint(path)
        return TrainState.from_dict(payload), float(payload.get("seconds", 0.0))

    def save_checkpoint(self, state: TrainState, seconds: float) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        payload = {**state.to_dict(), "seconds": seconds}
        self.rundir.save_checkpoint(self.dir / "checkpoint.pt", payload)

    def save(self, outcome: Outcome) -> None:
        """Write the outcome (the info file last: it marks the ingredient finished) and drop
        the checkpoint."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if outcome.state is not None:
            self.rundir.save_state(self.dir / "final.safetensors", outcome.state, "ingredient")
        if outcome.mask is not None:
            outcome.mask.save(self.dir / "mask.safetensors")
        if outcome.dense is not None:
            self.rundir.save_state(self.dir / "dense.safetensors", outcome.dense, "dense")
        self.rundir.write_json(self.dir / "info.json", outcome.info)
        (self.dir / "checkpoint.pt").unlink(missing_ok=True)


class LineageFiles:
    """One lineage of one cycle: ``cycle_XX/`` (or ``cycle_XX/member_<l>/`` when a run has
    several lineages)."""

    def __init__(self, rundir: RunDir, directory: Path) -> None:
        self.rundir = rundir
        self.dir = directory

    def ingredient(self, index: int) -> IngredientFiles:
        return IngredientFiles(self.rundir, self.dir / f"ingredient_{index}")

    def infos(self) -> list[tuple[int, dict[str, Any]]]:
        """``(index, info)`` of every ingredient with an ``info.json`` (finished or dropped),
        by index."""
        found = []
        for path in self.dir.glob("ingredient_*/info.json"):
            index = path.parent.name.removeprefix("ingredient_")
            if index.isdigit():
                found.append((int(index), self.rundir.read_json(path)))
        return sorted(found, key=lambda item: item[0])

    def mask(self) -> Mask | None:
        path = self.dir / "mask.safetensors"
        return Mask.load(path) if path.is_file() else None

    def save_mask(self, mask: Mask) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        mask.save(self.dir / "mask.safetensors")

    def ticket(self) -> State | None:
        path = self.dir / "ticket.safetensors"
        return self.rundir.load_state(path) if path.is_file() else None

    def save_ticket(self, state: State) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rundir.save_state(self.dir / "ticket.safetensors", state, "ticket")

    def combined(self) -> tuple[State, list[int] | None] | None:
        """The cycle's model and the ingredients a greedy soup kept (``None`` otherwise)."""
        path = self.dir / "combined.safetensors"
        if not path.is_file():
            return None
        soup = self.dir / "soup.json"
        selected = self.rundir.read_json(soup)["selected"] if soup.is_file() else None
        return self.rundir.load_state(path), selected

    def save_combined(self, state: State, selected: list[int] | None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if selected is not None:
            self.rundir.write_json(self.dir / "soup.json", {"selected": selected})
        self.rundir.save_state(self.dir / "combined.safetensors", state, "combined")


class RunStore:
    """The run directory as the engine sees it: cycles, lineages, results."""

    def __init__(self, rundir: RunDir, lineages: int) -> None:
        self.rundir = rundir
        self.lineages = lineages
        # rows and epoch rows of complete cycles, read once: a complete cycle does not change
        # while the run holds its lock, and the logs are rewritten after every cycle
        self._rows: dict[int, list[dict[str, Any]]] = {}
        self._epoch_rows: dict[int, list[dict[str, Any]]] = {}

    @property
    def path(self) -> Path:
        return self.rundir.path

    def lineage(self, cycle: int, lineage: int) -> LineageFiles:
        return LineageFiles(self.rundir, self.rundir.member_dir(cycle, lineage, self.lineages))

    def is_complete(self, cycle: int) -> bool:
        return self.rundir.is_complete(cycle)

    def open(self, config: Config, cycles: int) -> bool:
        """Start or resume the run: refuse a directory that holds another config, a damaged
        complete cycle, or something else where a log goes, before anything is written; then
        write ``config.toml`` if it is new. Returns whether the run resumes."""
        rd = self.rundir
        resuming = rd.config_path.exists()
        if resuming and read_run_config(rd.path).digest() != config.digest():
            raise ConfigError(
                f"{rd.config_path} holds another config than this run's; not resuming "
                "(use another --runs-dir, or remove that directory)"
            )
        for cycle in range(cycles):
            if self.is_complete(cycle):
                rd.verify_manifest(rd.cycle_dir(cycle))
        self._check_log_targets(config.execution.tensorboard, cycles)
        if not resuming:
            atomic_write_text(rd.config_path, to_toml(config.to_dict()))
        return resuming

    def _check_log_targets(self, tensorboard: bool, cycles: int) -> None:
        """Refuse, before anything is written, a run directory where a log file's place is
        taken by a folder (or the TensorBoard folder's by a file)."""
        files = [self.rundir.results_path, self.path / logs.RESULTS_CSV]
        files += [self.path / logs.EPOCHS_JSONL, self.path / logs.EPOCHS_CSV]
        folders: list[Path] = []
        if tensorboard:
            folders.append(self.path / logs.TENSORBOARD_DIR)
            for cycle in range(cycles):
                rows_file, epochs_file = logs.cycle_event_paths(self.path, cycle)
                files += [rows_file, epochs_file]
                folders.append(epochs_file.parent)
        for path in files:
            if path.is_dir() or (path.is_symlink() and not path.exists()):
                raise RunDirError(
                    f"{path}: a folder (or a broken link) where the run writes a file; remove "
                    "it and run the same command again to resume"
                )
        for path in folders:
            if (path.exists() and not path.is_dir()) or (path.is_symlink() and not path.exists()):
                raise RunDirError(
                    f"{path}: a file where the run writes a folder; remove it and run the same "
                    "command again to resume"
                )

    def finish_cycle(self, cycle: int, rows: list[dict[str, Any]]) -> None:
        """Write the cycle's rows and its manifest, which marks it complete."""
        cdir = self.rundir.cycle_dir(cycle)
        self.rundir.write_json(cdir / "rows.json", rows)
        self.rundir.write_manifest(cdir)

    def rows(self, cycle: int) -> list[dict[str, Any]]:
        """The rows of ``cycle`` if it is complete, else none (do not change the list)."""
        if cycle not in self._rows:
            if not self.is_complete(cycle):
                return []
            path = self.rundir.cycle_dir(cycle) / "rows.json"
            self._rows[cycle] = self.rundir.read_json(path) if path.is_file() else []
        return self._rows[cycle]

    def epoch_rows(self, cycle: int) -> list[dict[str, Any]]:
        """The ``epochs.jsonl`` rows of ``cycle`` if it is complete (every lineage's
        ingredients in index order, each one's epochs in order), else none (do not change
        the list)."""
        if cycle not in self._epoch_rows:
            if not self.is_complete(cycle):
                return []
            rows = []
            for lineage in range(self.lineages):
                for index, info in self.lineage(cycle, lineage).infos():
                    rows.extend(logs.epoch_rows(self.path.name, cycle, lineage, index, info))
            self._epoch_rows[cycle] = rows
        return self._epoch_rows[cycle]

    def write_results(self, cycles: int) -> None:
        """Rewrite ``results.jsonl`` and ``results.csv`` from the rows of the complete cycles
        below ``cycles``, and ``epochs.jsonl`` and ``epochs.csv`` from their ingredients.
        ``cycles`` is the run's number of cycles: a resumed run's logs keep every complete
        cycle from the first rewrite on."""
        self.rundir.write_results([r for c in range(cycles) for r in self.rows(c)])
        logs.write_epochs(self.path, [r for c in range(cycles) for r in self.epoch_rows(c)])

    def write_tensorboard(self, cycles: int) -> None:
        """Write the TensorBoard files of every complete cycle below ``cycles`` that has none
        yet (a cycle finished while ``execution.tensorboard`` was off is written later)."""
        for c in range(cycles):
            marker, _ = logs.cycle_event_paths(self.path, c)
            if self.is_complete(c) and not marker.is_file():
                logs.write_cycle_events(
                    self.path, c, self.rows(c), self.epoch_rows(c), self.lineages
                )
