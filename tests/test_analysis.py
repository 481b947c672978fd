"""The analyses: exact answers on tiny models (sparseavg.analysis) and ``sparseavg analyze``
on tiny real runs (sparseavg.experiment.analyze)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import tiny_net, tiny_split
from sparseavg.analysis import (
    calibration,
    cosine_similarity,
    distances,
    hessian_trace,
    l2_distance,
    linear_path,
    parameter_names,
)
from sparseavg.averaging import recalibrate_bn
from sparseavg.pruning import Mask
from sparseavg.training import evaluate
from sparseavg.utils.state import clone_state

# -- data and models with known Hessians --------------------------------------------------------


class Pairs:
    """A batch source of fixed ``(x, y)`` pairs with any label dtype (regression targets)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        return math.ceil(len(self) / batch_size)

    def batches(self, batch_size, *, generator=None, augment=False, drop_last=False):
        for i in range(0, len(self), batch_size):
            yield self.x[i : i + batch_size], self.y[i : i + batch_size]


def half_mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((out.squeeze(-1) - y) ** 2).mean()


def _diagonal_problem():
    """``f(x) = x·w`` on samples ``c_i e_i`` with ``½ mean (f - y)²``: H = diag(c_i²) / N."""
    c = torch.tensor([1.0, 2.0, 3.0, 1.0, 2.0, 4.0, 1.0, 2.0])
    x = torch.diag(c)
    model = nn.Linear(8, 1, bias=False)
    return model, Pairs(x, torch.zeros(8)), c**2 / 8


def test_diagonal_hessian_gives_the_exact_trace_with_zero_stderr():
    model, data, diag = _diagonal_problem()
    est = hessian_trace(
        model, model.state_dict(), data, probes=5, batches=3, batch_size=3, seed=1, loss=half_mse
    )
    assert est.stderr == 0.0
    assert est.mean == pytest.approx(float(diag.sum()), rel=1e-6)
    assert (est.probes, est.batches) == (5, 3)


def test_masked_trace_is_the_trace_over_surviving_weights():
    model, data, diag = _diagonal_problem()
    keep = torch.tensor([[True, False, True, True, False, False, True, True]])
    est = hessian_trace(
        model,
        model.state_dict(),
        data,
        probes=4,
        batches=1,
        batch_size=8,
        seed=0,
        mask=Mask({"weight": keep}),
        loss=half_mse,
    )
    assert est.stderr == 0.0
    assert est.mean == pytest.approx(float(diag[keep[0]].sum()), rel=1e-6)


def _exact_trace(model: nn.Module, x: torch.Tensor, y: torch.Tensor, keep=None) -> float:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(w: torch.Tensor) -> torch.Tensor:
        parts = torch.split(w, [s.numel() for s in shapes])
        params = {n: t.reshape(s) for n, t, s in zip(names, parts, shapes, strict=True)}
        return F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)

    diag = torch.diagonal(torch.autograd.functional.hessian(loss, flat))
    if keep is not None:
        diag = diag[keep]
    return float(diag.sum())


def test_cross_entropy_trace_matches_the_exact_hessian_within_a_few_stderrs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    exact = _exact_trace(model, x, y)
    est = hessian_trace(
        model, model.state_dict(), Pairs(x, y), probes=400, batches=2, batch_size=20, seed=3
    )
    assert est.stderr > 0
    assert abs(est.mean - exact) < 4 * est.stderr
    # a mask on the first layer: the trace of H restricted to what survives
    mask = Mask({"0.weight": torch.rand(6, 5, generator=torch.Generator().manual_seed(1)) > 0.5})
    keep = torch.cat(
        [
            mask["0.weight"].reshape(-1) if n == "0.weight" else torch.ones(p.numel(), dtype=bool)
            for n, p in model.named_parameters()
        ]
    )
    exact_masked = _exact_trace(model, x, y, keep)
    masked = hessian_trace(
        model,
        model.state_dict(),
        Pairs(x, y),
        probes=400,
        batches=2,
        batch_size=20,
        seed=3,
        mask=mask,
    )
    assert abs(masked.mean - exact_masked) < 4 * masked.stderr


