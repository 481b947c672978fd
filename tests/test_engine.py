import json
import shutil

import pytest
import torch

from engine_helpers import final_weights, only_run, rows, same_weights, tiny_args
from sparseavg.cli.main import main
from sparseavg.experiment import rundir as rundir_module
from sparseavg.models import build_model
from sparseavg.pruning import Mask
from sparseavg.recipes import RECIPES
from sparseavg.utils.files import CorruptFileError, load_tensors


def _cycles(recipe):
    if recipe in ("imp-avg", "imp-reprune"):
        return 2  # the lineages' masks first differ in cycle 2
    return None if recipe in ("one-shot", "gmp", "dpf", "rigl", "swamp-rigl") else 1


def _extra(recipe):
    # the phased recipes: one phase per step of gmp's schedule, 2 epochs // 1 - 1 = 1
    return ("--set", "pruning.gmp_interval=1") if recipe in ("sms-gmp", "sms-dpf") else ()


NEEDS_A_SOURCE_RUN = {"reinit"}  # tested in test_definitions.py with pruning.masks_from


@pytest.mark.parametrize("recipe", sorted(set(RECIPES) - NEEDS_A_SOURCE_RUN))
def test_every_recipe_runs_end_to_end_from_the_cli(recipe, tmp_path, capsys):
    assert main(tiny_args(recipe, tmp_path, *_extra(recipe), cycles=_cycles(recipe))) == 0
    run = only_run(tmp_path)
    assert (run / "config.toml").is_file()
    table = capsys.readouterr().out
    assert "sparsity %" in table and str(run) in table
    result = rows(run)
    last_cycle = max(r["cycle"] for r in result)
    for c in range(last_cycle + 1):
        cdir = run / f"cycle_{c:02d}"
        assert (cdir / "manifest.json").is_file() and (cdir / "rows.json").is_file()
        assert list(cdir.rglob("combined.safetensors")) and list(cdir.rglob("mask.safetensors"))
        assert not list(cdir.rglob("checkpoint.pt"))  # removed once an ingredient is final
    for c in range(last_cycle + 1):  # exactly one headline row per cycle
        assert len([r for r in result if r["cycle"] == c and r["headline"]]) == 1
    final = [r for r in result if r["cycle"] == last_cycle and r["headline"]]
    assert 0.0 < final[0]["accuracy"] <= 1.0
    headline_role = {
        "ensemble": "ensemble",
        "sms-ensemble": "ensemble",
        "imp-avg": "average",
        "imp-reprune": "reprune",
    }.get(recipe, "combined")
    assert final[0]["role"] == headline_role
    mask = Mask.load(sorted(run.rglob("mask.safetensors"))[-1])
    # recipes with a target_sparsity of 0.9
    ninety = {"one-shot", "gmp", "dpf", "bimp", "sms-bimp", "sms-gmp", "sms-dpf", "rigl"}
    ninety |= {"swamp-rigl"}
    expected = {"imp-avg": 0.36, "imp-reprune": 0.36}.get(recipe, 0.9 if recipe in ninety else 0.2)
    if recipe == "imp-avg":  # the lineages' masks differ: their average is alive on the union
        assert 0.2 < final[0]["sparsity"] < expected
    else:
        assert final[0]["sparsity"] == pytest.approx(expected, abs=1e-3)
        assert final[0]["alive"] == mask.num_alive
    if recipe in ninety - {"rigl", "swamp-rigl"}:  # rigl floors each layer's zeros: 0.8993
        assert mask.num_pruned == round(0.9 * mask.num_total)


def test_swamp_particles_share_the_ticket_and_average_exactly(tmp_path):
    assert main(tiny_args("swamp", tmp_path, "--set", "ingredients.count=3", cycles=1)) == 0
    run = only_run(tmp_path)
    result = rows(run)
    ing = [r for r in result if r["cycle"] == 1 and r["role"] == "ingredient"]
    assert [r["ingredient"] for r in ing] == [0, 1, 2]
    assert len({r["accuracy"] for r in ing}) > 1  # different batch orders
    finals = [load_tensors(run / f"cycle_01/ingredient_{k}/final.safetensors") for k in range(3)]
    combined = load_tensors(run / "cycle_01/combined.safetensors")
    mask = Mask.load(run / "cycle_01/mask.safetensors")
    for name in mask:
        mean = torch.stack([f[name] for f in finals]).mean(0)
        assert torch.allclose(combined[name], mean, atol=1e-6)
        assert torch.equal(
            combined[name][~mask[name]], torch.zeros_like(combined[name][~mask[name]])
        )
    # the mask of cycle 1 removes exactly round(0.2 * total) from the averaged dense model
    assert mask.num_pruned == round(0.2 * mask.num_total)


