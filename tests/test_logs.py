"""Logs where users look: each epoch's training loss, accuracy and learning rate (``train``,
the stacked executor, a user's loop), ``epochs.jsonl``/``epochs.csv``, ``results.csv`` and
TensorBoard scalars, rebuilt so that a resumed run logs what an uninterrupted one does."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from engine_helpers import TrainCalls, tiny_config
from sparseavg.config import ConfigError
from sparseavg.data import Split
from sparseavg.experiment import logs, prepare, run
from sparseavg.training import (
    EPOCH_KEYS,
    EpochLog,
    LoopSettings,
    TrainSettings,
    TrainState,
    learning_rate,
    train,
)
from sparseavg.training.custom import run_user_loop

SWAMP = {"recipe": "swamp", "ingredients": {"count": 2}}


def without_seconds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def as_cells(row: dict[str, Any]) -> dict[str, str]:
    """A jsonl row as its CSV cells are expected to read (nested dicts flattened)."""
    return {k: logs.csv_cell(v) for k, v in logs.flatten(row).items()}


def f32(value: float) -> float:
    """``value`` rounded to float32, as TensorBoard stores a scalar."""
    return float(struct.unpack("f", struct.pack("f", value))[0])


# -- train(): one record per finished epoch ------------------------------------------------------


def _margin_problem() -> tuple[nn.Module, Split]:
    """A linear model that predicts the larger of two features, on 8 points far from the
    decision boundary, 5 of them labelled as it predicts: a small learning rate changes no
    prediction, so every epoch's training accuracy is exactly 5/8."""
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x = torch.tensor([[9.0, 0], [0, 9], [9, 1], [1, 9], [8, 0], [0, 8], [9, 2], [2, 9]])
    y = torch.tensor([0, 1, 0, 1, 0, 0, 1, 0])  # right, right, right, right, right, wrong x3
    return model, Split(x, y)


def test_train_records_accuracy_loss_and_lr_of_each_epoch():
    model, data = _margin_problem()
    settings = TrainSettings(epochs=3, batch_size=4, lr=1e-3, momentum=0.0, augment=False)
    result = train(model, data, settings, seed=0)
    history = result.history
    assert [(e.epoch, e.step) for e in history] == [(0, 2), (1, 4), (2, 6)]
    assert [e.accuracy for e in history] == [0.625, 0.625, 0.625]
    assert [e.loss for e in history] == result.losses
    # the cosine rate of each epoch's last step (steps 1, 3, 5 of 6): all different
    assert [e.lr for e in history] == [learning_rate(settings, s, 6, None) for s in (1, 3, 5)]
    assert len({e.lr for e in history}) == 3
    assert all(e.seconds >= 0 for e in history)


def test_a_partial_epoch_is_not_recorded_and_a_late_start_records_its_steps_only():
    model, data = _margin_problem()
    settings = TrainSettings(epochs=2, batch_size=4, lr=1e-3, momentum=0.0, augment=False)
    stopped = train(model, data, settings, seed=0, stop_step=3)  # the common run's shape
    assert [(e.epoch, e.step) for e in stopped.history] == [(0, 2)]
    model, data = _margin_problem()
    late = train(model, data, settings, seed=0, start_step=1)  # a rewind point in epoch 0
    assert [(e.epoch, e.step) for e in late.history] == [(0, 2), (1, 4)]
    # epoch 0 of this run is its one step: 4 samples, so a multiple of 1/4
    assert late.history[0].accuracy is not None and late.history[0].accuracy * 4 % 1 == 0


def test_checkpoints_carry_the_records_and_a_resumed_run_ends_with_the_same():
    model, data = _margin_problem()
    settings = TrainSettings(epochs=4, batch_size=4, lr=0.05, momentum=0.9, augment=False)
    kept: list[TrainState] = []
    full = train(model, data, settings, seed=3, on_epoch_end=kept.append)
    buffer = io.BytesIO()  # as the run directory keeps a checkpoint
    torch.save(kept[1].to_dict(), buffer)
    buffer.seek(0)
    checkpoint = TrainState.from_dict(torch.load(buffer, weights_only=True))
    assert [(e.epoch, e.step) for e in checkpoint.history] == [(0, 2), (1, 4)]
    fresh, _ = _margin_problem()
    again = train(fresh, data, settings, seed=3, resume=checkpoint)

    def comparable(history: list[EpochLog]) -> list[tuple]:
        return [(e.epoch, e.step, e.loss, e.accuracy, e.lr) for e in history]

    assert comparable(again.history) == comparable(full.history)
    assert len(full.history) == 4


