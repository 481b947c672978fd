"""docs/RESULTS.md and its plots, from the numbers :mod:`.collect` read.

Every sentence that says what held is generated from the paired tests, so that the text
cannot claim more than the seeds of the run that wrote it support.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..utils.files import atomic_open, atomic_write_text
from .collect import SeedRun
from .plan import Setting
from .stats import PairedTest, Spread, holm, paired_test

Results = dict[str, list[SeedRun]]  # group label -> its runs, one per seed


@dataclass(frozen=True)
class StudyRecord:
    """One call of the study: where and how long it ran, what it trained, how busy the
    machine was (1-minute load average at its start and end), and a note where one is due."""

    command: str
    machine: str
    torch: str
    workers: int
    seconds: float
    train_seconds: float
    analysis_seconds: float
    runs: int = 0
    trained: int = 0
    load: tuple[float | None, float | None] = (None, None)
    finished: str = ""
    note: str = ""
    settings: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudyRecord:
        values = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("load", "settings"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


def record_call(path: Path, record: StudyRecord) -> list[StudyRecord]:
    """Append ``record`` to the calls file at ``path`` (JSON lines) and return every call in
    it, oldest first."""
    calls = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                calls.append(StudyRecord.from_dict(json.loads(line)))
    calls.append(record)
    text = "".join(json.dumps(dataclasses.asdict(c)) + "\n" for c in calls)
    atomic_write_text(path, text)
    return calls


def _pct(x: float, digits: int = 2) -> str:
    return "–" if math.isnan(x) else f"{100 * x:.{digits}f}"


def _cycles(runs: Sequence[SeedRun]) -> list[int]:
    return sorted(set.intersection(*(set(r.accuracy) for r in runs))) if runs else []


def _sparsity(runs: Sequence[SeedRun], cycle: int) -> float:
    return Spread.of([r.sparsity[cycle] for r in runs]).mean


def _by_seed(runs: Sequence[SeedRun]) -> dict[int, SeedRun]:
    return {r.seed: r for r in runs}


def accuracy_table(results: Results, labels: Sequence[str]) -> str:
    """Markdown: one row per cycle (its sparsity), one column per group, mean ± std in %."""
    present = [label for label in labels if results.get(label)]
    if not present:
        return "_No finished runs._"
    cycles = sorted({c for label in present for c in _cycles(results[label])})
    head = "| sparsity % | " + " | ".join(present) + " |"
    rule = "|---:|" + "---:|" * len(present)
    lines = [head, rule]
    for c in cycles:
        sp = next(_sparsity(results[label], c) for label in present if c in _cycles(results[label]))
        cells = []
        for label in present:
            runs = [r for r in results[label] if c in r.accuracy]
            cells.append(Spread.of([r.accuracy[c] for r in runs]).text(100) if runs else "–")
        lines.append(f"| {_pct(sp, 1)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Comparison:
    """``a`` against ``b`` by cycle: the paired tests and which survive Holm's correction."""

    a: str
    b: str
    cycles: list[int]
    sparsities: list[float]
    tests: list[PairedTest]
    significant: list[bool]


def compare(
    results: Results,
    a: str,
    b: str,
    value: Callable[[SeedRun, int], float] | None = None,
) -> Comparison | None:
    """Paired tests of ``a - b`` at every cycle both have, over the seeds both have.

    ``value(run, cycle)`` picks the number (default: headline accuracy); nan values drop the
    pair. None when fewer than two seeds pair up."""
    pick = value or (lambda run, c: run.accuracy.get(c, math.nan))
    ra, rb = _by_seed(results.get(a, [])), _by_seed(results.get(b, []))
    seeds = sorted(set(ra) & set(rb))
    if len(seeds) < 2:
        return None
    cycles, sparsities, tests = [], [], []
    for c in sorted(set(_cycles([ra[s] for s in seeds])) & set(_cycles([rb[s] for s in seeds]))):
        pairs = [(pick(ra[s], c), pick(rb[s], c)) for s in seeds]
        pairs = [(x, y) for x, y in pairs if not (math.isnan(x) or math.isnan(y))]
        if len(pairs) < 2:
            continue
        cycles.append(c)
        sparsities.append(_sparsity([ra[s] for s in seeds], c))
        tests.append(paired_test([x for x, _ in pairs], [y for _, y in pairs]))
    if not tests:
        return None
    return Comparison(a, b, cycles, sparsities, tests, holm([t.p for t in tests]))


