"""``sparseavg demo``: IMP, SWAMP, SMS and a 2-model IMP ensemble on MNIST-1D, offline.

The budget is chosen to finish in about three minutes on two CPU cores: a 32-channel conv1d
(13,802 weights), 8 epochs per training run, 6 pruning cycles keeping 60 % each (to 95.3 %
sparsity), 2 seeds. Run directories go under the output directory, so a second call reuses
finished runs and resumes interrupted ones.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..config import ConfigError, merge
from ..recipes import resolve_config
from .engine import run
from .progress import Reporter
from .report import budget_lines, find_runs, markdown_table, write_report

DEMO_SEEDS = (0, 1)
DEMO_BASE: dict[str, Any] = {
    "data": {"dataset": "mnist1d"},
    "model": {"name": "conv1d", "options": {"width": 32}},
    "train": {"epochs": 8, "lr": 0.1, "batch_size": 128},
    "pruning": {"fraction": 0.4, "cycles": 6, "rewind_epochs": 1.0, "retrain_epochs": 4},
    "execution": {"device": "cpu"},
}
DEMO_RECIPES: dict[str, dict[str, Any]] = {
    "imp": {},
    "swamp": {"ingredients": {"count": 4}},
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


def run_demo(out: Path, recipes: list[str], reporter: Reporter) -> str:
    """Run the demo into ``out`` and return the text to print (table, budget, files)."""
    started = time.perf_counter()
    paths = []
    for values in demo_configs(recipes):
        config = resolve_config(values)
        reporter.message(f"demo: {config.recipe} seed {config.seed}")
        paths.append(run(config, out, reporter))
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
        "  each run: 8 epochs per training (SMS retrains 4 epochs per cycle), rewind to epoch 1, "
        "keep 60 % per cycle",
        "",
        f"report: {md}",
        f"plot:   {png}",
        f"time:   {time.perf_counter() - started:.0f} s (finished runs in {out} are reused)",
    ]
    return "\n".join(lines)
