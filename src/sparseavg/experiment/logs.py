"""The run's logs, where users look: CSV twins of its jsonl files, the per-epoch training log
and TensorBoard scalars.

Everything here is rebuilt from what the run directory already holds (the complete cycles'
``rows.json`` and their ingredients' ``info.json``), never appended to, so a resumed run
writes no row or point twice:

- ``results.csv``: the rows of ``results.jsonl`` with the same column names; a nested value
  (the ``metrics`` dict of a user's ``eval_fn``) is flattened to ``metrics.<key>`` columns and
  a list (``selected``) is written as JSON text;
- ``epochs.jsonl`` / ``epochs.csv``: one row per finished epoch of every ingredient
  (:data:`EPOCH_COLUMNS`);
- ``tensorboard/``: per complete cycle ``c`` one event file of its rows
  (``events.out.tfevents.cycle_XX``: tags ``<role>/accuracy``, ``<role>/loss``,
  ``<role>/sparsity``, ``<role>/metrics.<key>``, step = ``c``) and one of its training
  curves in the TensorBoard run ``cycle_XX/`` (tags ``ingredient_<k>/train_loss``,
  ``/train_accuracy``, ``/lr``, step = the global step at the epoch's end). ``<role>`` is
  the row's role, ``ingredient_<k>`` for an ingredient's row, with ``member_<l>/`` in front
  of a lineage's ``combined`` and ``ingredient`` tags when a run has several lineages.

Every file is written atomically (:mod:`sparseavg.utils.files`); the TensorBoard files are
written by ``torch.utils.tensorboard.SummaryWriter`` into a temporary directory and then put
in place whole.
"""

from __future__ import annotations

import csv
import io
import json
import math
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..training import EPOCH_KEYS
from ..utils.files import atomic_write_bytes, atomic_write_text
from ..utils.imports import import_problem

RESULTS_CSV = "results.csv"
EPOCHS_JSONL = "epochs.jsonl"
EPOCHS_CSV = "epochs.csv"
TENSORBOARD_DIR = "tensorboard"
#: what to run when ``execution.tensorboard`` is on and the package is missing
TENSORBOARD_INSTALL = 'pip install "sparseavg[tensorboard]"'

#: the columns of ``epochs.jsonl`` and ``epochs.csv``, in order
EPOCH_COLUMNS: tuple[str, ...] = ("run", "cycle", "lineage", "ingredient", *EPOCH_KEYS)
#: the columns ``results.csv`` shows first, in this order, when its rows have them; any
#: other column (``metrics.<key>``, ``members``, ...) follows in name order
RESULT_COLUMNS: tuple[str, ...] = (
    "run",
    "recipe",
    "dataset",
    "model",
    "seed",
    "cycle",
    "lineage",
    "role",
    "ingredient",
    "headline",
    "sparsity",
    "alive",
    "total",
    "accuracy",
    "loss",
    "seconds",
    "threads",
    "torch",
    "selected",
    "dropped",
)
#: the per-cycle columns written as TensorBoard scalars (besides ``metrics.<key>``)
CYCLE_SCALARS: tuple[str, ...] = ("accuracy", "loss", "sparsity")
#: the per-epoch columns written as TensorBoard scalars
EPOCH_SCALARS: tuple[str, ...] = ("train_loss", "train_accuracy", "lr")

Row = Mapping[str, Any]
Scalar = tuple[str, float, int]  # (tag, value, step)


# -- CSV -----------------------------------------------------------------------------------------


def flatten(row: Row, prefix: str = "") -> dict[str, Any]:
    """``row`` with nested dicts spread into ``<key>.<inner key>`` entries (recursively)."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def csv_columns(rows: Iterable[Row], first: Sequence[str]) -> list[str]:
    """Every column of the flattened ``rows``: those of ``first`` that occur, in its order,
    then the others in name order."""
    seen: set[str] = set()
    for row in rows:
        seen.update(row)
    return [c for c in first if c in seen] + sorted(seen - set(first))


def csv_cell(value: Any) -> str:
    """A value as a CSV cell: empty for ``None``, ``true``/``false`` for booleans (as in the
    jsonl), the shortest exact text of a number, JSON text for a list."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def csv_text(rows: Sequence[Row], first: Sequence[str]) -> str:
    """``rows`` as CSV text with a header (columns per :func:`csv_columns`; a row without a
    column has an empty cell there)."""
    flat = [flatten(r) for r in rows]
    columns = csv_columns(flat, first)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if columns:
        writer.writerow(columns)
    for row in flat:
        writer.writerow([csv_cell(row.get(c)) for c in columns])
    return out.getvalue()


def write_csv(path: Path, rows: Sequence[Row], first: Sequence[str]) -> None:
    """Write ``rows`` to ``path`` as CSV (:func:`csv_text`), atomically."""
    atomic_write_text(path, csv_text(rows, first))


# -- the per-epoch log ---------------------------------------------------------------------------


