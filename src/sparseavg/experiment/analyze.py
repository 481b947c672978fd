"""``sparseavg analyze``: the analyses of :mod:`sparseavg.analysis` on a run's complete cycles.

Per complete cycle (its manifest verified first) and lineage (``member_<l>/`` when a run has
several), with the cycle's mask:

- ``barrier``: loss and error along the line between every pair of ingredients, each
  ingredient and the combined model, the combined model and the previous cycle's, and the
  members' combined models (each kind capped at :data:`MAX_PAIRS` lines, the first pairs in
  order), on the test and the training split; BatchNorm recalibrated at every point on the
  training split.
- ``hessian``: Hutchinson's trace of the training loss's Hessian on the surviving weights, of
  the combined model(s) (and each ingredient with ``ingredients_hessian``).
- ``distance``: L2 distance and cosine similarity of parameter vectors among ingredients and
  to their uniform average and the combined model (and between members' combined models).
- ``calibration``: ECE (15 bins), accuracy and per-class accuracy on the test split of every
  model above (and of the members' prediction ensemble).

What does not apply (one ingredient has no pairs, cycle 0 no previous cycle) is left out.
Files, all under ``RUN_DIR/analysis/`` and written atomically (nothing else in the run
directory is touched)::

    cycle_XX.json         one cycle's results with the settings and analyses that made them
    cycle_XX_barrier.png  loss and error along each line
    summary.json          one row per analysed cycle (see :func:`summary_row`)
    summary.png           barriers and Hessian trace against sparsity

A cycle whose JSON holds the analyses asked for, made with the same settings, is skipped, so
the command resumes; analyses asked for later are added to the same JSON (results of other
settings are replaced, not mixed in), and a plot missing or out of date is drawn again. Only
the files a cycle's manifest lists are read, and a JSON that is not this run's and cycle's
(copied in, edited, damaged) is recomputed. While it writes, ``analysis/run.lock`` keeps a
second ``analyze`` of the run out, and temporary files a killed analysis left are removed.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..analysis import (
    calibration,
    distances,
    hessian_trace,
    linear_paths,
    parameter_names,
)
from ..averaging import ensemble_probabilities, has_batchnorm, uniform_average
from ..config import Config, ConfigError
from ..data import Dataset
from ..pruning import Mask
from ..training.evaluate import EVAL_BATCH_SIZE
from ..utils.files import CorruptFileError, atomic_open, atomic_write_text
from ..utils.state import State
from .engine import resolve_device
from .export import built_in
from .progress import NullReporter, Reporter
from .rundir import MANIFEST, RunDir
from .runinfo import RunInfo, read_run
from .task import load_data, make_model

PathLike = str | os.PathLike[str]

#: the analyses, in the order they run
ANALYSES = ("barrier", "hessian", "distance", "calibration")
#: at most this many lines (or distances) of each kind per lineage and cycle
MAX_PAIRS = 6
DIR_NAME = "analysis"
SUMMARY_NAME = "summary.json"
FORMAT = "sparseavg-analysis/1"


class AnalysisError(ValueError):
    """An analysis that cannot be run as asked: an unknown analysis, a bad setting, a cycle
    that is not complete."""


#: the range of each integer setting: large enough for any analysis worth its time, small
#: enough that a typo (``--points 100000000``) is refused instead of filling the memory
SETTING_RANGES: dict[str, tuple[int, int]] = {
    "points": (2, 1001),
    "probes": (2, 10_000),
    "hessian_batches": (1, 10_000),
    "batch_size": (1, 65_536),
    "bn_batches": (0, 100_000),
    "seed": (0, 2**63 - 1),
}


@dataclass(frozen=True)
class AnalysisSettings:
    """What the analyses measure with; written into every result file.

    Attributes (each an integer in its :data:`SETTING_RANGES`):
        points: points along each line, ends included (α = 0, 1/(points-1), ..., 1).
        probes: Rademacher probes of the Hessian trace.
        hessian_batches: batches of the training split the Hessian's loss is taken over.
        batch_size: samples per batch, for the Hessian and for BatchNorm recalibration.
        bn_batches: batches of the training split each point's BatchNorm statistics are
            recomputed on (in fixed order, no augmentation); 0: the whole split.
        ingredients_hessian: also estimate the trace of every ingredient.
        seed: seed of the Hessian probes.
    """

    points: int = 11
    probes: int = 16
    hessian_batches: int = 4
    batch_size: int = 256
    bn_batches: int = 8
    ingredients_hessian: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name, (low, high) in SETTING_RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise AnalysisError(
                    f"{name} must be an integer from {low} to {high}, not {value!r}"
                )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_what(text: str | Iterable[str]) -> tuple[str, ...]:
    """The analyses named (comma-separated, or a sequence), in :data:`ANALYSES` order."""
    names = [w.strip() for w in (text.split(",") if isinstance(text, str) else text)]
    unknown = [w for w in names if w not in ANALYSES]
    if unknown or not names:
        raise AnalysisError(
            f"unknown analysis {', '.join(map(repr, unknown)) or '(none named)'}; choose from "
            f"{', '.join(ANALYSES)}"
        )
    return tuple(a for a in ANALYSES if a in names)


# -- reading a cycle ----------------------------------------------------------------------------


@dataclass
class _Lineage:
    """One lineage of one cycle: labels are prefixed ``member_<l>/`` when a run has several."""

    prefix: str
    combined: State
    mask: Mask | None
    ingredients: dict[str, tuple[State, Mask | None]] = field(default_factory=dict)

    @property
    def combined_label(self) -> str:
        return f"{self.prefix}combined"


def _read_lineage(
    rd: RunDir,
    cycle: int,
    member: int,
    members: int,
    listed: set[str],
    expected: dict[str, tuple[int, ...]],
) -> _Lineage:
    """One lineage's models and masks, as the cycle's manifest lists them (``listed``: paths
    relative to the cycle folder); each state must fit the run's model (``expected``: name
    -> shape)."""
    mdir = rd.member_dir(cycle, member, members)
    cdir = rd.cycle_dir(cycle)

    def mask_at(path: Path) -> Mask:
        mask = Mask.load(path)
        mask.validate({k: torch.empty(v, device="meta") for k, v in expected.items()})
        return mask

    mask_path = mdir / "mask.safetensors"
    mask = mask_at(mask_path) if mask_path.is_file() else None
    prefix = f"member_{member}/" if members > 1 else ""
    lineage = _Lineage(prefix, _read_state(rd, mdir / "combined.safetensors", expected), mask)
    found = [p for p in mdir.glob("ingredient_*") if p.name.split("_")[-1].isdigit()]
    for d in sorted(found, key=lambda p: int(p.name.split("_")[-1])):
        final = d / "final.safetensors"
        # a dropped (diverged) ingredient has none; a folder the manifest does not list is
        # not the run's
        if final.is_file() and str(final.relative_to(cdir)) in listed:
            own = d / "mask.safetensors"
            lineage.ingredients[f"{prefix}{d.name}"] = (
                _read_state(rd, final, expected),
                mask_at(own) if str(own.relative_to(cdir)) in listed else mask,
            )
    return lineage


def _read_state(rd: RunDir, path: Path, expected: dict[str, tuple[int, ...]]) -> State:
    """A model state of the run, refused in one line when it does not fit the run's model."""
    state = rd.load_state(path)
    found = {k: tuple(v.shape) for k, v in state.items()}
    if found != expected:
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        shapes = [k for k in expected if k in found and found[k] != expected[k]]
        detail = "; ".join(
            part
            for part in (
                f"missing {missing[:3]}" if missing else "",
                f"unexpected {extra[:3]}" if extra else "",
                ", ".join(f"{k} is {found[k]}, not {expected[k]}" for k in shapes[:3]),
            )
            if part
        )
        raise AnalysisError(
            f"{path}: these weights do not fit the run's model {rd.path.name} ({detail}); "
            "it is not this run's file"
        )
    return state


