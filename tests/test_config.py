"""The config schema: one list of allowed values per field, ranges, TOML out and back in, and
run names that hash only what differs from the defaults."""

from __future__ import annotations

import dataclasses
import tomllib
from typing import get_args

import pytest

from sparseavg import config as config_module
from sparseavg.averaging import ACCEPT_RULES
from sparseavg.config import (
    Config,
    ConfigError,
    RetrainSchedule,
    TrainConfig,
    TrainSchedule,
    build_config,
    field_help,
    field_specs,
    to_toml,
)
from sparseavg.pruning import SCOPES
from sparseavg.recipes import resolve_config
from sparseavg.training import OPTIMIZERS, PRECISIONS, RETRAIN_SCHEDULES, SCHEDULES

SPECS = {s.key: s for s in field_specs()}


# -- choices and ranges --------------------------------------------------------------------------


def test_choice_fields_take_their_values_from_the_lower_layers_lists():
    choices = {k: s.choices for k, s in SPECS.items() if s.choices is not None}
    assert choices["train.optimizer"] == OPTIMIZERS
    assert choices["train.precision"] == PRECISIONS
    assert choices["train.schedule"] == SCHEDULES == get_args(TrainSchedule)
    assert choices["pruning.retrain_schedule"] == ("", *SCHEDULES, *RETRAIN_SCHEDULES)
    assert get_args(RetrainSchedule) == choices["pruning.retrain_schedule"]
    assert choices["pruning.scope"] == SCOPES
    assert choices["ingredients.accept"] == ACCEPT_RULES


@pytest.mark.parametrize("key", [k for k, s in SPECS.items() if s.choices])
def test_every_choice_field_refuses_other_values_listing_its_choices(key):
    section, name = key.split(".")
    with pytest.raises(ConfigError) as err:
        build_config({section: {name: "bogus"}})
    assert str(err.value) == f"{key}: 'bogus' is not one of {', '.join(SPECS[key].choices or ())}"
    for value in SPECS[key].choices or ():
        assert getattr(getattr(build_config({section: {name: value}}), section), name) == value


def test_allowed_values_in_words():
    allowed = {k: s.allowed for k, s in SPECS.items()}
    assert allowed["train.optimizer"] == "sgd|adam|adamw"
    assert allowed["pruning.retrain_schedule"] == '""|constant|step|cosine|llr|ft|lrw|slr|clr|allr'
    assert allowed["pruning.fraction"] == "number in (0, 1)"
    assert allowed["train.swa_start"] == "number in [0, 1)"
    assert allowed["bn.momentum"] == "number in [0, 1]"
    assert allowed["ingredients.count"] == "integer in [1, inf)"
    assert allowed["train.lr"] == "number in (0, inf)"
    assert allowed["train.milestones"] == "list of numbers in (0, 1)"
    assert allowed["ingredients.values"] == "list of numbers in (0, inf)"
    assert allowed["pruning.layer_fractions"] == "table of numbers in [0, 1)"
    assert allowed["pruning.exclude"] == "list of strings"
    assert allowed["model.options"] == "table"
    assert allowed["train.nesterov"] == "true|false"
    assert allowed["data.dataset"] == "string"
    assert allowed["seed"] == "integer in [0, inf)"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"train": {"milestones": [0.5, 1.5]}}, "train.milestones[1]: 1.5 is outside (0, 1)"),
        ({"train": {"milestones": [0]}}, "train.milestones[0]: 0.0 is outside (0, 1)"),
        (
            {"pruning": {"layer_fractions": {"fc.weight": 1}}},
            "pruning.layer_fractions.fc.weight: 1.0 is outside [0, 1)",
        ),
        (
            {"pruning": {"layer_fractions": {"fc.weight": "x"}}},
            "pruning.layer_fractions.fc.weight: expected a number, got 'x'",
        ),
        ({"ingredients": {"values": [1, -2]}}, "ingredients.values[1]: -2.0 is outside (0, inf)"),
        ({"train": {"optimizer": 3}}, "train.optimizer: 3 is not one of sgd, adam, adamw"),
        ({"train": {"milestones": 0.5}}, "train.milestones: expected a list of numbers, got 0.5"),
    ],
)
def test_elements_of_lists_and_tables_are_checked(values, message):
    with pytest.raises(ConfigError) as err:
        build_config(values)
    assert str(err.value) == message


