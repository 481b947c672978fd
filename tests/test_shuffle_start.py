"""``shuffle``: a cycle starts from θ_T0 ⊙ m_L ⊙ m, as open_lth's randomly_prune branch."""

from __future__ import annotations

import pytest
import torch

from engine_helpers import TrainCalls, tiny_run
from sparseavg.config import ConfigError
from sparseavg.pruning import Mask, magnitude_prune
from sparseavg.recipes import resolve_config
from sparseavg.recipes.registry import check_config
from sparseavg.recipes.rules import Rewind, RewindThrough, ShuffleLayers, SourceMask
from sparseavg.recipes.standard import standard_plan
from sparseavg.utils.files import load_tensors

TICKET = {"w": torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), "b": torch.tensor([7.0])}
SOURCE = Mask({"w": torch.tensor([True, True, True, False, False, False])})  # m_L
SHUFFLED = Mask({"w": torch.tensor([False, True, False, True, True, False])})  # m


class _Sources:
    rewind_step = 3

    def ticket(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in TICKET.items()}

    def source(self, cycle: int) -> Mask:
        assert cycle == 2
        return SOURCE


def _start(values: dict) -> tuple[dict[str, torch.Tensor], int, object]:
    config = resolve_config({"recipe": "shuffle", "pruning": {"masks_from": "runs/x", **values}})
    plan = standard_plan(config, 0, 2, 3)
    assert isinstance(plan.mask, ShuffleLayers) and plan.mask.rule == SourceMask()
    state, step = plan.start(_Sources(), SHUFFLED)  # type: ignore[arg-type]
    return state, step, plan.start


def test_shuffle_starts_weights_pruned_in_the_source_mask_at_zero() -> None:
    state, step, rule = _start({})
    assert rule == RewindThrough(SourceMask(), 2) and step == 3
    # alive in m and m_L: 2.0; alive only in m (pruned in m_L): exactly 0; pruned in m: 0
    assert state["w"].tolist() == [0.0, 2.0, 0.0, 0.0, 0.0, 0.0]
    assert torch.equal(state["b"], TICKET["b"])  # unpruned tensors as the ticket


def test_shuffle_start_ticket_is_the_old_start() -> None:
    state, step, rule = _start({"shuffle_start": "ticket"})
    assert rule == Rewind() and step == 3
    assert state["w"].tolist() == [0.0, 2.0, 0.0, 4.0, 5.0, 0.0]
    with pytest.raises(ConfigError, match=r"pruning.shuffle_start = 'ticket'.*'magnitude'"):
        check_config(resolve_config({"recipe": "imp", "pruning": {"shuffle_start": "ticket"}}))


def test_a_shuffle_run_starts_from_the_pruned_ticket(tmp_path, monkeypatch) -> None:
    calls = TrainCalls(monkeypatch)
    run = tiny_run(tmp_path, {"recipe": "shuffle"})
    ticket = load_tensors(run / "cycle_00/ticket.safetensors")
    dense = load_tensors(run / "cycle_00/combined.safetensors")
    m0 = Mask.load(run / "cycle_00/mask.safetensors")
    m_l = magnitude_prune(dense, m0, 0.2)  # the mask the shuffle shuffles
    m = Mask.load(run / "cycle_01/mask.safetensors")
    start = calls.ingredients()[1]["start"]
    expected = m.applied(m_l.applied(ticket))
    assert all(torch.equal(start[k], expected[k]) for k in expected)
    only_shuffled = m["fc.weight"] & ~m_l["fc.weight"]
    assert only_shuffled.any() and not start["fc.weight"][only_shuffled].any()  # exact zeros
