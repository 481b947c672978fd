"""Readouts: the rows a finished cycle reports (``results.jsonl``), one kind per class.

Roles: ``ingredient`` (one trained model of a cycle), ``combined`` (a lineage's model, the one
the next cycle starts from), ``ensemble`` (averaged predicted probabilities: of a cycle's
ingredients, or of the lineages' models), ``average`` (the uniform average of the lineages'
models, whose masks differ: IMP-AVG) and ``reprune`` (that average pruned back to the
lineages' sparsity: IMP-RePrune). Rows of a readout built with ``headline=True`` carry
``"headline": true``: they are the method's result per cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..averaging import uniform_average
from ..pruning import Mask, Scope, magnitude_prune_to, nm_prune_to
from .plan import LineageResult, ReadoutTools, Row


def _mark(rows: list[Row], headline: bool) -> list[Row]:
    for r in rows:
        r["headline"] = headline
    return rows


@dataclass(frozen=True)
class IngredientRows:
    """Every planned ingredient of a cycle that trains several (dropped ones without
    accuracy)."""

    headline: bool = False

    def __call__(
        self, cycle: int, results: Sequence[LineageResult], tools: ReadoutTools
    ) -> list[Row]:
        rows = []
        for res in results:
            if res.planned < 2:
                continue
            for index in sorted(res.info):
                state = res.ingredients.get(index)
                row = tools.row(
                    "ingredient",
                    res.lineage,
                    res.mask,
                    None if state is None else tools.evaluate(state),
                )
                seconds = res.info[index].get("seconds")
                row.update(
                    ingredient=index,
                    seconds=None if seconds is None else round(seconds, 3),
                    dropped=state is None,
                )
                rows.append(row)
        return _mark(rows, self.headline)


@dataclass(frozen=True)
class CombinedRows:
    """Each lineage's model; as a headline, lineage 0's row is the result."""

    headline: bool = True

    def __call__(
        self, cycle: int, results: Sequence[LineageResult], tools: ReadoutTools
    ) -> list[Row]:
        rows = []
        for res in results:
            row = tools.row("combined", res.lineage, res.mask, tools.evaluate(res.combined))
            row.update(selected=res.selected, headline=self.headline and res.lineage == 0)
            rows.append(row)
        return rows


@dataclass(frozen=True)
class IngredientEnsemble:
    """The prediction ensemble of each lineage's trained ingredients, when it has several
    (the SMS code reports it beside every soup; m times the inference cost). As a headline it
    also reports a cycle of one model (cycle 0 of SMS), an ensemble of one."""

    headline: bool = False

    def __call__(
        self, cycle: int, results: Sequence[LineageResult], tools: ReadoutTools
    ) -> list[Row]:
        rows = []
        for res in results:
            states = [res.ingredients[i] for i in sorted(res.ingredients)]
            if not states or (res.planned < 2 and not self.headline):
                continue
            row = tools.row("ensemble", res.lineage, res.mask, tools.evaluate_ensemble(states))
            row["members"] = len(states)
            rows.append(row)
        return _mark(rows, self.headline)


@dataclass(frozen=True)
class LineageEnsemble:
    """The prediction ensemble of the lineages' models (the ensemble recipe)."""

    headline: bool = True

    def __call__(
        self, cycle: int, results: Sequence[LineageResult], tools: ReadoutTools
    ) -> list[Row]:
        evaluation = tools.evaluate_ensemble([r.combined for r in results])
        row = tools.row("ensemble", 0, results[0].mask, evaluation)
        row["members"] = len(results)
        return _mark([row], self.headline)


def _union(masks: Sequence[Mask]) -> Mask:
    return Mask({n: torch.stack([m[n] for m in masks]).any(dim=0) for n in masks[0]})


@dataclass(frozen=True)
class LineageAverage:
    """IMP-AVG: the uniform average of the lineages' models. Their masks differ, so the
    average is alive on the union of the masks (its sparsity is reported as such);
    BatchNorm is recalibrated."""

    headline: bool = True

    def __call__(
        self, cycle: int, results: Sequence[LineageResult], tools: ReadoutTools
    ) -> list[Row]:
        union = _union([r.mask for r in results])
        average = tools.recalibrate(uniform_average([r.combined for r in results], mask=union))
        row = tools.row("average", 0, union, tools.evaluate(average))
        row["members"] = len(results)
        return _mark([row], self.headline)


@dataclass(frozen=True)
class LineageReprune:
    """IMP-RePrune: the lineages' average pruned by magnitude back to their sparsity (the
    sparsity of lineage 0's mask, which every lineage shares), BatchNorm recalibrated, not
    retrained. Under an N:M ``pattern`` the re-pruning keeps the ``n`` largest of every group
    (:func:`~sparseavg.pruning.nm_prune_to`), so the last cycle's is exactly N:M."""

    headline: bool = True
    scope: Scope = "global"
    pattern: tuple[int, int] | None = None

    def __call__(
        self, cycle: int, results: Sequence[LineageResult], tools: ReadoutTools
    ) -> list[Row]:
        union = _union([r.mask for r in results])
        average = uniform_average([r.combined for r in results], mask=union)
        target = results[0].mask.sparsity
        if self.pattern is None:
            mask = magnitude_prune_to(average, union, target, scope=self.scope)
        else:
            mask = nm_prune_to(average, union, *self.pattern, target, scope=self.scope)
        state = tools.recalibrate(mask.applied(average))
        row = tools.row("reprune", 0, mask, tools.evaluate(state))
        row["members"] = len(results)
        return _mark([row], self.headline)
