"""Tiny MNIST-1D runs for the engine and CLI tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sparseavg.utils.files import load_tensors

TINY = [
    "--set",
    "model.options={width = 8}",
    "--set",
    "train.epochs=2",
    "--set",
    "train.lr=0.05",
    "--set",
    "pruning.rewind_epochs=0.5",
    "--set",
    'execution.device="cpu"',
]


def tiny_args(recipe: str, runs: Path, *extra: str, cycles: int | None = 2) -> list[str]:
    args = ["run", "--recipe", recipe, "--runs-dir", str(runs), "--quiet", *TINY]
    if cycles is not None:
        args += ["--set", f"pruning.cycles={cycles}"]
    return [*args, *extra]


def only_run(runs: Path) -> Path:
    dirs = [p for p in runs.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def rows(run_dir: Path) -> list[dict[str, Any]]:
    """results.jsonl without the wall-clock field."""
    out = []
    for line in (run_dir / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        row.pop("seconds")
        out.append(row)
    return out


def final_weights(run_dir: Path) -> dict:
    last = sorted(run_dir.glob("cycle_*"))[-1]
    files = sorted(last.rglob("combined.safetensors"))
    return {str(f.relative_to(run_dir)): load_tensors(f) for f in files}


def same_weights(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(
        a[f].keys() == b[f].keys() and all(torch.equal(a[f][k], b[f][k]) for k in a[f]) for f in a
    )
