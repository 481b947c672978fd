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


class TrainCalls:
    """Records every call of ``train`` by the built-in task (the common run) and the
    built-in trainer (the ingredients): the model's weights when it starts, the settings, seed,
    start and stop step, and the labels of the first batch it draws."""

    def __init__(self, monkeypatch) -> None:
        import sparseavg.experiment.task as task
        import sparseavg.parallel.trainers as trainers
        from sparseavg.utils.state import clone_state

        self.calls: list[dict[str, Any]] = []
        real = task.train

        def spy(model, data, settings, *, seed, **kwargs):
            call = {
                "start": clone_state(model, device="cpu"),
                "settings": settings,
                "seed": seed,
                "start_step": kwargs.get("start_step", 0),
                "common": kwargs.get("stop_step") is not None,
                "first_labels": None,
            }
            self.calls.append(call)
            result = real(model, _FirstBatch(data, call), settings, seed=seed, **kwargs)
            call["result"] = result
            return result

        monkeypatch.setattr(task, "train", spy)
        monkeypatch.setattr(trainers, "train", spy)

    def ingredients(self) -> list[dict[str, Any]]:
        """The calls that trained an ingredient (not the common run to the ticket)."""
        return [c for c in self.calls if not c["common"]]


class _FirstBatch:
    """A batch source that notes the labels of the first training batch it yields."""

    def __init__(self, data, call) -> None:
        self.data, self.call = data, call

    def __len__(self) -> int:
        return len(self.data)

    def num_batches(self, batch_size, drop_last=False):
        return self.data.num_batches(batch_size, drop_last)

    def batches(self, batch_size, **kwargs):
        for x, y in self.data.batches(batch_size, **kwargs):
            if self.call["first_labels"] is None:
                self.call["first_labels"] = y.cpu().clone()
            yield x, y


TINY_VALUES: dict[str, Any] = {
    "model": {"options": {"width": 8}},
    "train": {"epochs": 2, "lr": 0.05},
    "pruning": {"rewind_epochs": 0.5, "cycles": 1},
    "execution": {"device": "cpu", "progress": "none"},
}


def tiny_config(values: dict[str, Any]):
    """A validated config: the tiny MNIST-1D setup with ``values`` merged over it."""
    from sparseavg.config import merge
    from sparseavg.recipes import resolve_config

    return resolve_config(merge(TINY_VALUES, values))


def tiny_run(runs: Path, values: dict[str, Any]) -> Path:
    """Run :func:`tiny_config` of ``values`` under ``runs``; returns the run directory."""
    from sparseavg.experiment import run

    return run(tiny_config(values), runs)


def use_executor(monkeypatch, executor) -> None:
    """Make every following ``engine.run`` train its ingredients with ``executor`` (the real
    :func:`~sparseavg.experiment.prepare.prepare` with its executor replaced)."""
    import dataclasses

    import sparseavg.experiment.engine as engine
    from sparseavg.experiment.prepare import prepare

    def patched(*args, **kwargs):
        return dataclasses.replace(prepare(*args, **kwargs), executor=executor)

    monkeypatch.setattr(engine, "prepare", patched)