def test_epoch_log_round_trips_under_the_column_names():
    record = EpochLog(2, 30, 0.5, 0.75, 0.01, 1.23456)
    d = record.to_dict()
    assert list(d) == list(EPOCH_KEYS)
    assert d == {
        "epoch": 2,
        "step": 30,
        "train_loss": 0.5,
        "train_accuracy": 0.75,
        "lr": 0.01,
        "seconds": 1.235,
    }
    assert EpochLog.from_dict(d) == EpochLog(2, 30, 0.5, 0.75, 0.01, 1.235)
    assert EpochLog.from_dict({**d, "lr": None}).lr is None


# -- a user's loop reports through end_epoch -----------------------------------------------------


def _user_loop_history(reports: list[tuple[Any, ...]]) -> list[EpochLog]:
    """(loss, accuracy) or (loss, accuracy, lr) per epoch, passed to end_epoch."""
    model, _ = _margin_problem()
    settings = TrainSettings(epochs=len(reports), lr=0.1)

    def train_fn(model: nn.Module, mask: Any, seed: int, loop: LoopSettings) -> None:
        for epoch, report in zip(loop.epoch_range, reports, strict=True):
            assert epoch == loop.start_epoch + loop.epochs_done
            loss, accuracy, *lr = report
            loop.end_epoch(model, loss, accuracy=accuracy, **({"lr": lr[0]} if lr else {}))

    from sparseavg.pruning import Mask

    return run_user_loop(train_fn, model, Mask({}), 0, settings).history


def test_end_epoch_records_the_loss_and_accuracy_a_user_loop_reports():
    history = _user_loop_history([(0.5, 0.25), (torch.tensor(0.25), torch.tensor(0.5)), (None, 1)])
    assert [(e.epoch, e.step, e.loss, e.accuracy, e.lr) for e in history] == [
        (0, 1, 0.5, 0.25, None),
        (1, 2, 0.25, 0.5, None),
        (2, 3, None, 1.0, None),
    ]


def test_end_epoch_records_the_learning_rate_a_user_loop_reports():
    history = _user_loop_history([(0.5, None, 0.1), (0.25, None, torch.tensor(0.0)), (0.2, None)])
    assert [e.lr for e in history] == [0.1, 0.0, None]


@pytest.mark.parametrize("lr", [-0.1, float("nan"), float("inf")])
def test_end_epoch_refuses_a_learning_rate_that_is_negative_or_not_finite(lr):
    with pytest.raises(ValueError, match="finite number >= 0"):
        _user_loop_history([(0.5, None, lr)])


@pytest.mark.parametrize("accuracy", [97.5, -0.1, float("nan")])
def test_end_epoch_refuses_an_accuracy_that_is_not_a_share(accuracy):
    with pytest.raises(ValueError, match="between 0 and 1"):
        _user_loop_history([(0.5, accuracy)])


def test_a_run_of_a_user_loop_logs_its_reports_and_its_eval_metrics(tmp_path):
    import sparseavg

    def model_fn() -> nn.Module:
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    def train_fn(model: nn.Module, mask: Any, seed: int, loop: LoopSettings) -> None:
        for epoch in loop.epoch_range:  # trains nothing: reports made-up numbers
            loop.end_epoch(model, 1 / (epoch + 1), accuracy=epoch / 4, lr=0.5 / (epoch + 1))

    def eval_fn(model: nn.Module) -> dict[str, float]:
        return {"accuracy": 0.5, "loss": 0.75, "f1": 0.25}

    config = {"train": {"epochs": 2}, "pruning": {"cycles": 1, "rewind_epochs": 0}}
    own = sparseavg.imp(
        model_fn, train_fn, eval_fn, runs_dir=tmp_path, config=config, progress=False
    )
    assert without_seconds(jsonl(own.path / "epochs.jsonl")) == [
        {"run": own.path.name, "cycle": c, "lineage": 0, "ingredient": 0, "epoch": e,
         "step": e + 1, "train_loss": 1 / (e + 1), "train_accuracy": e / 4, "lr": 0.5 / (e + 1)}
        for c in (0, 1)
        for e in (0, 1)
    ]  # fmt: skip
    columns, cells = read_csv(own.path / "results.csv")
    assert [c for c in columns if c.startswith("metrics.")] == [
        "metrics.accuracy",
        "metrics.f1",
        "metrics.loss",
    ]
    assert [(r["cycle"], r["metrics.f1"], r["metrics.loss"]) for r in cells] == [
        ("0", "0.25", "0.75"),
        ("1", "0.25", "0.75"),
    ]


