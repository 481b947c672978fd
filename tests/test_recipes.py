"""Recipes fill the plans: what each option changes, checked on the pure plan functions."""

import tomllib
from pathlib import Path

import pytest

from sparseavg.config import ConfigError
from sparseavg.pruning import GradualMagnitudePruning, fraction_per_cycle
from sparseavg.recipes import RECIPES, get_recipe, resolve_config
from sparseavg.recipes.readouts import (
    CombinedRows,
    IngredientEnsemble,
    LineageAverage,
    LineageEnsemble,
    LineageReprune,
)
from sparseavg.recipes.rules import (
    AdaptivePeak,
    Borrow,
    DenseMask,
    FineTune,
    Greedy,
    MagnitudePrune,
    Pretrained,
    RandomPrune,
    Reinit,
    Rewind,
    ShuffleLayers,
    Single,
    SourceMask,
    Uniform,
)
from sparseavg.utils.seeding import derive_seed

T0 = 56  # a rewind step
CONFIGS = Path(__file__).parent.parent / "configs"


def plan(values, cycle, lineage=0):
    config = resolve_config(values)
    return get_recipe(config.recipe).plan(config, lineage, cycle, T0)


def settings(values, cycle, lineage=0):
    return [i.settings for i in plan(values, cycle, lineage).ingredients]


def test_swamp_particles_share_the_rewind_point_and_differ_in_seed():
    p = plan({"recipe": "swamp"}, 3)
    assert p.start == Rewind() and p.combine == Uniform()
    assert p.mask == MagnitudePrune(0.2, "global", {})
    assert len(p.ingredients) == 4 and len({i.seed for i in p.ingredients}) == 4
    s = p.ingredients[0].settings
    assert (s.swa_start, s.swa_lr, s.swa_schedule) == (0.75, 0.05, "anneal")
    zero = plan({"recipe": "swamp"}, 0)  # cycle 0: the K particles branch from θ_T0 too
    assert zero.start == Rewind() and zero.mask == DenseMask() and len(zero.ingredients) == 4
    assert {i.seed for i in zero.ingredients}.isdisjoint({i.seed for i in p.ingredients})


def test_swamp_without_swa_and_imp_with_swa_are_the_two_ablations():
    no_swa = plan({"recipe": "swamp-no-swa"}, 2)
    assert len(no_swa.ingredients) == 4 and no_swa.combine == Uniform()
    assert {i.settings.swa_start for i in no_swa.ingredients} == {None}
    swa_only = plan({"recipe": "imp-swa"}, 2)
    assert len(swa_only.ingredients) == 1 and swa_only.ingredients[0].settings.swa_start == 0.75
    with pytest.raises(ConfigError, match=r"train\.swa = True"):
        resolve_config({"recipe": "swamp-no-swa", "train": {"swa": True}})


def test_swamp_plus_trains_one_particle_below_single_until():
    values = {"recipe": "swamp+", "ingredients": {"single_until": 2}}
    assert [len(plan(values, c).ingredients) for c in range(4)] == [1, 1, 4, 4]
    assert [plan(values, c).combine for c in (1, 2)] == [Single(), Uniform()]
    # with SWA in the early cycles by default; ingredients.early = "imp" makes them plain IMP
    assert [s[0].swa_start for s in (settings(values, c) for c in range(3))] == [0.75] * 3
    imp_early = {"recipe": "swamp+", "ingredients": {"single_until": 2, "early": "imp"}}
    assert [settings(imp_early, c)[0].swa_start for c in range(4)] == [None, None, 0.75, 0.75]
    config = resolve_config(imp_early)
    assert get_recipe("swamp+").run(config).common.swa_start is None  # the ticket's run too


def test_sms_fine_tunes_with_the_retrain_settings_and_varies_one_hyperparameter():
    values = {
        "recipe": "sms",
        "train": {"epochs": 30, "lr": 0.1, "weight_decay": 1e-4},
        "pruning": {"retrain_epochs": 10, "retrain_lr": 0.2},
        "ingredients": {"vary": "weight_decay", "values": [0.5, 1.0, 2.0]},
    }
    dense = settings(values, 0)
    assert len(dense) == 1 and (dense[0].epochs, dense[0].weight_decay) == (30, 1e-4)
    p = plan(values, 1)
    assert p.start == FineTune() and p.combine == Uniform()
    wds = [i.settings.weight_decay for i in p.ingredients]
    assert wds == pytest.approx([5e-5, 1e-4, 2e-4])
    assert {(s.epochs, s.schedule, s.lr, s.warmup) for s in settings(values, 1)} == {
        (10, "llr", 0.2, 0.1)
    }
    assert len({i.seed for i in p.ingredients}) == 1  # one batch order, as the SMS code
    lengths = {**values, "ingredients": {"vary": "length"}}  # default factors 0.5 .. 2
    assert [s.epochs for s in settings(lengths, 1)] == [5, 10, 20]
    lrs = {**values, "ingredients": {"vary": "lr", "values": [1.0, 3.0, 0.5]}}
    assert [s.lr for s in settings(lrs, 1)] == pytest.approx([0.2, 0.6, 0.1])
    seeds = {**values, "ingredients": {"vary": "lr", "seed_per_ingredient": True}}
    assert len({i.seed for i in plan(seeds, 1).ingredients}) == 3
    by_seed = {**values, "ingredients": {"vary": "seed"}}
    assert len({i.seed for i in plan(by_seed, 1).ingredients}) == 3
    assert {s.weight_decay for s in settings(by_seed, 1)} == {1e-4}


