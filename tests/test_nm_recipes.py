"""``pruning.pattern``: how the config resolves it, which mask rule every recipe gets, and tiny
SWAMP, SMS, one-shot and gmp runs whose masks and averaged models keep the pattern exactly."""

from pathlib import Path

import pytest
import torch

from engine_helpers import tiny_run
from sparseavg.config import ConfigError, parse_override
from sparseavg.pruning import Mask, fraction_per_cycle, nm_prune, nonzeros_per_group
from sparseavg.recipes import RECIPES, get_recipe, resolve_config
from sparseavg.recipes.plan import LineageResult
from sparseavg.recipes.readouts import LineageReprune
from sparseavg.recipes.rules import DenseMask, NMPrune, RandomNMPrune
from sparseavg.utils.files import load_tensors

TWO_FOUR = {"pruning": {"pattern": "2:4"}}


def _with(values: dict, **pruning) -> dict:
    return {**values, "pruning": {**values.get("pruning", {}), **pruning}}


# -- the config ----------------------------------------------------------------------------------


def test_the_pattern_sets_the_target_sparsity_that_the_cycles_reach():
    imp = resolve_config(_with(TWO_FOUR, cycles=3))
    assert imp.pruning.n_m == (2, 4) and imp.pruning.target_sparsity == 0.5
    assert imp.prune_fraction == fraction_per_cycle(0.5, 3)
    # it replaces the 0.9 that one-shot and gmp default to
    assert resolve_config({"recipe": "one-shot", **TWO_FOUR}).pruning.target_sparsity == 0.5
    assert resolve_config({"recipe": "gmp", **TWO_FOUR}).pruning.target_sparsity == 0.5
    assert resolve_config({"pruning": {"pattern": "1:4"}}).pruning.target_sparsity == 0.75
    # the same target given by hand is accepted, and the resolved config resolves to itself
    again = resolve_config(imp.to_dict())
    assert again == imp and again.run_name() == imp.run_name()


def test_the_pattern_can_be_set_quoted_or_bare_on_the_command_line():
    assert parse_override('pruning.pattern="2:4"') == {"pruning": {"pattern": "2:4"}}
    assert parse_override("pruning.pattern=2:4") == {"pruning": {"pattern": "2:4"}}


def test_unstructured_is_the_default_and_changes_no_run_name():
    config = resolve_config({})
    assert config.pruning.pattern == "unstructured" and config.pruning.n_m is None
    assert "pattern" not in config.non_defaults().get("pruning", {})
    explicit = resolve_config({"pruning": {"pattern": "unstructured"}})
    assert explicit.run_name() == config.run_name()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (_with(TWO_FOUR, target_sparsity=0.9), r"target_sparsity = 0\.9 contradicts"),
        (_with(TWO_FOUR, cycles=0), r"needs pruning\.cycles >= 1"),
        ({"recipe": "shuffle", **TWO_FOUR}, "pruning.method = 'shuffle'"),
        (_with(TWO_FOUR, masks_from="runs/imp"), "pruning.masks_from takes every mask"),
        (_with(TWO_FOUR, layer_fractions={"fc.weight": 0.1}), "pruning.layer_fractions"),
        ({"pruning": {"pattern": "2:1"}}, r"pruning\.pattern: '2:1' is not"),
        ({"pruning": {"pattern": "02:4"}}, r"^pruning\.pattern: '02:4' is written '2:4'"),
        # a fraction the pattern (or a target) replaces would only rename the run
        (
            _with(TWO_FOUR, fraction=0.3),
            r"^pruning\.fraction = 0\.3 is not used with pruning\.pattern",
        ),
        (
            {"pruning": {"fraction": 0.3, "target_sparsity": 0.9}},
            r"^pruning\.fraction = 0\.3 is not used with pruning\.target_sparsity",
        ),
        ({"recipe": "gmp", "pruning": {"fraction": 0.3}}, r"^pruning\.fraction = 0\.3 is not"),
    ],
)
def test_combinations_that_cannot_end_n_m_are_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(values)


# -- the plans -----------------------------------------------------------------------------------


def test_imp_cycles_prune_towards_the_pattern_and_the_last_keeps_exactly_n():
    config = resolve_config(_with(TWO_FOUR, cycles=3, scope="layerwise"))
    rules = [get_recipe("imp").plan(config, 0, c, 0).mask for c in range(4)]
    f = fraction_per_cycle(0.5, 3)
    assert rules == [
        DenseMask(),
        NMPrune(2, 4, f, "layerwise"),
        NMPrune(2, 4, f, "layerwise"),
        NMPrune(2, 4, None, "layerwise"),
    ]
    random = resolve_config({"recipe": "random", **_with(TWO_FOUR, cycles=1)})
    rule = get_recipe("random").plan(random, 0, 1, 0).mask
    assert isinstance(rule, RandomNMPrune) and (rule.n, rule.m, rule.fraction) == (2, 4, None)


# their masks come from elsewhere (refused above), or from rigl's own drop/grow
# (test_rigl_recipe.py refuses it), or by magnitude to gmp's counts (dpf, sms-gmp, sms-dpf:
# test_dpf_recipe.py and test_sms_phases.py refuse it)
NOT_BY_PATTERN = {"shuffle", "reinit", "rigl", "swamp-rigl", "dpf", "sms-gmp", "sms-dpf"}


