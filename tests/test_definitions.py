"""Each method's defining behaviour, pinned on small runs: each test fails if the engine
ignores the rule it names (issue 8, item 7)."""

import json
from dataclasses import replace

import pytest
import torch

from engine_helpers import TrainCalls, rows, tiny_config, tiny_run
from sparseavg.averaging import evaluate_ensemble
from sparseavg.config import ConfigError
from sparseavg.data import load_dataset
from sparseavg.experiment import engine
from sparseavg.models import build_model
from sparseavg.pruning import Mask, magnitude_prune, relative_norm_drop
from sparseavg.recipes import get_recipe
from sparseavg.recipes.plan import StartFacts
from sparseavg.recipes.rules import AdaptivePeak
from sparseavg.recipes.standard import base_settings, ingredient_seed
from sparseavg.training import TrainSettings, train
from sparseavg.utils.files import load_tensors
from sparseavg.utils.seeding import derive_seed
from sparseavg.utils.state import clone_state

T0 = 28  # rewind_epochs 0.5 of 57 steps (7,200 samples, batch 128): round(28.5)


def _load(run, cycle, name, member=None):
    d = run / f"cycle_{cycle:02d}"
    if member is not None:
        d = d / f"member_{member}"
    return Mask.load(d / name) if name.startswith("mask") else load_tensors(d / name)


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _model(state):
    model = build_model("conv1d", 10, (1, 40), width=8)
    model.load_state_dict(state)
    return model


def test_imp_prunes_the_previous_model_by_global_magnitude(tmp_path):
    run = tiny_run(tmp_path, {"recipe": "imp"})
    dense, m0 = _load(run, 0, "combined.safetensors"), _load(run, 0, "mask.safetensors")
    assert _load(run, 1, "mask.safetensors") == magnitude_prune(dense, m0, 0.2)


def test_random_pruning_differs_from_magnitude_and_keeps_the_counts_asked_for(tmp_path):
    run = tiny_run(tmp_path, {"recipe": "random", "pruning": {"scope": "layerwise"}})
    dense, m0 = _load(run, 0, "combined.safetensors"), _load(run, 0, "mask.safetensors")
    mask = _load(run, 1, "mask.safetensors")
    assert mask != magnitude_prune(dense, m0, 0.2, "layerwise")
    assert [r.total - r.alive for r in mask.report()] == [round(0.2 * r.total) for r in m0.report()]


def test_shuffle_keeps_magnitude_pruning_layer_counts_at_random_positions(tmp_path):
    run = tiny_run(tmp_path, {"recipe": "shuffle"})
    dense, m0 = _load(run, 0, "combined.safetensors"), _load(run, 0, "mask.safetensors")
    magnitude = magnitude_prune(dense, m0, 0.2)
    mask = _load(run, 1, "mask.safetensors")
    assert mask != magnitude
    assert [r.alive for r in mask.report()] == [r.alive for r in magnitude.report()]


def test_layer_fractions_prune_matching_layers_at_their_own_rate(tmp_path):
    run = tiny_run(tmp_path, {"pruning": {"layer_fractions": {"fc.weight": 0.1}}})
    dense, m0 = _load(run, 0, "combined.safetensors"), _load(run, 0, "mask.safetensors")
    mask = _load(run, 1, "mask.safetensors")
    report = {r.name: r for r in mask.report()}
    assert report["fc.weight"].total - report["fc.weight"].alive == round(
        0.1 * m0["fc.weight"].numel()
    )
    rest = [n for n in mask if n != "fc.weight"]
    pruned = sum(report[n].total - report[n].alive for n in rest)
    assert pruned == round(0.2 * sum(m0[n].numel() for n in rest))
    assert mask == magnitude_prune(dense, m0, 0.2, layer_fractions={"fc.weight": 0.1})


def test_rewinding_starts_from_the_ticket_and_fine_tuning_from_the_previous_model(
    tmp_path, monkeypatch
):
    calls = TrainCalls(monkeypatch)
    run = tiny_run(tmp_path / "imp", {"recipe": "imp"})
    ticket, mask = _load(run, 0, "ticket.safetensors"), _load(run, 1, "mask.safetensors")
    first = calls.ingredients()[1]
    assert _same(first["start"], mask.applied(ticket)) and first["start_step"] == T0
    calls.calls.clear()
    run = tiny_run(tmp_path / "ft", {"recipe": "imp-ft"})
    previous, mask = _load(run, 0, "combined.safetensors"), _load(run, 1, "mask.safetensors")
    first = calls.ingredients()[1]
    assert _same(first["start"], mask.applied(previous)) and first["start_step"] == 0