def test_hessian_trace_is_seeded_and_leaves_the_model_as_it_was():
    model = tiny_net(0)
    model.train()
    before = clone_state(model)
    other = clone_state(tiny_net(1))
    kw = dict(probes=2, batches=1, batch_size=16, seed=7)
    a = hessian_trace(model, other, tiny_split(32), **kw)
    b = hessian_trace(model, other, tiny_split(32), **kw)
    assert a == b
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# -- linear paths -------------------------------------------------------------------------------


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize("make", [tiny_net, _mlp], ids=["batchnorm", "no-batchnorm"])
def test_barrier_of_a_model_with_itself_is_exactly_zero(make):
    model, train, test = make(0), tiny_split(64, seed=1), tiny_split(48, seed=2)
    state = clone_state(make(3))
    path = linear_path(model, state, state, eval_data=test, points=5, recalibrate=train)
    assert path.alphas == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert path.loss_barrier == 0.0 and path.error_barrier == 0.0
    assert len(set(path.losses)) == 1


@pytest.mark.parametrize("make", [tiny_net, _mlp], ids=["batchnorm", "no-batchnorm"])
def test_path_ends_are_the_two_models_evaluated(make):
    model, train, test = make(0), tiny_split(64, seed=1), tiny_split(48, seed=2)
    a, b = clone_state(make(3)), clone_state(make(4))
    path = linear_path(
        model, a, b, eval_data=test, points=3, recalibrate=train, bn_batches=2, batch_size=16
    )
    for state, loss, error in (
        (a, path.losses[0], path.errors[0]),
        (b, path.losses[-1], path.errors[-1]),
    ):
        model.load_state_dict(state)
        recalibrate_bn(model, train, num_batches=2, batch_size=16)  # a no-op without BN
        ev = evaluate(model, test)
        assert (loss, error) == (ev.loss, 1.0 - ev.accuracy)
    top = max(path.losses)
    assert path.loss_barrier == top - (path.losses[0] + path.losses[-1]) / 2


# -- distances and calibration ------------------------------------------------------------------


def test_distances_and_cosine_on_hand_made_vectors():
    a, b = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])
    assert l2_distance(a, b) == 5.0
    assert cosine_similarity(a, b) == 0.0
    assert cosine_similarity(a, 2 * a) == pytest.approx(1.0)
    assert math.isnan(cosine_similarity(a, torch.zeros(2)))
    model = nn.BatchNorm1d(2)  # parameters weight, bias; running stats are buffers
    assert parameter_names(model) == ["weight", "bias"]
    s1 = {
        "weight": torch.tensor([1.0, 1.0]),
        "bias": torch.tensor([0.0, 0.0]),
        "running_mean": torch.tensor([100.0, 100.0]),
    }
    s2 = {
        "weight": torch.tensor([1.0, 1.0]),
        "bias": torch.tensor([-1.0, 1.0]),
        "running_mean": torch.tensor([0.0, 0.0]),
    }
    (d,) = distances({"x": s1, "y": s2}, [("x", "y")], parameter_names(model))
    assert (d.a, d.b) == ("x", "y")
    assert d.l2 == pytest.approx(math.sqrt(2))  # the buffers are left out
    assert d.cosine == pytest.approx(2 / (math.sqrt(2) * 2))


def test_ece_on_a_hand_computed_case():
    probs = torch.tensor(
        [
            [0.95, 0.05, 0.0],  # conf 0.95, right   -> bin 15 (0.933, 1]
            [0.95, 0.0, 0.05],  # conf 0.95, wrong   -> bin 15
            [0.1, 0.5, 0.4],  # conf 0.5, right      -> bin 8 (0.467, 0.533]
            [0.32, 0.3, 0.38],  # conf 0.38, wrong   -> bin 6 (0.333, 0.4]
        ]
    )
    labels = torch.tensor([0, 1, 1, 0])
    cal = calibration(probs, labels, bins=15)
    # bin 15: 2 samples, conf 0.95, acc 0.5; bin 8: conf 0.5 acc 1; bin 6: conf 0.38 acc 0
    expected = 2 / 4 * abs(0.5 - 0.95) + 1 / 4 * abs(1 - 0.5) + 1 / 4 * abs(0 - 0.38)
    assert cal.ece == pytest.approx(expected)
    assert cal.accuracy == 0.5
    assert cal.per_class_accuracy == (0.5, 0.5, None)
    assert sum(cal.bin_counts) == 4
    assert cal.bin_counts[14] == 2 and cal.bin_counts[7] == 1 and cal.bin_counts[5] == 1
    assert cal.bin_accuracies[14] == 0.5 and cal.bin_confidences[7] == pytest.approx(0.5)
    assert cal.bin_accuracies[0] is None
    one_hot = F.one_hot(labels, 3).double()
    assert calibration(one_hot, labels).ece == 0.0


