"""Recipes fill the cycle plans: what each option changes, checked on the pure plan functions."""

import pytest

from sparseavg.config import ConfigError
from sparseavg.pruning import fraction_per_cycle
from sparseavg.recipes import get_recipe, resolve_config

T0 = 56  # a rewind step


def plan(values, cycle, lineage=0):
    config = resolve_config(values)
    return get_recipe(config.recipe).plan(config, lineage, cycle, T0)


def test_swamp_particles_share_the_rewind_point_and_differ_in_seed():
    p = plan({"recipe": "swamp"}, 3)
    assert (p.start, p.start_step, p.combine) == ("rewind", T0, "uniform")
    assert len(p.ingredients) == 4 and len({i.seed for i in p.ingredients}) == 4
    s = p.ingredients[0].settings
    assert (s.swa_start, s.swa_lr) == (0.75, 0.05)
    assert p.prune_fraction == pytest.approx(0.2)
    zero = plan({"recipe": "swamp"}, 0)  # cycle 0: the K particles branch from θ_T0 too
    assert (zero.start, zero.start_step, len(zero.ingredients)) == ("ticket", T0, 4)
    assert {i.seed for i in zero.ingredients}.isdisjoint({i.seed for i in p.ingredients})


def test_swamp_plus_trains_one_particle_below_single_until():
    values = {"recipe": "swamp+", "ingredients": {"single_until": 2}}
    assert [len(plan(values, c).ingredients) for c in range(4)] == [1, 1, 4, 4]
    assert [plan(values, c).combine for c in (1, 2)] == ["single", "uniform"]


def test_sms_fine_tunes_with_the_retrain_settings_and_varies_one_hyperparameter():
    values = {
        "recipe": "sms",
        "train": {"epochs": 30, "lr": 0.1, "weight_decay": 1e-4},
        "pruning": {"retrain_epochs": 10, "retrain_lr": 0.2},
        "ingredients": {"vary": "weight_decay", "values": [0.5, 1.0, 2.0]},
    }
    dense = plan(values, 0)
    assert len(dense.ingredients) == 1 and dense.ingredients[0].settings.epochs == 30
    p = plan(values, 1)
    assert (p.start, p.start_step) == ("finetune", 0)
    settings = [i.settings for i in p.ingredients]
    assert [s.weight_decay for s in settings] == pytest.approx([5e-5, 1e-4, 2e-4])
    assert {(s.epochs, s.schedule, s.lr) for s in settings} == {(10, "llr", 0.2)}
    lengths = plan({**values, "ingredients": {"vary": "length"}}, 1)  # default factors 0.5..2
    assert [i.settings.epochs for i in lengths.ingredients] == [5, 10, 20]
    lrs = plan({**values, "ingredients": {"vary": "lr", "values": [1.0, 3.0, 0.5]}}, 1)
    assert [i.settings.lr for i in lrs.ingredients] == pytest.approx([0.2, 0.6, 0.1])


def test_imp_plus_retrains_length_factor_times_longer():
    p = plan({"recipe": "imp+", "pruning": {"retrain_epochs": 4}}, 2)
    assert p.ingredients[0].settings.epochs == 12  # default length_factor 3
    p = plan(
        {"recipe": "imp+", "pruning": {"retrain_epochs": 4}, "ingredients": {"length_factor": 2.5}},
        2,
    )
    assert p.ingredients[0].settings.epochs == 10


def test_target_sparsity_derives_the_per_cycle_fraction():
    p = plan({"recipe": "sms", "pruning": {"target_sparsity": 0.9, "cycles": 3}}, 1)
    assert p.prune_fraction == pytest.approx(fraction_per_cycle(0.9, 3))
    assert plan({"recipe": "one-shot"}, 1).prune_fraction == pytest.approx(0.9)


def test_ensemble_members_are_independent_single_model_lineages():
    config = resolve_config({"recipe": "ensemble", "ingredients": {"count": 3}})
    recipe = get_recipe("ensemble")
    assert recipe.members(config) == 3
    plans = [recipe.plan(config, m, 1, T0) for m in range(3)]
    assert all(len(p.ingredients) == 1 for p in plans)
    assert len({p.ingredients[0].seed for p in plans}) == 3


def test_gmp_tightens_inside_one_run():
    p = plan({"recipe": "gmp", "train": {"epochs": 20}}, 0)
    assert p.gradual is not None
    assert (p.gradual.start_epoch, p.gradual.end_epoch, p.gradual.final_sparsity) == (2, 15, 0.9)
    assert p.start_step == T0  # the engine passes rewind_step 0 for gmp (default rewind_epochs 0)


def test_random_recipe_prunes_randomly():
    assert plan({"recipe": "random"}, 1).prune_method == "random"


def test_recipe_defaults_yield_to_the_user_but_fixed_settings_do_not():
    assert len(plan({"recipe": "swamp", "ingredients": {"count": 2}}, 1).ingredients) == 2
    with pytest.raises(ConfigError, match=r"ingredients\.start = 'finetune'"):
        resolve_config({"recipe": "swamp", "ingredients": {"start": "finetune"}})
