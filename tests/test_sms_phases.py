"""sms-gmp and sms-dpf: Sparse Model Soups on gmp's and dpf's phases (the BIMP code's GMP
schedule), on tiny engine runs with exact counts (issue 17; our reading, docs/recipes.md)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from engine_helpers import (
    final_weights,
    rows,
    same_weights,
    tiny_config,
    tiny_run,
    use_executor,
)
from sparseavg.averaging import uniform_average
from sparseavg.config import ConfigError
from sparseavg.parallel import Sequential, Stacked
from sparseavg.pruning import Mask
from sparseavg.pruning.dpf import DPFSchedule
from sparseavg.recipes import get_recipe, resolve_config
from sparseavg.recipes.rules import AverageMask, DenseAverageMask, FineTune, MagnitudePruneTo
from sparseavg.recipes.standard import gmp_phases
from sparseavg.utils.files import load_tensors
from test_dst_recipes import _Previous, _StopAfter

pytestmark = pytest.mark.usefixtures("one_thread")

TOTAL = 1480  # prunable weights of the tiny conv1d (width 8)

# 6 epochs, interval 2: gmp prunes after epochs 2 and 4 (n = 6 // 2 - 1 = 2) to
# 0.9 (1 - (1 - t / 4)^3) = 0.7875, 0.9: phases of 2 epochs each, 2 ingredients a phase
SMS_GMP_TINY = {
    "recipe": "sms-gmp",
    "train": {"epochs": 6, "batch_size": 512},
    "pruning": {"cycles": 2, "gmp_interval": 2},
    "ingredients": {"count": 2},
}


def test_sms_gmp_phases_are_gmps_steps_and_add_up_to_its_epochs():
    config = tiny_config(SMS_GMP_TINY)
    assert gmp_phases(config) == ((2, 0.0), (2, 0.7875), (2, pytest.approx(0.9)))
    plan = get_recipe("sms-gmp").plan(config, 0, 1, 0)
    assert plan.mask == MagnitudePruneTo(0.7875) and isinstance(plan.start, FineTune)
    assert [i.settings.epochs for i in plan.ingredients] == [2, 2]
    assert plan.during is None  # the mask is fixed inside a phase: any loop can train it
    dense = get_recipe("sms-gmp").plan(config, 0, 0, 0)
    assert [i.settings.epochs for i in dense.ingredients] == [2]
    uneven = resolve_config(
        {"recipe": "sms-gmp", "train": {"epochs": 7}, "pruning": {"cycles": 2, "gmp_interval": 2}}
    )
    assert [e for e, _ in gmp_phases(uneven)] == [2, 2, 3]  # the last phase: the rest


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"pruning": {"cycles": 3, "gmp_interval": 2}}, "set pruning.cycles = .* = 2"),
        ({"pruning": {"cycles": 2, "gmp_interval": 0}}, "gmp_interval must be >= 1"),
        (
            {"pruning": {"cycles": 2, "gmp_interval": 2, "retrain_schedule": "allr"}},
            "use llr or clr",
        ),
        ({"pruning": {"cycles": 2, "gmp_interval": 2, "pattern": "2:4"}}, "leave pruning.pat"),
        ({"ingredients": {"start": "rewind"}}, "recipe fixes it to 'finetune'"),
    ],
)
def test_sms_gmp_options_are_refused_where_they_mean_nothing(values, fragment):
    with pytest.raises(ConfigError, match=fragment):
        resolve_config({"recipe": "sms-gmp", "train": {"epochs": 6}, **values})


def test_sms_gmp_soups_keep_exactly_each_phases_mask(tmp_path):
    run = tiny_run(tmp_path, SMS_GMP_TINY)
    masks = [Mask.load(run / f"cycle_{c:02d}" / "mask.safetensors") for c in range(3)]
    # round(0.7875 * 1480) = round(1165.5) = 1166, round(0.9 * 1480) = 1332
    assert [m.num_pruned for m in masks] == [0, 1166, 1332]
    for cycle in (1, 2):
        phase = run / f"cycle_{cycle:02d}"
        mask = masks[cycle]
        previous = load_tensors(run / f"cycle_{cycle - 1:02d}" / "combined.safetensors")
        sparsity = gmp_phases(tiny_config(SMS_GMP_TINY))[cycle][1]
        assert mask == MagnitudePruneTo(sparsity)(cycle, _Previous(previous, masks[cycle - 1]))
        finals = [load_tensors(phase / f"ingredient_{k}" / "final.safetensors") for k in (0, 1)]
        infos = [json.loads((phase / f"ingredient_{k}" / "info.json").read_text()) for k in (0, 1)]
        assert [len(i["epochs"]) for i in infos] == [2, 2]
        soup = load_tensors(phase / "combined.safetensors")
        for name, keep in mask.items():
            for state in [*finals, soup]:
                assert not state[name][~keep].any(), (cycle, name)
            mean = (finals[0][name] + finals[1][name]) / 2
            assert torch.allclose(soup[name], mean, atol=1e-7), (cycle, name)
        assert sum(int(soup[name].ne(0).sum()) for name in mask) == mask.num_alive
    headline = [(r["role"], r["alive"]) for r in rows(run) if r["headline"]]
    assert headline == [("combined", 1480), ("combined", 314), ("combined", 148)]


@pytest.mark.parametrize("recipe", ["sms-gmp", "sms-dpf"])
def test_resumed_mid_phase_equals_an_uninterrupted_run(tmp_path, recipe):
    from sparseavg.experiment import run

    config = tiny_config({**SMS_GMP_TINY, "recipe": recipe})
    reference = run(config, tmp_path / "a")
    mid_phase = []
    for n in (50, 100):
        with pytest.raises(KeyboardInterrupt):
            run(config, tmp_path / "b", _StopAfter(n))
        mid_phase += [p.parent.parent.name for p in (tmp_path / "b").rglob("checkpoint.pt")]
    assert {"cycle_01", "cycle_02"} <= set(mid_phase)  # stopped inside both phases
    resumed = run(config, tmp_path / "b")
    assert rows(resumed) == rows(reference)
    assert same_weights(final_weights(resumed), final_weights(reference))


def test_sms_gmp_on_your_own_loop_gives_the_builtin_run(tmp_path):
    """The mask is fixed inside each phase, so sparseavg.prune("sms-gmp", ...) runs the
    user's train_fn and computes what the built-in loop does: masks, rows, soups."""
    import sparseavg
    from sparseavg.experiment import run
    from test_own import _builtin_as_train_fn, _comparable, _mnist1d

    values = {
        **SMS_GMP_TINY,
        "train": {"epochs": 4},
        "pruning": {"cycles": 1, "gmp_interval": 2, "rewind_epochs": 1.0},
    }
    config = tiny_config(values)
    builtin = run(config, tmp_path / "builtin")
    data, model_fn, eval_fn = _mnist1d(config)
    kept = {k: v for k, v in config.to_dict().items() if k in ("train", "pruning", "bn", "seed")}
    kept["ingredients"] = values["ingredients"]
    own = sparseavg.prune(
        "sms-gmp",
        model_fn,
        _builtin_as_train_fn(data, config.train.batch_size),
        eval_fn,
        runs_dir=tmp_path / "own",
        config=kept,
        bn_batches=lambda: (b for b in data.train.batches(config.train.batch_size)),
        progress=False,
    )
    assert [_comparable(r) for r in rows(builtin)] == [_comparable(r) for r in own.rows]
    losses = [(a["loss"], b["loss"]) for a, b in zip(rows(builtin), own.rows, strict=True)]
    assert all(math.isclose(a, b, rel_tol=1e-5) for a, b in losses)
    for f in sorted(builtin.rglob("combined.safetensors")) + sorted(builtin.rglob("mask*")):
        a, b = load_tensors(f), load_tensors(own.path / f.relative_to(builtin))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f