# -- sparseavg analyze on tiny real runs ----------------------------------------------------------

FAST = dict(points=3, probes=2, hessian_batches=1, batch_size=128, bn_batches=1)


@pytest.fixture(scope="module")
def swamp_run(tmp_path_factory):
    from engine_helpers import tiny_run

    return tiny_run(
        tmp_path_factory.mktemp("swamp"), {"recipe": "swamp", "ingredients": {"count": 2}}
    )


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory):
    from engine_helpers import tiny_run

    return tiny_run(tmp_path_factory.mktemp("ensemble"), {"recipe": "ensemble"})


def _outside_analysis(run):
    return {
        str(p.relative_to(run)): p.stat().st_mtime_ns
        for p in run.rglob("*")
        if p.is_file() and "analysis" not in p.relative_to(run).parts
    }


class _Messages:
    def __init__(self):
        self.lines, self.units = [], 0

    def message(self, text):
        self.lines.append(text)

    def task(self, label, total):
        return 1

    def update(self, task, completed, info=""):
        self.units = max(self.units, completed)

    def finish(self, task):
        pass


def test_analyze_run_writes_each_cycle_and_a_summary_then_resumes(swamp_run, tmp_path):
    import shutil

    from sparseavg.experiment.analyze import AnalysisSettings, analyze_run, load_analysis

    run = tmp_path / swamp_run.name
    shutil.copytree(swamp_run, run)
    before = _outside_analysis(run)
    assert load_analysis(run) is None
    settings = AnalysisSettings(**FAST)
    summary = analyze_run(run, settings=settings, device="cpu")
    assert _outside_analysis(run) == before  # only analysis/ is written
    out = run / "analysis"
    names = {p.name for p in out.iterdir()}
    assert names == {
        "cycle_00.json",
        "cycle_00_barrier.png",
        "cycle_01.json",
        "cycle_01_barrier.png",
        "summary.json",
        "summary.png",
    }
    import json

    doc = json.loads((out / "cycle_01.json").read_text())
    assert doc["settings"] == settings.to_dict()
    assert doc["what"] == ["barrier", "hessian", "distance", "calibration"]
    kinds = [(line["kind"], line["a"], line["b"]) for line in doc["barrier"]]
    assert kinds == [
        ("ingredients", "ingredient_0", "ingredient_1"),
        ("ingredient-combined", "ingredient_0", "combined"),
        ("ingredient-combined", "ingredient_1", "combined"),
        ("previous", "previous_combined", "combined"),
    ]
    line = doc["barrier"][0]
    assert line["test"]["alphas"] == [0.0, 0.5, 1.0] and len(line["train"]["losses"]) == 3
    assert set(doc["hessian"]) == {"combined"} and doc["hessian"]["combined"]["masked"]
    assert {(d["a"], d["b"]) for d in doc["distance"]} >= {
        ("ingredient_0", "ingredient_1"),
        ("ingredient_0", "average"),
        ("ingredient_1", "combined"),
    }
    assert set(doc["calibration"]) == {"combined", "ingredient_0", "ingredient_1"}
    assert len(doc["calibration"]["combined"]["bin_counts"]) == 15
    assert doc["sparsity"] == pytest.approx(0.2, abs=1e-3)
    cycle0 = json.loads((out / "cycle_00.json").read_text())
    assert "previous" not in {line["kind"] for line in cycle0["barrier"]}
    assert summary == load_analysis(run)
    row = summary["cycles"][1]
    assert row["barrier_ingredients_test_loss"] == line["test"]["loss_barrier"]
    assert row["hessian_trace"] == doc["hessian"]["combined"]["mean"]
    assert row["ece"] == doc["calibration"]["combined"]["ece"]
    assert row["barrier_members_test_loss"] is None

    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("cycle_*")}
    messages = _Messages()
    analyze_run(run, settings=settings, device="cpu", reporter=messages)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("cycle_*")} == stamps
    assert len([m for m in messages.lines if "skipped" in m]) == 2 and messages.units == 0
    # a changed setting (or another set of analyses) recomputes
    analyze_run(run, cycles=[1], settings=AnalysisSettings(**{**FAST, "probes": 3}), device="cpu")
    redone = json.loads((out / "cycle_01.json").read_text())
    assert redone["settings"]["probes"] == 3 and redone["hessian"]["combined"]["probes"] == 3
    assert (out / "cycle_00.json").stat().st_mtime_ns == stamps["cycle_00.json"]


