"""The study's statistics, the parallel batch runner, and one tiny study end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sparseavg.config import ConfigError, read_toml
from sparseavg.experiment.batch import run_many
from sparseavg.experiment.engine import run
from sparseavg.recipes import resolve_config
from sparseavg.study import Group, Setting
from sparseavg.study.collect import SeedRun, last_cycle_only
from sparseavg.study.run import run_study, write_study
from sparseavg.study.stats import Spread, holm, paired_test
from sparseavg.study.write import StudyRecord
from sparseavg.utils.files import load_tensors

TINY = {
    "data": {"dataset": "mnist1d"},
    "model": {"name": "conv1d", "options": {"width": 4}},
    "train": {"epochs": 2, "batch_size": 256},
    "pruning": {"cycles": 1, "fraction": 0.5, "rewind_epochs": 0.5},
    "execution": {"device": "cpu"},
}


def test_spread_is_mean_and_sample_std() -> None:
    s = Spread.of([1.0, 2.0, 3.0, 6.0])
    assert s.mean == 3.0
    assert s.std == pytest.approx(math.sqrt(14 / 3), abs=1e-15)
    assert Spread.of([5.0]).std == 0.0
    assert Spread.of([]).n == 0
    assert Spread.of([0.5, 0.25]).text(100) == "37.50 ± 17.68"


def test_paired_test_matches_a_hand_computed_t_test() -> None:
    # differences 1, 2, 3: mean 2, sample std 1, t = 2 / (1 / sqrt 3) with 2 degrees of freedom
    t = paired_test([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    assert (t.n, t.mean, t.std, t.wins) == (3, 2.0, 1.0, 3)
    # Student t with 2 degrees of freedom: p = 2 (1 - F(t)) = 1 - t / sqrt(2 + t^2), t^2 = 12
    assert t.p == pytest.approx(1 - math.sqrt(12 / 14), abs=1e-12)
    half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, 2} * std / sqrt(n)
    assert (t.low, t.high) == pytest.approx((2 - half, 2 + half), abs=1e-9)
    same = paired_test([1.0, 2.0], [0.0, 1.0])  # equal differences: no variance, no p
    assert same.std == 0.0 and math.isnan(same.p) and same.wins == 2
    with pytest.raises(ValueError, match="differ in number"):
        paired_test([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least two"):
        paired_test([1.0], [0.0])


def test_holm_rejects_in_order_and_stops_at_the_first_failure() -> None:
    assert holm([0.01, 0.04, 0.03]) == [True, False, False]  # 0.03 > 0.05 / 2
    assert holm([0.01, 0.02, 0.04]) == [True, True, True]  # 0.01<=.05/3, .02<=.025, .04<=.05
    assert holm([math.nan, 0.001]) == [False, True]


def _same_run(a: Path, b: Path) -> None:
    rows_a = [json.loads(line) for line in (a / "results.jsonl").read_text().splitlines()]
    rows_b = [json.loads(line) for line in (b / "results.jsonl").read_text().splitlines()]
    keys = ("cycle", "role", "ingredient", "accuracy", "loss", "sparsity")
    assert [[r[k] for k in keys] for r in rows_a] == [[r[k] for k in keys] for r in rows_b]
    for f in sorted(a.glob("cycle_*/**/*.safetensors")):
        x, y = load_tensors(f), load_tensors(b / f.relative_to(a))
        assert x.keys() == y.keys()
        assert all(torch.equal(x[k], y[k]) for k in x), f


def _model_stamps(runs: list[Path]) -> dict[Path, int]:
    """When each trained model file was written."""
    return {f: f.stat().st_mtime_ns for r in runs for f in r.glob("cycle_*/**/*.safetensors")}


@pytest.mark.slow
def test_parallel_runs_equal_one_thread_runs_in_this_process(tmp_path: Path) -> None:
    configs = [
        resolve_config({**TINY, "recipe": r, "seed": 7, "ingredients": {"count": k}})
        for r, k in (("imp", 1), ("swamp", 2))
    ]
    parallel = run_many(configs, tmp_path / "parallel", workers=2)
    assert [p.name for p in parallel] == [c.run_name() for c in configs]  # in config order
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each worker uses
    try:
        for config, p in zip(configs, parallel, strict=True):
            _same_run(p, run(config, tmp_path / "here"))
    finally:
        torch.set_num_threads(threads)
    # a second call finds every run finished and trains nothing
    stamps = _model_stamps(parallel)
    assert run_many(configs, tmp_path / "parallel", workers=2) == parallel
    assert _model_stamps(parallel) == stamps and len(stamps) > 5


def test_a_failing_run_raises_its_own_error_from_the_worker(tmp_path: Path) -> None:
    good = resolve_config({**TINY, "recipe": "imp"})
    bad = resolve_config({**TINY, "recipe": "imp", "data": {"dataset": "no-such-data"}})
    with pytest.raises(ConfigError, match="no-such-data"):
        run_many([bad, good], tmp_path, workers=2)
    with pytest.raises(ValueError, match="workers"):
        run_many([good], tmp_path, workers=0)


@pytest.mark.slow
def test_a_tiny_study_writes_tables_tests_and_plots_and_resumes(tmp_path: Path) -> None:
    setting = Setting(
        name="tiny",
        title="tiny MNIST-1D",
        base=TINY,
        why="the smallest budget that trains",
        groups=(
            Group("IMP", "main", {"recipe": "imp"}, ("hessian",)),
            Group("SWAMP (N=4)", "main", {"recipe": "swamp", "ingredients": {"count": 2}}),
        ),
    )
    docs = tmp_path / "docs"
    (path,) = run_study(tmp_path / "runs", docs, settings=[setting], seeds=(0, 1), workers=2)
    text = path.read_text()
    assert "| sparsity % | IMP | SWAMP (N=4) |" in text
    assert text.count("\n| 0.0 | ") == 1 and text.count("\n| 50.0 | ") == 1
    assert "| SWAMP (N=4) − IMP | 50.0 |" in text  # the paired test at each sparsity
    assert "**SWAMP (N=4)** vs **IMP** (2 seeds" in text
    assert (docs / "results" / "tiny_accuracy.png").stat().st_size > 0
    # each group's config file reruns its runs: the same run directory names
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if p.is_dir())
    assert "trained 4 of 4 runs on " in text and "rewritten" not in text
    files = sorted((docs / "results" / "configs").glob("*.toml"))
    assert [f.name for f in files] == ["tiny--imp.toml", "tiny--swamp-n-4.toml"]
    assert f"`results/configs/{files[0].name}` | 0,1 |" in text
    names = {resolve_config({**read_toml(f), "seed": s}).run_name() for f in files for s in (0, 1)}
    assert names == {r.name for r in runs}
    # the analysis ran where the plan asked for it, and only there
    assert [(r / "analysis" / "summary.json").is_file() for r in runs] == [
        r.name.startswith("imp-") for r in runs
    ]
    stamps = _model_stamps(runs)
    analysed = (runs[0] / "analysis" / "cycle_01.json").stat().st_mtime_ns
    (again,) = run_study(tmp_path / "runs", docs, settings=[setting], seeds=(0, 1), workers=1)
    assert _model_stamps(runs) == stamps and len(stamps) > 10
    assert (runs[0] / "analysis" / "cycle_01.json").stat().st_mtime_ns == analysed

    # the same tables; only the line with the wall time differs
    def tables(t: str) -> list[str]:
        return [line for line in t.splitlines() if line.startswith("|")]

    assert tables(again.read_text()) == tables(text)
    # the header still names the call that trained, and says this one only rewrote it
    header = again.read_text().split("\n\n")[1]
    assert header.count("trained 4 of 4 runs") == 1 and "trained 0 of" not in header
    assert "This document was rewritten from the finished runs by `make study` in" in header


def _comparison(diffs_by_cycle: list[list[float]]):
    from sparseavg.study.write import Comparison

    tests = [paired_test(d, [0.0] * len(d)) for d in diffs_by_cycle]
    return Comparison(
        "A",
        "B",
        list(range(len(tests))),
        [0.1 * c for c in range(len(tests))],
        tests,
        holm([t.p for t in tests]),
    )


def test_verdict_says_where_seeds_agree_when_the_corrected_test_cannot_tell() -> None:
    from sparseavg.study.write import verdict

    # cycle 0: large and consistent (significant); 1: every seed below but small n; 2: mixed
    text = verdict(
        _comparison(
            [
                [0.10, 0.11, 0.12, 0.10, 0.11],
                [-0.01, -0.03, -0.002, -0.05, -0.01],
                [0.01, -0.02, 0.03, -0.01, 0.0],
            ]
        )
    )
    assert "higher at 0.0 % sparsity" in text
    assert "not distinguishable from it at the other 2 of 3 sparsities after correction" in text
    assert "uncorrected, lower in every seed at 10.0 %" in text
    none = verdict(_comparison([[0.01, -0.02, 0.03], [0.02, -0.01, 0.0]]))
    assert "at any of the 2 sparsities" in none and "uncorrected" not in none


def test_the_tiny_budget_verdict_follows_the_numbers() -> None:
    from sparseavg.study.collect import SeedRun
    from sparseavg.study.run import _tiny_verdict

    tiny = {"recipe": "sms", "train": {"epochs": 1}}
    setting = Setting(
        "s",
        "s",
        TINY,
        "",
        (
            Group("a", "sms-tiny", tiny),
            Group("b", "sms-tiny", tiny),
            Group("long", "sms-tiny", {**tiny, "train": {"epochs": 10}}),
        ),
    )

    def runs(soups: list[float], stall: bool = True) -> list[SeedRun]:
        out = []
        for seed, soup in enumerate(soups):
            ings = [0.64, 0.63, 0.44] if seed == 0 and stall else [0.60, 0.61, 0.62]
            out.append(SeedRun(Path("."), seed, {1: soup}, {1: 0.4}, {1: ings}))
        return out

    long = runs([0.95, 0.95], stall=False)
    for r in long:
        r.ingredients[1] = [0.95, 0.95, 0.95]
    ok = _tiny_verdict(
        setting,
        {"a": runs([0.45, 0.612]), "b": runs([0.451, 0.61]), "long": long},
        ["a", "b", "long"],
    )
    assert "seed 0: ingredients 64.0, 63.0, 44.0 %, soup 45.0 %, 1.0 points" in ok[0]
    assert "+0.20 ± 0.00 points" in ok[1] and "at most 0.20 points" in ok[2]
    assert ok[-1].startswith("**Verdict: the method at a tiny budget")
    moved = _tiny_verdict(
        setting,
        {"a": runs([0.45, 0.612]), "b": runs([0.50, 0.61]), "long": long},
        ["a", "b", "long"],
    )
    assert moved[-1].startswith("**Verdict: the recalibration changes the soup")


def _record(settings: tuple[str, ...], trained: int) -> StudyRecord:
    return StudyRecord(
        "make study", "2 cores", "2.13.0", 2, 60.0, 50.0, 10.0, trained, trained, settings=settings
    )


def test_a_one_setting_call_rewrites_its_document_alone_and_final_only_pairs_last_models(
    tmp_path: Path,
) -> None:
    """``study --settings mnist1d-during`` must not wipe RESULTS.md (whose runs may be gone):
    each setting names its document, and a call writes only the chosen settings' documents.
    A final-only setting tabulates and pairs each run's last model, whatever its cycle."""
    during = Setting(
        "b",
        "setting B",
        TINY,
        "why B",
        (Group("GMP", "main", {"recipe": "imp"}), Group("SMS-GMP", "main", {"recipe": "sms"})),
        paired=(("SMS-GMP", "GMP"),),
        document="RESULTS-during-training.md",
        final_only=True,
    )
    docs = tmp_path / "docs"
    (docs).mkdir()
    (docs / "RESULTS.md").write_text("kept\n")
    # gmp: one cycle at 95 %; sms-gmp: phases 0..2, the last at 95 % (as read, then cut)
    gmp = [SeedRun(tmp_path, s, {0: 0.80 + s / 100}, {0: 0.95}) for s in (0, 1, 2)]
    sms = [
        last_cycle_only(
            SeedRun(
                tmp_path,
                s,
                {0: 0.9, 1: 0.88, 2: 0.85 + s / 100},
                {0: 0.0, 1: 0.8, 2: 0.95},
                {2: [0.8, 0.82, 0.84]},
            )
        )
        for s in (0, 1, 2)
    ]
    calls = [_record(("a",), 10), _record(("b",), 6)]
    paths = write_study(docs, [during], {"b": {"GMP": gmp, "SMS-GMP": sms}}, calls)
    assert paths == [docs / "RESULTS-during-training.md"]
    assert (docs / "RESULTS.md").read_text() == "kept\n"
    text = paths[0].read_text()
    assert text.startswith("# Pruning during training, and averaging on top of it")
    assert "trained 6 of 6 runs" in text and "trained 10 of" not in text  # its own calls only
    assert "| GMP | 95.0 | 81.00 ± 1.00 | – |" in text
    assert "| SMS-GMP | 95.0 | 86.00 ± 1.00 | 82.00 ± 0.00 |" in text
    assert "| SMS-GMP − GMP | 95.0 | +5.00 ± 0.00 |" in text
    assert "[Reproduction study](RESULTS.md)" in text
    assert not (docs / "results" / "b_accuracy.png").exists()