# -- sms-dpf -------------------------------------------------------------------------------------


MASKED = {**SMS_GMP_TINY["pruning"], "dpf_settle": "masked"}


def test_sms_dpf_plans_feedback_phases_that_settle_on_their_averages_mask():
    config = tiny_config({**SMS_GMP_TINY, "recipe": "sms-dpf"})
    plan = get_recipe("sms-dpf").plan(config, 0, 1, 0)
    assert plan.mask == MagnitudePruneTo(0.7875) and isinstance(plan.start, FineTune)
    assert plan.during == DPFSchedule((), initial=0.7875)
    assert plan.settle == DenseAverageMask(0.7875)  # the default reading: dense weights
    dense = get_recipe("sms-dpf").plan(config, 0, 0, 0)
    assert dense.during is None and dense.settle is None  # DPF at sparsity 0: dense training
    masked = tiny_config({**SMS_GMP_TINY, "recipe": "sms-dpf", "pruning": MASKED})
    assert get_recipe("sms-dpf").plan(masked, 0, 1, 0).settle == AverageMask(0.7875)
    assert config.run_name() == tiny_config({**SMS_GMP_TINY, "recipe": "sms-dpf"}).run_name()
    assert masked.run_name() != config.run_name()


@pytest.mark.parametrize("recipe", ["sms-gmp", "dpf", "sms"])
def test_dpf_settle_is_refused_for_recipes_without_dpf_copies(recipe):
    values = {"recipe": recipe, "train": {"epochs": 6}}
    if recipe == "sms-gmp":
        values["pruning"] = {**SMS_GMP_TINY["pruning"], "dpf_settle": "dense"}
    else:
        values["pruning"] = {"dpf_settle": "dense"}
    with pytest.raises(ConfigError, match=f"dpf_settle = 'dense' .* recipe {recipe} has no"):
        resolve_config(values)
    values["pruning"] = {k: v for k, v in values["pruning"].items() if k != "dpf_settle"}
    resolve_config(values)  # the field's default ("masked") is accepted everywhere


