"""Export a cycle's model as a plain state_dict that the bare model loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..pruning import Mask
from ..utils.files import atomic_open, atomic_write_text, save_tensors
from .runinfo import RunDirError, read_run

#: what ``out`` may end in: safetensors, or ``torch.save`` of a dict of tensors
SUFFIXES = (".safetensors", ".pt")


class ExportError(ValueError):
    """An export that cannot be written as asked: a bad ``out`` path, or a member to choose."""


def export_paths(out: str | Path) -> dict[str, Path]:
    """The three files an export writes: ``state`` (``out``), ``mask``
    (``<stem>.mask.safetensors``) and ``summary`` (``<stem>.json``).

    Raises:
        ExportError: ``out`` ends in neither ``.safetensors`` nor ``.pt``, or one of the three
            paths is an existing directory.
    """
    out = Path(out)
    if out.suffix not in SUFFIXES:
        raise ExportError(
            f"{out}: an export ends in .safetensors or .pt, not "
            f"{repr(out.suffix) if out.suffix else 'no suffix'}"
        )
    stem = out.with_suffix("")
    paths = {
        "state": out,
        "mask": stem.with_name(stem.name + ".mask.safetensors"),
        "summary": stem.with_name(stem.name + ".json"),
    }
    for p in paths.values():
        if p.is_dir():
            raise ExportError(f"{p}: is a directory; --out names the file to write")
    return paths


def export_cycle(
    run_dir: str | Path, cycle: int, out: str | Path, *, member: int | None = None
) -> dict[str, Path]:
    """Write the combined model of ``cycle`` to ``out`` and its mask and summary beside it.

    ``out`` ending in ``.pt`` is written with ``torch.save`` (a dict of tensors),
    ``.safetensors`` as safetensors. Pruned weights are exact zeros in the dense tensors, so
    ``model.load_state_dict(state)`` works on the unmodified model. Also written:
    ``<stem>.mask.safetensors`` and ``<stem>.json`` (config, cycle, sparsity per layer, test
    accuracy). ``member`` picks an ensemble member; a run with more than one needs it.

    Everything is checked before the first file is written.

    Raises:
        FileNotFoundError: ``run_dir`` is not a run directory, or has no complete ``cycle``.
        ExportError: a bad ``out`` (see :func:`export_paths`); ``member`` missing for a run
            with several members, or not one of them.
        RunDirError, CorruptFileError: the run's config or the cycle's files are damaged,
            edited, or copied in from another run.
    """
    paths = export_paths(out)
    info = read_run(run_dir)
    members = info.members
    if member is None:
        if members > 1:
            raise ExportError(
                f"{info.path}: the run has {members} ensemble members; choose one with "
                f"--member (0 to {members - 1})"
            )
        member = 0
    if not 0 <= member < members:
        which = "only member 0" if members == 1 else f"members 0 to {members - 1}"
        raise ExportError(f"--member {member}: {info.path} has {which}")
    rd = info.rundir
    if not rd.is_complete(cycle):
        done = info.complete_cycles()
        raise FileNotFoundError(
            f"{rd.path}: cycle {cycle} is not complete (complete cycles: {done or 'none'})"
        )
    rd.verify_manifest(rd.cycle_dir(cycle))
    mdir = rd.member_dir(cycle, member, members)
    state = rd.load_state(mdir / "combined.safetensors")
    mask = Mask.load(mdir / "mask.safetensors")
    rows = rd.read_json(rd.cycle_dir(cycle) / "rows.json")
    if not isinstance(rows, list):
        raise RunDirError(f"{rd.cycle_dir(cycle) / 'rows.json'}: not a list of result rows")
    mine = [
        r
        for r in rows
        if isinstance(r, dict) and r.get("role") == "combined" and r.get("lineage", 0) == member
    ]
    summary: dict[str, Any] = {
        "run": rd.path.name,
        "cycle": cycle,
        "member": member,
        "sparsity": mask.sparsity,
        "alive": mask.num_alive,
        "total": mask.num_total,
        "test_accuracy": mine[0].get("accuracy") if mine else None,
        "layers": [
            {"name": r.name, "shape": list(r.shape), "alive": r.alive, "total": r.total}
            for r in mask.report()
        ],
        "config": info.config.to_dict(),
    }
    if paths["state"].suffix == ".pt":
        with atomic_open(paths["state"], "wb") as f:
            torch.save(state, f)
    else:
        save_tensors(paths["state"], state, metadata={"format": "sparseavg-export/1"})
    mask.save(paths["mask"])
    atomic_write_text(paths["summary"], json.dumps(summary, indent=1) + "\n")
    return paths
