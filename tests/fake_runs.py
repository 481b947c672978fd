"""Run directories built by hand, without training: a resolved config, complete cycles with
a model, a mask, rows and a manifest, and results.jsonl, as the engine lays them out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sparseavg.config import Config, to_toml
from sparseavg.experiment.rundir import RunDir
from sparseavg.models import build_model
from sparseavg.pruning import Mask, magnitude_prune, prunable_parameters
from sparseavg.recipes import get_recipe, resolve_config
from sparseavg.utils.files import save_tensors

# a small conv1d run of the default data set (MNIST-1D: 10 classes, inputs (1, 40))
FAKE: dict[str, Any] = {
    "recipe": "imp",
    "model": {"options": {"width": 8}},
    "train": {"epochs": 2},
    "pruning": {"cycles": 1, "rewind_epochs": 0.5},
    "execution": {"device": "cpu"},
}


def fake_row(config: Config, name: str, cycle: int, lineage: int, role: str) -> dict[str, Any]:
    return {
        "run": name,
        "recipe": config.recipe,
        "dataset": config.data.dataset,
        "model": config.model.name,
        "seed": config.seed,
        "cycle": cycle,
        "lineage": lineage,
        "role": role,
        "ingredient": None,
        "sparsity": 0.0,
        "alive": 100,
        "total": 100,
        "accuracy": 0.5 + 0.1 * lineage,
        "loss": 1.0,
        "seconds": 0.1,
        "selected": None,
        "dropped": False,
    }


def member_model(config: Config, lineage: int) -> torch.nn.Module:
    """The (untrained) model of one lineage: lineages differ so that tests can tell them apart."""
    torch.manual_seed(lineage)
    return build_model(config.model.name, 10, (1, 40), **config.model.options)


def make_run(
    parent: Path,
    values: dict[str, Any] | None = None,
    *,
    complete: int = 1,
    run_id: str | None = None,
    name: str | None = None,
    sparsity: float = 0.0,
) -> Path:
    """A run directory under ``parent`` named by its config (or ``name``) with ``complete``
    complete cycles; ``run_id`` (default: the config's digest) goes into the manifests.
    ``sparsity``: the share of each prunable layer's weights that every cycle's model has
    pruned (by magnitude, zeroed by multiplication as training does, so that negative ones
    become ``-0.0``)."""
    config = resolve_config(FAKE if values is None else values)
    run = parent / (name or config.run_name())
    run.mkdir(parents=True)
    (run / "config.toml").write_text(to_toml(config.to_dict()), encoding="utf-8")
    members = get_recipe(config.recipe).run(config).lineages
    rd = RunDir(run, run_id=run_id or config.digest())
    rows: list[dict[str, Any]] = []
    for cycle in range(complete):
        cycle_rows = []
        for lineage in range(members):
            d = rd.member_dir(cycle, lineage, members)
            d.mkdir(parents=True)
            model = member_model(config, lineage)
            params = prunable_parameters(model)
            mask = magnitude_prune(params, Mask.ones_like(params), sparsity, scope="layerwise")
            save_tensors(d / "combined.safetensors", mask.applied(model.state_dict()))
            mask.save(d / "mask.safetensors")
            cycle_rows.append(fake_row(config, run.name, cycle, lineage, "combined"))
        if members > 1:
            cycle_rows.append(fake_row(config, run.name, cycle, 0, "ensemble"))
        rd.write_json(rd.cycle_dir(cycle) / "rows.json", cycle_rows)
        rd.write_manifest(rd.cycle_dir(cycle))
        rows += cycle_rows
    rd.write_results(rows)
    return run


def results_text(run: Path) -> str:
    return (run / "results.jsonl").read_text(encoding="utf-8")


def rows_of(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in results_text(run).splitlines()]
