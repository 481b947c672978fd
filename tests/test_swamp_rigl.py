"""swamp-rigl: SWAMP's particles on RigL (issue 17), on tiny models with exact counts.

Our reading (docs/recipes.md): the particles start from one initialisation and one random
ERK mask, each runs RigL's drop and grow with its own batch order, and at the end their moved
masks are settled on the mask of their average with every layer's alive count kept; the
particles are projected on that mask and averaged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine_helpers import final_weights, rows, same_weights, tiny_config, tiny_run
from sparseavg.config import ConfigError
from sparseavg.parallel.base import Work
from sparseavg.parallel.stacked import unstackable
from sparseavg.pruning import Mask
from sparseavg.recipes import get_recipe
from sparseavg.recipes.rules import AverageMaskPerLayer
from sparseavg.utils.files import load_tensors
from test_dst_recipes import _StopAfter

pytestmark = pytest.mark.usefixtures("one_thread")

SWAMP_RIGL_TINY = {
    "recipe": "swamp-rigl",
    "train": {"epochs": 4, "batch_size": 512},
    "pruning": {"cycles": 0, "rewind_epochs": 0.0},
    "ingredients": {"count": 2},
}
# rigl's ERK counts on the tiny conv1d at 90 % (test_rigl_recipe.py derives them by hand)
ERK_ALIVE = {"features.3.weight": 23, "features.6.weight": 23, "fc.weight": 99}


def test_the_settle_keeps_each_layers_count_and_its_largest_averages():
    """Layer a: masks {0,1} and {1,2}, 2 alive each; the average of the masked weights is
    (1.5, 3, 2.5, 0): keep indices 1 and 2. Layer b: 1 alive; averages (-4, 1): keep 0."""
    masks = [
        Mask({"a": torch.tensor([1, 1, 0, 0]).bool(), "b": torch.tensor([1, 0]).bool()}),
        Mask({"a": torch.tensor([0, 1, 1, 0]).bool(), "b": torch.tensor([0, 1]).bool()}),
    ]
    states = [
        {"a": torch.tensor([3.0, 2.0, 0.0, 0.0]), "b": torch.tensor([-8.0, 0.0])},
        {"a": torch.tensor([0.0, 4.0, 5.0, 0.0]), "b": torch.tensor([0.0, 2.0])},
    ]
    settled, projected = AverageMaskPerLayer()(states, masks, [None, None])
    assert settled["a"].tolist() == [False, True, True, False]
    assert settled["b"].tolist() == [True, False]
    assert [p["a"].tolist() for p in projected] == [[0.0, 2.0, 0.0, 0.0], [0.0, 4.0, 5.0, 0.0]]


def test_particles_move_their_own_masks_and_the_average_keeps_the_settled_one(tmp_path):
    """Two particles from one ERK start: each keeps 23/23/99 alive and ends with a mask of its
    own; the run's mask keeps those counts and the combined model is exactly the mean of the
    particles projected on it."""
    run = tiny_run(tmp_path, SWAMP_RIGL_TINY)
    cycle = run / "cycle_00"
    moved = [Mask.load(cycle / f"ingredient_{k}" / "mask.safetensors") for k in (0, 1)]
    assert moved[0] != moved[1]  # different batch orders moved them differently
    for m in moved:
        assert {n: int(t.sum()) for n, t in m.items()} == ERK_ALIVE
    mask = Mask.load(cycle / "mask.safetensors")
    assert {n: int(t.sum()) for n, t in mask.items()} == ERK_ALIVE
    assert mask != moved[0] and mask != moved[1]
    finals = [load_tensors(cycle / f"ingredient_{k}" / "final.safetensors") for k in (0, 1)]
    combined = load_tensors(cycle / "combined.safetensors")
    for name, keep in mask.items():
        expected = (finals[0][name] * keep + finals[1][name] * keep) / 2
        assert torch.equal(combined[name], expected), name
        assert not combined[name][~keep].any()
    headline = [r for r in rows(run) if r["headline"]]
    assert [(r["role"], r["alive"], r["total"]) for r in headline] == [("combined", 145, 1440)]
    assert [r["ingredient"] for r in rows(run) if r["role"] == "ingredient"] == [0, 1]


def test_swamp_rigl_resumed_mid_run_equals_an_uninterrupted_run(tmp_path):
    from sparseavg.experiment import run

    config = tiny_config(SWAMP_RIGL_TINY)
    reference = run(config, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path / "b", _StopAfter(80))  # inside the second particle
    assert list((tmp_path / "b").rglob("ingredient_1/checkpoint.pt"))
    resumed = run(config, tmp_path / "b")
    assert rows(resumed) == rows(reference)
    assert same_weights(final_weights(resumed), final_weights(reference))


def test_swamp_rigl_falls_back_from_stacking_and_refuses_what_rigl_refuses(tmp_path):
    config = tiny_config(SWAMP_RIGL_TINY)
    plan = get_recipe("swamp-rigl").plan(config, 0, 0, 0)
    assert isinstance(plan.settle, AverageMaskPerLayer)
    work = Work(0, 0, {}, 0, Mask({}), plan.during)
    assert unstackable(nn.Linear(2, 2), work, []) == (
        "a mask schedule changes the mask during training"
    )
    with pytest.raises(ConfigError, match="recipe swamp-rigl draws its own random sparse"):
        tiny_config({**SWAMP_RIGL_TINY, "pruning": {"cycles": 0, "scope": "layerwise"}})
    with pytest.raises(ConfigError, match="while recipe swamp-rigl still moves the mask"):
        tiny_config({**SWAMP_RIGL_TINY, "train": {"epochs": 4, "swa_start": 0.5}})


def test_swamp_rigl_on_your_own_training_loop_is_refused(tmp_path):
    import sparseavg
    from test_own import OWN, PRUNABLE, TiedLM, accuracy, loop

    config = {**OWN, "pruning": {"rewind_epochs": 0.0, "target_sparsity": 0.5}}
    with pytest.raises(ConfigError, match="recipe 'swamp-rigl' changes the mask inside"):
        sparseavg.prune(
            "swamp-rigl", TiedLM, loop, accuracy, runs_dir=tmp_path, config=config,
            prunable=PRUNABLE, progress=False,
        )  # fmt: skip
    assert not list(tmp_path.iterdir())