def test_an_interrupted_study_records_what_it_trained_and_says_what_it_will_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A study stopped by Ctrl-C used to leave no record, so the call that resumed it wrote
    "No recorded call trained these runs". The stopped call now records the runs it finished
    (note: stopped before the end), and every call first says what it will run."""
    import sparseavg.study.run as study_run
    from sparseavg.experiment.progress import NullReporter
    from sparseavg.study.write import describe_calls

    setting = Setting("tiny", "tiny", TINY, "why", (Group("IMP", "main", {"recipe": "imp"}),))
    configs = setting.configs(setting.groups[0], (0, 1))
    finished = {configs[0].run_name()}

    def finishes_one_then_stops(cs, runs_dir, **kwargs):
        finished.add(configs[1].run_name())
        raise KeyboardInterrupt

    monkeypatch.setattr(study_run, "run_many", finishes_one_then_stops)
    monkeypatch.setattr(study_run, "_finished", lambda d, c: c.run_name() in finished)
    messages: list[str] = []

    class Collect(NullReporter):
        def message(self, text: str) -> None:
            messages.append(text)

    with pytest.raises(KeyboardInterrupt):
        run_study(
            tmp_path / "runs",
            tmp_path / "docs",
            settings=[setting],
            seeds=(0, 1),
            reporter=Collect(),
        )
    assert messages[0] == "study: 2 runs of tiny (1 finished before), 1 at a time"
    lines = (tmp_path / "runs" / "study_calls.jsonl").read_text().splitlines()
    (call,) = [StudyRecord.from_dict(json.loads(line)) for line in lines]
    assert (call.trained, call.runs, call.note, call.settings) == (
        1,
        2,
        "stopped before the end",
        ("tiny",),
    )
    assert "trained 1 of 2 runs" in describe_calls([call])


def test_the_slurm_launcher_runs_jobs_names_failures_and_resubmits_only_unfinished_runs(
    tmp_path: Path,
) -> None:
    """submitit's local executor stands in for SLURM: each unfinished run is one job; a failed
    run is named with its log, the others finish; a second call submits nothing that is
    finished."""
    pytest.importorskip("submitit")
    from sparseavg.experiment.progress import NullReporter
    from sparseavg.experiment.slurm import LaunchError, SlurmLauncher

    good = resolve_config({**TINY, "recipe": "imp"})
    bad = resolve_config({**TINY, "recipe": "imp", "data": {"dataset": "no-such-data"}})
    launcher = SlurmLauncher(cluster="local", folder=str(tmp_path / "jobs"))
    messages: list[str] = []

    class Collect(NullReporter):
        def message(self, text: str) -> None:
            messages.append(text)

    with pytest.raises(LaunchError) as err:
        run_many([good, bad], tmp_path / "runs", launcher=launcher, reporter=Collect())
    text = str(err.value)
    assert text.startswith(f"1 of 2 submitted runs failed: {bad.run_name()} (")
    assert "no-such-data" in text and str(tmp_path / "jobs") in text
    assert good.run_name() not in text
    assert messages == ["submitting 2 of 2 runs (runs)"]
    messages.clear()
    (path,) = run_many([good], tmp_path / "runs", launcher=launcher, reporter=Collect())
    assert path == tmp_path / "runs" / good.run_name() and messages == []  # nothing submitted
    with pytest.raises(ValueError, match="time must be >= 1"):
        SlurmLauncher(time=0)
