"""Greedy soups rank and keep candidates by the SMS code's metric, macro accuracy, by default."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparseavg.averaging import greedy_soup
from sparseavg.data import Dataset, Split
from sparseavg.experiment.task import DataTask
from sparseavg.recipes import resolve_config
from sparseavg.training.evaluate import macro_accuracy_of


def test_macro_accuracy_exact_numbers() -> None:
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    predictions = torch.tensor([0, 0, 0, 1, 1, 0, 0])
    # class 0: 3/4, class 1: 1/2, class 2: 0/1; class 3 (5 classes) never seen nor predicted
    assert macro_accuracy_of(predictions, labels, 5) == pytest.approx((0.75 + 0.5 + 0) / 3)
    # class 3 absent from the labels but predicted once: counts as 0 (torchmetrics' rule)
    predictions = torch.tensor([0, 0, 0, 3, 1, 0, 0])
    assert macro_accuracy_of(predictions, labels, 5) == pytest.approx((0.75 + 0.5) / 4)


def test_macro_accuracy_matches_torchmetrics() -> None:
    tm = pytest.importorskip("torchmetrics.classification")
    g = torch.Generator().manual_seed(0)
    for n, classes in [(50, 4), (30, 10), (7, 10)]:  # (7, 10): most classes absent
        labels = torch.randint(0, classes, (n,), generator=g)
        logits = torch.randn(n, classes, generator=g)
        theirs = tm.MulticlassAccuracy(num_classes=classes)(logits, labels).item()
        ours = macro_accuracy_of(logits.argmax(1), labels, classes)
        assert ours == pytest.approx(theirs, abs=1e-6)


def _lookup(margins: list[float]) -> dict[str, torch.Tensor]:
    """A linear model on one-hot inputs whose logits for sample i are (0, margins[i])."""
    weight = torch.zeros(2, len(margins))
    weight[1] = torch.tensor(margins)
    return {"weight": weight}


def _task(metric: str | None) -> DataTask:
    # held-out: 8 samples of class 0, 2 of class 1; input i is the one-hot vector e_i
    val = Split(torch.eye(10), torch.tensor([0] * 8 + [1] * 2))
    data = Dataset("lookup", val, val, val, num_classes=2, input_shape=(10,))
    values = {"recipe": "sms", "ingredients": {"combine": "greedy", "count": 2}}
    if metric is not None:
        values["ingredients"]["soup_metric"] = metric  # type: ignore[index]
    return DataTask(resolve_config(values), data, torch.device("cpu"))


def test_greedy_soup_picks_by_macro_by_default_and_by_accuracy_as_asked() -> None:
    # A: everything class 0 (accuracy 0.8, macro 0.5). B: both class-1 samples and half of
    # class 0 right (accuracy 0.6, macro 0.75). Their average predicts class 0 everywhere
    # (accuracy 0.8, macro 0.5): accuracy ranks A first and keeps B (0.8 >= 0.8); macro ranks
    # B first and refuses A (0.5 < 0.75).
    a = _lookup([-1, -1, -1, -1, -5, -5, -5, -5, -1, -1])
    b = _lookup([-1, -1, -1, -1, 3, 3, 3, 3, 0.5, 0.5])
    model = nn.Linear(10, 2, bias=False)

    def scorer(task: DataTask):
        def score(state: dict[str, torch.Tensor]) -> float:
            model.load_state_dict(state)
            return task.score(model)

        return score

    macro = greedy_soup([a, b], scorer(_task(None)))
    assert macro.candidate_scores == (0.5, 0.75)
    assert macro.selected == (1,) and macro.score == 0.75
    assert torch.equal(macro.state["weight"], b["weight"])
    plain = greedy_soup([a, b], scorer(_task("accuracy")))
    assert plain.candidate_scores == (0.8, 0.6)
    assert plain.selected == (0, 1) and plain.score == 0.8
    assert _task(None).config.ingredients.soup_metric == "macro"


def test_greedy_soup_refuses_a_non_finite_score_naming_the_candidate() -> None:
    states = [{"w": torch.zeros(2)}, {"w": torch.ones(2)}, {"w": torch.full((2,), 2.0)}]
    scores = iter([0.5, math.nan, 0.7])
    with pytest.raises(ValueError, match=r"^greedy soup: .*of candidate 1 is nan;[^\n]*$"):
        greedy_soup(states, lambda s: next(scores))
    # a soup scoring inf is named by the candidates it holds (in the caller's ids)
    states = [{"w": torch.full((2,), v)} for v in (0.0, 2.0, 4.0)]
    with pytest.raises(ValueError, match=r"of the soup of candidates \[6, 7\] is inf"):
        greedy_soup(  # best first: 7 (4.0) alone, then 7 + 6 averages to 3.0
            states,
            lambda s: math.inf if float(s["w"][0]) == 3.0 else float(s["w"][0]),
            ids=[5, 6, 7],
        )
