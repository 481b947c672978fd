"""``sparseavg``: run, demo, report, inspect, export, analyze, study.

Bad input (config, data, files, paths) ends with one ``sparseavg: error: ...`` line and exit
code 2, having written nothing; a run that stops (divergence, disk) exits 1 and keeps its files.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import textwrap
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from ..config import ConfigError, field_specs, merge, parse_override, read_toml, toml_value

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool cut off by `| head`
MAX_WORKERS = 1024  # study --workers: processes at once


class UsageError(ValueError):
    """A command-line argument that cannot be used as given (e.g. a file where a folder is
    expected)."""


def _recipes_help() -> str:
    from ..recipes import RECIPES

    return "\n".join(f"  {name:<10} {r.summary}" for name, r in RECIPES.items())


def _fields_help() -> str:
    """Per field: ``key = default`` and what it accepts, then its help, indented."""
    from ..recipes import RECIPES

    lines = []
    for spec in field_specs():
        head = f"  {spec.key} = {toml_value(spec.default)}"
        allowed = "|".join(RECIPES) if spec.key == "recipe" else spec.allowed
        lines.append(f"{head:<44} {allowed}")
        lines += textwrap.wrap(
            spec.help, width=96, initial_indent=" " * 6, subsequent_indent=" " * 6
        )
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``sparseavg: error: ...`` and exit code 2, and no
    abbreviated flags (``--seed`` was taken as ``--seeds``); subparsers are ``_Parser`` too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"sparseavg: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sparseavg")
    except PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sparseavg",
        description="Sparse networks by iterative magnitude pruning with weight averaging.",
    )
    parser.add_argument("--version", action="version", version=f"sparseavg {_version()}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    run = sub.add_parser(
        "run",
        help="run or resume an experiment",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run an experiment from a TOML config and/or options. Running the same "
        "command again resumes an interrupted run.",
        epilog=f"recipes:\n{_recipes_help()}\n\nconfig fields (--set KEY=VALUE, values in TOML; "
        f"key = default, then what it accepts):\n{_fields_help()}",
    )
    run.add_argument("config", nargs="?", help="a TOML config file (see configs/)")
    run.add_argument("--recipe", help="the method (imp, swamp, sms, ...)")
    run.add_argument("--dataset", help="data.dataset")
    run.add_argument("--model", help="model.name")
    run.add_argument("--seed", type=int, help="the experiment seed")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.epochs=10 (repeatable)",
    )
    run.add_argument("--runs-dir", default="runs", help="where run directories go (default: runs)")
    run.add_argument("--device", help="execution.device: cpu, cuda, cuda:1, mps or auto")
    run.add_argument("--data-dir", help="execution.data_dir (default: $SPARSEAVG_DATA)")
    run.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config and its run directory, run nothing",
    )
    _add_output_flags(run)

    demo = sub.add_parser(
        "demo",
        help="IMP, SWAMP, SMS and a 2-ensemble on MNIST-1D (offline)",
        description="Run IMP, SWAMP, SMS and a 2-model IMP ensemble on MNIST-1D (generated "
        "offline, no download) for a few cycles on the CPU, then print their accuracy-vs-"
        "sparsity table and write it with a plot under --out (about 1.5 min on 2 cores). "
        "A second call resumes or reuses the finished runs.",
    )
    demo.add_argument(
        "--out", default="runs/demo", help="run directories and report (default: runs/demo)"
    )
    demo.add_argument(
        "--recipes",
        default="imp,swamp,sms,ensemble",
        help="comma-separated subset of the demo's recipes",
    )
    _add_output_flags(demo)

    report = sub.add_parser("report", help="accuracy-by-sparsity table and plot of runs")
    report.add_argument("runs", nargs="+", help="run directories, or directories of them")
    report.add_argument("--out", help="write report.md and accuracy_vs_sparsity.png here")

    inspect = sub.add_parser("inspect", help="describe a run directory or a file")
    inspect.add_argument("target", nargs="?", help="a run directory, .safetensors or .toml file")
    inspect.add_argument("--recipes", action="store_true", help="list the recipes")
    inspect.add_argument("--models", action="store_true", help="list the models")
    inspect.add_argument("--datasets", action="store_true", help="list the data sets")

    export = sub.add_parser("export", help="write a cycle's model as a plain state_dict")
    export.add_argument("run_dir")
    export.add_argument(
        "--cycle",
        type=int,
        required=True,
        help="the cycle whose combined model to write (0: the dense or first model; "
        "`sparseavg inspect RUN_DIR` lists the cycles)",
    )
    export.add_argument(
        "--member", type=int, help="ensemble member (required when the run has several)"
    )
    export.add_argument(
        "--out",
        required=True,
        help="FILE.safetensors or FILE.pt; FILE.mask.safetensors, FILE.sparse.safetensors "
        "(compact: sparseavg.load_sparse reads it) and FILE.json are written beside it",
    )
    export.add_argument(
        "--onnx",
        action="store_true",
        help='also write FILE.onnx, batch size free (needs pip install "sparseavg[onnx]")',
    )
    export.add_argument(
        "--slim",
        action="store_true",
        help="also write the model with its pruned channels removed: FILE.slim.safetensors, "
        "FILE.slim.pt2 (torch.export.load(path).module() runs it) and, with onnx installed, "
        'FILE.slim.onnx (needs pip install "sparseavg[structured]")',
    )

    analyze = sub.add_parser(
        "analyze",
        help="loss barriers, Hessian trace, distances and calibration of a run's cycles",
        description="Analyse a run's complete cycles; results go to RUN_DIR/analysis/ (a cycle "
        "analysed before with the same settings is skipped).",
    )
    analyze.add_argument("run_dir")
    analyze.add_argument("--cycles", default="all", help="comma-separated cycles, or all")
    analyze.add_argument(
        "--what",
        default="barrier,hessian,distance,calibration",
        help="comma-separated analyses: barrier, hessian, distance, calibration",
    )
    analyze.add_argument(
        "--points", type=int, default=11, help="points along each line (2 to 1001; default: 11)"
    )
    analyze.add_argument(
        "--probes", type=int, default=16, help="Hutchinson probes (2 to 10000; default: 16)"
    )
    analyze.add_argument(
        "--hessian-batches",
        type=int,
        default=4,
        help="training batches of the Hessian's loss (1 to 10000; default: 4)",
    )
    analyze.add_argument(
        "--ingredients-hessian", action="store_true", help="also the trace of every ingredient"
    )
    analyze.add_argument("--device", help="cpu, cuda, ... (default: the run's execution.device)")
    _add_output_flags(analyze)

    study = sub.add_parser(
        "study",
        help="the reproduction study: every method over 5 seeds, analyses, docs/RESULTS*.md",
        description="Train (or resume) every group of the study's settings over its seeds, "
        "analyse the runs its experiments need, and write RESULTS.md and its plots. A second "
        "call reuses finished runs and analyses.",
    )
    study.add_argument("--runs-dir", default="runs/study", help="default: runs/study")
    study.add_argument("--docs", default="docs", help="where RESULTS.md goes (default: docs)")
    study.add_argument(
        "--settings",
        help="comma-separated subset of the settings (default: all; each setting's document "
        "is rewritten, the others are left as they are)",
    )
    study.add_argument(
        "--seeds", default="0,1,2,3,4", help="comma-separated seeds (default: 0,1,2,3,4)"
    )
    study.add_argument(
        "--workers",
        type=int,
        help=f"runs at once, one torch thread each (default: CPU cores; at most {MAX_WORKERS})",
    )
    study.add_argument("--data-dir", help="execution.data_dir (default: $SPARSEAVG_DATA)")
    slurm = study.add_argument_group(
        "SLURM (--launcher slurm: each unfinished run is a task of a job array, submitted with "
        'submitit; needs pip install "sparseavg[slurm]")'
    )
    slurm.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default="local",
        help="local processes (default) or SLURM jobs",
    )
    slurm.add_argument("--slurm-partition", help="the partition (default: the cluster's)")
    slurm.add_argument(
        "--slurm-time", type=int, default=240, help="minutes a job may run (default: 240)"
    )
    slurm.add_argument("--slurm-gpus", type=int, default=0, help="GPUs per job (default: 0)")
    slurm.add_argument("--slurm-cpus", type=int, default=1, help="CPU cores per job (default: 1)")
    slurm.add_argument(
        "--slurm-parallelism",
        type=int,
        default=64,
        help="array tasks running at once (default: 64)",
    )
    slurm.add_argument(
        "--slurm-folder", help="the jobs' scripts and logs (default: RUNS_DIR/slurm)"
    )
    _add_output_flags(study)
    return parser


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--plain", action="store_true", help="plain log lines instead of bars")


@contextlib.contextmanager
def _reporter(args: argparse.Namespace, progress: str = "auto") -> Iterator[Any]:
    from ..experiment import NullReporter, PlainReporter

    if args.quiet or progress == "none":
        yield NullReporter()
        return
    rich = progress == "rich" or (progress == "auto" and not args.plain and sys.stderr.isatty())
    if not rich:
        yield PlainReporter()
        return
    from .rich_progress import RichReporter

    with RichReporter() as reporter:
        yield reporter


def _config_values(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = read_toml(args.config) if args.config else {}
    flags: dict[str, Any] = {}
    if args.recipe:
        flags["recipe"] = args.recipe
    if args.seed is not None:
        flags["seed"] = args.seed
    if args.dataset:
        flags["data"] = {"dataset": args.dataset}
    if args.model:
        flags["model"] = {"name": args.model}
    if args.device:
        flags = merge(flags, {"execution": {"device": args.device}})
    if args.data_dir:
        flags = merge(flags, {"execution": {"data_dir": args.data_dir}})
    values = merge(values, flags)
    for item in args.set:
        values = merge(values, parse_override(item))
    return values


def _folder(flag: str, value: str) -> Path:
    """``value`` as a folder to write into: refused when it exists and is not a folder."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path}: is a file, not a folder")
    return path