def _pairs(labels: Sequence[str]) -> list[tuple[str, str]]:
    return list(itertools.islice(itertools.combinations(labels, 2), MAX_PAIRS))


def _lines(lineages: Sequence[_Lineage], previous: Sequence[_Lineage] | None) -> list[dict]:
    """Every line to walk: ``{"kind", "a", "b"}``."""
    lines = []
    for lin in lineages:
        names = list(lin.ingredients)
        lines += [{"kind": "ingredients", "a": a, "b": b} for a, b in _pairs(names)]
        if len(names) > 1:  # one ingredient *is* the combined model (up to BatchNorm)
            lines += [
                {"kind": "ingredient-combined", "a": a, "b": lin.combined_label}
                for a in names[:MAX_PAIRS]
            ]
        if previous is not None:
            lines.append(
                {"kind": "previous", "a": f"{lin.prefix}previous_combined", "b": lin.combined_label}
            )
    members = [lin.combined_label for lin in lineages]
    lines += [{"kind": "members", "a": a, "b": b} for a, b in _pairs(members)]
    return lines


# -- one cycle ----------------------------------------------------------------------------------


@dataclass
class _Tools:
    model: nn.Module
    data: Dataset
    settings: AnalysisSettings
    reporter: Reporter


class _Progress:
    """One reporter task for a cycle, advanced in work units (points, probes, models)."""

    def __init__(self, reporter: Reporter, label: str, total: int) -> None:
        self.reporter, self.total, self.done = reporter, total, 0
        self.task = reporter.task(label, total)

    def step(self, info: str, units: int = 1) -> None:
        self.done += units
        self.reporter.update(self.task, self.done, info)

    def callback(self, info: str) -> Callable[[int, int], None]:
        return lambda _done, _total: self.step(info)


