"""The command line's help and its error paths that the bad-input table cannot reach."""

from __future__ import annotations

import argparse
import errno
import importlib
import re

import torch

from fake_runs import make_run
from sparseavg.config import field_specs
from sparseavg.recipes import RECIPES

cli = importlib.import_module(
    "sparseavg.cli.main"
)  # the module (sparseavg.cli.main is the function)


def test_run_help_lists_every_field_with_its_default_and_what_it_accepts(capsys):
    assert cli.main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    for spec in field_specs():
        assert re.search(
            rf"^  {re.escape(spec.key)} = .* {re.escape(spec.allowed)}$", out, re.M
        ) or (spec.key == "recipe"), spec.key
    lines = out.splitlines()
    assert '  train.optimizer = "sgd"                    sgd|adam|adamw' in lines
    assert "  pruning.fraction = 0.2                     number in (0, 1)" in lines
    assert "  ingredients.count = 1                      integer in [1, inf)" in lines
    assert "  train.milestones = [0.5, 0.75]             list of numbers in (0, 1)" in lines
    assert '  recipe = "imp"                             ' + "|".join(RECIPES) in lines
    i = lines.index("  pruning.fraction = 0.2                     number in (0, 1)")
    assert lines[i + 1] == "      share of the surviving weights removed per cycle (0.2 keeps 80 %)"


def test_a_full_disk_stops_with_exit_1_and_says_how_to_resume(tmp_path, capsys, monkeypatch):
    from sparseavg.experiment import report

    def no_space(runs, out):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "report.md"))

    monkeypatch.setattr(report, "write_report", no_space)
    make_run(tmp_path / "runs")
    assert cli.main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "rep")]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"sparseavg: stopped: {tmp_path}/rep/report.md: No space left on device; free some "
        "space and run the same command again to resume\n"
    )


def test_other_os_errors_name_both_paths(tmp_path, capsys, monkeypatch):
    def denied(args):
        raise PermissionError(errno.EACCES, "Permission denied", "/a/x.tmp", None, "/a/x")

    monkeypatch.setitem(cli.COMMANDS, "report", denied)
    assert cli.main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "sparseavg: error: /a/x.tmp -> /a/x: Permission denied\n"


def test_flags_cannot_be_abbreviated(tmp_path, capsys, monkeypatch):
    """argparse took ``--seed 0,1`` as ``--seeds`` and started the two-hour study: every parser
    refuses an abbreviation with exit 2 and one line, and nothing starts."""
    import sparseavg.study.run

    started = []
    monkeypatch.setattr(sparseavg.study.run, "run_study", lambda *a, **k: started.append(a))
    runs = str(tmp_path / "runs")
    assert cli.main(["study", "--seed", "0,1", "--runs-dir", runs, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sparseavg: error: unrecognized arguments: --seed 0,1")
    assert len(err.splitlines()) == 1
    assert cli.main(["run", "--recip", "imp", "--quiet"]) == 2
    assert "unrecognized arguments: --recip" in capsys.readouterr().err
    assert cli.main(["--hel"]) == 2
    assert started == [] and not list(tmp_path.iterdir())


def test_version_and_the_help_a_newcomer_reads(capsys):
    """``--version`` exists; ``demo --help`` says what the demo does; ``export --cycle`` and
    analyze's numeric options say what they mean and their defaults."""
    from importlib.metadata import version

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"sparseavg {version('sparseavg')}\n"
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert "MNIST-1D" in (sub.choices["demo"].description or "")
    helps = {
        (name, a.dest): a.help or ""
        for name, p in sub.choices.items()
        for a in p._actions
        if a.dest not in ("help",)
    }
    assert "cycle" in helps[("export", "cycle")]
    assert helps[("analyze", "points")].endswith("default: 11)")
    assert helps[("analyze", "probes")].endswith("default: 16)")
    assert helps[("analyze", "hessian_batches")].endswith("default: 4)")


def test_the_cli_prints_a_library_warning_as_one_line(tmp_path, capsys, monkeypatch):
    """A pruning step that empties a layer warns in the library; the CLI shows that warning as
    one line on stderr, and the command still succeeds."""
    from sparseavg.pruning import Mask, magnitude_prune

    def prunes_a_layer_away(args):
        weights = {"big.weight": torch.arange(1.0, 101.0), "out.weight": torch.full((4,), 0.5)}
        magnitude_prune(weights, Mask.ones_like(weights), fraction=0.8, scope="global")
        return 0

    monkeypatch.setitem(cli.COMMANDS, "report", prunes_a_layer_away)
    assert cli.main(["report", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("sparseavg: warning: pruning left no weight alive in out.weight: ")
    assert len(err.splitlines()) == 1


def test_study_slurm_flags_need_the_slurm_launcher_and_are_handed_on(tmp_path, capsys, monkeypatch):
    import sparseavg.study.run

    started = []
    monkeypatch.setattr(
        sparseavg.study.run, "run_study", lambda *a, **k: started.append(k["launcher"]) or []
    )
    runs = str(tmp_path / "runs")
    assert cli.main(["study", "--slurm-partition", "gpu", "--runs-dir", runs, "--quiet"]) == 2
    assert capsys.readouterr().err == (
        "sparseavg: error: --slurm-partition needs --launcher slurm\n"
    )
    argv = ["study", "--launcher", "slurm", "--slurm-partition", "gpu", "--slurm-gpus", "1"]
    assert cli.main([*argv, "--runs-dir", runs, "--docs", str(tmp_path / "d"), "--quiet"]) == 0
    (launcher,) = started
    assert (launcher.partition, launcher.gpus, launcher.time, launcher.cluster) == (
        "gpu",
        1,
        240,
        None,
    )
    assert cli.main(["study", "--launcher", "slurm", "--slurm-time", "0", "--quiet"]) == 2
    assert "--slurm-time: time must be >= 1, got 0" in capsys.readouterr().err