def test_the_dense_settle_takes_the_mask_of_the_dense_average_and_projects_the_dense_weights():
    """Dense weights a: (4, -1, 0.5, 2) and (2, 3, -0.5, -2), mean (3, 1, 0, 0); b: (1, 0)
    and (0, -3), mean (0.5, -1.5). At sparsity 0.5 (3 of 6 pruned, global) the mask keeps
    |3|, |1|, |-1.5|; each copy's masked state (here all 0: DPF's w_i ⊙ m_i is not used)
    is replaced by its dense weights on that mask, so the mean of the projections is
    (3, 1, 0, 0), (0, -1.5): the dense mean on the mask. The masked reading on the same
    copies averages w_i ⊙ m_i instead."""
    dense = [
        {"a": torch.tensor([4.0, -1.0, 0.5, 2.0]), "b": torch.tensor([1.0, 0.0])},
        {"a": torch.tensor([2.0, 3.0, -0.5, -2.0]), "b": torch.tensor([0.0, -3.0])},
    ]
    own = [
        Mask({"a": torch.tensor([1, 0, 0, 1]).bool(), "b": torch.tensor([1, 0]).bool()}),
        Mask({"a": torch.tensor([1, 1, 0, 1]).bool(), "b": torch.tensor([0, 1]).bool()}),
    ]
    states = [
        {**m.applied(w), "bias": torch.tensor([float(k)])}
        for k, (w, m) in enumerate(zip(dense, own, strict=True))
    ]
    mask, projected = DenseAverageMask(0.5)(states, own, dense)
    assert mask["a"].tolist() == [True, True, False, False]
    assert mask["b"].tolist() == [False, True]
    assert [p["a"].tolist() for p in projected] == [[4.0, -1.0, 0.0, 0.0], [2.0, 3.0, 0.0, 0.0]]
    assert [p["b"].tolist() for p in projected] == [[0.0, 0.0], [0.0, -3.0]]
    assert [p["bias"].tolist() for p in projected] == [[0.0], [1.0]]  # from the final states
    soup = uniform_average(projected, mask=mask)
    assert soup["a"].tolist() == [3.0, 1.0, 0.0, 0.0] and soup["b"].tolist() == [0.0, -1.5]
    # masked reading: w_i ⊙ m_i average (3, 1.5, 0, 0), (0.5, -1.5): keeps a0, a1, b1 too,
    # but the soup is (3, 1.5, 0, 0): copy 0's pruned a1 = -1 is lost
    old, old_projected = AverageMask(0.5)(states, own, [None, None])
    assert old == mask
    assert uniform_average(old_projected, mask=old)["a"].tolist() == [3.0, 1.5, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"no dense weights .* pruning\.dpf_settle = 'masked'"):
        DenseAverageMask(0.5)(states, own, [dense[0], None])