def test_reinit_trains_the_source_masks_from_a_new_initialisation(tmp_path, monkeypatch):
    source = tiny_run(tmp_path / "a", {"recipe": "imp"})
    calls = TrainCalls(monkeypatch)
    run = tiny_run(tmp_path / "b", {"recipe": "reinit", "pruning": {"masks_from": str(source)}})
    for cycle in (0, 1):
        assert _load(run, cycle, "mask.safetensors") == _load(source, cycle, "mask.safetensors")
    mask = _load(source, 1, "mask.safetensors")
    start = calls.ingredients()[1]
    assert start["start_step"] == 0
    assert _same(start["start"], mask.applied(start["start"]))  # under the source's mask
    ticket = _load(source, 0, "ticket.safetensors")
    assert not torch.equal(start["start"]["fc.weight"], mask.applied(ticket)["fc.weight"])
    shuffled = tiny_run(
        tmp_path / "c", {"recipe": "shuffle", "pruning": {"masks_from": str(source)}}
    )
    own = _load(shuffled, 1, "mask.safetensors")
    assert own != mask and [r.alive for r in own.report()] == [r.alive for r in mask.report()]


def test_sms_ingredients_get_exactly_the_seeds_and_hyperparameters_specified(tmp_path, monkeypatch):
    calls = TrainCalls(monkeypatch)
    values = {
        "recipe": "sms",
        "pruning": {"retrain_epochs": 1, "retrain_lr": 0.08},
        "ingredients": {"vary": "lr", "values": [0.5, 1.0, 2.0]},
    }
    tiny_run(tmp_path, values)
    soup = calls.ingredients()[1:]
    assert [c["settings"].lr for c in soup] == pytest.approx([0.04, 0.08, 0.16])
    assert {(c["settings"].epochs, c["settings"].schedule) for c in soup} == {(1, "llr")}
    seed = ingredient_seed(tiny_config(values), 0, 1, 0)
    assert [c["seed"] for c in soup] == [seed] * 3


def test_swamp_particles_start_from_the_same_weights_and_see_different_batch_orders(
    tmp_path, monkeypatch
):
    calls = TrainCalls(monkeypatch)
    run = tiny_run(tmp_path, {"recipe": "swamp", "ingredients": {"count": 3}})
    particles = calls.ingredients()[3:]  # cycle 1
    assert all(_same(p["start"], particles[0]["start"]) for p in particles)
    assert all(p["start_step"] == T0 for p in particles)
    labels = [p["first_labels"] for p in particles]
    assert not torch.equal(labels[0], labels[1]) and not torch.equal(labels[1], labels[2])
    assert len({p["seed"] for p in particles}) == 3
    info = [json.loads((run / f"cycle_01/ingredient_{k}/info.json").read_text()) for k in range(3)]
    assert [i["swa_count"] for i in info] == [1, 1, 1]  # the last of 2 epochs is averaged


def test_allr_picks_its_peak_from_the_norm_the_pruning_removed(tmp_path, monkeypatch):
    calls = TrainCalls(monkeypatch)
    values = {"recipe": "imp-ft", "pruning": {"retrain_schedule": "allr", "retrain_epochs": 1}}
    run = tiny_run(tmp_path, values)
    previous, mask = _load(run, 0, "combined.safetensors"), _load(run, 1, "mask.safetensors")
    names = [n for n, _ in build_model("conv1d", 10, (1, 40), width=8).named_parameters()]
    drop = relative_norm_drop(previous, mask.applied(previous), names)
    expected = AdaptivePeak(0.05, 0.2, 2).peak(drop, 1)
    trained = calls.ingredients()[1]["settings"]
    assert trained.schedule == "llr" and trained.lr == pytest.approx(expected)
    info = json.loads((run / "cycle_01/ingredient_0/info.json").read_text())
    assert info["lr"] == pytest.approx(expected)
    assert 0.025 <= expected <= 0.05  # clipped to [E_r / E_o, 1] x train.lr