class _StopAfter:
    """A reporter that interrupts the run after ``n`` progress updates."""

    def __init__(self, n):
        self.n = n

    def message(self, text):
        pass

    def task(self, label, total):
        return 0

    def update(self, task, completed, info=""):
        self.n -= 1
        if self.n == 0:
            raise KeyboardInterrupt

    def finish(self, task):
        pass


@pytest.mark.parametrize(
    "recipe,stops",
    [("swamp", (7, 130, 300)), ("sms", (50, 200)), ("ensemble", (60, 200)), ("gmp", (90, 200))],
)
def test_interrupted_runs_resume_to_the_same_results(recipe, stops, tmp_path):
    from sparseavg.experiment import run
    from sparseavg.recipes import resolve_config

    values = {
        "recipe": recipe,
        "model": {"options": {"width": 8}},
        "train": {"epochs": 2, "lr": 0.05},
        "pruning": {"cycles": 2, "rewind_epochs": 0.5},
        "execution": {"device": "cpu"},
    }
    if recipe == "swamp":
        values["ingredients"] = {"count": 2}
    if recipe == "gmp":  # one run of 6 epochs whose mask tightens at every epoch end
        values["train"]["epochs"] = 6
        values["pruning"] = {"gmp_start": 0.0, "gmp_end": 0.99}
    config = resolve_config(values)
    reference = run(config, tmp_path / "a")
    for n in stops:
        with pytest.raises(KeyboardInterrupt):
            run(config, tmp_path / "b", _StopAfter(n))
    resumed = run(config, tmp_path / "b")
    assert rows(resumed) == rows(reference)
    assert same_weights(final_weights(resumed), final_weights(reference))


def _diverging_sms(runs, *extra):
    """A 3-ingredient SMS run whose ingredient 1 trains at a million times the lr."""
    return tiny_args(
        "sms",
        runs,
        "--set",
        'ingredients.vary="lr"',
        "--set",
        "ingredients.values=[1.0, 1e6, 1.0]",
        *extra,
        cycles=1,
    )


def test_divergence_drop_leaves_the_ingredient_out(tmp_path):
    assert main(_diverging_sms(tmp_path, "--set", 'execution.on_divergence="drop"')) == 0
    run = only_run(tmp_path)
    result = rows(run)
    dropped = [r for r in result if r["dropped"]]
    assert [(r["cycle"], r["ingredient"]) for r in dropped] == [(1, 1)]
    assert dropped[0]["accuracy"] is None
    info = json.loads((run / "cycle_01/ingredient_1/info.json").read_text())
    assert info["dropped"] and info["step"] >= 0
    finals = [load_tensors(run / f"cycle_01/ingredient_{k}/final.safetensors") for k in (0, 2)]
    combined = load_tensors(run / "cycle_01/combined.safetensors")
    assert torch.allclose(
        combined["fc.weight"], (finals[0]["fc.weight"] + finals[1]["fc.weight"]) / 2
    )


def test_divergence_stop_names_cycle_ingredient_and_step(tmp_path, capsys):
    assert main(_diverging_sms(tmp_path)) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("sparseavg: stopped:") and "cycle 1, ingredient 1, step" in err
    run = only_run(tmp_path)
    assert (run / "cycle_00/manifest.json").is_file()  # finished work kept
    assert (run / "cycle_01/ingredient_0/final.safetensors").is_file()


def test_a_changed_artifact_is_refused_by_name(tmp_path, capsys):
    assert main(tiny_args("imp", tmp_path, cycles=1)) == 0
    run = only_run(tmp_path)
    target = run / "cycle_00/combined.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(tiny_args("imp", tmp_path, cycles=1)) == 2
    err = capsys.readouterr().err
    assert "combined.safetensors" in err and "checksum" in err


def test_a_truncated_checkpoint_is_refused_by_name(tmp_path, capsys):
    from sparseavg.experiment import run
    from sparseavg.recipes import resolve_config

    config = resolve_config(
        {
            "recipe": "imp",
            "model": {"options": {"width": 8}},
            "train": {"epochs": 3},
            "pruning": {"cycles": 0},
        }
    )
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path, _StopAfter(80))
    ckpt = next(tmp_path.rglob("checkpoint.pt"))
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(CorruptFileError, match=r"checkpoint\.pt"):
        run(config, tmp_path)