def test_sms_dpf_soups_are_the_dense_average_on_its_own_mask(tmp_path):
    """The default reading: each copy's DPF moves its own mask and keeps its dense weights
    (ingredient_<k>/dense.safetensors); the phase's mask is that of the copies' dense
    average at the phase's count, and the soup is exactly that average on it."""
    train = {**SMS_GMP_TINY["train"], "lr": 0.1}
    run = tiny_run(tmp_path, {**SMS_GMP_TINY, "recipe": "sms-dpf", "train": train})
    masks = [Mask.load(run / f"cycle_{c:02d}" / "mask.safetensors") for c in range(3)]
    assert [m.num_pruned for m in masks] == [0, 1166, 1332]
    for cycle, sparsity in ((1, 0.7875), (2, 0.9)):
        phase = run / f"cycle_{cycle:02d}"
        own = [Mask.load(phase / f"ingredient_{k}" / "mask.safetensors") for k in (0, 1)]
        finals = [load_tensors(phase / f"ingredient_{k}" / "final.safetensors") for k in (0, 1)]
        dense = [load_tensors(phase / f"ingredient_{k}" / "dense.safetensors") for k in (0, 1)]
        assert own[0] != own[1]  # DPF moved them apart
        for final, weights, m in zip(finals, dense, own, strict=True):
            assert weights.keys() == set(m)
            assert all(torch.equal(final[n], weights[n] * keep) for n, keep in m.items())
            assert all(weights[n][~keep].ne(0).any() for n, keep in m.items())  # kept dense
        average = uniform_average(dense)
        assert masks[cycle] == MagnitudePruneTo(sparsity)(cycle, _Previous(average, masks[0]))
        assert masks[cycle] != AverageMask(sparsity)(finals, own, [None, None])[0]
        soup = load_tensors(phase / "combined.safetensors")
        for name, keep in masks[cycle].items():
            assert torch.equal(soup[name], average[name] * keep), (cycle, name)
        alive = sum(int(soup[name].ne(0).sum()) for name in masks[cycle])
        assert alive == masks[cycle].num_alive
    headline = [(r["role"], r["alive"]) for r in rows(run) if r["headline"]]
    assert headline == [("combined", 1480), ("combined", 314), ("combined", 148)]


def test_a_copy_finished_without_its_dense_weights_stops_the_settle_naming_the_fix(tmp_path):
    """A run directory whose copy finished before dense weights were kept (here: deleted)
    stops at the phase's settle with one line that says what to do (steps: 15 an epoch, 2
    epochs a copy; update 80 falls in the second copy of phase 1)."""
    from sparseavg.experiment import run
    from sparseavg.experiment.prepare import RunError

    train, pruning = {"epochs": 4, "batch_size": 512}, {"cycles": 1, "gmp_interval": 2}
    config = tiny_config({**SMS_GMP_TINY, "recipe": "sms-dpf", "train": train, "pruning": pruning})
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path, _StopAfter(80))
    (dense,) = tmp_path.rglob("cycle_01/ingredient_0/dense.safetensors")
    assert not list(tmp_path.rglob("cycle_01/ingredient_1/info.json"))
    dense.unlink()
    with pytest.raises(RunError, match=r"^cycle 1: an ingredient has no dense weights .*'masked'"):
        run(config, tmp_path)
    assert not list(tmp_path.rglob("cycle_01/combined.safetensors"))