def test_the_sms_weight_decay_config_trains_its_dense_model_at_the_stated_weight_decay():
    values = tomllib.loads((CONFIGS / "sms-wd-cifar100-wrn32_4.toml").read_text())
    assert values["train"]["weight_decay"] == 5e-4  # what its header states
    assert settings(values, 0)[0].weight_decay == 5e-4
    assert [s.weight_decay for s in settings(values, 1)] == pytest.approx([2.5e-4, 5e-4, 1e-3])


def test_the_sms_recipes_follow_the_sms_code_around_each_phase():
    for name in ("sms", "sms-ensemble", "imp-ft", "imp+", "imp-avg", "imp-reprune", "one-shot"):
        config = resolve_config({"recipe": name})
        assert config.train.nesterov, name  # its SGD: nesterov = weight_decay > 0
        assert (config.bn.recalibrate, config.bn.augment, config.bn.momentum) == (
            "always",
            True,
            0.1,
        ), name
        assert config.pruning.retrain_schedule == "llr", name
    for name in ("imp", "swamp", "imp-swa", "ensemble"):
        config = resolve_config({"recipe": name})
        assert (config.bn.recalibrate, config.bn.momentum, config.train.nesterov) == (
            "averaged",
            0.0,
            False,
        ), name


def test_retraining_schedules_by_their_sms_names():
    base = {"recipe": "imp-ft", "train": {"epochs": 30}, "pruning": {"retrain_epochs": 10}}
    for name in ("ft", "lrw", "slr", "clr"):
        s = settings({**base, "pruning": {"retrain_epochs": 10, "retrain_schedule": name}}, 1)[0]
        assert s.schedule == name and s.original is not None
        assert (s.original.epochs, s.original.schedule) == (30, "cosine")
    llr = settings(base, 1)[0]
    assert (llr.schedule, llr.original) == ("llr", None)
    allr = plan({**base, "pruning": {"retrain_epochs": 10, "retrain_schedule": "allr"}}, 1)
    assert allr.adapt == AdaptivePeak(max_lr=0.1, fraction=0.2, original_epochs=30)
    assert allr.ingredients[0].settings.schedule == "llr"
    with pytest.raises(ConfigError, match="'lrw' rewinds the last"):
        resolve_config({**base, "pruning": {"retrain_epochs": 40, "retrain_schedule": "lrw"}})


def test_allr_scales_the_peak_by_the_norm_drop_and_clips_it_like_the_sms_code():
    rule = AdaptivePeak(max_lr=0.1, fraction=0.2, original_epochs=100)
    assert rule.peak(0.0, 10) == pytest.approx(0.01)  # floor: min(10 / 100, 1) * 0.1
    assert rule.peak(0.2**0.5 * 0.5, 10) == pytest.approx(0.05)  # d / sqrt(f) * max_lr
    assert rule.peak(1.0, 10) == pytest.approx(0.1)  # ceiling: max_lr


def test_imp_plus_retrains_length_factor_times_longer():
    assert settings({"recipe": "imp+", "pruning": {"retrain_epochs": 4}}, 2)[0].epochs == 12
    values = {
        "recipe": "imp+",
        "pruning": {"retrain_epochs": 4},
        "ingredients": {"length_factor": 2.5},
    }
    assert settings(values, 2)[0].epochs == 10


def test_target_sparsity_derives_the_per_cycle_fraction():
    p = plan({"recipe": "sms", "pruning": {"target_sparsity": 0.9, "cycles": 3}}, 1)
    assert p.mask.fraction == pytest.approx(fraction_per_cycle(0.9, 3))
    assert plan({"recipe": "one-shot"}, 1).mask.fraction == pytest.approx(0.9)


def test_ensemble_members_are_independent_single_model_lineages():
    config = resolve_config({"recipe": "ensemble", "ingredients": {"count": 3}})
    recipe = get_recipe("ensemble")
    assert recipe.run(config).lineages == 3
    plans = [recipe.plan(config, m, 1, T0) for m in range(3)]
    assert all(len(p.ingredients) == 1 and p.start == Rewind() for p in plans)
    assert len({p.ingredients[0].seed for p in plans}) == 3
    assert [r.headline for r in recipe.run(config).readouts] == [False, True]
    assert isinstance(recipe.run(config).readouts[1], LineageEnsemble)


