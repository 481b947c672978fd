"""Read finished (or unfinished) run directories and turn them into a table, a plot and a report.

A run directory holds ``config.toml`` and ``results.jsonl`` (one JSON object per evaluated
model), read through :mod:`.runinfo`: a damaged file or a config edited after the run started
is refused with one message naming the file. Runs whose configs differ only in ``seed`` and in
the ``[execution]`` table form one *group*; a group's numbers are the mean and sample standard
deviation over its seeds.

The *headline* of a run is the method's result per cycle: the rows marked ``"headline": true``
when the run's rows carry that key, otherwise (runs written before it) its ``"ensemble"`` rows
if it has any (only the ``ensemble`` recipe writes them), otherwise its ``"combined"`` rows of
lineage 0.

This module only reads run directories and writes ``report.md`` and
``accuracy_vs_sparsity.png``; it needs neither torch nor a GPU. Every file it writes is written
atomically (temporary file in the same directory, then ``os.replace``). Plots use a
:class:`matplotlib.figure.Figure` with the Agg canvas, never pyplot's global state.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config
from ..utils.files import atomic_open, atomic_write_text
from .runinfo import CONFIG_NAME, ROLES, read_results, read_run

PathLike = str | os.PathLike[str]

REPORT_NAME = "report.md"
PLOT_NAME = "accuracy_vs_sparsity.png"

MISSING = "–"

# Keys left out of a group's identity: the seed and where/how it ran.
_UNGROUPED_KEYS = ("seed", "execution")

# -- loading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResults:
    """One run directory: its validated config (``settings``; ``config`` is the same as a
    nested dict) and its result rows (in file order)."""

    path: Path
    name: str
    recipe: str
    seed: int
    rows: list[dict[str, Any]]
    settings: Config

    @property
    def config(self) -> dict[str, Any]:
        """:attr:`settings` as a nested dict."""
        return self.settings.to_dict()

    @property
    def group_key(self) -> str:
        """Short SHA-256 id of the config without ``seed`` and ``[execution]``.

        Runs with the same key differ only in their seed (and where they ran), so their results
        are repeats of one experiment.
        """
        return config_group_key(self.config)


def config_group_key(config: dict[str, Any]) -> str:
    """The 8-hex-digit group id of a config dict (see :attr:`RunResults.group_key`)."""
    kept = {k: v for k, v in config.items() if k not in _UNGROUPED_KEYS}
    text = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def load_run(path: PathLike) -> RunResults:
    """Read one run directory through :func:`~sparseavg.experiment.runinfo.read_run`.

    A missing ``results.jsonl`` (or an empty one) gives a run with no rows: the run has not
    finished a cycle yet. Blank lines are skipped.

    Raises:
        FileNotFoundError: ``path`` has no ``config.toml``.
        ValueError: ``config.toml`` is damaged, fails the schema or was edited after the run
            started, or a line of ``results.jsonl`` is not a result row (the message names the
            file and the line number).
    """
    info = read_run(path)
    config = info.config
    return RunResults(
        path=info.path,
        name=info.name,
        recipe=config.recipe,
        seed=config.seed,
        rows=read_results(info.path),
        settings=config,
    )


#: how deep below a given folder :func:`find_runs` looks for run directories (``runs/`` holds
#: runs and folders of them, e.g. ``runs/demo/<run>``, ``runs/study/<run>``)
SEARCH_DEPTH = 3


def _run_dirs(folder: Path, depth: int) -> list[Path]:
    """The run directories under ``folder`` (not inside a run), at most ``depth`` levels down."""
    if (folder / CONFIG_NAME).is_file():
        return [folder]
    if depth == 0:
        return []
    out: list[Path] = []
    for d in sorted(folder.iterdir()):
        if d.is_dir() and not d.name.startswith("."):
            out += _run_dirs(d, depth - 1)
    return out


def _recipe_order(run: RunResults) -> int:
    """The recipe's place in the registry (imp, swamp, sms, ..., ensemble, ...): the order
    in which the demo and the README present the methods; unknown recipes go last."""
    from ..recipes import RECIPES

    names = list(RECIPES)
    return names.index(run.recipe) if run.recipe in names else len(names)


def find_runs(paths: Sequence[PathLike]) -> list[RunResults]:
    """Load every run under ``paths``.

    Each path is either a run directory (it holds ``config.toml``) or a folder holding run
    directories up to :data:`SEARCH_DEPTH` levels down (``runs/`` finds ``runs/demo/<run>``);
    folders without a ``config.toml`` are passed through. The paths' runs come in the order
    the paths are given; the runs found under one folder come by recipe in the registry's
    order (imp, imp-swa, swamp, ..., sms, ..., ensemble: the demo's order), then by path. A run
    reached twice is loaded once.

    Raises:
        FileNotFoundError: a path does not exist, or holds no run directory at all.
    """
    found: list[list[Path]] = []
    for raw in paths:
        p = Path(raw)
        if not p.is_dir():
            raise FileNotFoundError(f"{p}: no such directory")
        dirs = _run_dirs(p, SEARCH_DEPTH)
        if not dirs:
            raise FileNotFoundError(
                f"{p}: no {CONFIG_NAME} here or in its subfolders ({SEARCH_DEPTH} levels down)"
            )
        found.append(dirs)
    seen: set[Path] = set()
    runs: list[RunResults] = []
    for dirs in found:
        loaded = []
        for d in dirs:
            resolved = d.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            loaded.append(load_run(d))
        runs += sorted(loaded, key=_recipe_order) if len(dirs) > 1 else loaded
    return runs


# -- selecting rows -----------------------------------------------------------------------------


def _latest(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (cycle, role, lineage, ingredient): the last one written wins."""
    by_key: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        key = (row["cycle"], row["role"], row.get("lineage", 0) or 0, row.get("ingredient"))
        by_key.pop(key, None)
        by_key[key] = row
    return list(by_key.values())


def headline_rows(run: RunResults) -> list[dict[str, Any]]:
    """The method's result per cycle, sorted by cycle.

    The rows marked ``"headline": true`` if any row of the run has a ``headline`` key;
    otherwise (runs written before rows carried it) the run's ``"ensemble"`` rows if it has
    any, else its ``"combined"`` rows of lineage 0.
    """
    rows = _latest(run.rows)
    if any("headline" in r for r in run.rows):
        chosen = [r for r in rows if r.get("headline") is True]
    elif any(r["role"] == "ensemble" for r in rows):
        chosen = [r for r in rows if r["role"] == "ensemble"]
    else:
        chosen = [r for r in rows if r["role"] == "combined" and (r.get("lineage") or 0) == 0]
    return sorted(chosen, key=lambda r: r["cycle"])


# -- statistics ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """Mean and sample standard deviation (``ddof=1``; ``0.0`` when ``n == 1``) of ``n`` values."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Cell:
        """The cell of a non-empty sequence of values."""
        if not values:
            raise ValueError("a Cell needs at least one value")
        xs = [float(v) for v in values]
        n = len(xs)
        mean = math.fsum(xs) / n
        std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
        return cls(mean=mean, std=std, n=n)


@dataclass(frozen=True)
class SummaryRow:
    """One group x cycle x series: the headline, or one role's other rows.

    Every row counts once: in the headline series (``headline`` true) if
    :func:`headline_rows` picks it, else in the series of its role. A headline row's ``role``
    is the role of the rows it summarises (joined by ``/`` should they differ). For every
    series but ``"ingredient"`` each seed contributes one value per cycle (the mean over its
    lineages, e.g. the members of the ``ensemble`` recipe), so ``n`` is the number of seeds.
    For ``"ingredient"`` every non-dropped ingredient row of every seed is one value, so ``n``
    counts ingredient models.
    """

    group: str
    key: str
    recipe: str
    cycle: int
    role: str
    headline: bool
    accuracy: Cell
    sparsity: Cell
    seeds: tuple[int, ...]


@dataclass(frozen=True)
class _Group:
    key: str
    label: str
    runs: tuple[RunResults, ...]

    @property
    def recipe(self) -> str:
        return self.runs[0].recipe

    @property
    def settings(self) -> Config:
        return self.runs[0].settings

    @property
    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.runs})

    @property
    def ingredient_count(self) -> int:
        return self.settings.ingredients.count