def cmd_run(args: argparse.Namespace) -> int:
    from ..config import to_toml
    from ..experiment import run
    from ..experiment.report import find_runs, markdown_table
    from ..recipes import resolve_config

    config = resolve_config(_config_values(args))
    _folder("--runs-dir", args.runs_dir)
    if args.print_config:
        print(f"# run directory: {Path(args.runs_dir) / config.run_name()}")
        print(to_toml(config.to_dict()), end="")
        return EXIT_OK
    if config.execution.mode == "distributed":
        return _run_distributed(args, config)
    with _reporter(args, config.execution.progress) as reporter:
        path = run(config, args.runs_dir, reporter)
    print(markdown_table(find_runs([path])))
    print(f"\nrun directory: {path}")
    return EXIT_OK


def _run_distributed(args: argparse.Namespace, config: Any) -> int:
    """One process of a torchrun job (every rank runs the same command); rank 0 shows the
    progress and the table."""
    from ..experiment.launch import run_distributed
    from ..experiment.report import find_runs, markdown_table

    leader = os.environ.get("RANK", "0") == "0"
    with _reporter(args, config.execution.progress if leader else "none") as reporter:
        path = run_distributed(config, args.runs_dir, reporter)
    if path is not None:
        print(markdown_table(find_runs([path])))
        print(f"\nrun directory: {path}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from ..experiment.demo import run_demo

    out = _folder("--out", args.out)
    with _reporter(args) as reporter:
        text = run_demo(out, [r.strip() for r in args.recipes.split(",")], reporter)
    print(text)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from ..experiment.report import analysis_table, find_runs, markdown_table, write_report

    out = _folder("--out", args.out) if args.out else None
    runs = find_runs(args.runs)
    analyses = analysis_table(runs)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)  # a bad --out fails before the table is shown
    print(markdown_table(runs))
    if analyses is not None:
        print(analyses)
    if out is not None:
        md, png = write_report(runs, out)
        print(f"\nwrote {md} and {png}")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    if args.recipes:
        print(_recipes_help())
    elif args.models:
        from ..models import available_models

        print("\n".join(available_models()))
    elif args.datasets:
        from ..data import available_datasets

        print("\n".join(available_datasets()))
    elif args.target:
        from ..experiment.inspect import describe_file, describe_run

        target = Path(args.target)
        print(describe_run(target) if target.is_dir() else describe_file(target))
    else:
        raise UsageError("inspect needs a run directory or file, or --recipes/--models/--datasets")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from ..experiment.export import export_cycle, size_line, slim_line

    paths = export_cycle(
        args.run_dir, args.cycle, args.out, member=args.member, onnx=args.onnx, slim=args.slim
    )
    for kind, p in paths.items():
        print(f"{kind:<8} {p}")
    print(size_line(paths["sparse"], paths["state"]))
    if args.slim:
        print(slim_line(paths["summary"]))
    return EXIT_OK


