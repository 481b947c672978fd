"""Weights & Biases logging (``execution.wandb``), offline (issue 19 item 4): the same scalars
and names as TensorBoard, the config and the run directory's name, one W&B run continued by a
resumed run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from engine_helpers import rows, tiny_config
from sparseavg.config import ConfigError
from sparseavg.experiment import prepare, run
from sparseavg.experiment.logs import cycle_scalars
from sparseavg.experiment.progress import NullReporter

SWAMP = {"recipe": "swamp", "ingredients": {"count": 2}, "execution": {"wandb": True}}


class _StopInCycle1(NullReporter):
    """Interrupts the run when cycle 1 combines: cycle 0 is complete and logged."""

    def message(self, text: str) -> None:
        if text.startswith("cycle 1: combining"):
            raise KeyboardInterrupt


def _offline_runs(root: Path) -> list[Path]:
    return sorted((root / "wandb").glob("offline-run-*"))


def test_a_run_logs_its_rows_and_curves_and_a_resumed_run_continues_it(tmp_path, monkeypatch):
    """Real wandb, offline. A run stopped in cycle 1 has logged cycle 0; resumed, it continues
    the same W&B run (one id, two offline directories) and logs cycle 1 alone. Every row scalar
    is logged once under TensorBoard's tag, with ``cycle``; the curves with ``global_step``."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged: list[dict] = []
    inits: list[dict] = []
    real_log, real_init = wandb.sdk.wandb_run.Run.log, wandb.init

    def log(self, data, *args, **kwargs):
        logged.append(dict(data))
        return real_log(self, data, *args, **kwargs)

    def init(*args, **kwargs):
        inits.append(kwargs)
        return real_init(*args, **kwargs)

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", log)
    monkeypatch.setattr(wandb, "init", init)
    config = tiny_config(SWAMP)
    with pytest.raises(KeyboardInterrupt):  # stopped in cycle 1, after cycle 0 was logged
        run(config, tmp_path / "runs", _StopInCycle1())
    (run_dir,) = (tmp_path / "runs").iterdir()
    state = json.loads((run_dir / "wandb.json").read_text())
    assert state["cycles"] == [0]
    done = run(config, tmp_path / "runs")
    assert json.loads((run_dir / "wandb.json").read_text()) == {"id": state["id"], "cycles": [0, 1]}
    first, second = _offline_runs(tmp_path)  # one W&B run, written by two calls
    assert first.name.endswith(state["id"]) and second.name.endswith(state["id"])
    assert [(i["id"], i["name"], i["resume"]) for i in inits] == [
        (state["id"], run_dir.name, "allow")
    ] * 2
    assert inits[0]["config"] == config.to_dict()
    row_logs = [d for d in logged if "cycle" in d]
    for cycle, values in enumerate(row_logs):
        expected = cycle_scalars([r for r in rows(done) if r["cycle"] == cycle], lineages=1)
        assert values == {"cycle": float(cycle), **{tag: v for tag, v, _ in expected}}
    assert len(row_logs) == 2  # each cycle once, though the resumed call saw cycle 0 again
    curves = [d for d in logged if "global_step" in d]
    tags = {"cycle_00/ingredient_0/train_loss", "cycle_01/ingredient_1/lr"}
    assert tags <= set().union(*curves)  # TensorBoard's run cycle_XX/ and tag
    assert [d["global_step"] for d in curves] == [57.0, 114.0, 57.0, 114.0]  # 2 epochs a cycle


def _offline(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return wandb


def test_a_wandb_that_does_not_start_stops_the_run_in_one_line_before_it_trains(
    tmp_path, monkeypatch
):
    """W&B starts before cycle 0 trains: a missing login is one line at once, not a
    traceback after the first cycle's training."""
    wandb = _offline(tmp_path, monkeypatch)

    def no_login(**kwargs):
        raise wandb.errors.UsageError("api_key not configured (no-tty)\ncall wandb.login()")

    monkeypatch.setattr(wandb, "init", no_login)
    config = tiny_config(SWAMP)
    with pytest.raises(ConfigError) as err:
        run(config, tmp_path / "runs")
    assert str(err.value) == (
        "execution.wandb = true: W&B did not start (api_key not configured (no-tty)); run "
        "`wandb login`, or set WANDB_MODE=offline, or execution.wandb = false"
    )
    assert not list((tmp_path / "runs").rglob("cycle_00"))


def test_a_complete_logged_run_opens_no_wandb_run(tmp_path, monkeypatch):
    wandb = _offline(tmp_path, monkeypatch)
    config = tiny_config(SWAMP)
    run(config, tmp_path / "runs")
    inits = []
    monkeypatch.setattr(wandb, "init", lambda **kw: inits.append(kw))
    run(config, tmp_path / "runs")
    assert inits == []


def test_wandb_without_the_package_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(
        ConfigError, match=r"^execution\.wandb = true needs wandb.*sparseavg\[wandb\]"
    ):
        prepare(tiny_config(SWAMP), tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_the_option_leaves_the_run_name_alone():
    assert tiny_config(SWAMP).run_name() == tiny_config({**SWAMP, "execution": {}}).run_name()
