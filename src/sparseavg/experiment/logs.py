"""The run's logs, where users look: CSV twins of its jsonl files and the per-epoch training
log.

Everything here is rebuilt from what the run directory already holds (the complete cycles'
``rows.json`` and their ingredients' ``info.json``), never appended to, so a resumed run
writes no row twice:

- ``results.csv``: the rows of ``results.jsonl`` with the same column names; a nested value
  (the ``metrics`` dict of a user's ``eval_fn``) is flattened to ``metrics.<key>`` columns and
  a list (``selected``) is written as JSON text;
- ``epochs.jsonl`` / ``epochs.csv``: one row per finished epoch of every ingredient
  (:data:`EPOCH_COLUMNS`);

Every file is written atomically (:mod:`sparseavg.utils.files`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..training import EPOCH_KEYS
from ..utils.files import atomic_write_text

RESULTS_CSV = "results.csv"
EPOCHS_JSONL = "epochs.jsonl"
EPOCHS_CSV = "epochs.csv"

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
    "selected",
    "dropped",
)

Row = Mapping[str, Any]


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
    text = "".join(json.dumps({c: r.get(c) for c in EPOCH_COLUMNS}) + "\n" for r in rows)
    atomic_write_text(directory / EPOCHS_JSONL, text)
    write_csv(directory / EPOCHS_CSV, rows, EPOCH_COLUMNS)