def test_analyze_members_of_an_ensemble_run(ensemble_run, tmp_path):
    import shutil

    from sparseavg.experiment.analyze import AnalysisSettings, analyze_run

    run = tmp_path / ensemble_run.name
    shutil.copytree(ensemble_run, run)
    summary = analyze_run(
        run, cycles=[1], what=["barrier", "calibration"], settings=AnalysisSettings(**FAST)
    )
    import json

    doc = json.loads((run / "analysis" / "cycle_01.json").read_text())
    kinds = [(line["kind"], line["a"], line["b"]) for line in doc["barrier"]]
    assert kinds == [  # one ingredient per member: no ingredient pairs
        ("previous", "member_0/previous_combined", "member_0/combined"),
        ("previous", "member_1/previous_combined", "member_1/combined"),
        ("members", "member_0/combined", "member_1/combined"),
    ]
    assert "hessian" not in doc and "distance" not in doc
    assert {"member_0/combined", "member_1/ingredient_0", "ensemble"} <= set(doc["calibration"])
    (row,) = summary["cycles"]
    assert row["barrier_ingredients_test_loss"] is None
    assert row["barrier_members_test_loss"] == doc["barrier"][2]["test"]["loss_barrier"]
    assert row["ece_ensemble"] == doc["calibration"]["ensemble"]["ece"]


def test_analyze_cli_refuses_bad_input_and_writes_nothing(swamp_run, tmp_path, capsys):
    from sparseavg.cli.main import main

    before = _outside_analysis(swamp_run)
    assert main(["analyze", str(tmp_path), "--quiet"]) == 2
    assert "config.toml" in capsys.readouterr().err
    errors = []
    for bad in (
        ["--cycles", "1,x"],
        ["--cycles", "7"],
        ["--what", "barrier,sharpness"],
        ["--points", "1"],
    ):
        assert main(["analyze", str(swamp_run), "--quiet", *bad]) == 2
        errors.append(capsys.readouterr().err)
    for err in errors:
        assert err.startswith("sparseavg: error:") and len(err.strip().splitlines()) == 1
    assert "--cycles '1,x'" in errors[0] and "cycle 7 is not complete" in errors[1]
    assert "'sharpness'" in errors[2] and "points must be" in errors[3]
    assert not (swamp_run / "analysis").exists()
    assert list(tmp_path.iterdir()) == []
    assert _outside_analysis(swamp_run) == before


def test_analyze_cli_prints_a_table_and_report_shows_it(swamp_run, tmp_path, capsys):
    import shutil

    from sparseavg.cli.main import main

    run = tmp_path / "runs" / swamp_run.name
    shutil.copytree(swamp_run, run)
    assert main(["report", str(run)]) == 0
    plain = capsys.readouterr().out
    assert "Hessian" not in plain
    args = ["analyze", str(run), "--quiet", "--cycles", "1", "--points", "3", "--probes", "2"]
    assert main([*args, "--hessian-batches", "1", "--what", "barrier,hessian"]) == 0
    out = capsys.readouterr().out
    assert "| run | cycle |" in out and f"| {run.name} | 1 | 20.0 |" in out
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(plain.rstrip("\n")) and "Hessian trace ± se" in shown
    assert "## Analyses" in (tmp_path / "rep" / "report.md").read_text()