def _cycles(text: str) -> list[int] | None:
    """``--cycles``: ``all`` (``None``) or comma-separated non-negative integers."""
    if text.strip() == "all":
        return None
    try:
        cycles = [int(part) for part in text.split(",")]
    except ValueError:
        cycles = [-1]
    if any(c < 0 for c in cycles):
        raise UsageError(f"--cycles {text!r}: give comma-separated cycle numbers (1,3) or all")
    return cycles


def cmd_analyze(args: argparse.Namespace) -> int:
    from ..experiment.analyze import AnalysisSettings, analyze_run, markdown_summary

    cycles = _cycles(args.cycles)
    settings = AnalysisSettings(
        points=args.points,
        probes=args.probes,
        hessian_batches=args.hessian_batches,
        ingredients_hessian=args.ingredients_hessian,
    )
    with _reporter(args) as reporter:
        summary = analyze_run(
            args.run_dir,
            cycles=cycles,
            what=args.what.split(","),
            settings=settings,
            reporter=reporter,
            device=args.device,
        )
    print(markdown_summary([summary]))
    print(f"analysis: {Path(args.run_dir) / 'analysis'}")
    return EXIT_OK


def _int_list(flag: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected comma-separated integers") from None
    if not values or any(v < 0 for v in values) or len(set(values)) != len(values):
        raise UsageError(f"{flag} {text!r}: expected distinct integers >= 0")
    return values


def _slurm_launcher(args: argparse.Namespace) -> Any:
    """The study's SLURM launcher from ``--launcher slurm`` and the ``--slurm-*`` flags (None
    for local processes); refused in one line without submitit or with a bad number."""
    if args.launcher != "slurm":
        given = [f for f in ("slurm_partition", "slurm_folder") if getattr(args, f)]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise UsageError(f"{flag} needs --launcher slurm")
        return None
    from ..experiment.slurm import SLURM_INSTALL, SlurmLauncher, submitit_problem

    problem = submitit_problem()
    if problem is not None:
        raise UsageError(f"--launcher slurm needs submitit ({problem}): {SLURM_INSTALL}")
    try:
        return SlurmLauncher(
            folder=args.slurm_folder,
            partition=args.slurm_partition,
            time=args.slurm_time,
            gpus=args.slurm_gpus,
            cpus=args.slurm_cpus,
            parallelism=args.slurm_parallelism,
        )
    except ValueError as err:
        raise UsageError(f"--slurm-{str(err).split()[0]}: {err}") from None


def cmd_study(args: argparse.Namespace) -> int:
    from ..experiment.batch import available_cores
    from ..study import SETTINGS
    from ..study.run import run_study

    names = (
        list(SETTINGS)
        if args.settings is None
        else [n.strip() for n in args.settings.split(",") if n.strip()]
    )
    unknown = [n for n in names if n not in SETTINGS]
    if unknown or not names:
        raise UsageError(
            f"--settings {args.settings!r}: choose from {', '.join(SETTINGS)} (comma-separated)"
        )
    seeds = _int_list("--seeds", args.seeds)
    if len(seeds) < 2:
        raise UsageError("--seeds: the paired tests need at least two seeds")
    workers = args.workers if args.workers is not None else available_cores()
    if not 1 <= workers <= max(MAX_WORKERS, available_cores()):
        raise UsageError(f"--workers {workers}: must be >= 1 and <= {MAX_WORKERS}")
    runs_dir = _folder("--runs-dir", args.runs_dir)
    docs = _folder("--docs", args.docs)
    launcher = _slurm_launcher(args)
    with _reporter(args) as reporter:
        paths = run_study(
            runs_dir,
            docs,
            settings=[SETTINGS[n] for n in names],
            seeds=seeds,
            workers=workers,
            data_dir=args.data_dir or "",
            reporter=reporter,
            launcher=launcher,
            command=" ".join(["sparseavg study", *sys.argv[2:]])
            if sys.argv[1:2] == ["study"]
            else "sparseavg study",
        )
    for path in paths or ():
        print(f"wrote {path}")
    return EXIT_OK


COMMANDS = {
    "run": cmd_run,
    "demo": cmd_demo,
    "report": cmd_report,
    "inspect": cmd_inspect,
    "export": cmd_export,
    "analyze": cmd_analyze,
    "study": cmd_study,
}


_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _os_error(err: OSError) -> str:
    """``<path>: <what the system said>`` (both paths of a rename)."""
    if err.filename is None:
        return str(err)
    where = os.fsdecode(err.filename)
    if err.filename2 is not None:
        where += f" -> {os.fsdecode(err.filename2)}"
    return f"{where}: {err.strerror or err}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sparseavg`` command; returns the exit code."""

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    with warnings.catch_warnings():
        warnings.filterwarnings("default", category=UserWarning, module="sparseavg")
        warnings.showwarning = _one_line_warning
        return _dispatch(args)


def _one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """The CLI prints a warning as one line, ``sparseavg: warning: ...``, on stderr."""
    print(f"sparseavg: warning: {message}", file=file or sys.stderr)


def _dispatch(args: argparse.Namespace) -> int:
    from ..data import DataUnavailableError
    from ..experiment import InsufficientDiskError, RunError, RunLockedError
    from ..experiment.analyze import AnalysisError
    from ..experiment.export import ExportError
    from ..experiment.runinfo import RunDirError
    from ..experiment.slurm import LaunchError
    from ..parallel import DistributedError
    from ..pruning import MaskError
    from ..utils.files import CorruptFileError
    from ..utils.malloc import tune_glibc_malloc

    tune_glibc_malloc()  # CPU steps stop mapping and unmapping their buffers (utils/malloc.py)
    try:
        return COMMANDS[args.command](args)
    except (
        ConfigError,
        DataUnavailableError,
        MaskError,
        CorruptFileError,
        RunLockedError,
        RunDirError,
        ExportError,
        AnalysisError,
        UsageError,
    ) as err:
        print(f"sparseavg: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (RunError, InsufficientDiskError, DistributedError, LaunchError) as err:
        print(f"sparseavg: stopped: {err}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # stdout closed early (`| head`): stop quietly, as Unix tools do
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as err:  # a path too long, a file where a folder is expected, permissions
        if err.errno in _DISK_FULL:
            print(
                f"sparseavg: stopped: {_os_error(err)}; free some space and run the same "
                "command again to resume",
                file=sys.stderr,
            )
            return EXIT_FAILED
        print(f"sparseavg: error: {_os_error(err)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("sparseavg: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