# -- CSV cells -----------------------------------------------------------------------------------


def test_csv_cells_and_columns():
    assert [logs.csv_cell(v) for v in (None, True, False, 3, 0.1, 1e-05, [0, 2], "a,b")] == [
        "",
        "true",
        "false",
        "3",
        "0.1",
        "1e-05",
        "[0, 2]",
        "a,b",
    ]
    rows = [
        {"cycle": 0, "role": "combined", "metrics": {"f1": 0.5, "accuracy": 0.75}},
        {"cycle": 1, "role": "combined", "members": 2, "selected": [1]},
    ]
    text = logs.csv_text(rows, logs.RESULT_COLUMNS)
    assert text == (
        "cycle,role,selected,members,metrics.accuracy,metrics.f1\n"
        "0,combined,,,0.75,0.5\n"
        "1,combined,[1],2,,\n"
    )


# -- a run directory -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swamp_run(tmp_path_factory) -> tuple[Path, list[dict[str, Any]]]:
    """A tiny 2-particle SWAMP run of cycles 0 and 1 (TensorBoard on where it is installed),
    and every ingredient's ``train`` call as the spy saw it, in order."""
    runs = tmp_path_factory.mktemp("swamp")
    values = {**SWAMP, "execution": {"tensorboard": logs.tensorboard_available()}}
    with pytest.MonkeyPatch.context() as mp:
        calls = TrainCalls(mp)
        path = run(tiny_config(values), runs)
    return path, calls.ingredients()


def test_epochs_jsonl_holds_every_epoch_that_train_returned(swamp_run):
    path, calls = swamp_run
    rows = jsonl(path / "epochs.jsonl")
    assert len(calls) == 4  # 2 cycles x 2 particles, in order
    expected = []
    for i, call in enumerate(calls):
        cycle, ingredient = divmod(i, 2)
        for record in call["result"].history:
            expected.append(
                {"run": path.name, "cycle": cycle, "lineage": 0, "ingredient": ingredient}
                | record.to_dict()
            )
    assert rows == expected
    # the particles start at the rewind point (step 28, half of epoch 0: 57 steps, the last
    # partial batch included) and train 2 epochs
    assert [(r["epoch"], r["step"]) for r in rows[:2]] == [(0, 57), (1, 114)]
    assert all(0 < r["train_accuracy"] < 1 and r["lr"] > 0 for r in rows)
    for cycle, ingredient in ((0, 0), (1, 1)):
        info = json.loads((path / f"cycle_0{cycle}/ingredient_{ingredient}/info.json").read_text())
        mine = [r for r in rows if (r["cycle"], r["ingredient"]) == (cycle, ingredient)]
        assert info["epochs"] == [{k: r[k] for k in EPOCH_KEYS} for r in mine]


def test_the_csv_files_hold_what_the_jsonl_files_hold(swamp_run):
    path, _ = swamp_run
    for name, first in (("results", logs.RESULT_COLUMNS), ("epochs", logs.EPOCH_COLUMNS)):
        rows = jsonl(path / f"{name}.jsonl")
        columns, cells = read_csv(path / f"{name}.csv")
        assert set(columns) == {k for r in rows for k in logs.flatten(r)}, name
        assert columns[: len(first)] == [c for c in first if c in columns]
        assert cells == [{c: as_cells(r).get(c, "") for c in columns} for r in rows], name
    columns, _ = read_csv(path / "epochs.csv")
    assert columns == list(logs.EPOCH_COLUMNS)