def test_too_little_disk_stops_before_the_cycle(tmp_path, capsys, monkeypatch):
    class Usage:
        total, used, free = 10**9, 10**9, 1000

    monkeypatch.setattr(rundir_module.shutil, "disk_usage", lambda path: Usage())
    assert main(tiny_args("imp", tmp_path, cycles=1)) == 1
    err = capsys.readouterr().err
    assert "cycle 0 needs about" in err and "MiB are free" in err
    run = only_run(tmp_path)
    assert not list(run.glob("cycle_*/*.safetensors"))


def test_a_live_lock_is_refused_and_a_stale_one_taken_over(tmp_path, capsys):
    import subprocess
    import sys

    assert main(tiny_args("imp", tmp_path, "--print-config", cycles=0)) == 0
    name = capsys.readouterr().out.splitlines()[0].split("/")[-1]
    run = tmp_path / name
    run.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / "run.lock").write_text(str(sleeper.pid))
        assert main(tiny_args("imp", tmp_path, cycles=0)) == 2
        assert f"in use by process {sleeper.pid}" in capsys.readouterr().err
    finally:
        sleeper.kill()
        sleeper.wait()
    assert main(tiny_args("imp", tmp_path, cycles=0)) == 0
    # the CLI prints the library's warning as one line
    assert "sparseavg: warning: taking over the stale lock of process" in capsys.readouterr().err
    assert not (run / "run.lock").exists()


def test_export_loads_into_the_bare_model_with_its_zeros(tmp_path, capsys):
    assert main(tiny_args("imp", tmp_path, cycles=1)) == 0
    run = only_run(tmp_path)
    out = tmp_path / "export" / "model.safetensors"
    assert main(["export", str(run), "--cycle", "1", "--out", str(out)]) == 0
    state = load_tensors(out)
    model = build_model("conv1d", 10, (1, 40), width=8)
    model.load_state_dict(state)  # a plain state_dict: no wrapper, no extra keys
    mask = Mask.load(tmp_path / "export" / "model.mask.safetensors")
    zeros = sum(int((state[n] == 0).sum()) for n in mask)
    assert zeros >= mask.num_pruned and mask.sparsity == pytest.approx(0.2, abs=1e-3)
    summary = json.loads((tmp_path / "export" / "model.json").read_text())
    assert summary["cycle"] == 1 and summary["alive"] == mask.num_alive
    pt = tmp_path / "export" / "model.pt"
    assert main(["export", str(run), "--cycle", "1", "--out", str(pt)]) == 0
    model.load_state_dict(torch.load(pt, weights_only=True))
    assert main(["export", str(run), "--cycle", "5", "--out", str(pt)]) == 2


def test_report_and_inspect_commands(tmp_path, capsys):
    for seed in ("0", "1"):
        assert main(tiny_args("imp", tmp_path / "runs", "--seed", seed, cycles=1)) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "±" in out and (tmp_path / "rep/report.md").is_file()
    assert (tmp_path / "rep/accuracy_vs_sparsity.png").read_bytes()[:4] == b"\x89PNG"
    run = sorted((tmp_path / "runs").iterdir())[0]
    assert main(["inspect", str(run)]) == 0
    out = capsys.readouterr().out
    assert "cycles    2/2 complete" in out and "fc.weight" in out
    assert main(["inspect", str(run / "cycle_01/mask.safetensors")]) == 0
    assert "total" in capsys.readouterr().out
    assert main(["inspect", "--recipes"]) == 0
    assert "swamp" in capsys.readouterr().out


