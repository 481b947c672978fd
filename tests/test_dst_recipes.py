"""gmp checked against the BIMP code's GMP, and bimp (budgeted IMP), on tiny engine runs with
exact counts (issue 17). The references: ZIB-IOL/BIMP at 7bad593, docs/dst-design.md."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import sparseavg.experiment.engine as engine
from engine_helpers import final_weights, rows, same_weights, tiny_config, tiny_run, use_executor
from sparseavg.config import ConfigError
from sparseavg.parallel import Sequential, Stacked
from sparseavg.pruning import GradualMagnitudePruning, Mask, fraction_per_cycle, relative_norm_drop
from sparseavg.pruning.gmp_reference import IntervalGradualPruning
from sparseavg.recipes import get_recipe, resolve_config
from sparseavg.recipes.rules import (
    AdaptivePeak,
    DenseMask,
    FineTune,
    MagnitudePrune,
    Reinit,
)
from sparseavg.utils.files import load_tensors
from sparseavg.utils.seeding import derive_seed

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny runs: ~5x faster on a busy CPU

TOTAL = 1480  # prunable weights of the tiny conv1d (width 8)


# -- gmp -----------------------------------------------------------------------------------------


def test_gmp_interval_and_counts_choose_the_schedule():
    def during(**pruning):
        config = resolve_config({"recipe": "gmp", "train": {"epochs": 10}, "pruning": pruning})
        return get_recipe("gmp").plan(config, 0, 0, 0).during

    assert during() == GradualMagnitudePruning(1, 8, 0.9, "global")  # the default: unchanged
    assert during(gmp_counts="bimp") == GradualMagnitudePruning(1, 8, 0.9, counts="bimp")
    assert during(gmp_interval=2) == IntervalGradualPruning(10, 2, 0.9, counts="exact")
    assert during(gmp_interval=5, gmp_counts="bimp").schedule == [(5, 0.9)]  # n = 10 // 5 - 1


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"recipe": "gmp", "pruning": {"gmp_interval": 16}}, "needs train.epochs >= 32"),
        ({"recipe": "gmp", "pruning": {"gmp_interval": 2, "gmp_end": 0.5}}, "gmp_end places"),
        ({"recipe": "gmp", "pruning": {"gmp_counts": "bimp", "pattern": "2:4"}}, "'2:4'"),
        ({"recipe": "imp", "pruning": {"gmp_interval": 2}}, "recipe imp has none"),
        ({"recipe": "sms", "pruning": {"gmp_counts": "bimp"}}, "gmp_counts sets"),
        ({"recipe": "gmp", "pruning": {"gmp_counts": "some"}}, "'some' is not one of exact"),
    ],
)
def test_gmp_options_are_refused_where_they_mean_nothing(values, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        resolve_config(values)


def test_gmp_interval_schedule_ends_exactly_two_four():
    config = resolve_config(
        {"recipe": "gmp", "train": {"epochs": 6}, "pruning": {"gmp_interval": 2, "pattern": "2:4"}}
    )
    schedule = get_recipe("gmp").plan(config, 0, 0, 0).during
    assert schedule == IntervalGradualPruning(6, 2, 0.5, counts="exact", pattern=(2, 4))
    weights = {"w": torch.randn(4, 16, generator=torch.Generator().manual_seed(0))}
    mask = Mask.ones_like(weights)
    pruned = []
    for epoch in range(1, 7):
        mask = schedule.update(epoch, weights, None, mask) or mask
        pruned.append(mask.num_pruned)
    # steps after epochs 2 and 4 (n = 6 // 2 - 1): round(0.4375 * 64) = 28, then 32 = 2 of 4
    assert pruned == [0, 28, 28, 32, 32, 32]
    assert mask["w"].reshape(-1, 4).sum(1).tolist() == [2] * 16


class _Checkpoints:
    """Notes every epoch checkpoint of a run's ingredients: (cycle, step, mask, weights,
    momentum by parameter name)."""

    def __init__(self, monkeypatch) -> None:
        self.seen: list[dict] = []
        real = engine._IngredientHooks.checkpoint
        notes = self

        def spy(hooks, job, state, seconds):
            names = [n for n, p in hooks.ctx.model.named_parameters() if p.requires_grad]
            buffers = state.optimizer["state"]
            momentum = {names[i]: s["momentum_buffer"] for i, s in buffers.items()}
            notes.seen.append(
                {
                    "cycle": hooks.work.cycle,
                    "step": state.step,
                    "mask": None if state.mask is None else Mask(state.mask),
                    "model": state.model,
                    "momentum": momentum,
                }
            )
            return real(hooks, job, state, seconds)

        monkeypatch.setattr(engine._IngredientHooks, "checkpoint", spy)


GMP_TINY = {"train": {"epochs": 8, "batch_size": 512}, "pruning": {"cycles": 0}}


@pytest.mark.parametrize(
    ("pruning", "pruned"),
    [
        # every epoch from round(0.1 * 8) = 1 to round(0.75 * 8) = 6, to round(s * 1480)
        ({}, [0, 650, 1044, 1247, 1321, 1332, 1332, 1332]),
        # the same epochs, round(f * alive) more from the last step's nominal sparsity: one
        # over the target at the end (1333 = 90.07 %)
        ({"gmp_counts": "bimp"}, [0, 650, 1044, 1247, 1322, 1333, 1333, 1333]),
        # the BIMP code's epochs 2, 4, 6 (n = 8 // 2 - 1 = 3), to round(s * 1480)
        (
            {"gmp_interval": 2, "target_sparsity": 0.97},
            [0, 1010, 1010, 1382, 1382, 1436, 1436, 1436],
        ),
        # and its counts: 1010; + round(f * 470) = 372; + round(f * 98) = 53 -> one short
        (
            {"gmp_interval": 2, "gmp_counts": "bimp", "target_sparsity": 0.97},
            [0, 1010, 1010, 1382, 1382, 1435, 1435, 1435],
        ),
    ],
    ids=["every-epoch", "every-epoch-bimp-counts", "interval", "interval-bimp-counts"],
)
def test_gmp_prunes_the_schedules_counts_after_each_step(tmp_path, monkeypatch, pruning, pruned):
    """After every epoch: the mask has exactly the schedule's count pruned, and the pruned
    weights and their SGD momentum are exactly 0 (the reference clears momentum at each
    pruning step, prune_momentum; we keep it 0 after every step)."""
    notes = _Checkpoints(monkeypatch)
    values = {**GMP_TINY, "recipe": "gmp", "pruning": {**GMP_TINY["pruning"], **pruning}}
    run = tiny_run(tmp_path, values)
    assert [n["mask"].num_pruned for n in notes.seen] == pruned
    assert all(n["mask"].num_total == TOTAL for n in notes.seen)
    for n in notes.seen:
        for name, keep in n["mask"].items():
            assert not n["model"][name][~keep].any(), (n["step"], name)
            assert not n["momentum"][name][~keep].any(), (n["step"], name)
    final = Mask.load(run / "cycle_00" / "mask.safetensors")
    assert final.num_pruned == pruned[-1]
    assert rows(run)[-1]["alive"] == TOTAL - pruned[-1]


# -- bimp ----------------------------------------------------------------------------------------

# a dense run of 4 epochs, then 3 phases sharing 5 epochs: 5 // 3 = 1, 1, and 3 for the last
BIMP_TINY = {
    "recipe": "bimp",
    "train": {"epochs": 4, "batch_size": 512},
    "pruning": {"cycles": 3, "retrain_budget": 5, "rewind_epochs": 0.0},
}


# a dense run of 4 epochs, then 2 phases sharing 3 epochs (1, 2), 2 ingredients each
SMS_BIMP_TINY = {
    "recipe": "sms-bimp",
    "train": {"epochs": 4, "batch_size": 512},
    "pruning": {"cycles": 2, "retrain_budget": 3, "rewind_epochs": 0.0},
    "ingredients": {"count": 2},
}


def test_bimp_plans_a_dense_run_then_phases_with_their_own_lengths():
    config = resolve_config(BIMP_TINY)
    recipe = get_recipe("bimp")
    assert config.pruning.retrain_schedule == "allr" and config.train.nesterov
    assert config.pruning.target_sparsity == 0.9 and config.bn.recalibrate == "averaged"
    zero = recipe.plan(config, 0, 0, 0)
    init = derive_seed(config.seed, "lineage", 0, "init")
    assert zero.start == Reinit(init) and zero.mask == DenseMask()
    assert [i.settings.epochs for i in zero.ingredients] == [4]
    f = fraction_per_cycle(0.9, 3)
    for cycle, epochs in ((1, 1), (2, 1), (3, 3)):
        p = recipe.plan(config, 0, cycle, 0)
        assert p.start == FineTune() and p.mask == MagnitudePrune(f)
        assert [i.settings.epochs for i in p.ingredients] == [epochs]
        assert p.adapt == AdaptivePeak(0.1, f, 4)


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"recipe": "bimp", "pruning": {"retrain_budget": 2, "cycles": 3}}, "at least one epoch"),
        ({"recipe": "bimp", "pruning": {"cycles": 0}}, "at least one epoch"),
        ({"recipe": "bimp", "pruning": {"retrain_epochs": 3}}, "recipe fixes it to 0"),
        ({"recipe": "imp-ft", "pruning": {"retrain_budget": 6}}, "retrain_budget splits"),
    ],
)
def test_bimp_budget_is_refused_where_it_cannot_split(values, fragment):
    with pytest.raises(ConfigError, match=fragment):
        resolve_config(values)


def _info(run: Path, cycle: int) -> dict:
    return json.loads((run / f"cycle_{cycle:02d}" / "ingredient_0" / "info.json").read_text())


def test_bimp_phases_share_the_budget_and_clip_allr_with_their_own_length(tmp_path):
    run = tiny_run(tmp_path, BIMP_TINY)
    epochs = [len(_info(run, c)["epochs"]) for c in range(4)]
    assert epochs == [4, 1, 1, 3] and sum(epochs[1:]) == 5  # the budget, exactly
    assert [r["alive"] for r in rows(run)] == [1480, 687, 319, 148]  # 90 % after 3 phases
    config = tiny_config(BIMP_TINY)
    f = fraction_per_cycle(0.9, 3)
    names = list(dict(engine.prepare(config, tmp_path / "x").model.named_parameters()))
    peaks = []
    for cycle, length in ((1, 1), (2, 1), (3, 3)):
        previous = load_tensors(run / f"cycle_{cycle - 1:02d}" / "combined.safetensors")
        mask = Mask.load(run / f"cycle_{cycle:02d}" / "mask.safetensors")
        drop = relative_norm_drop(previous, mask.applied(previous), names)
        peak = _info(run, cycle)["lr"]
        assert peak == AdaptivePeak(0.05, f, 4).peak(drop, length)
        peaks.append(peak)
    # phase 3 (3 of the dense run's 4 epochs) is held at its own floor 0.75 * 0.05 (its
    # scaled peak is 0.0265); the 1-epoch phases' floor is 0.0125, below their scaled peaks
    assert peaks[2] == min(3 / 4, 1.0) * 0.05
    assert peaks[0] > 0.0125 and peaks[1] > 0.0125 and peaks[0] < peaks[1] < peaks[2]


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
    ("values", "stops", "last"),
    [(BIMP_TINY, (30, 110), "cycle_03"), (SMS_BIMP_TINY, (115, 25), "cycle_02")],
    ids=["bimp", "sms-bimp"],
)
def test_resumed_mid_phase_equals_an_uninterrupted_run(tmp_path, values, stops, last):
    from sparseavg.experiment import run

    config = tiny_config(values)
    reference = run(config, tmp_path / "a")
    mid_phase = []
    for n in stops:
        with pytest.raises(KeyboardInterrupt):
            run(config, tmp_path / "b", _StopAfter(n))
        mid_phase += [p.parent.parent.name for p in (tmp_path / "b").rglob("checkpoint.pt")]
    assert last in mid_phase  # stopped inside the last phase, after its first epoch
    resumed = run(config, tmp_path / "b")
    assert rows(resumed) == rows(reference)
    assert same_weights(final_weights(resumed), final_weights(reference))


def test_bimp_under_the_stacked_executor_equals_sequential(tmp_path, monkeypatch):
    """One model per phase: the stacked executor trains it as sequential does, without a
    fallback message (nothing to stack), bit for bit."""
    messages: list[str] = []

    class Noted(Stacked):
        def run(self, model, trainer, work, jobs, hooks):
            class Hooks:
                def __getattr__(self, name):
                    return getattr(hooks, name)

                def message(self, text):
                    messages.append(text)

            return super().run(model, trainer, work, jobs, Hooks())

    use_executor(monkeypatch, Sequential())
    sequential = tiny_run(tmp_path / "sequential", BIMP_TINY)
    use_executor(monkeypatch, Noted())
    stacked = tiny_run(tmp_path / "stacked", BIMP_TINY)
    assert messages == []
    assert rows(stacked) == rows(sequential)
    files = sorted(p.relative_to(sequential) for p in sequential.rglob("*.safetensors"))
    assert len(files) > 8
    for f in files:
        a, b = load_tensors(stacked / f), load_tensors(sequential / f)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f


# -- sms-bimp ------------------------------------------------------------------------------------


def test_sms_bimp_soups_keep_exactly_each_phases_mask(tmp_path):
    run = tiny_run(tmp_path, SMS_BIMP_TINY)
    f = fraction_per_cycle(0.9, 2)
    masks = [Mask.load(run / f"cycle_{c:02d}" / "mask.safetensors") for c in range(3)]
    assert [m.num_pruned for m in masks] == [0, 1012, 1332]  # round(f * 1480); + round(f * 468)
    for cycle, length in ((1, 1), (2, 2)):
        phase = run / f"cycle_{cycle:02d}"
        mask = masks[cycle]
        # the phase's mask is the previous phase's soup pruned by magnitude
        previous = load_tensors(run / f"cycle_{cycle - 1:02d}" / "combined.safetensors")
        assert mask == MagnitudePrune(f)(cycle, _Previous(previous, masks[cycle - 1]))
        finals = [load_tensors(phase / f"ingredient_{k}" / "final.safetensors") for k in (0, 1)]
        assert [len(_ingredient_info(phase, k)["epochs"]) for k in (0, 1)] == [length, length]
        soup = load_tensors(phase / "combined.safetensors")
        for name, keep in mask.items():
            for state in [*finals, soup]:
                assert not state[name][~keep].any(), (cycle, name)
            mean = (finals[0][name] + finals[1][name]) / 2
            assert torch.allclose(soup[name], mean, atol=1e-7), (cycle, name)
        # the soup's alive weights are exactly the mask's: none lost to an exact 0 either
        alive = sum(int(soup[name].ne(0).sum()) for name in mask)
        assert alive == mask.num_alive
    headline = [r for r in rows(run) if r["headline"]]
    assert [(r["role"], r["alive"]) for r in headline] == [
        ("combined", 1480),
        ("combined", 468),
        ("combined", 148),
    ]


class _Previous:
    """MaskSources with only the previous cycle's model and mask."""

    def __init__(self, state, mask):
        self.state, self.mask = state, mask

    def previous(self):
        return self.state, self.mask