class _StopAfter:
    """A reporter that interrupts the run at its ``n``-th progress update (one per step)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def message(self, text: str) -> None:
        pass

    def task(self, label: str, total: int) -> int:
        return 0

    def update(self, task: int, completed: int, info: str = "") -> None:
        self.n -= 1
        if self.n == 0:
            raise KeyboardInterrupt

    def finish(self, task: int) -> None:
        pass


def _checkpoint_history(path: Path) -> list[tuple[int, int]]:
    state = TrainState.from_dict(torch.load(path, weights_only=True))
    return [(e.epoch, e.step) for e in state.history]


def test_an_interrupted_run_resumes_to_the_same_logs(swamp_run, tmp_path):
    reference, _ = swamp_run
    config = tiny_config({**SWAMP, "execution": {"tensorboard": logs.tensorboard_available()}})
    # inside cycle 0's first particle, after its first epoch's checkpoint
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path, _StopAfter(50))
    path = tmp_path / reference.name
    assert _checkpoint_history(path / "cycle_00/ingredient_0/checkpoint.pt") == [(0, 57)]
    # resumed there; then inside cycle 1's second particle, after its first epoch
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path, _StopAfter(270))
    assert _checkpoint_history(path / "cycle_01/ingredient_1/checkpoint.pt") == [(0, 57)]
    assert [r["cycle"] for r in jsonl(path / "epochs.jsonl")] == [0] * 4  # cycle 0 only
    run(config, tmp_path)
    for name in ("epochs.jsonl", "results.jsonl"):
        assert without_seconds(jsonl(path / name)) == without_seconds(jsonl(reference / name))
    for name in ("epochs.csv", "results.csv"):
        mine, theirs = read_csv(path / name), read_csv(reference / name)
        assert mine[0] == theirs[0]
        assert without_seconds(mine[1]) == without_seconds(theirs[1])  # type: ignore[arg-type]
    if logs.tensorboard_available():
        assert scalars(path) == scalars(reference)


# -- TensorBoard ---------------------------------------------------------------------------------


def scalars(run_dir: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Every TensorBoard run under ``run_dir/tensorboard``: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = run_dir / logs.TENSORBOARD_DIR
    out = {}
    for directory in [board, *sorted(p for p in board.iterdir() if p.is_dir())]:
        events = EventAccumulator(str(directory))
        events.Reload()
        out[directory.name] = {
            tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]
        }
    return out


def test_tensorboard_scalars_are_the_rows_and_the_epochs(swamp_run):
    pytest.importorskip("tensorboard")
    path, _ = swamp_run
    found = scalars(path)
    assert sorted(found) == ["cycle_00", "cycle_01", "tensorboard"]
    expected: dict[str, list[tuple[int, float]]] = {}
    for row in jsonl(path / "results.jsonl"):
        role = row["role"]
        prefix = f"ingredient_{row['ingredient']}" if role == "ingredient" else role
        for column in ("accuracy", "loss", "sparsity"):
            expected.setdefault(f"{prefix}/{column}", []).append((row["cycle"], f32(row[column])))
    assert found["tensorboard"] == expected
    assert {"combined/accuracy", "ensemble/accuracy", "ingredient_1/sparsity"} <= set(expected)
    epochs = jsonl(path / "epochs.jsonl")
    for cycle in (0, 1):
        curves: dict[str, list[tuple[int, float]]] = {}
        for row in (r for r in epochs if r["cycle"] == cycle):
            for column in ("train_loss", "train_accuracy", "lr"):
                tag = f"ingredient_{row['ingredient']}/{column}"
                curves.setdefault(tag, []).append((row["step"], f32(row[column])))
        assert found[f"cycle_0{cycle}"] == curves
        assert len(curves["ingredient_0/train_loss"]) == 2


def test_tensorboard_files_missing_are_written_and_present_ones_kept(swamp_run, tmp_path):
    pytest.importorskip("tensorboard")
    reference, _ = swamp_run
    path = tmp_path / reference.name
    shutil.copytree(reference, path)
    shutil.rmtree(path / logs.TENSORBOARD_DIR / "cycle_01")
    (path / logs.TENSORBOARD_DIR / "events.out.tfevents.cycle_01").unlink()
    kept = (path / logs.TENSORBOARD_DIR / "events.out.tfevents.cycle_00").read_bytes()
    config = tiny_config({**SWAMP, "execution": {"tensorboard": True}})
    run(config, tmp_path)  # every cycle complete: nothing trains, cycle 1's files come back
    assert scalars(path) == scalars(reference)
    assert (path / logs.TENSORBOARD_DIR / "events.out.tfevents.cycle_00").read_bytes() == kept


def test_a_resume_that_fails_after_skipping_a_cycle_keeps_every_cycles_rows(
    swamp_run, tmp_path, monkeypatch
):
    """The logs a resumed run rewrites hold every complete cycle from the first rewrite on:
    a failure later in the loop (here the TensorBoard files of cycle 0) leaves them whole."""
    reference, _ = swamp_run
    path = tmp_path / reference.name
    shutil.copytree(reference, path)
    shutil.rmtree(path / logs.TENSORBOARD_DIR, ignore_errors=True)
    before = {name: (path / name).read_bytes() for name in ("results.jsonl", "epochs.jsonl")}
    assert {r["cycle"] for r in jsonl(path / "results.jsonl")} == {0, 1}

    def full_disk(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(logs, "write_cycle_events", full_disk)
    monkeypatch.setattr(logs, "tensorboard_available", lambda: True)
    monkeypatch.setattr(
        sys.modules["sparseavg.experiment.prepare"], "tensorboard_available", lambda: True
    )
    with pytest.raises(OSError, match="No space left"):
        run(tiny_config({**SWAMP, "execution": {"tensorboard": True}}), tmp_path)
    assert {name: (path / name).read_bytes() for name in before} == before


def test_tensorboard_tags_of_runs_with_several_lineages_name_the_member():
    rows = [
        {"cycle": 2, "lineage": 1, "role": "combined", "ingredient": None, "accuracy": 0.5,
         "loss": 1.0, "sparsity": 0.36, "metrics": {"f1": 0.25}},
        {"cycle": 2, "lineage": 0, "role": "ensemble", "ingredient": None, "accuracy": 0.75,
         "loss": None, "sparsity": 0.36},
        {"cycle": 2, "lineage": 1, "role": "ingredient", "ingredient": 3, "accuracy": None,
         "loss": None, "sparsity": 0.36, "dropped": True},
    ]  # fmt: skip
    assert logs.cycle_scalars(rows, lineages=2) == [
        ("member_1/combined/accuracy", 0.5, 2),
        ("member_1/combined/loss", 1.0, 2),
        ("member_1/combined/sparsity", 0.36, 2),
        ("member_1/combined/metrics.f1", 0.25, 2),
        ("ensemble/accuracy", 0.75, 2),
        ("ensemble/sparsity", 0.36, 2),
        ("member_1/ingredient_3/sparsity", 0.36, 2),
    ]
    epochs = [{"lineage": 1, "ingredient": 0, "step": 40, "train_loss": 0.5,
               "train_accuracy": 0.75, "lr": None}]  # fmt: skip
    assert logs.epoch_scalars(epochs, lineages=2) == [
        ("member_1/ingredient_0/train_loss", 0.5, 40),
        ("member_1/ingredient_0/train_accuracy", 0.75, 40),
    ]
    assert logs.epoch_scalars(epochs, lineages=1)[0][0] == "ingredient_0/train_loss"


def test_tensorboard_without_the_package_is_refused_before_anything_is_written(
    tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # nor imported before
    config = tiny_config({"execution": {"tensorboard": True}})
    with pytest.raises(ConfigError, match=r'pip install "sparseavg\[tensorboard\]"'):
        prepare(config, tmp_path / "runs")
    assert not (tmp_path / "runs").exists()
    prepare(tiny_config({}), tmp_path / "runs")  # the option off: no tensorboard needed


def test_tensorboard_installed_but_broken_is_refused_before_training(tmp_path, monkeypatch):
    """The package is found (find_spec) but torch.utils.tensorboard does not import (a
    version clash): refused before cycle 0 trains, not after it, naming the import error."""
    pytest.importorskip("tensorboard")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # its import fails
    config = tiny_config({**SWAMP, "execution": {"tensorboard": True}})
    with pytest.raises(ConfigError, match=r"^execution\.tensorboard = true needs torch\.utils"):
        run(config, tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_results_and_epoch_logs_refuse_what_is_not_json(tmp_path):
    """json.dumps writes a NaN as bare ``NaN``, which no JSON reader accepts: the run's files
    refuse it (the engine refuses non-finite metrics before they get here) and keep their
    old content."""
    from sparseavg.experiment.rundir import RunDir

    rd = RunDir(tmp_path, run_id="x")
    rd.write_results([{"accuracy": 0.5}])
    before = (tmp_path / "results.jsonl").read_text(encoding="utf-8")
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="not JSON compliant"):
            rd.write_results([{"accuracy": bad}])
        with pytest.raises(ValueError, match="not JSON compliant"):
            rd.write_json(tmp_path / "rows.json", [{"loss": bad}])
        with pytest.raises(ValueError, match="not JSON compliant"):
            logs.write_epochs(tmp_path, [{"train_loss": bad}])
    assert (tmp_path / "results.jsonl").read_text(encoding="utf-8") == before
    assert not (tmp_path / "rows.json").exists()
    assert not (tmp_path / "epochs.jsonl").exists()
