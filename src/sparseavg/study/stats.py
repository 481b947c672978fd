"""Statistics of the study: mean ± sample std over seeds, and paired tests over seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation (ddof 1; 0 for one value) of ``n`` values."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        n = len(values)
        if n == 0:
            return cls(math.nan, math.nan, 0)
        mean = math.fsum(values) / n
        var = math.fsum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
        return cls(mean, math.sqrt(var), n)

    def text(self, scale: float = 1.0, digits: int = 2) -> str:
        if self.n == 0:
            return "–"
        return f"{self.mean * scale:.{digits}f} ± {self.std * scale:.{digits}f}"


@dataclass(frozen=True)
class PairedTest:
    """``a - b`` over ``n`` pairs (same seed): mean ± sample std of the differences, its 95 %
    confidence interval (Student t), the two-sided paired t-test's ``p`` (nan when the
    differences are all equal), and ``wins``: pairs with ``a > b``."""

    n: int
    mean: float
    std: float
    low: float
    high: float
    p: float
    wins: int


def paired_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Paired two-sided t-test of ``a`` against ``b`` (``len(a) == len(b) >= 2``)."""
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired values differ in number: {len(a)} and {len(b)}")
    if len(a) < 2:
        raise ValueError("a paired test needs at least two pairs")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    spread = Spread.of(diffs)
    n = spread.n
    half = float(stats.t.ppf(0.975, n - 1)) * spread.std / math.sqrt(n)
    p = math.nan if spread.std == 0 else float(stats.ttest_rel(a, b).pvalue)
    return PairedTest(
        n=n,
        mean=spread.mean,
        std=spread.std,
        low=spread.mean - half,
        high=spread.mean + half,
        p=p,
        wins=sum(d > 0 for d in diffs),
    )


def holm(pvalues: Sequence[float], alpha: float = 0.05) -> list[bool]:
    """Which of ``pvalues`` are significant at family-wise level ``alpha`` (Holm 1979); nan
    p-values are never significant and count in the family."""
    order = sorted(
        range(len(pvalues)), key=lambda i: math.inf if math.isnan(pvalues[i]) else pvalues[i]
    )
    m = len(pvalues)
    out = [False] * m
    for rank, i in enumerate(order):
        p = pvalues[i]
        if math.isnan(p) or p > alpha / (m - rank):
            break
        out[i] = True
    return out
