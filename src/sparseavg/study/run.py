"""``sparseavg study`` / ``make study``: train every group of every setting over the study's
seeds (resuming finished runs), analyse the runs the experiments need, and write
docs/RESULTS.md with its plots."""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..config import Config, merge
from ..data import load_dataset
from ..experiment.analyze import AnalysisSettings, analyze_run, load_analysis
from ..experiment.batch import run_many
from ..experiment.progress import NullReporter, Reporter
from ..experiment.slurm import SlurmLauncher
from ..training.loop import steps_per_epoch
from . import write
from .collect import SeedRun, last_cycle_only, mask_violations, read_seed_run
from .plan import DOCUMENTS, SETTINGS, STUDY_SEEDS, Setting
from .stats import Spread

#: what the study's analyses use: small enough for minutes on 2 cores, see RESULTS.md
STUDY_ANALYSIS = AnalysisSettings(points=11, probes=16, hessian_batches=4, bn_batches=8)


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from ..experiment.batch import available_cores

    return f"{available_cores()} cores of {model}"


def run_study(
    runs_dir: Path,
    docs_dir: Path,
    *,
    settings: Sequence[Setting] = tuple(SETTINGS.values()),
    seeds: tuple[int, ...] = STUDY_SEEDS,
    workers: int = 1,
    data_dir: str = "",
    reporter: Reporter | None = None,
    command: str = "make study",
    launcher: SlurmLauncher | None = None,
) -> list[Path]:
    """Run (or resume) the study and write the chosen settings' documents (``docs_dir/
    RESULTS.md`` and the others of :data:`~sparseavg.study.plan.DOCUMENTS`) and
    ``docs_dir/results/*.png``; returns the paths of the documents written."""
    reporter = reporter or NullReporter()
    started = time.perf_counter()
    chosen = list(settings)
    execution = {"execution": {"data_dir": data_dir}} if data_dir else {}
    load_before = _load()
    groups = [
        (setting, group, setting.configs(group, seeds))
        for setting in chosen
        for group in setting.groups
    ]
    if execution:
        from ..recipes import resolve_config

        groups = [
            (s, g, [resolve_config(merge(c.to_dict(), execution)) for c in cs])
            for s, g, cs in groups
        ]
    configs = [c for _, _, cs in groups for c in cs]
    done_before = sum(_finished(runs_dir, c) for c in configs)
    reporter.message(
        f"study: {len(configs)} runs of {', '.join(s.name for s in chosen)} "
        f"({done_before} finished before), {workers} at a time"
    )

    def record(note: str = "") -> write.StudyRecord:
        now = time.perf_counter()
        return write.StudyRecord(
            command=command,
            machine=_machine(),
            torch=torch.__version__,
            workers=workers,
            seconds=now - started,
            train_seconds=min(now, trained) - started,
            analysis_seconds=max(0.0, now - trained),
            runs=len(configs),
            trained=sum(_finished(runs_dir, c) for c in configs) - done_before,
            load=(load_before, _load()),
            finished=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            note=note,
            settings=tuple(s.name for s in chosen),
        )

    trained = math.inf
    try:
        paths = run_many(
            configs,
            runs_dir,
            workers=workers,
            reporter=reporter,
            label="study runs",
            launcher=launcher,
        )
    except BaseException:
        # the runs this call finished are recorded, so that the call which resumes the study
        # does not say that no recorded call trained them
        write.record_call(Path(runs_dir) / CALLS_FILE, record("stopped before the end"))
        raise
    trained = time.perf_counter()

    by_config = dict(zip([id(c) for c in configs], paths, strict=True))
    results: dict[str, dict[str, list[SeedRun]]] = {s.name: {} for s in chosen}
    for setting, group, cs in groups:
        data = load_dataset(
            cs[0].data.dataset,
            data_dir=data_dir or None,
            val_fraction=cs[0].data.val_fraction,
            split_seed=cs[0].data.split_seed,
        )
        spe = steps_per_epoch(data.train, cs[0].train.batch_size, cs[0].train.drop_last)
        runs = []
        for c in cs:
            path = by_config[id(c)]
            if group.analyses:
                what = (*group.analyses, "calibration")
                reporter.message(f"analysing {path.name} ({', '.join(what)})")
                analyze_run(path, what=what, settings=STUDY_ANALYSIS, reporter=reporter)
            run = read_seed_run(path, spe)
            if setting.final_only:
                run = last_cycle_only(run)
            run.analysis = load_analysis(path)
            runs.append(run)
        results[setting.name][group.label] = runs
    calls = write.record_call(Path(runs_dir) / CALLS_FILE, record())
    return write_study(docs_dir, chosen, results, calls)