# -- analyze trusts only what it can check (issue 16, item 4) -------------------------------------


def _copy(run, tmp_path):
    import shutil

    copy = tmp_path / "runs" / run.name
    shutil.copytree(run, copy)
    return copy


def _doc(run, cycle):
    import json

    return json.loads((run / "analysis" / f"cycle_{cycle:02d}.json").read_text())


def _put(run, cycle, document):
    import json

    (run / "analysis" / f"cycle_{cycle:02d}.json").write_text(json.dumps(document))


def test_a_plot_missing_after_an_interruption_is_drawn_on_the_next_call(swamp_run, tmp_path):
    from sparseavg.experiment.analyze import AnalysisSettings, analyze_run

    run = _copy(swamp_run, tmp_path)
    settings = AnalysisSettings(**FAST)
    analyze_run(run, cycles=[1], what=["barrier"], settings=settings, device="cpu")
    png = run / "analysis" / "cycle_01_barrier.png"
    json_stamp = (run / "analysis" / "cycle_01.json").stat().st_mtime_ns
    png.unlink()  # killed between the cycle's JSON and its plot
    messages = _Messages()
    analyze_run(run, cycles=[1], what=["barrier"], settings=settings, reporter=messages)
    assert png.is_file() and png.read_bytes().startswith(b"\x89PNG")
    assert (run / "analysis" / "cycle_01.json").stat().st_mtime_ns == json_stamp  # not redone
    assert messages.units == 0


def test_another_runs_or_a_damaged_cycle_document_is_analysed_again(swamp_run, tmp_path):
    from sparseavg.experiment.analyze import AnalysisSettings, analyze_run

    run = _copy(swamp_run, tmp_path)
    settings = AnalysisSettings(**FAST)
    analyze_run(run, what=["hessian"], settings=settings, device="cpu")
    mine = _doc(run, 1)
    foreign = {**mine, "run": "imp-mnist1d-conv1d-00000000"}
    foreign["hessian"] = {"combined": {**mine["hessian"]["combined"], "mean": 123.0}}
    _put(run, 1, foreign)
    damaged = {**_doc(run, 0), "hessian": {"combined": {"mean": "high"}}}
    _put(run, 0, damaged)
    messages = _Messages()
    summary = analyze_run(
        run, cycles=[1], what=["hessian"], settings=settings, device="cpu", reporter=messages
    )
    assert _doc(run, 1)["run"] == run.name
    assert _doc(run, 1)["hessian"]["combined"]["mean"] == mine["hessian"]["combined"]["mean"]
    assert any(
        "not of 'imp-mnist1d-conv1d-00000000'" in m or "00000000" in m for m in messages.lines
    )
    assert [row["cycle"] for row in summary["cycles"]] == [1]  # cycle 0's is left out
    assert any("hessian results are damaged; left out" in m for m in messages.lines)


def test_only_the_ingredients_the_manifest_lists_are_analysed(swamp_run, tmp_path):
    import shutil

    from sparseavg.experiment.analyze import AnalysisSettings, analyze_run

    run = _copy(swamp_run, tmp_path)
    shutil.copytree(run / "cycle_01" / "ingredient_1", run / "cycle_01" / "ingredient_7")
    analyze_run(run, cycles=[1], what=["distance"], settings=AnalysisSettings(**FAST))
    doc = _doc(run, 1)
    assert doc["models"] == ["combined", "ingredient_0", "ingredient_1"]
    assert not [d for d in doc["distance"] if "ingredient_7" in (d["a"], d["b"])]