def test_field_help_keeps_the_readme_format():
    rows = field_help()
    assert ("train.optimizer", "'sgd'", "optimizer") in rows
    assert ("model.options", "{}", "model-specific options, e.g. {width = 64}") in rows
    assert [r[0] for r in rows] == list(SPECS)
    assert len(set(SPECS)) == len(rows)


# -- TOML ----------------------------------------------------------------------------------------


def test_toml_round_trip_with_characters_outside_the_bmp_and_nested_tables():
    values = {
        "model": {
            "options": {"width": 8, "tag": "\U0001f600"},
            "pretrained": "/data/\U0001f600.pt",
        },
        "pruning": {"layer_fractions": {"fc3.weight": 0.1}, "exclude": ['a"b', "c\\d"]},
        "execution": {"data_dir": "/tmp/\U0001f600 data\n"},
    }
    config = build_config(values)
    text = to_toml(config.to_dict())
    assert "\U0001f600" in text  # written as itself, not as a surrogate pair
    back = build_config(tomllib.loads(text))
    assert back == config
    assert back.digest() == config.digest()


def test_toml_keeps_empty_tables_and_lists():
    config = Config()
    back = tomllib.loads(to_toml(config.to_dict()))
    assert back["model"]["options"] == {} and back["pruning"]["layer_fractions"] == {}
    assert back["pruning"]["exclude"] == [] and back == config.to_dict()


# -- run names -----------------------------------------------------------------------------------

# Pinned: a change here renames every user's run directories (so their studies stop resuming).
DEFAULT_NAME = "imp-mnist1d-conv1d-a3225da7"
SWAMP_NAME = "swamp-mnist1d-conv1d-821663f1"


def test_run_names_are_pinned():
    assert Config().run_name() == DEFAULT_NAME
    assert resolve_config({"recipe": "swamp"}).run_name() == SWAMP_NAME


def test_the_hash_covers_only_values_that_differ_from_their_defaults():
    plain = resolve_config({})
    explicit = resolve_config({"train": {"lr": 0.1, "epochs": 30}, "pruning": {"scope": "global"}})
    assert explicit.run_name() == plain.run_name() == DEFAULT_NAME
    assert plain.non_defaults(hashed_only=True) == {}
    changed = resolve_config({"train": {"lr": 0.05}})
    assert changed.non_defaults() == {"train": {"lr": 0.05}}
    assert changed.run_name() != DEFAULT_NAME
    # where and how it runs is not part of the name
    elsewhere = resolve_config({"execution": {"device": "cpu", "progress": "none"}})
    assert elsewhere.run_name() == DEFAULT_NAME
    assert elsewhere.non_defaults() == {"execution": {"device": "cpu", "progress": "none"}}
    assert elsewhere.non_defaults(hashed_only=True) == {}


def test_adding_a_field_renames_no_run():
    """A new field whose default keeps the old behaviour leaves every run's name as it was."""
    knob = dataclasses.field(default=0.5, metadata={"help": "a new knob", "range": None})
    NewTrain = dataclasses.make_dataclass(
        "TrainConfig", [("new_knob", float, knob)], bases=(TrainConfig,), frozen=True
    )
    NewConfig = dataclasses.make_dataclass(
        "Config",
        [("train", NewTrain, dataclasses.field(default_factory=NewTrain))],
        bases=(Config,),
        frozen=True,
    )
    old = resolve_config({"recipe": "swamp", "train": {"epochs": 3}})
    sections = {f.name: getattr(old, f.name) for f in dataclasses.fields(Config)}
    new = NewConfig(**{**sections, "train": NewTrain(**dataclasses.asdict(old.train))})
    assert new.train.new_knob == 0.5
    assert new.run_name() == old.run_name()
    turned = dataclasses.replace(new, train=dataclasses.replace(new.train, new_knob=0.7))
    assert turned.run_name() != old.run_name()


def test_the_schema_version_is_part_of_the_name(monkeypatch):
    monkeypatch.setattr(config_module, "SCHEMA_VERSION", config_module.SCHEMA_VERSION + 1)
    assert Config().run_name() != DEFAULT_NAME