def _groups(runs: Sequence[RunResults]) -> list[_Group]:
    """Runs grouped by :attr:`RunResults.group_key`, in order of first appearance, labelled.

    A label is the recipe name; groups sharing a recipe get ``"recipe (model, dataset)"``, and
    ``"recipe #<key>"`` where even that is shared.
    """
    members: dict[str, list[RunResults]] = {}
    for run in runs:
        members.setdefault(run.group_key, []).append(run)
    keys = list(members)
    by_recipe: dict[str, list[str]] = {}
    for key in keys:
        by_recipe.setdefault(members[key][0].recipe, []).append(key)
    labels: dict[str, str] = {}
    for recipe, recipe_keys in by_recipe.items():
        if len(recipe_keys) == 1:
            labels[recipe_keys[0]] = recipe
            continue
        detailed = {}
        for key in recipe_keys:
            cfg = members[key][0].settings
            model, dataset = cfg.model.name, cfg.data.dataset
            detailed[key] = f"{recipe} ({model}, {dataset})"
        counts = list(detailed.values())
        for key in recipe_keys:
            unique = counts.count(detailed[key]) == 1
            labels[key] = detailed[key] if unique else f"{recipe} #{key}"
    return [_Group(key=k, label=labels[k], runs=tuple(members[k])) for k in keys]


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


