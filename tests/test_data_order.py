"""``train.data_order``: a new batch order every cycle by default, open_lth's fixed one as asked."""

from __future__ import annotations

import torch
from torch import nn

from sparseavg.data import Split
from sparseavg.recipes import resolve_config
from sparseavg.recipes.standard import standard_plan
from sparseavg.training import TrainSettings, train


def _batches_seen(seed: int) -> list[list[int]]:
    """The sample indices of each batch one epoch of train() feeds the model."""
    split = Split(torch.arange(10.0).view(10, 1), torch.zeros(10, dtype=torch.int64))
    model = nn.Linear(1, 2)
    seen: list[list[int]] = []
    model.register_forward_hook(lambda m, i, o: seen.append(i[0].view(-1).long().tolist()))
    settings = TrainSettings(epochs=1, batch_size=5, lr=0.01, schedule="constant")
    train(model, split, settings, seed=seed)
    return seen


def _seeds(order: str | None) -> list[int]:
    values: dict = {"recipe": "imp", "pruning": {"cycles": 3}}
    if order is not None:
        values["train"] = {"data_order": order}
    config = resolve_config(values)
    return [standard_plan(config, 0, c, 0).ingredients[0].seed for c in (0, 1, 2)]


def test_fixed_data_order_repeats_cycle_0s_batches_in_every_cycle() -> None:
    fixed = _seeds("fixed")
    assert fixed[0] == fixed[1] == fixed[2]
    one, two = _batches_seen(fixed[1]), _batches_seen(fixed[2])
    assert one == two and sorted(i for batch in one for i in batch) == list(range(10))
    default = _seeds(None)
    assert default == _seeds("per_cycle") and len(set(default)) == 3
    assert _batches_seen(default[1]) != _batches_seen(default[2])
    assert default[0] == fixed[0]  # cycle 0 is the same run either way
