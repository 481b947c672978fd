"""Reading run directories through one typed API, and manifests that name their run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from engine_helpers import only_run, rows, tiny_args
from fake_runs import FAKE, make_run, results_text
from sparseavg.cli.main import main
from sparseavg.config import to_toml
from sparseavg.experiment.rundir import RunDir
from sparseavg.experiment.runinfo import (
    RunDirError,
    legacy_digest,
    read_results,
    read_run,
    read_run_config,
)
from sparseavg.recipes import resolve_config
from sparseavg.utils.files import CorruptFileError, load_tensors


def test_read_run_config_returns_the_config_that_named_the_run(tmp_path):
    run = make_run(tmp_path, FAKE)
    config = read_run_config(run)
    assert config == resolve_config(FAKE)
    assert run.name == config.run_name()
    info = read_run(run)
    assert (info.path, info.name, info.members, info.complete_cycles()) == (run, run.name, 1, [0])
    assert info.rundir.run_id == config.digest()


def test_a_config_written_before_a_field_existed_still_reads(tmp_path):
    """Fields a config.toml lacks take their defaults, and the name still matches."""
    run = make_run(tmp_path, FAKE)
    text = (run / "config.toml").read_text()
    for line in ("augment = false\n", 'channels_last = "auto"\n', 'early = "swa"\n'):
        assert line in text
        text = text.replace(line, "", 1)
    (run / "config.toml").write_text(text)
    assert read_run_config(run) == resolve_config(FAKE)


def test_a_field_whose_recipe_default_is_new_reads_as_the_run_ran(tmp_path):
    """swamp-rigl runs written before pruning.rigl_decide existed ran with each particle
    deciding (the field's default), not with the recipe's new default "average": read back
    without the field, such a run keeps its behaviour and its name."""
    old = {**FAKE, "recipe": "swamp-rigl", "pruning": {"cycles": 0, "rigl_decide": "each"}}
    run = make_run(tmp_path, old, complete=0)
    text = (run / "config.toml").read_text()
    assert 'rigl_decide = "each"\n' in text
    (run / "config.toml").write_text(text.replace('rigl_decide = "each"\n', ""))
    config = read_run_config(run)
    assert config.pruning.rigl_decide == "each" and config.run_name() == run.name
    new = {**FAKE, "recipe": "swamp-rigl", "pruning": {"cycles": 0}}
    assert resolve_config(new).pruning.rigl_decide == "average"


def test_swamp_rigl_runs_from_before_rigl_together_read_as_parted_from_the_start(tmp_path):
    """Lock-step runs written before pruning.rigl_together existed parted at step 0 (the
    field's default), not after the recipe's new default half of training."""
    old = {**FAKE, "recipe": "swamp-rigl", "pruning": {"cycles": 0, "rigl_together": 0.0}}
    run = make_run(tmp_path, old, complete=0)
    text = (run / "config.toml").read_text()
    assert "rigl_together = 0.0\n" in text
    (run / "config.toml").write_text(text.replace("rigl_together = 0.0\n", ""))
    config = read_run_config(run)
    assert config.pruning.rigl_together == 0.0 and config.run_name() == run.name
    assert resolve_config({**old, "pruning": {"cycles": 0}}).pruning.rigl_together == 0.5


def test_sms_dpf_runs_from_before_the_dense_settle_read_as_masked(tmp_path):
    old = {
        **FAKE,
        "recipe": "sms-dpf",
        "train": {"epochs": 4},
        "pruning": {"gmp_interval": 1, "cycles": 3, "dpf_settle": "masked"},
    }
    run = make_run(tmp_path, old, complete=0)
    text = (run / "config.toml").read_text()
    (run / "config.toml").write_text(text.replace('dpf_settle = "masked"\n', ""))
    config = read_run_config(run)
    assert config.pruning.dpf_settle == "masked" and config.run_name() == run.name
    new = {**old, "pruning": {"gmp_interval": 1, "cycles": 3}}
    assert resolve_config(new).pruning.dpf_settle == "dense"


def test_a_hand_edited_config_is_refused_with_one_line_that_says_so(tmp_path):
    run = make_run(tmp_path, FAKE)
    path = run / "config.toml"
    path.write_text(path.read_text().replace("lr = 0.1\n", "lr = 0.2\n"))
    edited = resolve_config({**FAKE, "train": {"epochs": 2, "lr": 0.2}}).digest()[:8]
    with pytest.raises(RunDirError) as err:
        read_run_config(run)
    assert str(err.value) == (
        f"{path}: this config hashes to {edited}, not to the {run.name[-8:]} of its run "
        "directory's name: it was edited after the run started, so the results are not its "
        "results. Restore it, or run the edited config as a new run"
    )


def test_only_names_that_end_in_a_hash_are_checked(tmp_path):
    run = make_run(tmp_path, FAKE, name="my-study")
    path = run / "config.toml"
    path.write_text(path.read_text().replace("lr = 0.1\n", "lr = 0.2\n"))
    assert read_run_config(run).train.lr == 0.2


def test_runs_named_by_the_old_whole_config_hash_still_read(tmp_path):
    config = resolve_config(FAKE)
    values = config.to_dict()
    old_name = f"imp-mnist1d-conv1d-{legacy_digest(values)[:8]}"
    assert old_name != config.run_name()
    run = make_run(tmp_path, FAKE, name=old_name)
    assert read_run_config(run) == config
    # the legacy hash is the one sparseavg 0.1 named runs by: sha256 of the sorted JSON
    kept = {k: v for k, v in values.items() if k != "execution"}
    digest = hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()
    assert legacy_digest(values) == digest


def test_damaged_and_missing_configs(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        read_run_config(tmp_path)
    run = make_run(tmp_path, FAKE)
    (run / "config.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(CorruptFileError, match=r"config\.toml: not valid TOML"):
        read_run_config(run)


def test_read_results_accepts_every_role_and_checks_each_line(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    assert read_results(run) == []
    roles = ["ensemble", "combined", "ingredient", "average", "reprune"]
    lines = [json.dumps({"cycle": 1, "role": r, "headline": r == "reprune"}) for r in roles]
    (run / "results.jsonl").write_text("\n".join(lines) + "\n\n")
    assert [r["role"] for r in read_results(run)] == roles
    (run / "results.jsonl").write_text(lines[0] + '\n{"cycle": true, "role": "combined"}\n')
    with pytest.raises(CorruptFileError, match=r"results\.jsonl, line 2: missing or non-integer"):
        read_results(run)


# -- manifests name their run ---------------------------------------------------------------------


def test_manifests_record_the_run_and_refuse_a_folder_from_another_run(tmp_path):
    mine, theirs = "a" * 64, "b" * 64
    cycle = tmp_path / "cycle_00"
    cycle.mkdir()
    (cycle / "rows.json").write_text("[]\n")
    RunDir(tmp_path, run_id=theirs).write_manifest(cycle)
    assert json.loads((cycle / "manifest.json").read_text())["run_id"] == theirs
    with pytest.raises(CorruptFileError) as err:
        RunDir(tmp_path, run_id=mine).verify_manifest(cycle)
    assert str(err.value) == (
        f"{cycle}: its manifest names run bbbbbbbb, not this run (aaaaaaaa): the folder was "
        "copied in from another run directory; remove it, and the same command recomputes it"
    )
    RunDir(tmp_path, run_id=theirs).verify_manifest(cycle)  # its own run
    RunDir(tmp_path).verify_manifest(cycle)  # a reader that does not know the run id


def test_manifests_without_a_run_id_are_accepted(tmp_path):
    cycle = tmp_path / "cycle_00"
    cycle.mkdir()
    (cycle / "rows.json").write_text("[]\n")
    RunDir(tmp_path).write_manifest(cycle)
    assert "run_id" not in json.loads((cycle / "manifest.json").read_text())
    RunDir(tmp_path, run_id="a" * 64).verify_manifest(cycle)
    (cycle / "manifest.json").write_text("[1, 2]")
    with pytest.raises(CorruptFileError, match="not a sparseavg manifest"):
        RunDir(tmp_path, run_id="a" * 64).verify_manifest(cycle)


# -- end to end -----------------------------------------------------------------------------------


def test_the_advice_for_a_damaged_results_file_works(tmp_path, capsys):
    """report names the damaged results.jsonl and the command that rewrites it; that command
    does, and report reads the run again."""
    runs = tmp_path / "runs"
    assert main(tiny_args("imp", runs, "--set", "train.epochs=1", cycles=0)) == 0
    run = only_run(runs)
    good = results_text(run)
    (run / "results.jsonl").write_text(good[: len(good) // 2])
    capsys.readouterr()
    assert main(["report", str(runs)]) == 2
    err = capsys.readouterr().err
    advice = f"`sparseavg run {run}/config.toml --runs-dir {runs}`"
    assert err.startswith(f"sparseavg: error: {run}/results.jsonl, line 1: malformed JSON")
    assert err.endswith(f"; {advice} rewrites it from the complete cycles\n")
    assert main(["run", f"{run}/config.toml", "--runs-dir", str(runs), "--quiet"]) == 0
    assert results_text(run) == good
    assert main(["report", str(runs)]) == 0


def test_a_run_whose_paths_hold_characters_outside_the_bmp_resumes(tmp_path, capsys):
    """config.toml is written by a TOML library: a data directory named with an emoji reads
    back, so the run resumes instead of refusing its own config."""
    data = tmp_path / "data \U0001f600"
    data.symlink_to(os.environ["SPARSEAVG_DATA"], target_is_directory=True)
    args = tiny_args("imp", tmp_path / "runs", "--data-dir", str(data), cycles=0)
    assert main(args) == 0
    run = only_run(tmp_path / "runs")
    assert "\U0001f600" in (run / "config.toml").read_text(encoding="utf-8")
    before = rows(run)
    assert main(args) == 0
    assert rows(run) == before
    assert read_run_config(run).execution.data_dir == str(data)
    shutil.rmtree(run)


def test_export_picks_the_member_it_is_asked_for(tmp_path, capsys):
    run = make_run(tmp_path / "runs", {**FAKE, "recipe": "ensemble"}, complete=1)
    out = tmp_path / "m1.safetensors"
    assert main(["export", str(run), "--cycle", "0", "--member", "1", "--out", str(out)]) == 0
    summary = json.loads((tmp_path / "m1.json").read_text())
    assert (summary["member"], summary["test_accuracy"]) == (1, 0.6)
    exported = load_tensors(out)
    member = load_tensors(run / "cycle_00" / "member_1" / "combined.safetensors")
    assert exported.keys() == member.keys()
    assert all(bool((exported[k] == member[k]).all()) for k in member)
    other = load_tensors(run / "cycle_00" / "member_0" / "combined.safetensors")
    assert not all(bool((exported[k] == other[k]).all()) for k in other)
    assert summary["config"] == resolve_config({**FAKE, "recipe": "ensemble"}).to_dict()


def test_print_config_is_the_toml_the_run_writes(tmp_path, capsys):
    config_file = tmp_path / "c.toml"
    config_file.write_text(to_toml(FAKE))
    assert main(["run", str(config_file), "--runs-dir", str(tmp_path), "--print-config"]) == 0
    out = capsys.readouterr().out
    first, rest = out.split("\n", 1)
    assert first == f"# run directory: {tmp_path / resolve_config(FAKE).run_name()}"
    assert rest == to_toml(resolve_config(FAKE).to_dict())
