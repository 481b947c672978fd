"""Export a cycle's model as a plain state_dict that the bare model loads."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import torch

from ..pruning import Mask
from ..utils.files import atomic_open, atomic_write_text, save_tensors
from .rundir import RunDir


def export_cycle(
    run_dir: str | Path, cycle: int, out: str | Path, *, member: int = 0
) -> dict[str, Path]:
    """Write the combined model of ``cycle`` to ``out`` and its mask and summary beside it.

    ``out`` ending in ``.pt`` is written with ``torch.save`` (a dict of tensors), anything else
    as safetensors. Pruned weights are exact zeros in the dense tensors, so
    ``model.load_state_dict(state)`` works on the unmodified model. Also written:
    ``<stem>.mask.safetensors`` and ``<stem>.json`` (config, cycle, sparsity per layer, test
    accuracy).

    Raises:
        FileNotFoundError: the run has no complete cycle ``cycle``.
    """
    rd = RunDir(run_dir)
    if not rd.config_path.is_file():
        raise FileNotFoundError(f"{rd.path}: not a run directory (no config.toml)")
    if not rd.is_complete(cycle):
        done = [c for c in range(1000) if rd.is_complete(c)]
        raise FileNotFoundError(
            f"{rd.path}: cycle {cycle} is not complete (complete cycles: {done or 'none'})"
        )
    rd.verify_manifest(rd.cycle_dir(cycle))
    config = tomllib.loads(rd.config_path.read_text())
    members = int(config["ingredients"]["count"]) if config["recipe"] == "ensemble" else 1
    if not 0 <= member < members:
        raise ValueError(f"member must be in [0, {members}), got {member}")
    mdir = rd.member_dir(cycle, member, members)
    state = rd.load_state(mdir / "combined.safetensors")
    mask = Mask.load(mdir / "mask.safetensors")
    out = Path(out)
    stem = out.with_suffix("")
    if out.suffix == ".pt":
        with atomic_open(out, "wb") as f:
            torch.save(state, f)
    else:
        save_tensors(out, state, metadata={"format": "sparseavg-export/1"})
    mask_path = stem.with_name(stem.name + ".mask.safetensors")
    mask.save(mask_path)
    rows = rd.read_json(rd.cycle_dir(cycle) / "rows.json")
    mine = [r for r in rows if r["role"] == "combined" and r["lineage"] == member]
    summary: dict[str, Any] = {
        "run": rd.path.name,
        "cycle": cycle,
        "member": member,
        "sparsity": mask.sparsity,
        "alive": mask.num_alive,
        "total": mask.num_total,
        "test_accuracy": mine[0]["accuracy"] if mine else None,
        "layers": [
            {"name": r.name, "shape": list(r.shape), "alive": r.alive, "total": r.total}
            for r in mask.report()
        ],
        "config": config,
    }
    summary_path = stem.with_name(stem.name + ".json")
    atomic_write_text(summary_path, json.dumps(summary, indent=1) + "\n")
    return {"state": out, "mask": mask_path, "summary": summary_path}
