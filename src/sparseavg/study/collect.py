"""Reading the study's run directories into plain numbers: per group, seed and cycle."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..experiment.report import headline_rows, load_run
from ..pruning import Mask
from ..utils.files import load_tensors


@dataclass
class SeedRun:
    """One run of a group (one seed): what the tables need from it.

    ``accuracy[c]`` is the headline test accuracy of cycle ``c`` in [0, 1], ``sparsity[c]``
    its sparsity in [0, 1]; ``ingredients[c]`` the accuracies of the cycle's ingredients
    (kept, not dropped); ``epochs`` the training epochs of every model of the run (the common
    run to the rewind point included) and ``seconds`` their training time (one thread).
    """

    path: Path
    seed: int
    accuracy: dict[int, float] = field(default_factory=dict)
    sparsity: dict[int, float] = field(default_factory=dict)
    ingredients: dict[int, list[float]] = field(default_factory=dict)
    epochs: float = 0.0
    seconds: float = 0.0
    analysis: dict[str, Any] | None = None


def _training_totals(path: Path, steps_per_epoch: int) -> tuple[float, float]:
    steps = 0
    seconds = 0.0
    for info in sorted(path.glob("cycle_*/**/info.json")):
        data = json.loads(info.read_text(encoding="utf-8"))
        steps += int(data.get("steps", 0))
        seconds += float(data.get("seconds", 0.0))
    return steps / steps_per_epoch, seconds


def read_seed_run(path: Path, steps_per_epoch: int) -> SeedRun:
    """The numbers of one finished run directory."""
    run = load_run(path)
    out = SeedRun(path=path, seed=run.seed)
    for row in headline_rows(run):
        out.accuracy[row["cycle"]] = float(row["accuracy"])
        out.sparsity[row["cycle"]] = float(row["sparsity"])
    for row in run.rows:
        if row["role"] == "ingredient" and not row.get("dropped"):
            out.ingredients.setdefault(row["cycle"], []).append(float(row["accuracy"]))
    out.epochs, out.seconds = _training_totals(path, steps_per_epoch)
    return out


def last_cycle_only(run: SeedRun) -> SeedRun:
    """``run`` with its last cycle alone, as cycle 0: what a setting that compares final
    models (:attr:`~sparseavg.study.plan.Setting.final_only`) tabulates and pairs."""
    if not run.accuracy:
        return run
    last = max(run.accuracy)
    ingredients = {0: run.ingredients[last]} if last in run.ingredients else {}
    return dataclasses.replace(
        run,
        accuracy={0: run.accuracy[last]},
        sparsity={0: run.sparsity[last]},
        ingredients=ingredients,
    )


def mask_violations(path: Path) -> list[tuple[int, int, float]]:
    """Per complete cycle of a one-lineage run: ``(cycle, weights nonzero outside the mask,
    sparsity of the combined model's prunable weights counted from its zeros)``.

    A combine that keeps the shared mask exactly has 0 violations and a counted sparsity
    equal to the mask's."""
    out = []
    for cycle_dir in sorted(path.glob("cycle_*")):
        mask_file, model_file = cycle_dir / "mask.safetensors", cycle_dir / "combined.safetensors"
        if not (mask_file.is_file() and model_file.is_file()):
            continue
        mask = Mask.load(mask_file)
        state = load_tensors(model_file)
        outside = 0
        zeros = 0
        total = 0
        for name, keep in mask.items():
            w = state[name]
            outside += int((w[~keep] != 0).sum())
            zeros += int((w == 0).sum())
            total += w.numel()
        out.append(
            (int(cycle_dir.name.split("_")[1]), outside, zeros / total if total else math.nan)
        )
    return out