def comparison_table(
    comparisons: Sequence[Comparison], scale: float = 100.0, unit: str = "%"
) -> str:
    """Markdown: one row per comparison and cycle."""
    lines = [
        f"| comparison | sparsity % | mean diff ({unit}) ± std | 95 % CI | p (paired t) "
        "| a > b in | Holm 5 % |",
        "|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for cmp in comparisons:
        for sp, t, sig in zip(cmp.sparsities, cmp.tests, cmp.significant, strict=True):
            p = "–" if math.isnan(t.p) else f"{t.p:.3f}"
            lines.append(
                f"| {cmp.a} − {cmp.b} | {_pct(sp, 1)} | {t.mean * scale:+.2f} ± "
                f"{t.std * scale:.2f} | [{t.low * scale:+.2f}, {t.high * scale:+.2f}] | {p} "
                f"| {t.wins}/{t.n} | {'yes' if sig else 'no'} |"
            )
    return "\n".join(lines)


def verdict(cmp: Comparison, higher: str = "higher", scale: float = 100.0) -> str:
    """One sentence: where ``a`` is significantly above / below ``b`` after Holm's
    correction, where every seed agrees on the sign without it, and where the seeds cannot
    tell."""
    rows = list(zip(cmp.sparsities, cmp.tests, cmp.significant, strict=True))
    up = [_pct(s, 1) for s, t, g in rows if g and t.mean > 0]
    down = [_pct(s, 1) for s, t, g in rows if g and t.mean < 0]
    opposite = "lower" if higher == "higher" else "higher"
    n = min(t.n for t in cmp.tests)
    total = len(cmp.tests)
    parts = []
    if up:
        parts.append(f"{higher} at {', '.join(up)} % sparsity")
    if down:
        parts.append(f"{opposite} at {', '.join(down)} % sparsity")
    rest = total - len(up) - len(down)
    if rest:
        where = f"the other {rest} of {total}" if rest < total else f"any of the {total}"
        parts.append(f"not distinguishable from it at {where} sparsities after correction")
        # where the test cannot tell, say whether every seed still points the same way
        same_up = [_pct(s, 1) for s, t, g in rows if not g and t.wins == t.n and t.mean > 0]
        same_down = [_pct(s, 1) for s, t, g in rows if not g and t.wins == 0 and t.mean < 0]
        agree = []
        if same_up:
            agree.append(f"{higher} in every seed at {', '.join(same_up)} %")
        if same_down:
            agree.append(f"{opposite} in every seed at {', '.join(same_down)} %")
        if agree:
            parts.append("uncorrected, " + " and ".join(agree))
    means = ", ".join(f"{t.mean * scale:+.2f}" for t in cmp.tests)
    return (
        f"**{cmp.a}** vs **{cmp.b}** ({n} seeds, paired t-test, Holm-corrected over "
        f"{total} sparsities): " + "; ".join(parts) + f". Mean differences by cycle: "
        f"{means}."
    )


def budget_table(results: Results, labels: Sequence[str]) -> str:
    """Markdown: per group, training epochs and training seconds per seed (mean)."""
    lines = [
        "| method | seeds | training epochs per seed | training time per seed (s, one thread) |",
        "|---|---:|---:|---:|",
    ]
    for label in labels:
        runs = results.get(label, [])
        if not runs:
            continue
        epochs = Spread.of([r.epochs for r in runs]).mean
        seconds = Spread.of([r.seconds for r in runs]).mean
        lines.append(f"| {label} | {len(runs)} | {epochs:.0f} | {seconds:.0f} |")
    return "\n".join(lines)


#: what the shaded band around each line is, in the legend of every plot with bands
BAND_NOTE = "bands: ±1 std over seeds"


def plot_lines(
    series: dict[str, list[tuple[float, float, float]]],
    path: Path,
    *,
    title: str,
    ylabel: str,
    log_sparsity: bool = True,
) -> None:
    """A PNG of one line per series: points ``(sparsity in [0,1], mean, std)``, with ±std
    bands, sparsity on the report's ``-log10(1 - s)`` axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter

    from ..experiment.report import _TICKS_PCT, _from_axis, _to_axis

    fig = Figure(figsize=(7.0, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if log_sparsity:
        ax.set_xscale("function", functions=(_to_axis, _from_axis))
    right = 0.0
    for label, points in series.items():
        pts = sorted(p for p in points if not math.isnan(p[1]))
        if not pts:
            continue
        xs = [100 * p[0] for p in pts]
        ys = [p[1] for p in pts]
        sd = [p[2] for p in pts]
        right = max(right, *xs)
        (line,) = ax.plot(xs, ys, marker="o", markersize=4, label=label)
        ax.fill_between(
            xs,
            [y - d for y, d in zip(ys, sd, strict=True)],
            [y + d for y, d in zip(ys, sd, strict=True)],
            color=line.get_color(),
            alpha=0.15,
            linewidth=0,
        )
    if log_sparsity:
        end = next((t for t in _TICKS_PCT if t >= max(right, 60.0) - 1e-9), 99.0)
        ax.xaxis.set_major_locator(FixedLocator([t for t in _TICKS_PCT if t <= end]))
        ax.xaxis.set_minor_locator(FixedLocator([]))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.set_xlim(0.0, end)
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small", title=BAND_NOTE, title_fontsize="small")
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)


def accuracy_series(
    results: Results, labels: Sequence[str]
) -> dict[str, list[tuple[float, float, float]]]:
    out = {}
    for label in labels:
        runs = results.get(label, [])
        if not runs:
            continue
        points = []
        for c in _cycles(runs):
            s = Spread.of([r.accuracy[c] for r in runs])
            points.append((_sparsity(runs, c), 100 * s.mean, 100 * s.std))
        out[label] = points
    return out


def write_results(
    path: Path,
    sections: list[str],
) -> None:
    """Write RESULTS.md atomically from its sections (markdown blocks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n\n".join(s.strip("\n") for s in sections) + "\n")


_HEADLINE_MODELS = "the IMP model, the SWAMP average, the soup, the 2-model prediction ensemble)."
_FINAL_MODELS = (
    "its last model: the masked model of gmp, dpf and RigL, bimp's last phase, the last phase's "
    "soup of an SMS variant, the particles' average of SWAMP-RigL)."
)


def final_table(results: Results, labels: Sequence[str]) -> str:
    """Markdown: one row per group, its last model's sparsity and test accuracy (mean ± std
    in %) and, where it has them, its last cycle's ingredients (mean accuracy over seeds of
    the ingredients' mean)."""
    lines = [
        "| method | sparsity % | test accuracy % | its ingredients' mean % |",
        "|---|---:|---:|---:|",
    ]
    for label in labels:
        runs = results.get(label, [])
        if not runs:
            continue
        last = max(_cycles(runs), default=None)
        if last is None:
            continue
        acc = Spread.of([r.accuracy[last] for r in runs]).text(100)
        parts = [r.ingredients.get(last, []) for r in runs]
        ingredients = (
            Spread.of([sum(p) / len(p) for p in parts]).text(100)
            if all(len(p) > 1 for p in parts)
            else "–"
        )
        lines.append(f"| {label} | {_pct(_sparsity(runs, last), 1)} | {acc} | {ingredients} |")
    return "\n".join(lines)


def main_section(setting: Setting, results: Results, figure: str) -> list[str]:
    """The setting's main table, budget, plot and paired tests, with their verdicts."""
    labels = [g.label for g in setting.groups if g.section == "main"]
    comparisons = [c for a, b in setting.paired if (c := compare(results, a, b)) is not None]
    out = [
        f"## {setting.title}",
        f"**Budget{'' if setting.final_only else ', the same for every method'}.** {setting.why}",
        "Test accuracy in %, mean ± sample std over seeds (the headline model of each method: "
        + (_FINAL_MODELS if setting.final_only else _HEADLINE_MODELS),
        final_table(results, labels) if setting.final_only else accuracy_table(results, labels),
        *([f"![accuracy vs sparsity, {setting.name}]({figure})"] if figure else []),
        "**Paired tests** (same seed: same data split, initialisation and dense model where the "
        "recipes share them). `a > b in` counts seeds; `Holm 5 %` says whether the difference "
        "is significant after correcting for the number of sparsities tested.",
        comparison_table(comparisons),
        "**What held here:**\n\n" + "\n".join(f"- {verdict(c)}" for c in comparisons),
        "**Budget per method** (epochs of every model trained, the common run to the rewind "
        "point included; seconds of training on one thread, evaluation excluded, on the "
        "machine and under the load the header names: compare epochs, not seconds, across "
        "methods that ran at different times):",
        budget_table(results, labels),
    ]
    return out


def experiments_header(titles: Sequence[str]) -> str:
    """The experiments' heading and the list of their sections."""
    return "## The experiments each paper proposes first (MNIST-1D)\n\n" + "\n".join(
        f"- {title}" for title in titles
    )


def describe_calls(calls: Sequence[StudyRecord]) -> str:
    """Where and how long the study's numbers took: every call that trained runs (its wall
    time, machine and load), and the call that wrote this document."""

    def one(c: StudyRecord) -> str:
        load = [x for x in c.load if x is not None]
        busy = (
            f", 1-min load average {load[0]:.1f} at its start and {load[-1]:.1f} at its end"
            if load
            else ""
        )
        when = f" (finished {c.finished})" if c.finished else ""
        note = f"; {c.note}" if c.note else ""
        return (
            f"`{c.command}`{when}, which trained {c.trained} of {c.runs} runs on {c.machine} "
            f"(torch {c.torch}), {c.workers} runs at a time with one torch thread each: "
            f"{c.seconds / 60:.1f} min wall time ({c.train_seconds / 60:.1f} min training, "
            f"{c.analysis_seconds / 60:.1f} min analyses){busy}{note}"
        )

    training = [c for c in calls if c.trained]
    last = calls[-1]
    how_many = "one call" if len(training) == 1 else f"{len(training)} calls"
    parts = (
        [f"The runs were computed by {how_many}: " + "; ".join(one(c) for c in training) + "."]
        if training
        else ["No recorded call trained these runs (they were there before the calls file)."]
    )
    if not last.trained:
        parts.append(
            f"This document was rewritten from the finished runs by `{last.command}` in "
            f"{last.seconds / 60:.1f} min."
        )
    return " ".join(parts)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; the first column left-aligned, the others right."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
