"""``pruning.rounding``: round(f * alive) by default, or open_lth's sparse_global count."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparseavg.config import ConfigError
from sparseavg.pruning import Mask, magnitude_prune, random_prune
from sparseavg.recipes import resolve_config
from sparseavg.recipes.registry import check_config
from sparseavg.recipes.rules import MagnitudePrune
from sparseavg.recipes.standard import prune_rule


def _open_lth_prune(weights: dict[str, np.ndarray], mask: dict[str, np.ndarray], f: float):
    """open_lth's pruning/sparse_global.py (2ce732f) Strategy.prune, on numpy arrays."""
    remaining = np.sum([np.sum(v) for v in mask.values()])
    number_to_prune = np.ceil(f * remaining).astype(int)
    vector = np.concatenate([v[mask[k] == 1] for k, v in weights.items()])
    threshold = np.sort(np.abs(vector))[number_to_prune]
    return {
        k: np.where(np.abs(v) > threshold, mask[k], np.zeros_like(v)) for k, v in weights.items()
    }


def _model(seed: int) -> tuple[dict[str, torch.Tensor], Mask]:
    g = torch.Generator().manual_seed(seed)
    weights = {"a": torch.randn(3, 5, generator=g), "b": torch.randn(7, generator=g)}
    mask = Mask({"a": torch.rand(3, 5, generator=g) > 0.2, "b": torch.ones(7, dtype=torch.bool)})
    return weights, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.37])
def test_open_lth_rounding_is_open_lths_mask(seed: int, fraction: float) -> None:
    weights, mask = _model(seed)
    ours = magnitude_prune(weights, mask, fraction, rounding="open_lth")
    np_mask = {k: v.numpy().astype(np.float32) for k, v in mask.items()}
    theirs = _open_lth_prune({k: v.numpy() for k, v in weights.items()}, np_mask, fraction)
    for k in mask:
        assert np.array_equal(ours[k].numpy(), theirs[k].astype(bool)), k
    alive = int(sum(int(m.sum()) for m in mask.values()))
    removed = alive - int(sum(int(m.sum()) for m in ours.values()))
    assert removed == math.ceil(fraction * alive) + 1  # no ties among random weights


def test_exact_counts_round_and_open_lth() -> None:
    # 22 weights alive, f = 0.2: round(4.4) = 4 go by default, ceil(4.4) + 1 = 6 as open_lth
    weights = {"w": torch.arange(1.0, 23.0)}
    mask = Mask({"w": torch.ones(22, dtype=torch.bool)})
    default = magnitude_prune(weights, mask, 0.2)
    lth = magnitude_prune(weights, mask, 0.2, rounding="open_lth")
    assert int((~default["w"]).sum()) == 4 and int((~lth["w"]).sum()) == 6
    assert (~lth["w"]).nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5]
    # f = 0.2 of 10: 2 by default, ceil(2.0) + 1 = 3 as open_lth
    ten = Mask({"w": torch.arange(22) < 10})
    assert int(ten["w"].sum() - magnitude_prune(weights, ten, 0.2)["w"].sum()) == 2
    lth10 = magnitude_prune(weights, ten, 0.2, rounding="open_lth")
    assert int(ten["w"].sum() - lth10["w"].sum()) == 3
    # ties at the threshold all go (open_lth keeps `> threshold`): of 1, 2, 3, 3, 3 with
    # f = 0.4 the threshold is sorted[ceil(2.0)] = 3.0 and all five go; with f = 0.2 it is
    # sorted[1] = 2.0 and two go
    tied = {"w": torch.tensor([1.0, 2.0, 3.0, 3.0, 3.0])}
    five = Mask({"w": torch.ones(5, dtype=torch.bool)})
    assert magnitude_prune(tied, five, 0.4, rounding="open_lth")["w"].tolist() == [False] * 5
    assert magnitude_prune(tied, five, 0.2, rounding="open_lth")["w"].tolist() == [
        False,
        False,
        True,
        True,
        True,
    ]
    # random pruning takes the same counts
    g = torch.Generator().manual_seed(0)
    rand = random_prune(mask, 0.2, generator=g, rounding="open_lth")
    assert int((~rand["w"]).sum()) == 6


def test_config_rounding_reaches_the_rule_and_is_refused_where_counts_are_fixed() -> None:
    config = resolve_config({"recipe": "imp", "pruning": {"rounding": "open_lth"}})
    assert prune_rule(config, 0, 1) == MagnitudePrune(0.2, "global", {}, "open_lth")
    assert resolve_config({"recipe": "imp"}).pruning.rounding == "round"
    with pytest.raises(ConfigError, match=r"pruning.rounding = 'open_lth'.*pruning.pattern"):
        check_config(resolve_config({"pruning": {"rounding": "open_lth", "pattern": "2:4"}}))
    with pytest.raises(ConfigError, match="recipe gmp"):
        check_config(resolve_config({"recipe": "gmp", "pruning": {"rounding": "open_lth"}}))