_Entry = tuple[float, float, int]  # accuracy, sparsity, seed


def _seed_entries(rows: list[dict[str, Any]], seed: int) -> dict[int, _Entry]:
    """One entry per cycle: the mean over the cycle's rows (its lineages)."""
    per_cycle: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        per_cycle.setdefault(r["cycle"], []).append(r)
    return {
        cycle: (
            _mean([_num(r.get("accuracy")) for r in rs]),
            _mean([_num(r.get("sparsity")) for r in rs]),
            seed,
        )
        for cycle, rs in per_cycle.items()
    }


def _group_summary(group: _Group) -> list[SummaryRow]:
    head: dict[int, list[_Entry]] = {}
    head_roles: dict[int, set[str]] = {}
    by_role: dict[str, dict[int, list[_Entry]]] = {role: {} for role in ROLES}
    for run in group.runs:
        chosen = headline_rows(run)
        for cycle, entry in _seed_entries(chosen, run.seed).items():
            head.setdefault(cycle, []).append(entry)
        for r in chosen:
            head_roles.setdefault(r["cycle"], set()).add(r["role"])
        picked = {id(r) for r in chosen}
        rest = [r for r in _latest(run.rows) if id(r) not in picked]
        for role in ROLES:
            of_role = [r for r in rest if r["role"] == role]
            if role == "ingredient":  # every model that took part in the combine counts
                for r in of_role:
                    if not r.get("dropped"):
                        entry = (_num(r.get("accuracy")), _num(r.get("sparsity")), run.seed)
                        by_role[role].setdefault(r["cycle"], []).append(entry)
                continue
            for cycle, entry in _seed_entries(of_role, run.seed).items():
                by_role[role].setdefault(cycle, []).append(entry)

    def row(cycle: int, role: str, headline: bool, entries: list[_Entry]) -> SummaryRow:
        return SummaryRow(
            group=group.label,
            key=group.key,
            recipe=group.recipe,
            cycle=cycle,
            role=role,
            headline=headline,
            accuracy=Cell.of([e[0] for e in entries]),
            sparsity=Cell.of([e[1] for e in entries]),
            seeds=tuple(sorted({e[2] for e in entries})),
        )

    out = [row(c, "/".join(sorted(head_roles[c])), True, head[c]) for c in sorted(head)]
    for role in ROLES:
        out += [row(c, role, False, by_role[role][c]) for c in sorted(by_role[role])]
    return out


def summarize(runs: Sequence[RunResults]) -> list[SummaryRow]:
    """Mean/std of accuracy and sparsity per group x cycle x role.

    Rows come grouped (groups in order of first appearance), then the headline series, then
    each role's other rows (in the order of :data:`ROLES`), each by cycle. Runs without rows
    contribute nothing.
    """
    out: list[SummaryRow] = []
    for group in _groups(runs):
        out.extend(_group_summary(group))
    return out


# -- table --------------------------------------------------------------------------------------


def _pct(x: float, digits: int) -> str:
    return f"{100.0 * x:.{digits}f}"


def _format_cell(cell: Cell, usual_n: int) -> str:
    text = _pct(cell.mean, 2) if cell.n == 1 else f"{_pct(cell.mean, 2)} ± {_pct(cell.std, 2)}"
    if cell.n != usual_n:
        text += f" (n={cell.n})"
    return text


def _n_text(ns: Sequence[int]) -> str:
    lo, hi = min(ns), max(ns)
    return str(hi) if lo == hi else f"{lo}–{hi}"