def test_rows_record_the_torch_version_and_thread_count_and_inspect_shows_them(tmp_path, capsys):
    """Issue 16 item 5: a 2-thread run and a 1-thread one differ in the last digits (CPU
    kernels reduce in another order), so every row says what computed it."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert main(tiny_args("imp", tmp_path, cycles=1)) == 0
    finally:
        torch.set_num_threads(threads)
    run = only_run(tmp_path)
    assert {(r["torch"], r["threads"]) for r in rows(run)} == {(torch.__version__, 1)}
    header = (run / "results.csv").read_text().splitlines()[0].split(",")
    assert header[header.index("seconds") + 1 : header.index("seconds") + 3] == ["threads", "torch"]
    capsys.readouterr()
    assert main(["inspect", str(run)]) == 0
    assert f"\ncomputed  torch {torch.__version__}, 1 thread\n" in capsys.readouterr().out


def test_inspect_names_the_cycles_of_each_thread_count_where_they_differ():
    from sparseavg.experiment.inspect import _computed_with

    rows = [
        {"cycle": 0, "torch": "2.13.0", "threads": 2},
        {"cycle": 0, "torch": "2.13.0", "threads": 2},
        {"cycle": 1, "torch": "2.13.0", "threads": 1},
        {"cycle": 2, "torch": "2.13.0", "threads": 2},
    ]
    assert _computed_with(rows) == (
        "torch 2.13.0, 2 threads (cycles 0, 2); torch 2.13.0, 1 thread (cycles 1)"
    )
    assert _computed_with([{"cycle": 0, "accuracy": 0.5}]) == ""  # rows before issue 16


def test_resolved_config_names_the_run_and_a_rerun_reuses_it(tmp_path, capsys):
    assert main(tiny_args("imp", tmp_path, cycles=0)) == 0
    run = only_run(tmp_path)
    before = rows(run)
    stamp = (run / "cycle_00/combined.safetensors").stat().st_mtime_ns
    assert main(tiny_args("imp", tmp_path, cycles=0)) == 0
    assert rows(run) == before
    assert (run / "cycle_00/combined.safetensors").stat().st_mtime_ns == stamp
    shutil.rmtree(run)


def test_sms_from_a_pretrained_checkpoint_and_a_run_from_an_initial_mask(tmp_path, capsys):
    assert main(tiny_args("imp", tmp_path / "a", cycles=1)) == 0
    source = only_run(tmp_path / "a")
    dense = tmp_path / "dense.safetensors"
    assert main(["export", str(source), "--cycle", "0", "--out", str(dense)]) == 0
    args = tiny_args(
        "sms",
        tmp_path / "b",
        "--set",
        f"model.pretrained='{dense}'",
        "--set",
        "ingredients.count=2",
        cycles=1,
    )
    assert main(args) == 0
    run = only_run(tmp_path / "b")
    result = rows(run)
    source_dense = next(r for r in rows(source) if r["cycle"] == 0 and r["role"] == "combined")
    sms_dense = next(r for r in result if r["cycle"] == 0 and r["role"] == "combined")
    assert sms_dense["accuracy"] == source_dense["accuracy"]  # cycle 0 is the checkpoint itself
    assert not (run / "cycle_00/ingredient_0").exists()  # nothing trained in cycle 0
    # a run that starts from the exported cycle-1 mask is 20 % sparse in cycle 0 already
    mask_file = tmp_path / "m.safetensors"
    Mask.load(source / "cycle_01/mask.safetensors").save(mask_file)
    assert (
        main(
            tiny_args(
                "imp", tmp_path / "c", "--set", f"pruning.initial_mask='{mask_file}'", cycles=0
            )
        )
        == 0
    )
    started = rows(only_run(tmp_path / "c"))
    assert started[0]["sparsity"] == pytest.approx(0.2, abs=1e-3)
    final = load_tensors(only_run(tmp_path / "c") / "cycle_00/combined.safetensors")
    mask = Mask.load(mask_file)
    for name in mask:
        assert torch.equal(final[name][~mask[name]], torch.zeros_like(final[name][~mask[name]]))


def test_pruning_include_prunes_exactly_the_named_weights(tmp_path):
    include = "pruning.include=['features.0.weight', 'fc.*']"  # a conv and the classifier
    assert main(tiny_args("imp", tmp_path, "--set", include, cycles=1)) == 0
    mask = Mask.load(only_run(tmp_path) / "cycle_01/mask.safetensors")
    assert sorted(mask) == ["fc.bias", "fc.weight", "features.0.weight"]
    total = sum(r.total for r in mask.report())
    pruned = sum(r.total - r.alive for r in mask.report())
    assert pruned == round(0.2 * total)  # global magnitude over the included weights only


def test_greedy_soup_exclusions_layerwise_scope_and_bn_batches_in_a_run(tmp_path):
    args = tiny_args(
        "sms", tmp_path,
        "--set", 'ingredients.combine="greedy"', "--set", "ingredients.count=3",
        "--set", "bn.batches=2", "--set", "bn.momentum=0", "--set", "bn.augment=false",
        "--set", "pruning.exclude_last=true",
        "--set", 'pruning.scope="layerwise"', "--set", "pruning.fraction=0.5",
        cycles=1,
    )  # fmt: skip
    assert main(args) == 0
    run = only_run(tmp_path)
    selected = json.loads((run / "cycle_01/soup.json").read_text())["selected"]
    assert selected and set(selected) <= {0, 1, 2} and len(set(selected)) == len(selected)
    combined_row = next(r for r in rows(run) if r["cycle"] == 1 and r["role"] == "combined")
    assert combined_row["selected"] == selected
    mask = Mask.load(run / "cycle_01/mask.safetensors")
    assert "fc.weight" not in mask  # the classifier stays dense
    for r in mask.report():  # layerwise: every layer loses exactly round(0.5 * its size)
        assert r.total - r.alive == round(0.5 * r.total)
    finals = [load_tensors(run / f"cycle_01/ingredient_{k}/final.safetensors") for k in selected]
    combined = load_tensors(run / "cycle_01/combined.safetensors")
    mean = torch.stack([f["fc.weight"] for f in finals]).mean(0)
    assert torch.allclose(combined["fc.weight"], mean, atol=1e-6)
    # BN statistics come from exactly 2 recalibration batches of train.batch_size (128)
    from sparseavg.averaging import recalibrate_bn
    from sparseavg.data import load_dataset

    model = build_model("conv1d", 10, (1, 40), width=8)
    model.load_state_dict(combined)
    data = load_dataset("mnist1d", val_fraction=0.1)
    recalibrate_bn(model, data.train, num_batches=2, batch_size=128)
    assert torch.allclose(
        model.state_dict()["features.1.running_mean"],
        combined["features.1.running_mean"],
        atol=1e-6,
    )


def test_progress_output_plain_and_none(tmp_path, capsys):
    args = tiny_args("imp", tmp_path / "a", cycles=0)
    args.remove("--quiet")
    assert main([*args, "--plain"]) == 0
    err = capsys.readouterr().err
    assert "cycle 0 ingredient 1/1:" in err and "cycles: 1/1" in err  # one line per finished task
    args = tiny_args("imp", tmp_path / "b", "--set", 'execution.progress="none"', cycles=0)
    args.remove("--quiet")
    assert main(args) == 0
    assert capsys.readouterr().err == ""


def test_a_refused_resume_writes_nothing(tmp_path, capsys):
    """A damaged file in a complete cycle is refused before results.jsonl or anything else is
    rewritten (before: results.jsonl was rewritten from the cycles before the damaged one)."""
    assert main(tiny_args("imp", tmp_path, cycles=2)) == 0
    run = only_run(tmp_path)
    target = run / "cycle_01/combined.safetensors"
    target.write_bytes(target.read_bytes()[:-8] + b"\0" * 8)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(tiny_args("imp", tmp_path, cycles=2)) == 2
    err = capsys.readouterr().err
    assert err.startswith("sparseavg: error: ") and "cycle_01/combined.safetensors" in err
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()}
    assert after == before


def test_a_run_directory_whose_config_was_edited_is_bad_input(tmp_path, capsys):
    assert main(tiny_args("imp", tmp_path, cycles=0)) == 0
    run = only_run(tmp_path)
    text = (run / "config.toml").read_text()
    (run / "config.toml").write_text(text.replace("lr = 0.05", "lr = 0.06"))
    capsys.readouterr()
    assert main(tiny_args("imp", tmp_path, cycles=0)) == 2
    err = capsys.readouterr().err
    assert err.startswith("sparseavg: error: ") and "edited after the run started" in err


def test_execution_compile_compiles_every_ingredient_but_not_the_common_run(tmp_path, monkeypatch):
    import sparseavg.training.loop as loop
    from engine_helpers import tiny_run

    compiled = []
    monkeypatch.setattr(loop, "_compiled", lambda model: compiled.append(1) or model)
    tiny_run(tmp_path / "eager", {"recipe": "swamp", "ingredients": {"count": 2}})
    assert compiled == []
    tiny_run(
        tmp_path / "compiled",
        {"recipe": "swamp", "ingredients": {"count": 2}, "execution": {"compile": True}},
    )
    assert len(compiled) == 2 * 2  # two particles in each of cycles 0 and 1