def _analyze_cycle(
    tools: _Tools,
    lineages: list[_Lineage],
    previous: list[_Lineage] | None,
    cycle: int,
    what: tuple[str, ...],
) -> dict[str, Any]:
    s = tools.settings
    states: dict[str, State] = {}
    for lin in lineages:
        states[lin.combined_label] = lin.combined
        states.update({k: v[0] for k, v in lin.ingredients.items()})
    if previous is not None:
        for lin, prev in zip(lineages, previous, strict=True):
            states[f"{lin.prefix}previous_combined"] = prev.combined
    lines = _lines(lineages, previous) if "barrier" in what else []
    traced = [(lin.combined_label, lin.mask) for lin in lineages]
    if s.ingredients_hessian:
        traced += [(k, v[1]) for lin in lineages for k, v in lin.ingredients.items()]
    traced = traced if "hessian" in what else []
    evaluated = [lab for lin in lineages for lab in (lin.combined_label, *lin.ingredients)]
    total = (
        len(lines) * s.points
        + len(traced) * s.probes
        + ("distance" in what)
        + (len(evaluated) if "calibration" in what else 0)
    )
    progress = _Progress(tools.reporter, f"analyse cycle {cycle}", total)
    result: dict[str, Any] = {
        "models": sorted(states),
        "sparsity": lineages[0].mask.sparsity if lineages[0].mask is not None else 0.0,
    }
    try:
        if "barrier" in what:
            result["barrier"] = [_walk(tools, states, line, progress) for line in lines]
        if "hessian" in what:
            result["hessian"] = {
                label: hessian_trace(
                    tools.model,
                    states[label],
                    tools.data.train,
                    probes=s.probes,
                    batches=s.hessian_batches,
                    batch_size=s.batch_size,
                    seed=s.seed,
                    mask=mask,
                    progress=progress.callback(f"Hessian {label}"),
                ).to_dict()
                | {"masked": mask is not None}
                for label, mask in traced
            }
        if "distance" in what:
            result["distance"] = _distances(tools.model, lineages, states)
            progress.step("distances")
        if "calibration" in what:
            result["calibration"] = _calibrations(tools, lineages, states, evaluated, progress)
    finally:
        tools.reporter.finish(progress.task)
    return result


def _walk(tools: _Tools, states: dict[str, State], line: dict, progress: _Progress) -> dict:
    s, data = tools.settings, tools.data
    paths = linear_paths(
        tools.model,
        states[line["a"]],
        states[line["b"]],
        eval_data={"test": data.test, "train": data.train},
        points=s.points,
        recalibrate=data.train,
        bn_batches=s.bn_batches or None,
        batch_size=s.batch_size,
        progress=progress.callback(f"{line['a']} – {line['b']}"),
    )
    return {**line, **{split: p.to_dict() for split, p in paths.items()}}


def _distances(model: nn.Module, lineages: list[_Lineage], states: dict[str, State]) -> list:
    names = parameter_names(model)
    extra: dict[str, State] = {}
    pairs: list[tuple[str, str]] = []
    for lin in lineages:
        labels = list(lin.ingredients)
        pairs += list(itertools.combinations(labels, 2))
        if len(labels) > 1:
            average = f"{lin.prefix}average"
            extra[average] = uniform_average([states[k] for k in labels])
            pairs += [(k, average) for k in labels]
        pairs += [(k, lin.combined_label) for k in labels]
    pairs += list(itertools.combinations([lin.combined_label for lin in lineages], 2))
    return [asdict(d) for d in distances(states | extra, pairs, names)]