def _ingredient_info(phase: Path, k: int) -> dict:
    return json.loads((phase / f"ingredient_{k}" / "info.json").read_text())


def test_sms_bimp_stacked_equals_sequential_in_float64(tmp_path, monkeypatch):
    """The m ingredients of each phase stacked (no fallback) give the sequential run's masks,
    weights and rows, in float64 as test_stacked's SWAMP run (float32 is chaotic here)."""
    import sparseavg.experiment.task as task_module
    from sparseavg.experiment.task import DataTask
    from test_stacked import _float64, _Spy, assert_states_close

    build, prepare = task_module.make_model, engine.prepare
    monkeypatch.setattr(task_module, "make_model", lambda *a, **k: build(*a, **k).double())

    def prepare_with(executor):
        def patched(*args, **kwargs):
            ctx = prepare(*args, **kwargs)
            data = ctx.task.data
            splits = {k: _float64(getattr(data, k)) for k in ("train", "val", "test")}
            task = DataTask(ctx.config, dataclasses.replace(data, **splits), ctx.task.device)
            return dataclasses.replace(ctx, task=task, executor=executor)

        return patched

    monkeypatch.setattr(engine, "prepare", prepare_with(Sequential()))
    sequential = tiny_run(tmp_path / "sequential", SMS_BIMP_TINY)
    spy = _Spy()
    monkeypatch.setattr(engine, "prepare", prepare_with(spy))
    stacked = tiny_run(tmp_path / "stacked", SMS_BIMP_TINY)
    assert spy.jobs == [[0], [0, 1], [0, 1]]  # the dense run alone, then each phase's two
    assert not [m for m in spy.messages if m.startswith("stacked:")]
    files = sorted(p.relative_to(sequential) for p in sequential.rglob("*.safetensors"))
    assert sorted(p.relative_to(stacked) for p in stacked.rglob("*.safetensors")) == files
    for f in files:
        a, b = load_tensors(stacked / f), load_tensors(sequential / f)
        assert_states_close(a, b, {"atol": 1e-10, "rtol": 0.0})
    for x, y in zip(rows(stacked), rows(sequential), strict=True):
        assert x.keys() == y.keys()
        for key, value in x.items():
            assert value == (
                pytest.approx(y[key], abs=1e-9) if isinstance(value, float) else y[key]
            )