def test_imp_avg_lineages_share_the_dense_model_then_prune_separately():
    config = resolve_config({"recipe": "imp-avg"})
    recipe = get_recipe("imp-avg")
    assert recipe.run(config).lineages == 3
    zero = [recipe.plan(config, m, 0, T0) for m in range(3)]
    init = derive_seed(config.seed, "lineage", 0, "init")
    assert len(zero[0].ingredients) == 1 and zero[0].start == Reinit(init)  # one dense run
    assert [(p.start, p.ingredients) for p in zero[1:]] == [(Borrow(0), ())] * 2
    ones = [recipe.plan(config, m, 1, T0) for m in range(3)]
    assert all(p.start == FineTune() and p.mask == MagnitudePrune(0.2, "global", {}) for p in ones)
    assert len({p.ingredients[0].seed for p in ones}) == 3
    kinds = {type(r): r.headline for r in recipe.run(config).readouts}
    assert kinds == {CombinedRows: False, LineageAverage: True, LineageReprune: False}
    reprune = get_recipe("imp-reprune").run(resolve_config({"recipe": "imp-reprune"}))
    assert {type(r): r.headline for r in reprune.readouts}[LineageReprune] is True


def test_sms_ensemble_reads_out_the_prediction_ensemble_and_continues_from_the_soup():
    config = resolve_config({"recipe": "sms-ensemble"})
    recipe = get_recipe("sms-ensemble")
    assert recipe.plan(config, 0, 1, T0).combine == Uniform()
    headline = [type(r) for r in recipe.run(config).readouts if r.headline]
    assert headline == [IngredientEnsemble]


def test_every_recipe_has_exactly_one_headline_readout():
    for name, recipe in RECIPES.items():
        values = {"recipe": name}
        if name == "reinit":
            values["pruning"] = {"masks_from": "elsewhere"}
        readouts = recipe.run(resolve_config(values)).readouts
        assert sum(r.headline for r in readouts) == 1, name


def test_gmp_tightens_inside_one_run():
    p = plan({"recipe": "gmp", "train": {"epochs": 20}}, 0)
    assert p.during == GradualMagnitudePruning(2, 15, 0.9, "global")
    assert p.start == Rewind()  # the engine passes rewind_step 0 for gmp (rewind_epochs 0)


def test_mask_rules_follow_pruning_method():
    assert isinstance(plan({"recipe": "random"}, 1).mask, RandomPrune)
    shuffled = plan({"recipe": "shuffle"}, 1).mask
    assert isinstance(shuffled, ShuffleLayers) and shuffled.rule == MagnitudePrune(0.2)
    from_run = plan({"recipe": "shuffle", "pruning": {"masks_from": "runs/imp-x"}}, 1).mask
    assert from_run.rule == SourceMask()
    reinit = plan({"recipe": "reinit", "pruning": {"masks_from": "runs/imp-x"}}, 2)
    assert reinit.mask == SourceMask() and isinstance(reinit.start, Reinit)
    fractions = {"pruning": {"layer_fractions": {"fc.weight": 0.1}}}
    assert plan(fractions, 1).mask == MagnitudePrune(0.2, "global", {"fc.weight": 0.1})


def test_greedy_and_pretrained_plans():
    p = plan({"recipe": "sms", "ingredients": {"combine": "greedy", "accept": "gt"}}, 1)
    assert p.combine == Greedy("gt")
    zero = plan(
        {"recipe": "sms", "model": {"pretrained": "dense.safetensors"}, "train": {"epochs": 0}}, 0
    )
    assert zero.start == Pretrained() and zero.ingredients == ()


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"train": {"milestones": [1.5]}}, "train.milestones[0]: 1.5 is outside (0, 1)"),
        ({"recipe": "reinit"}, "set pruning.masks_from"),
        ({"recipe": "random", "pruning": {"masks_from": "x"}}, "masks_from"),
        ({"recipe": "sms", "ingredients": {"seed_per_ingredient": True}}, "seed_per_ingredient"),
        ({"pruning": {"layer_fractions": {"fc.weight": 1.5}}}, "layer_fractions.fc.weight: 1.5"),
        ({"pruning": {"masks_from": "a", "initial_mask": "b"}}, "both give cycle 0's mask"),
    ],
)
def test_settings_are_validated_with_the_config(values, fragment):
    with pytest.raises(ConfigError) as err:
        resolve_config(values)
    assert fragment in str(err.value)


def test_recipe_defaults_yield_to_the_user_but_fixed_settings_do_not():
    assert len(plan({"recipe": "swamp", "ingredients": {"count": 2}}, 1).ingredients) == 2
    with pytest.raises(ConfigError, match=r"ingredients\.start = 'finetune'"):
        resolve_config({"recipe": "swamp", "ingredients": {"start": "finetune"}})