def _calibrations(
    tools: _Tools,
    lineages: list[_Lineage],
    states: dict[str, State],
    labels: list[str],
    progress: _Progress,
) -> dict[str, Any]:
    test = tools.data.test
    targets = torch.cat([y.cpu() for _, y in test.batches(EVAL_BATCH_SIZE)])
    probabilities = {}
    for label in labels:
        tools.model.load_state_dict(states[label])
        probabilities[label] = ensemble_probabilities([tools.model], test)
        progress.step(f"calibration {label}")
    out = {label: calibration(p, targets).to_dict() for label, p in probabilities.items()}
    if len(lineages) > 1:  # the ensemble recipe's prediction average of the members
        mean = torch.stack([probabilities[lin.combined_label] for lin in lineages]).mean(0)
        out["ensemble"] = calibration(mean, targets).to_dict()
    return out


# -- the run ------------------------------------------------------------------------------------


def analysis_dir(run_dir: PathLike) -> Path:
    return Path(run_dir) / DIR_NAME


def _cycle_path(run_dir: PathLike, cycle: int) -> Path:
    return analysis_dir(run_dir) / f"cycle_{cycle:02d}.json"


def _existing(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and all(_is_number(v) for v in value)


def _path_ok(path: Any) -> bool:
    return (
        isinstance(path, dict)
        and all(_numbers(path.get(k)) for k in ("alphas", "losses", "errors"))
        and len(path["alphas"]) == len(path["losses"]) == len(path["errors"])
        and all(_is_number(path.get(k)) for k in ("loss_barrier", "error_barrier"))
    )


def _line_ok(line: Any) -> bool:
    return (
        isinstance(line, dict)
        and all(isinstance(line.get(k), str) for k in ("kind", "a", "b"))
        and _path_ok(line.get("test"))
        and _path_ok(line.get("train"))
    )


def _labelled(value: Any, keys: tuple[str, ...]) -> bool:
    """``{label: {key: number, ...}}``."""
    return isinstance(value, dict) and all(
        isinstance(v, dict) and all(_is_number(v.get(k)) for k in keys) for v in value.values()
    )


#: what each analysis's entry of a cycle's document must look like
_RESULT_OK: dict[str, Callable[[Any], bool]] = {
    "barrier": lambda v: isinstance(v, list) and all(_line_ok(line) for line in v),
    "hessian": lambda v: _labelled(v, ("mean", "stderr")),
    "distance": lambda v: (
        isinstance(v, list)
        and all(
            isinstance(d, dict)
            and isinstance(d.get("a"), str)
            and isinstance(d.get("b"), str)
            and _is_number(d.get("l2"))
            and _is_number(d.get("cosine"))
            for d in v
        )
    ),
    "calibration": lambda v: _labelled(v, ("ece", "accuracy")),
}


def document_problem(document: Any, run: str, cycle: int) -> str | None:
    """Why ``document`` is not an analysis of cycle ``cycle`` of the run named ``run`` as
    :func:`analyze_run` writes it (another run's, another cycle's, damaged or edited), or
    ``None`` when it is."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        return "not a sparseavg analysis"
    if document.get("run") != run:
        return f"the analysis of run {str(document.get('run'))[:80]!r}, not of {run!r}"
    found = document.get("cycle")
    if found != cycle or isinstance(found, bool):
        return f"the analysis of cycle {str(found)[:20]}, not of cycle {cycle}"
    settings = document.get("settings")
    try:
        AnalysisSettings(**settings)  # type: ignore[arg-type]
    except (TypeError, AnalysisError):
        return "its settings are not analysis settings"
    what = document.get("what")
    if not isinstance(what, list) or not set(what) <= set(ANALYSES) or len(set(what)) < len(what):
        return "its list of analyses is damaged"
    if not isinstance(document.get("models"), list) or not _is_number(document.get("sparsity")):
        return "its models or sparsity are damaged"
    damaged = [a for a in what if not _RESULT_OK[a](document.get(a))]
    if damaged:
        return f"its {', '.join(damaged)} results are damaged"
    try:
        summary_row(document)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return "its results are damaged"
    return None


def _own_document(run_dir: Path, run: str, cycle: int) -> dict[str, Any] | None:
    """The cycle's analysis document if it is this run's and cycle's, else ``None``."""
    document = _existing(_cycle_path(run_dir, cycle))
    return document if document_problem(document, run, cycle) is None else None


def _choose_cycles(info: RunInfo, cycles: Sequence[int] | None) -> list[int]:
    complete = info.complete_cycles()
    if not complete:
        raise AnalysisError(f"{info.path}: no complete cycle to analyse yet")
    if cycles is None:
        return complete
    missing = sorted(set(cycles) - set(complete))
    if missing:
        raise AnalysisError(
            f"{info.path}: cycle {', '.join(map(str, missing))} is not complete "
            f"(complete cycles: {', '.join(map(str, complete))})"
        )
    return sorted(set(cycles))


def _check_built_in(config: Config) -> None:
    """Refuse a run of the user's own model (``sparseavg.swamp(model_fn, ...)``): its data
    and model are not ours to rebuild."""
    if built_in(config):
        return
    raise ConfigError(
        f"analyze rebuilds a run's data set and model, and {config.data.dataset!r} / "
        f"{config.model.name!r} are not built in (a run of your own model): call "
        "sparseavg.linear_path, hessian_trace, distances and calibration on your model and data"
    )


def _barrier_png(run_dir: Path, cycle: int) -> Path:
    return analysis_dir(run_dir) / f"cycle_{cycle:02d}_barrier.png"


def _check_targets(run_dir: Path, cycles: Sequence[int]) -> None:
    """Refuse, before anything is computed or written, an ``analysis`` folder that is a file
    or holds a folder where a result file goes."""
    out = analysis_dir(run_dir)
    if out.exists() and not out.is_dir():
        raise AnalysisError(f"{out}: a file where analyze writes its folder; remove it")
    targets = [out / SUMMARY_NAME, out / "summary.png"]
    targets += [p for c in cycles for p in (_cycle_path(run_dir, c), _barrier_png(run_dir, c))]
    for target in targets:
        if target.is_dir():
            raise AnalysisError(f"{target}: a folder where analyze writes a file; remove it")


def _listed(rd: RunDir, cycle: int) -> set[str]:
    """The files a complete cycle's manifest lists (relative to the cycle's folder)."""
    manifest = rd.read_json(rd.cycle_dir(cycle) / MANIFEST)
    return set(manifest.get("files", {})) if isinstance(manifest, dict) else set()


def analyze_run(
    run_dir: PathLike,
    *,
    cycles: Sequence[int] | None = None,
    what: Sequence[str] = ANALYSES,
    settings: AnalysisSettings = AnalysisSettings(),
    reporter: Reporter | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Analyse the complete ``cycles`` of a run (all when ``None``) and return the summary.

    Writes ``analysis/cycle_XX.json`` (+ ``_barrier.png``) per cycle and ``summary.json`` and
    ``summary.png`` (see the module docstring). A cycle's document keeps every analysis made
    with the same ``settings``: the analyses of ``what`` it already holds are read back, not
    recomputed, the others are added to it (results of other settings are replaced), and its
    plot is drawn again whenever it changed or is missing. Only files this run's manifests
    list are read, and a document that is not this run's and cycle's analysis (copied from
    another run, edited, damaged) is recomputed. ``device`` defaults to the run's
    ``execution.device``. Everything is checked (config, cycles, manifests, the analysis
    folder's files, device, data) before the first file is written; temporary files a killed
    analysis left are removed.

    Raises:
        FileNotFoundError: ``run_dir`` is not a run directory.
        AnalysisError: unknown analyses, a bad setting, a cycle that is not complete, a
            folder where a result file goes, weights that do not fit the run's model.
        RunDirError, CorruptFileError: the run's config or a cycle's files are damaged.
        ConfigError: the device is not available.
    """
    chosen_what = parse_what(what)
    info = read_run(run_dir)
    chosen = _choose_cycles(info, cycles)
    rd, members = info.rundir, info.members
    complete = set(info.complete_cycles())
    listed: dict[int, set[str]] = {}
    for read_cycle in sorted({x for c in chosen for x in (c, c - 1) if x in complete}):
        rd.verify_manifest(rd.cycle_dir(read_cycle))
        listed[read_cycle] = _listed(rd, read_cycle)
    _check_targets(rd.path, chosen)
    reporter = reporter or NullReporter()
    fingerprint = {"format": FORMAT, "settings": settings.to_dict()}
    kept: dict[int, dict[str, Any]] = {}  # what each cycle's document keeps
    todo: dict[int, tuple[str, ...]] = {}  # what each cycle still needs
    for c in chosen:
        path = _cycle_path(rd.path, c)
        old = _existing(path) if path.is_file() else None
        problem = document_problem(old, info.name, c) if old is not None else None
        if problem is not None:
            reporter.message(f"cycle {c}: {path} is {problem}; analysed again")
            old = None
        if old is not None and old["settings"] != fingerprint["settings"]:
            old = None  # results of other settings are not merged with these
        kept[c] = old or {}
        missing = tuple(a for a in chosen_what if a not in kept[c].get("what", []))
        if missing:
            todo[c] = missing
        else:
            reporter.message(f"cycle {c}: analysed before with these settings; skipped")
    tools = None
    if todo:
        _check_built_in(info.config)
        torch_device = resolve_device(device or info.config.execution.device)
        data = load_data(info.config, torch_device)
        model = make_model(info.config, data, 0).to(torch_device)
        tools = _Tools(model, data, settings, reporter)
        if not has_batchnorm(model):
            reporter.message("the model has no BatchNorm: nothing to recalibrate along lines")
    with RunDir(analysis_dir(rd.path)).lock():  # also removes a killed analysis's temp files
        for c, needed in todo.items():
            assert tools is not None
            expected = {k: tuple(v.shape) for k, v in tools.model.state_dict().items()}
            start = time.perf_counter()
            read = [_read_lineage(rd, c, m, members, listed[c], expected) for m in range(members)]
            previous = None
            if c - 1 in complete and "barrier" in needed:
                previous = [
                    _read_lineage(rd, c - 1, m, members, listed[c - 1], expected)
                    for m in range(members)
                ]
            result = _analyze_cycle(tools, read, previous, c, needed)
            merged = set(kept[c].get("what", [])) | set(needed)
            document = {
                **{a: kept[c][a] for a in ANALYSES if a in kept[c] and a not in needed},
                **fingerprint,
                "what": [a for a in ANALYSES if a in merged],
                "run": info.name,
                "cycle": c,
                **result,
                "models": sorted(set(kept[c].get("models", [])) | set(result["models"])),
                "seconds": time.perf_counter() - start + float(kept[c].get("seconds") or 0.0),
            }
            _write_json(_cycle_path(rd.path, c), document)
            kept[c] = document
        for c in chosen:
            png = _barrier_png(rd.path, c)
            if "barrier" not in kept[c]:
                png.unlink(missing_ok=True)  # a plot of results the document no longer holds
            elif (c in todo and "barrier" in todo[c]) or not png.is_file():
                plot_barriers(kept[c], png)
        summary = _write_summary(rd.path, info.name, reporter)
    return summary


# -- summary ------------------------------------------------------------------------------------


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by ``None`` (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _write_json(path: Path, value: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(_finite(value), indent=1, sort_keys=True) + "\n")


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.fmean(kept) if kept else None


def summary_row(document: dict[str, Any]) -> dict[str, Any]:
    """One cycle's numbers from its ``cycle_XX.json``: ``None`` where they do not apply.

    ``barrier_<kind>_<split>_<loss|error>``: the mean barrier over that kind's lines (kinds
    ``ingredients``, ``members``, ``previous``; splits ``test``, ``train``);
    ``hessian_trace`` ± ``hessian_stderr``: of the combined model (the members' mean when there
    are several); ``distance_ingredients_l2`` / ``_cosine``: mean over ingredient pairs;
    ``ece`` / ``accuracy``: of the combined model (members' mean), ``ece_ensemble``: of the
    members' prediction ensemble.
    """
    row: dict[str, Any] = {"cycle": document["cycle"], "sparsity": document.get("sparsity")}
    lines = document.get("barrier", [])
    for kind in ("ingredients", "members", "previous"):
        mine = [line for line in lines if line["kind"] == kind]
        row[f"{kind}_lines"] = len(mine)
        for split in ("test", "train"):
            for measure in ("loss", "error"):
                values = [line[split][f"{measure}_barrier"] for line in mine]
                row[f"barrier_{kind}_{split}_{measure}"] = _mean(values)
    combined = [m for m in document.get("models", []) if m.endswith("combined")]
    combined = [m for m in combined if not m.endswith("previous_combined")]
    traces = [document.get("hessian", {}).get(m) for m in combined]
    traces = [t for t in traces if t is not None]
    row["hessian_trace"] = _mean([t["mean"] for t in traces])
    row["hessian_stderr"] = (
        math.sqrt(sum(t["stderr"] ** 2 for t in traces)) / len(traces) if traces else None
    )
    pairs = [
        d
        for d in document.get("distance", [])
        if "ingredient_" in d["a"] and "ingredient_" in d["b"]
    ]
    row["distance_ingredients_l2"] = _mean([d["l2"] for d in pairs])
    row["distance_ingredients_cosine"] = _mean([d["cosine"] for d in pairs])
    cal = document.get("calibration", {})
    row["ece"] = _mean([cal[m]["ece"] for m in combined if m in cal])
    row["accuracy"] = _mean([cal[m]["accuracy"] for m in combined if m in cal])
    row["ece_ensemble"] = cal["ensemble"]["ece"] if "ensemble" in cal else None
    return row


def _write_summary(run_dir: Path, name: str, reporter: Reporter) -> dict[str, Any]:
    documents = []
    for path in sorted(analysis_dir(run_dir).glob("cycle_*.json")):
        number = path.stem.removeprefix("cycle_")
        if not number.isdigit():
            continue
        document = _existing(path)
        problem = document_problem(document, name, int(number))
        if problem is not None or document is None:
            reporter.message(f"{path} is {problem}; left out of the summary")
            continue
        documents.append(document)
    summary: dict[str, Any] = _finite(
        {
            "format": FORMAT,
            "run": name,
            "cycles": [summary_row(d) for d in documents],
            "settings": {str(d["cycle"]): d["settings"] for d in documents},
        }
    )
    _write_json(analysis_dir(run_dir) / SUMMARY_NAME, summary)
    plot_summary(summary, analysis_dir(run_dir) / "summary.png")
    return summary


def load_analysis(run_dir: PathLike) -> dict[str, Any] | None:
    """``RUN_DIR/analysis/summary.json`` as written by :func:`analyze_run`, or ``None`` when
    the run has not been analysed.

    Raises:
        CorruptFileError: the file exists but is not this run's analysis summary (another
            run's, edited or damaged).
    """
    path = analysis_dir(run_dir) / SUMMARY_NAME
    if not path.is_file():
        return None
    redo = f"; `sparseavg analyze {Path(run_dir)}` rewrites it"
    try:
        value = RunDir.read_json(path)
    except CorruptFileError as err:
        raise CorruptFileError(f"{err}{redo}") from None
    if not isinstance(value, dict) or value.get("format") != FORMAT:
        raise CorruptFileError(f"{path}: not a sparseavg analysis summary{redo}")
    name = Path(run_dir).absolute().name
    if value.get("run") != name:
        raise CorruptFileError(
            f"{path}: the analysis of run {str(value.get('run'))[:80]!r}, not of {name!r} "
            f"(copied from another run){redo}"
        )
    rows = value.get("cycles")
    if not isinstance(rows, list) or not all(_row_ok(r) for r in rows):
        raise CorruptFileError(f"{path}: its rows are damaged{redo}")
    return value


def _row_ok(row: Any) -> bool:
    """A row of ``summary.json`` as :func:`summary_row` makes it: an integer cycle, numbers
    (or ``None``) elsewhere, and a standard error wherever there is a trace."""
    if not isinstance(row, dict):
        return False
    cycle = row.get("cycle")
    if not isinstance(cycle, int) or isinstance(cycle, bool) or cycle < 0:
        return False
    if not all(_is_number(v) for k, v in row.items() if k != "cycle"):
        return False
    return row.get("hessian_trace") is None or row.get("hessian_stderr") is not None


# -- tables and plots ---------------------------------------------------------------------------


def _num(value: float | None, scale: float = 1.0, digits: int = 3) -> str:
    return "–" if value is None else f"{scale * value:.{digits}f}"


def markdown_summary(summaries: Sequence[dict[str, Any]]) -> str:
    """A markdown table, a row per run and cycle: sparsity, the mean test-loss barrier (nats)
    and test-error barrier (%) between ingredients, between members and to the previous
    cycle's model, the Hessian trace ± standard error, and the ECE (%) of the combined
    model."""
    header = [
        "run",
        "cycle",
        "sparsity %",
        "barrier ingredients (loss / err %)",
        "barrier members",
        "barrier vs previous",
        "Hessian trace ± se",
        "ECE %",
    ]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for summary in summaries:
        for row in summary.get("cycles", []):

            def pair(kind: str, row: dict[str, Any] = row) -> str:
                loss = row.get(f"barrier_{kind}_test_loss")
                error = row.get(f"barrier_{kind}_test_error")
                return "–" if loss is None else f"{loss:.3f} / {_num(error, 100, 2)}"

            trace = row.get("hessian_trace")
            cells = [
                str(summary.get("run", "")),
                str(row["cycle"]),
                _num(row.get("sparsity"), 100, 1),
                pair("ingredients"),
                pair("members"),
                pair("previous"),
                "–" if trace is None else f"{trace:.4g} ± {row['hessian_stderr']:.2g}",
                _num(row.get("ece"), 100, 2),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Barrier: max along the line minus the mean of its ends, test split, mean over lines; "
        "Hessian trace (Hutchinson) of the combined model on its surviving weights; ECE with "
        "15 bins on the test split."
    )
    return "\n".join(lines) + "\n"


def _figure(rows: int, cols: int, size: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(rows, cols, i + 1) for i in range(rows * cols)]


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120)


def plot_barriers(document: dict[str, Any], path: Path) -> None:
    """Loss (nats) and error (%) against α for every line of one cycle: test split solid,
    training split dashed, both named in the one legend beside the lines' colours."""
    fig, (loss_ax, error_ax) = _figure(1, 2, (11.0, 4.2))
    for i, line in enumerate(document.get("barrier", [])):
        color = f"C{i % 10}"
        for split, style in (("test", "-"), ("train", "--")):
            p = line[split]
            label = f"{line['a']} – {line['b']}" if split == "test" else None
            loss_ax.plot(p["alphas"], p["losses"], style, color=color, label=label)
            errors = [None if e is None else 100 * e for e in p["errors"]]
            error_ax.plot(p["alphas"], errors, style, color=color)
    loss_ax.set(xlabel="α", ylabel="cross-entropy (nats)", title="loss along the line")
    error_ax.set(xlabel="α", ylabel="error (%)", title="error along the line")
    for ax in (loss_ax, error_ax):
        ax.grid(True, alpha=0.3)
    if document.get("barrier"):
        # the lines' colours and the splits' line styles in one key
        loss_ax.plot([], [], "-", color="0.3", label="test split")
        loss_ax.plot([], [], "--", color="0.3", label="training split")
        loss_ax.legend(fontsize="x-small")
    fig.suptitle(f"{document.get('run', '')} cycle {document.get('cycle')}", fontsize="small")
    _save(fig, path)


def plot_summary(summary: dict[str, Any], path: Path) -> None:
    """Test-loss barrier per kind of line, and Hessian trace ± standard error, against
    sparsity (%)."""
    fig, (barrier_ax, trace_ax) = _figure(1, 2, (11.0, 4.2))
    rows = sorted(summary.get("cycles", []), key=lambda r: r.get("sparsity") or 0.0)
    xs = [100 * (r.get("sparsity") or 0.0) for r in rows]
    for kind in ("ingredients", "members", "previous"):
        ys = [r.get(f"barrier_{kind}_test_loss") for r in rows]
        kept = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
        if kept:
            barrier_ax.plot(*zip(*kept, strict=True), marker="o", label=kind)
    traces = [(x, r) for x, r in zip(xs, rows, strict=True) if r.get("hessian_trace") is not None]
    if traces:
        trace_ax.errorbar(
            [x for x, _ in traces],
            [r["hessian_trace"] for _, r in traces],
            yerr=[r["hessian_stderr"] for _, r in traces],
            marker="o",
            capsize=3,
        )
    barrier_ax.set(xlabel="sparsity (%)", ylabel="test-loss barrier (nats)", title="barriers")
    trace_ax.set(xlabel="sparsity (%)", ylabel="tr(H)", title="Hessian trace (combined)")
    for ax in (barrier_ax, trace_ax):
        ax.grid(True, alpha=0.3)
    if barrier_ax.get_legend_handles_labels()[0]:
        barrier_ax.legend(fontsize="small")
    fig.suptitle(str(summary.get("run", "")), fontsize="small")
    _save(fig, path)