def test_a_second_call_with_other_analyses_keeps_the_first_ones_results(swamp_run, tmp_path):
    from sparseavg.experiment.analyze import AnalysisSettings, analyze_run

    run = _copy(swamp_run, tmp_path)
    settings = AnalysisSettings(**FAST)
    analyze_run(run, cycles=[1], what=["barrier", "distance"], settings=settings)
    first = _doc(run, 1)
    png = run / "analysis" / "cycle_01_barrier.png"
    drawn = png.read_bytes()
    analyze_run(run, cycles=[1], what=["hessian"], settings=settings)
    merged = _doc(run, 1)
    assert merged["what"] == ["barrier", "hessian", "distance"]
    assert merged["barrier"] == first["barrier"] and merged["distance"] == first["distance"]
    assert "combined" in merged["hessian"] and png.read_bytes() == drawn
    # other settings: the results of the old ones are not mixed in, and their plot goes
    analyze_run(
        run, cycles=[1], what=["hessian"], settings=AnalysisSettings(**{**FAST, "probes": 3})
    )
    redone = _doc(run, 1)
    assert redone["what"] == ["hessian"] and "barrier" not in redone and not png.exists()


def test_analyze_and_report_refuse_what_they_cannot_trust_in_one_line(swamp_run, tmp_path, capsys):
    import json

    from sparseavg.cli.main import main
    from sparseavg.experiment.analyze import AnalysisSettings, analyze_run
    from sparseavg.experiment.rundir import RunDir
    from sparseavg.experiment.runinfo import read_run
    from sparseavg.models import build_model
    from sparseavg.utils.files import save_tensors

    run = _copy(swamp_run, tmp_path)
    analyze_run(run, cycles=[1], what=["hessian"], settings=AnalysisSettings(**FAST))
    summary_path = run / "analysis" / "summary.json"
    good = summary_path.read_text()

    def refused(argv, *fragments):
        rc = main(argv)
        _, err = capsys.readouterr()
        assert rc == 2 and "Traceback" not in err, err
        assert len(err.splitlines()) == 1 and err.startswith("sparseavg: error: "), err
        for fragment in fragments:
            assert fragment in err, (fragment, err)

    summary = json.loads(good)
    summary_path.write_text(json.dumps({**summary, "run": "swamp-mnist1d-conv1d-00000000"}))
    refused(["report", str(run)], "summary.json", "not of", "rewrites it")
    summary_path.write_text(json.dumps({**summary, "cycles": [{"cycle": "one"}]}))
    refused(["report", str(run)], "summary.json", "its rows are damaged")
    summary_path.write_text(good)

    # an ingredient of another architecture, listed in the manifest as if it were the run's
    config = read_run(run).config
    other = build_model("conv1d", 10, (1, 40), width=16)
    save_tensors(run / "cycle_01" / "ingredient_1" / "final.safetensors", other.state_dict())
    RunDir(run, run_id=config.digest()).write_manifest(run / "cycle_01")
    before = {p: p.read_bytes() for p in (run / "analysis").iterdir()}
    refused(
        ["analyze", str(run), "--cycles", "1", "--what", "distance", "--quiet"],
        "ingredient_1/final.safetensors",
        "do not fit the run's model",
    )
    assert {p: p.read_bytes() for p in (run / "analysis").iterdir()} == before


def test_a_folder_where_a_result_goes_is_refused_before_any_cycle_is_analysed(
    swamp_run, tmp_path, capsys
):
    from sparseavg.cli.main import main

    run = _copy(swamp_run, tmp_path)
    (run / "analysis" / "summary.json").mkdir(parents=True)
    rc = main(["analyze", str(run), "--what", "hessian", "--quiet", "--probes", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1
    assert "summary.json: a folder where analyze writes a file" in err
    assert sorted(p.name for p in (run / "analysis").iterdir()) == ["summary.json"]


def test_temporary_files_of_a_killed_analysis_are_removed(swamp_run, tmp_path):
    from sparseavg.experiment.analyze import AnalysisSettings, analyze_run

    run = _copy(swamp_run, tmp_path)
    (run / "analysis").mkdir()
    stale = run / "analysis" / ".cycle_01.json.k1ll3d.tmp"
    stale.write_text('{"half": ')
    analyze_run(run, cycles=[1], what=["hessian"], settings=AnalysisSettings(**FAST))
    assert not stale.exists()
    assert sorted(p.name for p in (run / "analysis").iterdir()) == [
        "cycle_01.json", "summary.json", "summary.png",
    ]  # fmt: skip