def markdown_table(runs: Sequence[RunResults]) -> str:
    """A markdown table of headline accuracy (%) per cycle, one column per group.

    The first column is the mean sparsity (%) of the cycle's headline models over all groups
    (marked ``*`` and explained below the table where groups differ by more than 0.05 points).
    Cells are ``mean ± std`` over seeds (just the mean where one seed); a cell with fewer seeds
    than its column's usual number says ``(n=…)``. For groups with more than one ingredient
    per cycle, a column ``"<label> (ingredients)"`` gives the mean accuracy of that cycle's
    non-dropped ingredient models. Missing cells are ``–``. A footnote line gives ``n``.
    """
    groups = _groups(runs)
    summary = summarize(runs)
    if not summary:
        return "_No results yet._\n"
    headline = {(s.group, s.cycle): s for s in summary if s.headline}
    ingredients = {(s.group, s.cycle): s for s in summary if s.role == "ingredient"}
    cycles = sorted({s.cycle for s in summary if s.headline or s.role == "ingredient"})
    ingredient_groups = [
        g
        for g in groups
        if g.ingredient_count > 1 and any(label == g.label for label, _ in ingredients)
    ]
    usual_n = {
        g.label: max(
            (s.accuracy.n for (lbl, _), s in headline.items() if lbl == g.label), default=0
        )
        for g in groups
    }

    header = ["sparsity %"]
    header += [g.label for g in groups]
    header += [f"{g.label} (ingredients)" for g in ingredient_groups]
    lines = [
        "| " + " | ".join(_escape(h) for h in header) + " |",
        "|" + "|".join(["---:"] * len(header)) + "|",
    ]
    differing: list[str] = []
    for cycle in cycles:
        sparsities = [
            headline[(g.label, cycle)].sparsity.mean for g in groups if (g.label, cycle) in headline
        ]
        if not sparsities:
            sparsities = [
                ingredients[(g.label, cycle)].sparsity.mean
                for g in groups
                if (g.label, cycle) in ingredients
            ]
        sparsities = [s for s in sparsities if not math.isnan(s)]
        if sparsities:
            first = _pct(statistics.fmean(sparsities), 1)
            if max(sparsities) - min(sparsities) > 0.0005:
                differing.append(
                    f"cycle {cycle}: {_pct(min(sparsities), 1)}–{_pct(max(sparsities), 1)}"
                )
                first += "*"
        else:
            first = MISSING
        cells = [first]
        for g in groups:
            s = headline.get((g.label, cycle))
            cells.append(MISSING if s is None else _format_cell(s.accuracy, usual_n[g.label]))
        for g in ingredient_groups:
            s = ingredients.get((g.label, cycle))
            cells.append(MISSING if s is None else _pct(s.accuracy.mean, 2))
        lines.append("| " + " | ".join(cells) + " |")

    lines.append("")
    n_parts = []
    for g in groups:
        ns = [s.accuracy.n for (lbl, _), s in headline.items() if lbl == g.label]
        n_parts.append(f"{g.label} {_n_text(ns)}" if ns else f"{g.label} 0")
    lines.append(
        "Accuracy in %, mean ± sample std over seeds; n (seeds) = " + ", ".join(n_parts) + "."
    )
    if differing:
        lines.append(
            "\\* Groups differ in sparsity at this cycle (mean shown); range: "
            + "; ".join(differing)
            + "."
        )
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


# -- plot ---------------------------------------------------------------------------------------


# Sparsity axis: plotted against -log10(remaining fraction), so the geometric steps of IMP are
# evenly spaced; ticks are labelled in sparsity %.
_MAX_SPARSITY_PCT = 99.999
_TICKS_PCT = (
    0.0,
    20.0,
    40.0,
    60.0,
    80.0,
    90.0,
    95.0,
    98.0,
    99.0,
    99.5,
    99.8,
    99.9,
    99.95,
    99.98,
    99.99,
)


def _to_axis(pct: Any) -> Any:
    import numpy as np

    clipped = np.clip(np.asarray(pct, dtype=float), -1e9, _MAX_SPARSITY_PCT)
    return -np.log10(1.0 - clipped / 100.0)


def _from_axis(x: Any) -> Any:
    import numpy as np

    return 100.0 * (1.0 - np.power(10.0, -np.asarray(x, dtype=float)))