@pytest.mark.parametrize("recipe", sorted(set(RECIPES) - NOT_BY_PATTERN))
def test_every_recipe_that_prunes_ends_on_the_pattern(recipe):
    config = resolve_config({"recipe": recipe, **TWO_FOUR})
    r = get_recipe(recipe)
    last = config.pruning.cycles
    for lineage in range(r.run(config).lineages):
        plan = r.plan(config, lineage, last, 0)
        if recipe == "gmp":
            assert plan.during is not None and plan.during.pattern == (2, 4)  # type: ignore[attr-defined]
            assert plan.during.final_sparsity == 0.5  # type: ignore[attr-defined]
        else:
            rule = plan.mask
            assert isinstance(rule, RandomNMPrune if recipe == "random" else NMPrune)
            assert (rule.n, rule.m, rule.fraction, rule.scope) == (2, 4, None, "global")
    reprune = [x for x in r.run(config).readouts if isinstance(x, LineageReprune)]
    assert all(x.pattern == (2, 4) for x in reprune)


class _Tools:
    """ReadoutTools that note the mask of every row."""

    def __init__(self):
        self.masks = []

    def recalibrate(self, state):
        return state

    def evaluate(self, state):
        return None

    def row(self, role, lineage, mask, evaluation):
        self.masks.append(mask)
        return {}


def test_reprune_of_lineages_with_different_masks_is_exactly_n_m():
    g = torch.Generator().manual_seed(0)
    states = [{"fc.weight": torch.randn(4, 16, generator=g)} for _ in range(2)]
    masks = [nm_prune(s, Mask.ones_like(s), 2, 4) for s in states]
    assert masks[0] != masks[1]  # so their union has up to 4 alive per group
    results = [LineageResult(k, masks[k], masks[k].applied(states[k]), {}, {}, 1) for k in range(2)]
    tools = _Tools()
    LineageReprune(pattern=(2, 4))(1, results, tools)  # type: ignore[arg-type]
    counts = nonzeros_per_group(tools.masks[0]["fc.weight"], 4)
    assert counts.tolist() == [2] * 16
    tools = _Tools()
    LineageReprune()(1, results, tools)  # type: ignore[arg-type]
    assert int(nonzeros_per_group(tools.masks[0]["fc.weight"], 4).max()) > 2


# -- tiny runs end to end ------------------------------------------------------------------------

TINY_2_4 = {
    "model": {"options": {"width": 8}},
    "train": {"epochs": 1, "batch_size": 512},
    "pruning": {"pattern": "2:4", "exclude_first": True, "cycles": 2},
}


def _check_run(run: Path, n: int = 2, m: int = 4) -> None:
    """Every mask and every saved model of every cycle: at most n non-zeros per group of m; the
    last cycle's mask exactly n alive in every group, earlier ones at least n."""
    cycles = sorted(run.glob("cycle_*"))
    for c, cycle in enumerate(cycles):
        for mask_file in cycle.rglob("mask.safetensors"):
            mask = Mask.load(mask_file)
            assert list(mask) == ["features.3.weight", "features.6.weight", "fc.weight"]
            for name in mask:
                alive = nonzeros_per_group(mask[name], m)
                if c == len(cycles) - 1:
                    assert alive.tolist() == [n] * alive.numel(), (mask_file, name)
                elif c > 0:
                    assert int(alive.min()) >= n
            models = [*mask_file.parent.rglob("combined.safetensors")]
            models += [*mask_file.parent.rglob("final.safetensors")]
            assert models
            for model_file in models:
                state = load_tensors(model_file)
                for name in mask:
                    assert not bool(state[name][~mask[name]].any()), (model_file, name)
                    if c == len(cycles) - 1:
                        assert int(nonzeros_per_group(state[name], m).max()) <= n


def test_swamp_averages_particles_into_an_exactly_two_four_model(tmp_path):
    run = tiny_run(tmp_path, {"recipe": "swamp", "ingredients": {"count": 2}, **TINY_2_4})
    _check_run(run)
    last = run / "cycle_02"
    assert len(list(last.glob("ingredient_*/final.safetensors"))) == 2


def test_sms_soups_fine_tuned_ingredients_into_an_exactly_two_four_model(tmp_path):
    run = tiny_run(tmp_path, {"recipe": "sms", "ingredients": {"count": 2}, **TINY_2_4})
    _check_run(run)


@pytest.mark.parametrize("recipe", ["one-shot", "gmp"])
def test_recipes_with_a_target_of_their_own_end_two_four(recipe, tmp_path):
    cycles = 0 if recipe == "gmp" else 1  # the one run of gmp tightens its mask every epoch
    values = {**TINY_2_4, "recipe": recipe, "train": {"epochs": 2, "batch_size": 512}}
    values["pruning"] = {**TINY_2_4["pruning"], "cycles": cycles}
    run = tiny_run(tmp_path, values)
    assert len(list(run.glob("cycle_*"))) == cycles + 1
    _check_run(run)