def test_sms_dpf_masked_soups_keep_exactly_each_phases_mask(tmp_path):
    """The masked reading (pruning.dpf_settle = 'masked', as measured first): each copy's DPF
    moves its own mask (recomputed from its dense weights after step 16 of the phase); the
    phase's mask is that of the copies' masked average at the phase's count, and the soup
    and every copy it combines keep exactly it (lr 0.1: at 0.05 the two copies' masks move
    alike)."""
    train = {**SMS_GMP_TINY["train"], "lr": 0.1}
    values = {**SMS_GMP_TINY, "recipe": "sms-dpf", "train": train, "pruning": MASKED}
    run = tiny_run(tmp_path, values)
    masks = [Mask.load(run / f"cycle_{c:02d}" / "mask.safetensors") for c in range(3)]
    assert [m.num_pruned for m in masks] == [0, 1166, 1332]
    for cycle, sparsity in ((1, 0.7875), (2, 0.9)):
        phase = run / f"cycle_{cycle:02d}"
        previous = load_tensors(run / f"cycle_{cycle - 1:02d}" / "combined.safetensors")
        start = MagnitudePruneTo(sparsity)(cycle, _Previous(previous, masks[cycle - 1]))
        own = [Mask.load(phase / f"ingredient_{k}" / "mask.safetensors") for k in (0, 1)]
        finals = [load_tensors(phase / f"ingredient_{k}" / "final.safetensors") for k in (0, 1)]
        assert [m.num_pruned for m in own] == [masks[cycle].num_pruned] * 2
        assert own[0] != start and own[1] != start and own[0] != own[1]  # DPF moved them
        for final, m in zip(finals, own, strict=True):
            assert all(not final[name][~keep].any() for name, keep in m.items())
        assert masks[cycle] == AverageMask(sparsity)(finals, own, [None, None])[0]
        soup = load_tensors(phase / "combined.safetensors")
        for name, keep in masks[cycle].items():
            assert not soup[name][~keep].any(), (cycle, name)
            mean = (finals[0][name] + finals[1][name]) * keep / 2
            assert torch.allclose(soup[name], mean, atol=1e-7), (cycle, name)
        alive = sum(int(soup[name].ne(0).sum()) for name in masks[cycle])
        assert alive == masks[cycle].num_alive
    headline = [(r["role"], r["alive"]) for r in rows(run) if r["headline"]]
    assert headline == [("combined", 1480), ("combined", 314), ("combined", 148)]


def test_sms_dpf_under_the_stacked_executor_falls_back_naming_the_mask_schedule(
    tmp_path, monkeypatch
):
    """Two copies with a mask schedule cannot be stacked: the stacked executor says why and
    trains them one by one, giving the sequential run bit for bit."""
    messages: list[str] = []

    class Noted(Stacked):
        def run(self, model, trainer, work, jobs, hooks):
            class Hooks:
                def __getattr__(self, name):
                    return getattr(hooks, name)

                def message(self, text):
                    messages.append(text)

            return super().run(model, trainer, work, jobs, Hooks())

    values = {**SMS_GMP_TINY, "recipe": "sms-dpf"}
    use_executor(monkeypatch, Sequential())
    sequential = tiny_run(tmp_path / "sequential", values)
    use_executor(monkeypatch, Noted())
    stacked = tiny_run(tmp_path / "stacked", values)
    reason = "stacked: a mask schedule changes the mask during training; training them one by one"
    assert [m for m in messages if m.startswith("stacked:")] == [reason, reason]
    assert rows(stacked) == rows(sequential)
    assert same_weights(final_weights(stacked), final_weights(sequential))


def test_sms_dpf_on_your_own_training_loop_gives_the_builtin_run(tmp_path):
    """Each copy trained with DPF's feedback from the attached hooks keeps its dense weights
    (the run's dense.safetensors), so the dense settle of every phase, the soups and rows are
    the built-in run's bit for bit."""
    from test_own import own_equals_builtin

    pruning = {**SMS_GMP_TINY["pruning"], "rewind_epochs": 1.0}  # whole epochs in a user loop
    values = {**SMS_GMP_TINY, "recipe": "sms-dpf", "pruning": pruning}
    builtin, _ = own_equals_builtin(tmp_path, values)
    assert len(list(builtin.rglob("dense.safetensors"))) == 4  # 2 phases x 2 copies