#: the study's calls, one JSON line each, in the runs directory: the wall time of the calls
#: that trained is reported in RESULTS.md even when a later call only rewrote it
CALLS_FILE = "study_calls.jsonl"


def _load() -> float | None:
    """The 1-minute load average (None where the OS has none): how busy the cores were."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _finished(runs_dir: Path, config: Config) -> bool:
    from ..experiment.rundir import RunDir

    return RunDir(Path(runs_dir) / config.run_name()).is_complete(config.pruning.cycles)


# -- the document -------------------------------------------------------------------------------


def _analysis_value(run: SeedRun, cycle: int, key: str) -> float:
    if not run.analysis:
        return math.nan
    for row in run.analysis.get("cycles", []):
        if row.get("cycle") == cycle:
            value = row.get(key)
            return math.nan if value is None else float(value)
    return math.nan


def _analysis_rows(
    results: dict[str, list[SeedRun]], columns: Sequence[tuple[str, str, str]], scale: float
) -> list[list[str]]:
    """Rows by cycle of ``columns`` = (header, group, summary key): mean ± std over seeds."""
    first = results.get(columns[0][1], [])
    cycles = sorted({c for r in first for c in r.accuracy})
    rows = []
    for c in cycles:
        sp = Spread.of([r.sparsity[c] for r in first if c in r.sparsity]).mean
        row = [f"{100 * sp:.1f}"]
        for _, group, key in columns:
            values = [_analysis_value(r, c, key) for r in results.get(group, [])]
            values = [v for v in values if not math.isnan(v)]
            row.append(Spread.of(values).text(scale, 3 if scale == 1 else 2) if values else "–")
        rows.append(row)
    return rows


def _ingredient_rows(runs: list[SeedRun], cycle: int) -> tuple[Spread, Spread, Spread]:
    soups = [r.accuracy[cycle] for r in runs if cycle in r.accuracy]
    best = [max(r.ingredients[cycle]) for r in runs if r.ingredients.get(cycle)]
    mean = [
        sum(r.ingredients[cycle]) / len(r.ingredients[cycle])
        for r in runs
        if r.ingredients.get(cycle)
    ]
    return Spread.of(soups), Spread.of(best), Spread.of(mean)


def _experiments(setting: Setting, results: dict[str, list[SeedRun]], figures: Path) -> list[str]:
    out = [""]  # the header, listing the sections written below
    # SWAMP (a) and (b): barriers and Hessian trace
    out.append("### SWAMP (a): the loss barrier between particles, against two IMP runs")
    out.append(
        "Test error along the straight line between two models, BatchNorm recalibrated at "
        "each of 11 points; barrier = the maximum on the line minus the mean of the ends, in "
        "% error (`sparseavg analyze`). Particles: the mean over the 6 pairs of a SWAMP cycle's 4 "
        "particles (same ticket, different batch orders). IMP runs: the two lineages of the "
        "2-ensemble (different initialisations and tickets), at the same cycle."
    )
    columns = [
        ("SWAMP particles: error barrier (%)", "SWAMP (N=4)", "barrier_ingredients_test_error"),
        ("two IMP runs: error barrier (%)", "2-ensemble of IMP", "barrier_members_test_error"),
        ("SWAMP particles: loss barrier", "SWAMP (N=4)", "barrier_ingredients_test_loss"),
        ("two IMP runs: loss barrier", "2-ensemble of IMP", "barrier_members_test_loss"),
    ]
    rows_pct = _analysis_rows(results, columns[:2], 100.0)
    rows_loss = _analysis_rows(results, columns[2:], 1.0)
    rows = [a + b[1:] for a, b in zip(rows_pct, rows_loss, strict=True)]
    out.append(write.table(["sparsity %", *[c[0] for c in columns]], rows))
    barrier_cmp = _compare_values(
        results,
        "SWAMP (N=4)",
        "barrier_ingredients_test_error",
        "2-ensemble of IMP",
        "barrier_members_test_error",
    )
    if barrier_cmp is not None:
        barrier_cmp = dataclasses.replace(barrier_cmp, a="SWAMP particles", b="two IMP runs")
        out.append(write.comparison_table([barrier_cmp]))
        out.append("- " + write.verdict(barrier_cmp, higher="higher"))

    out.append("### SWAMP (b): Hessian trace of IMP and SWAMP at the same sparsities")
    out.append(
        f"Hutchinson's estimate of the trace of the training loss's Hessian over the surviving "
        f"weights, {STUDY_ANALYSIS.probes} Rademacher probes on {STUDY_ANALYSIS.hessian_batches} "
        f"fixed batches of {STUDY_ANALYSIS.batch_size} training samples (eval-mode BatchNorm); "
        "mean ± std over seeds (each seed's own standard error is in its run's "
        "`analysis/summary.json`)."
    )
    columns = [
        ("IMP: trace", "IMP", "hessian_trace"),
        ("SWAMP (N=4): trace", "SWAMP (N=4)", "hessian_trace"),
    ]
    out.append(
        write.table(["sparsity %", *[c[0] for c in columns]], _analysis_rows(results, columns, 1.0))
    )
    trace_cmp = _compare_values(results, "SWAMP (N=4)", "hessian_trace", "IMP", "hessian_trace")
    if trace_cmp is not None:
        out.append(write.comparison_table([trace_cmp], scale=1.0, unit="trace"))
        out.append("- " + write.verdict(trace_cmp, higher="higher", scale=1.0))
    write.plot_lines(
        {
            "SWAMP particles (error barrier, %)": _series(
                results, "SWAMP (N=4)", "barrier_ingredients_test_error", 100
            ),
            "two IMP runs (error barrier, %)": _series(
                results, "2-ensemble of IMP", "barrier_members_test_error", 100
            ),
        },
        figures / f"{setting.name}_barrier.png",
        title="Test-error barrier on the line between two models",
        ylabel="barrier (% error)",
    )
    write.plot_lines(
        {
            "IMP": _series(results, "IMP", "hessian_trace", 1),
            "SWAMP (N=4)": _series(results, "SWAMP (N=4)", "hessian_trace", 1),
        },
        figures / f"{setting.name}_hessian.png",
        title="Hessian trace of the training loss (surviving weights)",
        ylabel="trace",
    )
    out.append(
        f"![barriers](results/{setting.name}_barrier.png) "
        f"![Hessian trace](results/{setting.name}_hessian.png)"
    )

    # SWAMP (c): particle count
    out.append("### SWAMP (c): the number of particles")
    labels = ["SWAMP (N=1)", "SWAMP (N=2)", "SWAMP (N=4)", "SWAMP (N=8)", "IMP"]
    out.append(write.accuracy_table(results, labels))
    comparisons = [
        c
        for a, b in (
            ("SWAMP (N=2)", "SWAMP (N=1)"),
            ("SWAMP (N=4)", "SWAMP (N=2)"),
            ("SWAMP (N=8)", "SWAMP (N=4)"),
        )
        if (c := write.compare(results, a, b)) is not None
    ]
    out.append(write.comparison_table(comparisons))
    out += ["- " + write.verdict(c) for c in comparisons]
    write.plot_lines(
        write.accuracy_series(results, labels),
        figures / f"{setting.name}_particles.png",
        title="SWAMP with N particles",
        ylabel="test accuracy (%)",
    )
    out.append(f"![particles](results/{setting.name}_particles.png)")

    # SMS (a): one-shot
    out.append("### SMS (a): one-shot pruning to 90 %, soups against the best ingredient")
    out.append(
        "The dense model trained 10 epochs (cycle 0), pruned once to 90 % by magnitude, 3 "
        "ingredients retrained 10 epochs each with different seeds, then averaged (uniform) or "
        "greedily souped on the 10 % held-out split. Test accuracy in %, mean ± std over seeds."
    )
    rows = []
    pairs = []
    for label in ("SMS one-shot 90 %, uniform", "SMS one-shot 90 %, greedy"):
        runs = results.get(label, [])
        if not runs:
            continue
        soup, best, mean = _ingredient_rows(runs, 1)
        rows.append([label, soup.text(100), best.text(100), mean.text(100)])
        soups = {r.seed: r.accuracy[1] for r in runs if 1 in r.accuracy}
        bests = {r.seed: max(r.ingredients[1]) for r in runs if r.ingredients.get(1)}
        seeds = sorted(set(soups) & set(bests))
        if len(seeds) >= 2:
            from .stats import paired_test

            t = paired_test([soups[s] for s in seeds], [bests[s] for s in seeds])
            pairs.append((label, t))
    out.append(write.table(["soup", "soup", "best ingredient", "ingredient mean"], rows))
    for label, t in pairs:
        p = "–" if math.isnan(t.p) else f"{t.p:.3f}"
        out.append(
            f"- {label} − best ingredient: {100 * t.mean:+.2f} ± {100 * t.std:.2f} % "
            f"(95 % CI [{100 * t.low:+.2f}, {100 * t.high:+.2f}], p = {p}, soup ahead in "
            f"{t.wins}/{t.n} seeds)."
        )
    out.append("Barriers between the one-shot ingredients (test error, %, mean over seeds):")
    out.append(
        write.table(
            ["sparsity %", "ingredient pairs: error barrier (%)"],
            [
                r
                for r in _analysis_rows(
                    results,
                    [("", "SMS one-shot 90 %, uniform", "barrier_ingredients_test_error")],
                    100.0,
                )
            ],
        )
    )

    # SMS (a) continued: tiny budget
    out.append("### SMS (a), continued: the soup at a tiny budget (width 8, 1 epoch)")
    tiny = [g.label for g in setting.groups if g.section == "sms-tiny"]
    rows = []
    for label in tiny:
        runs = results.get(label, [])
        if not runs:
            continue
        soup, best, mean = _ingredient_rows(runs, 1)
        barrier = Spread.of(
            [
                v
                for r in runs
                if not math.isnan(v := _analysis_value(r, 1, "barrier_ingredients_test_error"))
            ]
        )
        rows.append(
            [
                label,
                soup.text(100),
                best.text(100),
                mean.text(100),
                barrier.text(100) if barrier.n else "–",
            ]
        )
    out.append(
        write.table(
            [
                "variant (3 seed ingredients, uniform soup, 40 % sparsity)",
                "soup",
                "best ingredient",
                "ingredient mean",
                "error barrier between ingredients (%)",
            ],
            rows,
        )
    )
    out += _tiny_verdict(setting, results, tiny)

    # SMS (b): weight decay vs seed
    out.append("### SMS (b): varying weight decay against varying only the seed")
    out.append(
        "Both soup 3 ingredients per phase, uniformly; `weight decay` trains them with 0.5x, "
        "1x and 2x the base weight decay and one shared seed (the SMS code's choice), `seed` "
        "with the base weight decay and three seeds."
    )
    labels = ["SMS varying weight decay (m=3)", "SMS uniform (m=3)"]
    out.append(write.accuracy_table(results, labels))
    c = write.compare(results, labels[0], labels[1])
    if c is not None:
        out.append(write.comparison_table([c]))
        out.append("- " + write.verdict(c))

    # SMS (c): phases keep the sparsity; against IMP+
    out.append("### SMS (c): several phases: the sparsity is kept exactly, accuracy against IMP+")
    checks = []
    for label in ("SMS uniform (m=3)", "SMS greedy (m=3)", "SMS varying weight decay (m=3)"):
        for run in results.get(label, []):
            checks += [(label, run.seed, *v) for v in mask_violations(run.path)]
    bad = [c for c in checks if c[3] != 0]
    out.append(
        f"Every soup of every phase and seed ({len(checks)} models) was checked weight by weight "
        f"against its phase's mask: {len(bad)} had a nonzero weight outside the mask"
        + (
            " (" + ", ".join(f"{c[0]} seed {c[1]} cycle {c[2]}" for c in bad[:5]) + ")"
            if bad
            else ""
        )
        + ". Accuracy against IMP+ at equal compute: the paired tests of the main table above "
        "(SMS uniform/greedy − IMP+)."
    )
    out[0] = write.experiments_header([line[4:] for line in out if line.startswith("### ")])
    return out


def _series(
    results: dict[str, list[SeedRun]], group: str, key: str, scale: float
) -> list[tuple[float, float, float]]:
    runs = results.get(group, [])
    cycles = sorted({c for r in runs for c in r.accuracy})
    out = []
    for c in cycles:
        values = [v for r in runs if not math.isnan(v := _analysis_value(r, c, key))]
        if values:
            s = Spread.of(values)
            sp = Spread.of([r.sparsity[c] for r in runs if c in r.sparsity]).mean
            out.append((sp, s.mean * scale, s.std * scale))
    return out


def _compare_values(
    results: dict[str, list[SeedRun]], a: str, key_a: str, b: str, key_b: str
) -> write.Comparison | None:
    """Paired by seed across two groups: an analysis value of ``a`` against one of ``b``."""
    ra = {r.seed: r for r in results.get(a, [])}
    rb = {r.seed: r for r in results.get(b, [])}
    merged = {a: list(ra.values()), b: list(rb.values())}
    keys = {a: key_a, b: key_b}
    # compare() picks the value with one function; route each run to its own group's key
    owner = {id(r): label for label, runs in merged.items() for r in runs}
    return write.compare(
        merged, a, b, value=lambda run, c: _analysis_value(run, c, keys[owner[id(run)]])
    )


#: an ingredient this many points (accuracy in [0, 1]) below the best of its cycle "stalled"
STALLED = 0.10


def _tiny_verdict(
    setting: Setting, results: dict[str, list[SeedRun]], tiny: list[str]
) -> list[str]:
    """What the tiny-budget runs say about a soup below its ingredients: per seed, whether one
    ingredient stalled (ended :data:`STALLED` below the best) and dragged the uniform soup
    down, whether the three BatchNorm recalibrations change the soup, and whether 10 epochs
    close the gap; a conclusion only where the numbers support one."""

    def epochs(label: str) -> int:
        return int(merge(setting.base, setting.group(label).values)["train"]["epochs"])

    short = [t for t in tiny if results.get(t) and epochs(t) == 1]
    long = [t for t in tiny if results.get(t) and epochs(t) > 1]
    if not short:
        return []
    lines = []
    first = results[short[0]]
    # (seed, soup, stalled ingredient, the others' mean, ingredients best first)
    stalled: list[tuple[int, float, float, float, list[float]]] = []
    steady: list[float] = []
    for r in first:
        ings = sorted(r.ingredients.get(1, []), reverse=True)
        if not ings or 1 not in r.accuracy:
            continue
        soup = r.accuracy[1]
        if ings[0] - ings[-1] > STALLED:
            others = sum(ings[:-1]) / (len(ings) - 1)
            stalled.append((r.seed, soup, ings[-1], others, ings))
        else:
            steady.append(soup - sum(ings) / len(ings))
    if stalled:
        told = "; ".join(
            f"seed {seed}: ingredients {', '.join(f'{100 * a:.1f}' for a in ings)} %, soup "
            f"{100 * soup:.1f} %, {100 * abs(soup - worst):.1f} points from the stalled one "
            f"and {100 * abs(soup - others):.1f} from the others' mean"
            for seed, soup, worst, others, ings in stalled
        )
        lines.append(
            f"- **{len(stalled)} of {len(first)} seeds had an ingredient that stalled** (ended "
            f"more than {100 * STALLED:.0f} points below the best after its one epoch): {told}."
        )
    one_gap = Spread.of(steady) if steady else None
    if one_gap is not None:
        lines.append(
            f"- In the other {len(steady)} seeds the soup is {100 * one_gap.mean:+.2f} ± "
            f"{100 * one_gap.std:.2f} points from its ingredients' mean (range "
            f"{100 * min(steady):+.2f} to {100 * max(steady):+.2f})."
        )
    spread = []
    if len(short) > 1:
        by_seed: dict[int, list[float]] = {}
        for label in short:
            for r in results[label]:
                if 1 in r.accuracy:
                    by_seed.setdefault(r.seed, []).append(r.accuracy[1])
        spread = [max(v) - min(v) for v in by_seed.values() if len(v) == len(short)]
        if spread:
            lines.append(
                f"- **BatchNorm recalibration** (the SMS code's, an exact average, none) moves a "
                f"seed's soup by at most {100 * max(spread):.2f} points (mean "
                f"{100 * sum(spread) / len(spread):.2f})."
            )
    long_gaps = []
    for label in long:
        for r in results[label]:
            ings = r.ingredients.get(1, [])
            if ings and 1 in r.accuracy:
                long_gaps.append(r.accuracy[1] - sum(ings) / len(ings))
    long_gap = Spread.of(long_gaps) if long_gaps else None
    if long_gap is not None:
        lines.append(
            f"- **With {epochs(long[0])} epochs** the soup is {100 * long_gap.mean:+.2f} ± "
            f"{100 * long_gap.std:.2f} points from its ingredients' mean."
        )
    recal_small = bool(spread) and max(spread) < 0.01
    budget = long_gap is not None and abs(long_gap.mean) < 0.005
    followed = all(abs(soup - worst) < abs(soup - others) for _, soup, worst, others, _ in stalled)
    explained = bool(stalled) and followed and (one_gap is None or one_gap.mean > -0.005)
    if recal_small and budget and explained:
        lines.append(
            "**Verdict: the method at a tiny budget, not a defect in BatchNorm recalibration.** "
            "The shortfall of the mean soup comes from seeds where one 1-epoch ingredient "
            "stalled and the uniform average followed it; the other recalibrations move a soup "
            "by under a point; where no ingredient stalled, and with a longer budget, the soup "
            "matches its ingredients."
        )
    elif not recal_small and spread:
        lines.append(
            "**Verdict: the recalibration changes the soup**; these seeds do not rule out a "
            "defect there."
        )
    else:
        lines.append("**Verdict: these seeds do not settle the question.**")
    return lines


def write_study(
    docs_dir: Path,
    settings: Sequence[Setting],
    results: dict[str, dict[str, list[SeedRun]]],
    calls: Sequence[write.StudyRecord],
) -> list[Path]:
    """Write the documents of ``settings`` (RESULTS.md and the others of
    :data:`~sparseavg.study.plan.DOCUMENTS`) and their figures under ``docs_dir``; a document
    holds the chosen settings that name it, and the documents of settings not chosen are left
    as they are. ``calls`` are the study's calls so far (the last one writes). Returns the
    paths written, in the order of :data:`DOCUMENTS`."""
    (docs_dir / "results").mkdir(parents=True, exist_ok=True)
    paths = []
    for document, title in DOCUMENTS.items():
        members = [s for s in settings if s.document == document]
        if members:
            paths.append(_write_document(docs_dir, document, title, members, results, calls))
    return paths


def _write_document(
    docs_dir: Path,
    document: str,
    title: str,
    settings: Sequence[Setting],
    results: dict[str, dict[str, list[SeedRun]]],
    calls: Sequence[write.StudyRecord],
) -> Path:
    figures = docs_dir / "results"
    names = {s.name for s in settings}
    # the calls that ran this document's settings (calls recorded before calls named their
    # settings count for every document)
    mine = [c for c in calls if not c.settings or names & set(c.settings)]
    others = [
        f"[{t}]({d})"
        for d, t in DOCUMENTS.items()
        if d != document and any(s.document == d for s in SETTINGS.values())
    ]
    subset = ",".join(s.name for s in settings)
    sections = [
        f"# {title}",
        "Every method of the settings below, over the same seeds, each compared with its "
        "baseline by a paired test over seeds. The verdict lines are written by the code from "
        "the tests, so they say only what these seeds support. " + write.describe_calls(mine),
        "Regenerate with `make study` (resumable: finished runs under `runs/study/` are reused; "
        f"`sparseavg study --settings {subset}` rewrites this document alone). Every run is a "
        "plain `sparseavg run` of a config from `src/sparseavg/study/plan.py`; `sparseavg "
        "report runs/study/<run>` and `sparseavg analyze runs/study/<run>` read it. The "
        "study's other documents: " + ", ".join(others) + ".",
    ]
    for setting in settings:
        res = results[setting.name]
        labels = [g.label for g in setting.groups if g.section == "main"]
        figure = ""
        if not setting.final_only:
            figure = f"results/{setting.name}_accuracy.png"
            write.plot_lines(
                write.accuracy_series(res, labels),
                docs_dir / figure,
                title=f"Accuracy vs sparsity: {setting.title}",
                ylabel="test accuracy (%)",
            )
        sections += write.main_section(setting, res, figure)
        if any(g.section != "main" for g in setting.groups):
            sections += _experiments(setting, res, figures)
    sections += _commands(settings, results, docs_dir)
    path = docs_dir / document
    write.write_results(path, sections)
    return path


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-").replace("--", "-")


def _commands(
    settings: Sequence[Setting], results: dict[str, dict[str, list[SeedRun]]], docs_dir: Path
) -> list[str]:
    """Each group's config as a TOML file under ``docs_dir/results/configs/`` and the exact
    command that reruns one of its seeds."""
    from ..config import to_toml
    from ..utils.files import atomic_write_text

    folder = docs_dir / "results" / "configs"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for setting in settings:
        for group in setting.groups:
            runs = results[setting.name].get(group.label, [])
            if not runs:
                continue
            config = setting.configs(group, (runs[0].seed,))[0]
            name = f"{setting.name}--{_slug(group.label)}.toml"
            header = f"# sparseavg study, {setting.title}: {group.label}\n"
            atomic_write_text(folder / name, header + to_toml(config.to_dict()))
            seeds = ",".join(str(r.seed) for r in runs)
            rows.append([f"{setting.name}: {group.label}", f"`results/configs/{name}`", seeds])
    return [
        "## Exact commands",
        "Each group's resolved config (seed 0) is in `docs/results/configs/`. One run of the "
        "study is `OMP_NUM_THREADS=1 sparseavg run docs/results/configs/<file> --seed <s> "
        "--runs-dir runs/study` (one torch thread, as the study's workers train: a run's last "
        "digits depend on the thread count); `sparseavg analyze` on the run directory gives "
        "its analyses.",
        write.table(["group", "config", "seeds"], rows),
    ]
