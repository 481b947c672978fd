"""``sparseavg demo``: IMP, SWAMP, SMS and a 2-model IMP ensemble on MNIST-1D, offline.

The budget is chosen to finish well within three minutes on a slow 2-core machine: a
32-channel conv1d (13,802 weights), 5 epochs per training run, 3 pruning cycles keeping 35 %
each (to 95.7 % sparsity), SWAMP with 2 particles (the training compute of the 2-model
ensemble beside it), SMS with 3 ingredients, 2 seeds; the runs train in parallel, one per
core with one torch thread each (:func:`~sparseavg.experiment.batch.run_many`). Two seeds
show the methods side by side but cannot rank them: the reproduction study (``make study``,
docs/RESULTS.md) has the seeds for that. Run directories go under the output directory, so a
second call reuses finished runs and resumes interrupted ones.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from ..config import ConfigError, merge
from ..recipes import resolve_config
from .batch import available_cores, run_many
from .progress import Reporter
from .report import RunResults, budget_lines, find_runs, markdown_table, summarize, write_report

DEMO_SEEDS = (0, 1)
DEMO_BASE: dict[str, Any] = {
    "data": {"dataset": "mnist1d"},
    "model": {"name": "conv1d", "options": {"width": 32}},
    "train": {"epochs": 5, "lr": 0.1, "batch_size": 128},
    "pruning": {"fraction": 0.65, "cycles": 3, "rewind_epochs": 1.0, "retrain_epochs": 3},
    "execution": {"device": "cpu"},
}
DEMO_RECIPES: dict[str, dict[str, Any]] = {
    "imp": {},
    "swamp": {"ingredients": {"count": 2}},
    "sms": {"ingredients": {"count": 3, "combine": "uniform"}},
    "ensemble": {"ingredients": {"count": 2}},
}


def demo_configs(recipes: list[str]) -> list[dict[str, Any]]:
    """The demo's config values, one per (recipe, seed)."""
    unknown = [r for r in recipes if r not in DEMO_RECIPES]
    if unknown:
        raise ConfigError(
            f"demo: unknown recipe {unknown[0]!r}; choose from {', '.join(DEMO_RECIPES)}"
        )
    return [
        merge(merge(DEMO_BASE, DEMO_RECIPES[r]), {"recipe": r, "seed": s})
        for r in recipes
        for s in DEMO_SEEDS
    ]


def run_demo(out: Path, recipes: list[str], reporter: Reporter, workers: int | None = None) -> str:
    """Run the demo into ``out`` and return the text to print (table, budget, files).

    ``workers`` runs (default: one per CPU core) train at once, one torch thread each."""
    started = time.perf_counter()
    configs = [resolve_config(values) for values in demo_configs(recipes)]
    paths = run_many(
        configs, out, workers=workers or available_cores(), reporter=reporter, label="demo runs"
    )
    runs = find_runs(paths)
    md, png = write_report(runs, out)

    lines = [
        "sparseavg demo: MNIST-1D (8,000 samples: 7,200 train / 800 held out, 2,000 test), "
        "conv1d width 32 (13,802 weights)",
        "",
        markdown_table(runs),
        "",
        "budget:",
        *[f"  {line}" for line in budget_lines(runs)],
        f"  each run: {_budget_text(recipes)}",
        "",
        f"Two seeds show the methods side by side; they cannot say which is better "
        f"({seed_spread(runs)}). The reproduction study (make study, 5 seeds, paired tests) "
        "says what holds: docs/RESULTS.md.",
        "",
        f"report: {md}",
        f"plot:   {png}",
        f"time:   {time.perf_counter() - started:.0f} s (finished runs in {out} are reused)",
    ]
    return "\n".join(lines)


def _budget_text(recipes: list[str]) -> str:
    """The shared budget in words, from :data:`DEMO_BASE` and :data:`DEMO_RECIPES`."""
    train, pruning = DEMO_BASE["train"], DEMO_BASE["pruning"]
    keep = round(100 * (1 - pruning["fraction"]))
    text = (
        f"{train['epochs']} epochs per training (SMS retrains {pruning['retrain_epochs']} "
        f"epochs per cycle), rewind to epoch {pruning['rewind_epochs']:g}, keep {keep} % per cycle"
    )
    particles = DEMO_RECIPES["swamp"]["ingredients"]["count"]
    members = DEMO_RECIPES["ensemble"]["ingredients"]["count"]
    if {"swamp", "ensemble"} <= set(recipes) and particles == members:
        text += f"; SWAMP's {particles} particles cost the training of the {members}-model ensemble"
    return text


def seed_spread(runs: list[RunResults]) -> str:
    """How far apart the two seeds of one method land, over the headline cells of ``runs``:
    the largest difference in accuracy points and where it is."""
    cells = [
        (row.accuracy.std * math.sqrt(2.0), row)
        for row in summarize(runs)
        if row.headline and row.accuracy.n == 2
    ]
    if not cells:
        return "one seed per method"
    gap, row = max(cells, key=lambda c: c[0])
    return (
        f"the two seeds of one method differ by up to {100.0 * gap:.1f} points: "
        f"{row.recipe} at {100.0 * row.sparsity.mean:.1f} % sparsity"
    )