def test_imp_reprune_prunes_the_average_back_to_the_lineage_sparsity(tmp_path):
    run = tiny_run(tmp_path, {"recipe": "imp-reprune", "pruning": {"cycles": 2}})
    result = [r for r in rows(run) if r["cycle"] == 2]
    lineage = [r for r in result if r["role"] == "combined"]
    assert len(lineage) == 3 and len({r["alive"] for r in lineage}) == 1
    average = next(r for r in result if r["role"] == "average")
    reprune = next(r for r in result if r["role"] == "reprune")
    assert reprune["headline"] and not average["headline"]
    assert reprune["alive"] == lineage[0]["alive"] < average["alive"]
    masks = [_load(run, 2, "mask.safetensors", member=m) for m in range(3)]
    union = sum(int(torch.stack([m[n] for m in masks]).any(0).sum()) for n in masks[0])
    assert average["alive"] == union


def test_sms_ensemble_headline_is_the_prediction_ensemble_of_its_ingredients(tmp_path):
    run = tiny_run(tmp_path, {"recipe": "sms-ensemble"})
    headline = next(r for r in rows(run) if r["cycle"] == 1 and r["headline"])
    assert headline["role"] == "ensemble" and headline["members"] == 3
    finals = [load_tensors(run / f"cycle_01/ingredient_{k}/final.safetensors") for k in range(3)]
    data = load_dataset("mnist1d", val_fraction=0.1)
    expected = evaluate_ensemble([_model(s) for s in finals], data.test)
    assert headline["accuracy"] == expected.accuracy


def test_averaged_recalibration_leaves_single_models_alone(tmp_path, monkeypatch):
    calls = TrainCalls(monkeypatch)
    run = tiny_run(tmp_path, {"recipe": "imp"})  # bn.recalibrate = "averaged"
    trained = calls.ingredients()[-1]["result"].state
    assert _same(load_tensors(run / "cycle_01/combined.safetensors"), trained)


def test_recalibrate_never_keeps_the_averaged_statistics(tmp_path):
    run = tiny_run(
        tmp_path, {"recipe": "swamp", "ingredients": {"count": 2}, "bn": {"recalibrate": "never"}}
    )
    finals = [load_tensors(run / f"cycle_01/ingredient_{k}/final.safetensors") for k in (0, 1)]
    combined = load_tensors(run / "cycle_01/combined.safetensors")
    key = "features.7.running_var"  # after two nonlinear layers
    assert torch.allclose(combined[key], (finals[0][key] + finals[1][key]) / 2, atol=1e-7)
    # and the default recalibrates the average: its statistics are not the averaged ones
    run = tiny_run(tmp_path / "default", {"recipe": "swamp", "ingredients": {"count": 2}})
    finals = [load_tensors(run / f"cycle_01/ingredient_{k}/final.safetensors") for k in (0, 1)]
    combined = load_tensors(run / "cycle_01/combined.safetensors")
    assert not torch.allclose(combined[key], (finals[0][key] + finals[1][key]) / 2, rtol=1e-2)


def test_allr_varying_the_rate_trains_each_ingredient_llr_from_its_own_peak(tmp_path, monkeypatch):
    """Issue 16: under ALLR the adaptive peak overwrote every ingredient's rate, so values
    [0.5, 1, 2] all trained at one rate (the clip's floor, 0.025 each). The SMS code trains
    LLR from each split's own value when it varies the rate: 0.025, 0.05, 0.1 here."""
    calls = TrainCalls(monkeypatch)
    values = {
        "recipe": "sms",
        "pruning": {"retrain_schedule": "allr", "retrain_epochs": 1},
        "ingredients": {"count": 3, "vary": "lr", "values": [0.5, 1.0, 2.0]},
    }
    run = tiny_run(tmp_path, values)
    trained = [c["settings"] for c in calls.ingredients()[1:]]
    assert [(s.schedule, s.warmup, s.lr) for s in trained] == [
        ("llr", 0.1, 0.025),
        ("llr", 0.1, 0.05),
        ("llr", 0.1, 0.1),
    ]
    infos = [json.loads((run / f"cycle_01/ingredient_{k}/info.json").read_text()) for k in range(3)]
    assert [i["lr"] for i in infos] == [0.025, 0.05, 0.1]
    finals = [_load(run, 1, f"ingredient_{k}/final.safetensors") for k in range(3)]
    assert not _same(finals[0], finals[1]) and not _same(finals[1], finals[2])