def plot_accuracy_vs_sparsity(runs: Sequence[RunResults], path: PathLike) -> None:
    """Write a PNG (150 dpi) of headline accuracy (%) against sparsity (%), one line per group.

    The x axis is scaled as ``-log10(1 - sparsity)`` (ticks labelled in sparsity %), so that
    iterative pruning's cycles are evenly spaced. Lines have markers; a shaded band shows
    ±1 std where a group has more than one seed. The file is written atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter

    target = Path(path)
    summary = [s for s in summarize(runs) if s.headline]
    fig = Figure(figsize=(7.0, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_xscale("function", functions=(_to_axis, _from_axis))

    labels = list(dict.fromkeys(s.group for s in summary))
    max_x = 0.0
    for label in labels:
        points = sorted(
            (s for s in summary if s.group == label and not math.isnan(s.sparsity.mean)),
            key=lambda s: s.sparsity.mean,
        )
        if not points:
            continue
        xs = [min(100.0 * s.sparsity.mean, _MAX_SPARSITY_PCT) for s in points]
        ys = [100.0 * s.accuracy.mean for s in points]
        sd = [100.0 * s.accuracy.std for s in points]
        max_x = max(max_x, *xs)
        (line,) = ax.plot(xs, ys, marker="o", markersize=4, label=label)
        if any(s.accuracy.n > 1 for s in points):
            lo = [y - d for y, d in zip(ys, sd, strict=True)]
            hi = [y + d for y, d in zip(ys, sd, strict=True)]
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)

    # the axis ends at the first tick at or beyond the sparsest point (at least 60 %)
    right = next((t for t in _TICKS_PCT if t >= max(max_x, 60.0) - 1e-9), _MAX_SPARSITY_PCT)
    ax.xaxis.set_major_locator(FixedLocator([t for t in _TICKS_PCT if t <= right]))
    ax.xaxis.set_minor_locator(FixedLocator([]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.set_xlim(0.0, right)
    ax.set_xlabel("sparsity (%, axis scaled as -log10 of the remaining fraction)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs. sparsity" + _context(runs))
    ax.grid(True, alpha=0.3)
    if labels:
        banded = any(s.accuracy.n > 1 for s in summary)
        ax.legend(
            loc="best",
            fontsize="small",
            title="bands: ±1 std over seeds" if banded else None,
            title_fontsize="small",
        )
    else:
        ax.text(0.5, 0.5, "no results yet", transform=ax.transAxes, ha="center", va="center")
    fig.tight_layout()
    with atomic_open(target, "wb") as handle:
        fig.savefig(handle, format="png", dpi=150)


def _context(runs: Sequence[RunResults]) -> str:
    """``" (model, dataset)"`` when all runs share them, else ``""``."""
    pairs = {(r.settings.model.name, r.settings.data.dataset) for r in runs}
    if len(pairs) == 1:
        model, dataset = next(iter(pairs))
        return f" ({model}, {dataset})"
    return ""


# -- report -------------------------------------------------------------------------------------


def budget_lines(runs: Sequence[RunResults]) -> list[str]:
    """One line per group: ``label: epochs=…, ingredients=…, cycles=…, seeds=[…]``."""

    lines = []
    for g in _groups(runs):
        c = g.settings
        epochs, count, cycles = c.train.epochs, c.ingredients.count, c.pruning.cycles
        lines.append(
            f"{g.label}: epochs={epochs}, ingredients={count}, cycles={cycles}, seeds={g.seeds}"
        )
    return lines


def analysis_table(runs: Sequence[RunResults]) -> str | None:
    """The markdown table of the runs' analyses (``sparseavg analyze``: barrier, Hessian
    trace, ECE per run and cycle), or ``None`` when no run has ``analysis/summary.json``."""
    from .analyze import load_analysis, markdown_summary

    summaries = [s for s in (load_analysis(r.path) for r in runs) if s is not None]
    return markdown_summary(summaries) if summaries else None


def write_report(runs: Sequence[RunResults], out_dir: PathLike) -> tuple[Path, Path]:
    """Write ``out_dir/report.md`` and ``out_dir/accuracy_vs_sparsity.png`` atomically.

    The report has a title, the table of :func:`markdown_table`, one budget line per group,
    the plot, the analyses' table when a run has one (:func:`analysis_table`) and the list of
    run directories. Returns ``(report_path, plot_path)``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_path = out / PLOT_NAME
    report_path = out / REPORT_NAME
    plot_accuracy_vs_sparsity(runs, plot_path)

    parts = [f"# sparseavg report{_context(runs)}", "", markdown_table(runs).rstrip("\n"), ""]
    parts += ["## Budget", ""]
    parts += [f"- {line}" for line in budget_lines(runs)] or ["_No runs._"]
    parts += ["", f"![accuracy vs sparsity]({PLOT_NAME})", ""]
    analyses = analysis_table(runs)
    if analyses is not None:
        parts += ["## Analyses", "", analyses.rstrip("\n"), ""]
    parts += ["## Runs", ""]
    for run in runs:
        cycles = sorted({r["cycle"] for r in run.rows})
        state = f"cycles {cycles[0]}–{cycles[-1]}" if cycles else "no results yet"
        parts.append(f"- `{run.path}` (seed {run.seed}, {state})")
    atomic_write_text(report_path, "\n".join(parts) + "\n")
    return report_path, plot_path