def epoch_rows(
    run: str, cycle: int, lineage: int, ingredient: int, info: Row
) -> list[dict[str, Any]]:
    """The rows of ``epochs.jsonl`` for one finished ingredient, from the ``epochs`` list of
    its ``info.json`` (none for a dropped ingredient or one finished before epochs were
    recorded)."""
    rows = []
    for record in info.get("epochs") or []:
        row: dict[str, Any] = {
            "run": run,
            "cycle": cycle,
            "lineage": lineage,
            "ingredient": ingredient,
        }
        row.update({k: record.get(k) for k in EPOCH_KEYS})
        rows.append(row)
    return rows


def write_epochs(directory: Path, rows: Sequence[Row]) -> None:
    """Rewrite ``epochs.jsonl`` and ``epochs.csv`` in ``directory`` from ``rows``."""
    text = "".join(
        json.dumps({c: r.get(c) for c in EPOCH_COLUMNS}, allow_nan=False) + "\n" for r in rows
    )
    atomic_write_text(directory / EPOCHS_JSONL, text)
    write_csv(directory / EPOCHS_CSV, rows, EPOCH_COLUMNS)


# -- TensorBoard ---------------------------------------------------------------------------------


def tensorboard_problem() -> str | None:
    """Why ``torch.utils.tensorboard`` (what the events are written with) does not import, in
    one line, or ``None`` when it does (:func:`~sparseavg.utils.imports.import_problem`)."""
    return import_problem("torch.utils.tensorboard")


def tensorboard_available() -> bool:
    """Whether TensorBoard events can be written (:func:`tensorboard_problem` finds none)."""
    return tensorboard_problem() is None


def _member(lineage: Any, lineages: int) -> str:
    return f"member_{lineage}/" if lineages > 1 else ""


def cycle_scalars(rows: Iterable[Row], lineages: int) -> list[Scalar]:
    """A cycle's TensorBoard points from its rows: ``<prefix>/<column>`` for the columns
    :data:`CYCLE_SCALARS` and ``metrics.<key>`` that hold a number, at step ``cycle``
    (prefixes as in the module docstring)."""
    points: list[Scalar] = []
    for row in rows:
        role = str(row["role"])
        prefix = f"ingredient_{row['ingredient']}" if role == "ingredient" else role
        if role in ("combined", "ingredient"):
            prefix = _member(row.get("lineage", 0), lineages) + prefix
        flat = flatten(row)
        columns = [*CYCLE_SCALARS, *sorted(c for c in flat if c.startswith("metrics."))]
        for column in columns:
            value = _number(flat.get(column))
            if value is not None:
                points.append((f"{prefix}/{column}", value, int(row["cycle"])))
    return points


def epoch_scalars(rows: Iterable[Row], lineages: int) -> list[Scalar]:
    """A cycle's training curves from its ``epochs.jsonl`` rows:
    ``[member_<l>/]ingredient_<k>/<column>`` for the columns :data:`EPOCH_SCALARS`, at the
    global step of the epoch's end."""
    points: list[Scalar] = []
    for row in rows:
        prefix = _member(row["lineage"], lineages) + f"ingredient_{row['ingredient']}"
        for column in EPOCH_SCALARS:
            value = _number(row.get(column))
            if value is not None:
                points.append((f"{prefix}/{column}", value, int(row["step"])))
    return points


def _number(value: Any) -> float | None:
    """``value`` as a float if it is a finite number (not a bool), else ``None``."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def write_events(path: Path, points: Sequence[Scalar]) -> None:
    """Write ``points`` as one TensorBoard event file at ``path`` (its name must contain
    ``tfevents``), atomically: ``SummaryWriter`` writes them in a temporary directory, then
    the file is put in place whole, replacing any earlier one of that name."""
    from torch.utils.tensorboard import SummaryWriter

    with tempfile.TemporaryDirectory(prefix="sparseavg-tb-") as tmp:
        writer = SummaryWriter(log_dir=tmp)
        try:
            for tag, value, step in points:
                writer.add_scalar(tag, value, global_step=step)
        finally:
            writer.close()
        (written,) = [p for p in Path(tmp).iterdir() if "tfevents" in p.name]
        atomic_write_bytes(path, written.read_bytes())


def cycle_event_paths(directory: Path, cycle: int) -> tuple[Path, Path]:
    """Where cycle ``cycle``'s TensorBoard files go under the run's ``directory``: its rows'
    file (written last: it marks the cycle written) and its training curves' file."""
    name = f"cycle_{cycle:02d}"
    board = directory / TENSORBOARD_DIR
    return board / f"events.out.tfevents.{name}", board / name / "events.out.tfevents.epochs"


def write_cycle_events(
    directory: Path, cycle: int, rows: Sequence[Row], epochs: Sequence[Row], lineages: int
) -> None:
    """Write cycle ``cycle``'s TensorBoard files (:func:`cycle_event_paths`) from its rows
    and epoch rows; a cycle written before is written again whole, not appended to."""
    rows_path, epochs_path = cycle_event_paths(directory, cycle)
    curves = epoch_scalars(epochs, lineages)
    if curves:
        write_events(epochs_path, curves)
    write_events(rows_path, cycle_scalars(rows, lineages))
