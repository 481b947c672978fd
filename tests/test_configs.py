"""The experiment configs under configs/: each resolves, names a known model and data set,
documents itself, and the demo configs reproduce the demo's runs exactly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sparseavg.config import read_toml
from sparseavg.data import available_datasets
from sparseavg.experiment.demo import DEMO_RECIPES, demo_configs
from sparseavg.models import available_models
from sparseavg.recipes import resolve_config

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.toml"))
WRN_NAME = re.compile(r"wrn\d+_\d+")


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def test_configs_exist() -> None:
    names = {p.name for p in CONFIG_FILES}
    assert {f"demo-{r}.toml" for r in DEMO_RECIPES} <= names
    assert len(CONFIG_FILES) >= 10


@pytest.mark.parametrize("path", CONFIG_FILES, ids=_ids(CONFIG_FILES))
def test_config_resolves(path: Path) -> None:
    config = resolve_config(read_toml(path))
    assert config.model.name in available_models() or WRN_NAME.fullmatch(config.model.name)
    assert config.data.dataset in available_datasets()


@pytest.mark.parametrize("path", CONFIG_FILES, ids=_ids(CONFIG_FILES))
def test_config_header(path: Path) -> None:
    """A header comment with the command that runs the file; recipe and seed set explicitly."""
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# ")
    assert f"sparseavg run configs/{path.name}" in text
    values = read_toml(path)
    assert "recipe" in values
    assert "seed" in values


@pytest.mark.parametrize("path", CONFIG_FILES, ids=_ids(CONFIG_FILES))
def test_config_listed_in_readme(path: Path) -> None:
    assert f"`{path.name}`" in (CONFIG_DIR / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("recipe", list(DEMO_RECIPES))
def test_demo_config_matches_demo(recipe: str) -> None:
    config = resolve_config(read_toml(CONFIG_DIR / f"demo-{recipe}.toml"))
    values = next(v for v in demo_configs([recipe]) if v["seed"] == 0)
    demo = resolve_config(values)
    assert config.digest() == demo.digest()
    assert config.run_name() == demo.run_name()
    assert config == demo  # the execution table too


def test_masks_from_names_the_run_of_another_config() -> None:
    """The lottery-ticket controls read the masks of a run another config writes: its name
    (which hashes the config) must stay in step with that config."""
    names = {f"runs/{resolve_config(read_toml(p)).run_name()}": p.name for p in CONFIG_FILES}
    sources = {}
    for path in CONFIG_FILES:
        masks_from = resolve_config(read_toml(path)).pruning.masks_from
        if masks_from:
            assert masks_from in names, f"{path.name}: {masks_from} is no config's run"
            sources[path.name] = names[masks_from]
    assert sources == {
        "reinit-mnist-lenet.toml": "imp-mnist-lenet.toml",
        "shuffle-mnist-lenet.toml": "imp-mnist-lenet.toml",
    }
