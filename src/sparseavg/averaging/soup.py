"""Greedy soups (Wortsman et al., 2022; Sparse Model Soups, Zimmer et al., 2023)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from ..pruning import Mask
from ..utils.state import State
from .uniform import uniform_average

AcceptRule = Literal["ge", "gt"]
ACCEPT_RULES: tuple[str, ...] = ("ge", "gt")


@dataclass(frozen=True)
class SoupResult:
    """A greedy soup: its state, which candidates it holds (indices into the input), the
    held-out score of each candidate alone, and the soup's score."""

    state: State
    selected: tuple[int, ...]
    candidate_scores: tuple[float, ...]
    score: float


def greedy_soup(
    states: Sequence[Mapping[str, Tensor]],
    score: Callable[[State], float],
    *,
    accept: AcceptRule = "ge",
    mask: Mask | None = None,
    candidate_scores: Sequence[float] | None = None,
    ids: Sequence[int] | None = None,
) -> SoupResult:
    """Greedily add candidates, best first, while the held-out score does not get worse.

    Args:
        states: the K candidate states (one mask, one architecture).
        score: held-out score of a state, higher is better (e.g. validation accuracy after BN
            recalibration); called once per candidate (unless ``candidate_scores`` is given) and
            once per tried soup.
        accept: ``"ge"`` keeps a candidate when the soup's score is >= the current one (the
            default of the SMS code), ``"gt"`` only when strictly better.
        mask: the shared mask, applied to each uniform average.
        candidate_scores: the candidates' own scores when already known.
        ids: how errors name the candidates (default: their positions in ``states``).

    Returns:
        A :class:`SoupResult`; its state is the uniform average of the selected candidates.

    Raises:
        ValueError: a score is NaN or infinite (one line naming the candidate or the soup): it
            cannot be ranked, and a NaN would otherwise keep only the first candidate silently.
    """
    if accept not in ACCEPT_RULES:
        raise ValueError(f"accept must be one of {ACCEPT_RULES}, got {accept!r}")
    if not states:
        raise ValueError("greedy_soup needs at least one candidate")
    names = list(range(len(states))) if ids is None else list(ids)
    if len(names) != len(states):
        raise ValueError("ids must name every state once")
    if candidate_scores is None:
        candidate_scores = [score(dict(s)) for s in states]
    if len(candidate_scores) != len(states):
        raise ValueError("candidate_scores must have one score per state")
    for i, value in enumerate(candidate_scores):
        _check_score(value, f"candidate {names[i]}")
    order = sorted(range(len(states)), key=lambda i: (-candidate_scores[i], i))
    selected = [order[0]]
    best = float(candidate_scores[order[0]])
    soup = uniform_average([states[order[0]]], mask=mask)
    for i in order[1:]:
        trial = uniform_average([states[j] for j in [*selected, i]], mask=mask)
        trial_score = _check_score(
            score(trial), f"the soup of candidates {sorted(names[j] for j in [*selected, i])}"
        )
        if trial_score > best or (accept == "ge" and trial_score == best):
            selected.append(i)
            best = trial_score
            soup = trial
    return SoupResult(
        state=soup,
        selected=tuple(selected),
        candidate_scores=tuple(float(s) for s in candidate_scores),
        score=best,
    )


def _check_score(value: float, what: str) -> float:
    """``value`` as a float, or a one-line ValueError naming ``what`` if it is not finite."""
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(
            f"greedy soup: the held-out score of {what} is {number}; a score must be a finite "
            "number (higher is better) to rank candidates"
        )
    return number