def test_allr_varying_the_length_clips_each_ingredient_with_its_own_length(tmp_path, monkeypatch):
    """Issue 16: ALLR's lower clip min(E_r / E_o, 1) * max_lr used the base retraining length
    for every ingredient (E_r = 2 of E_o = 4: 0.025 for all three); the SMS code's E_r is the
    split's own retrain_length: lengths 1, 2, 4 are held at 0.0125, 0.025 and 0.05."""
    rule = AdaptivePeak(max_lr=0.05, fraction=0.2, original_epochs=4)
    base = TrainSettings(epochs=2, lr=0.05, schedule="llr", warmup=0.1)
    peaks = [rule(replace(base, epochs=e), StartFacts(0.0)).lr for e in (1, 2, 4, 8)]
    assert peaks == [0.0125, 0.025, 0.05, 0.05]
    calls = TrainCalls(monkeypatch)
    values = {
        "recipe": "sms",
        "train": {"epochs": 4},
        "pruning": {"retrain_schedule": "allr", "retrain_epochs": 2},
        "ingredients": {"count": 3, "vary": "length", "values": [0.5, 1.0, 2.0]},
    }
    tiny_run(tmp_path, values)
    trained = [c["settings"] for c in calls.ingredients()[1:]]
    # the pruning removed little norm here, so every peak sits on its own floor
    assert [(s.epochs, s.lr) for s in trained] == [(1, 0.0125), (2, 0.025), (4, 0.05)]


@pytest.mark.parametrize("schedule", ["ft", "lrw", "slr"])
def test_varying_the_rate_is_refused_where_the_retraining_has_no_peak(schedule):
    """ft, lrw and slr take their rates from the dense run: vary = "lr" varied nothing (or
    only slr's warm-up), silently."""
    values = {
        "recipe": "sms",
        "pruning": {"retrain_schedule": schedule, "retrain_epochs": 1},
        "ingredients": {"vary": "lr"},
    }
    with pytest.raises(ConfigError, match=f"retrain_schedule = '{schedule}' does not use"):
        tiny_config(values)
    clr = tiny_config({**values, "pruning": {"retrain_schedule": "clr", "retrain_epochs": 1}})
    p = get_recipe("sms").plan(clr, 0, 1, 0)
    assert [(i.settings.schedule, i.settings.lr) for i in p.ingredients] == [
        ("clr", 0.025),
        ("clr", 0.05),
        ("clr", 0.1),
    ]


@pytest.mark.parametrize("recipe", ["imp-ft", "sms"])
def test_a_fine_tuning_recipe_trains_its_dense_model_in_one_run(tmp_path, monkeypatch, recipe):
    """Issue 16: cycle 0 of a fine-tuning recipe was a common run to rewind_epochs (28 steps
    here) plus a continuation from step 28 with a fresh optimizer and another seed; the SMS
    code trains its dense model in one run. Now cycle 0 is one call of ``train`` from the
    initialisation at step 0, bit for bit a plain run of train.epochs with the ingredient's
    seed, and no ticket is made."""
    calls = TrainCalls(monkeypatch)
    run = tiny_run(tmp_path / "run", {"recipe": recipe})
    config = tiny_config({"recipe": recipe})
    assert not any(c["common"] for c in calls.calls)  # no run to a rewind point
    dense = calls.calls[0]
    assert dense["start_step"] == 0 and dense["result"].steps == 2 * 57
    assert not (run / "cycle_00" / "ticket.safetensors").exists()
    ctx = engine.prepare(config, tmp_path / "plain")
    model = ctx.task.build(derive_seed(config.seed, "lineage", 0, "init"))
    assert _same(dense["start"], clone_state(model, device="cpu"))
    seed = ingredient_seed(config, 0, 0, 0)
    plain = train(model, ctx.task.data.train, base_settings(config), seed=seed)
    assert dense["seed"] == seed and _same(dense["result"].state, plain.state)
    saved = _load(run, 0, "ingredient_0/final.safetensors")
    weights = [n for n, _ in model.named_parameters()]  # (BatchNorm buffers recalibrated)
    assert all(torch.equal(saved[n], plain.state[n]) for n in weights)


def test_a_rewinding_recipe_still_trains_its_ticket_to_the_rewind_point(tmp_path, monkeypatch):
    calls = TrainCalls(monkeypatch)
    run = tiny_run(tmp_path, {"recipe": "imp"})
    common = [c for c in calls.calls if c["common"]]
    assert len(common) == 1 and common[0]["result"].steps == T0
    ticket = _load(run, 0, "ticket.safetensors")
    assert _same(ticket, common[0]["result"].state)
    assert calls.ingredients()[0]["start_step"] == T0
