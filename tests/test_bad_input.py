"""Bad input to the ``sparseavg`` command line is refused cleanly.

Every case runs ``main([...])`` in-process and checks the contract of ``sparseavg.cli.main``:
exit code 2, exactly one ``sparseavg: error: ...`` line on stderr that names the problem, no
traceback, and nothing written (no run directory, no other new file). None of the cases
trains: they all fail in validation or in ``prepare()``.

Argument templates use ``@TMP@`` for the test's ``tmp_path`` and ``@RUN@`` for the one run
directory a case's setup made under ``@TMP@/runs``; a case's ``setup`` writes its input files
there before ``main`` runs, and "nothing written" then means no file added, removed or changed.
A case's ``missing`` packages cannot be imported while it runs (an optional extra not
installed).
A case must be refused within :data:`DEADLINE` seconds (a bad input that hangs fails). Cases
that document a known source bug are marked ``xfail(strict=True)`` (``bug=...``) so that the
fix turns them into failures to un-mark; :data:`ENGINE_CASES` are those the engine fixes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fake_runs import FAKE, make_run
from sparseavg.cli.main import main
from sparseavg.config import to_toml
from sparseavg.models import build_model
from sparseavg.pruning import Mask
from sparseavg.recipes import resolve_config

TMP = "@TMP@"
RUN = "@RUN@"
DEADLINE = 30  # seconds; the slowest case (the first to load MNIST-1D) takes about 4
MNIST1D_SHAPE = (1, 40)  # the default data set's input shape
CLASSES = 10
# appended to cases that get past validation by mistake, so that they stay fast
TINY = (
    "--set", "train.epochs=1",
    "--set", "pruning.rewind_epochs=0",
    "--set", "pruning.cycles=0",
    "--set", "train.batch_size=4096",
    "--quiet",
)  # fmt: skip

Setup = Callable[[Path], None]


# -- input files ---------------------------------------------------------------------------------


def text(name: str, content: str) -> Setup:
    def write(tmp: Path) -> None:
        (tmp / name).write_text(content, encoding="utf-8")

    return write


def raw(name: str, content: bytes) -> Setup:
    def write(tmp: Path) -> None:
        (tmp / name).write_bytes(content)

    return write


def mkdir(name: str) -> Setup:
    def make(tmp: Path) -> None:
        (tmp / name).mkdir()

    return make


def _model(name: str = "conv1d", **options: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, CLASSES, MNIST1D_SHAPE, **options)


def _prunable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.dim() > 1}


def state_pt(name: str, model: str = "mlp", **options: object) -> Setup:
    """A ``torch.save``d state_dict of another model than the default conv1d."""

    def write(tmp: Path) -> None:
        torch.save(_model(model, **options).state_dict(), tmp / name)

    return write


def state_safetensors(name: str, model: str = "mlp") -> Setup:
    def write(tmp: Path) -> None:
        state = {k: v.contiguous() for k, v in _model(model).state_dict().items()}
        save_file(state, str(tmp / name))

    return write


def pickled(name: str, obj: object) -> Setup:
    def write(tmp: Path) -> None:
        torch.save(obj, tmp / name)

    return write


class MarkerPayload:
    """Unpickling this (without ``weights_only``) creates the file ``MARKER`` in ``tmp``."""

    def __init__(self, tmp: Path) -> None:
        self.marker = str(tmp / "MARKER")

    def __reduce__(self):  # type: ignore[override]
        return (open, (self.marker, "w"))


def payload_pt(name: str) -> Setup:
    def write(tmp: Path) -> None:
        torch.save({"weight": MarkerPayload(tmp)}, tmp / name)

    return write


def float_mask(name: str) -> Setup:
    """Right names and shapes, but float tensors: not a mask."""

    def write(tmp: Path) -> None:
        save_file({n: torch.rand_like(p) for n, p in _prunable(_model()).items()}, str(tmp / name))

    return write


def mask_of(name: str, model: str = "conv1d", **options: object) -> Setup:
    """A valid bool mask, of another model (other names) or another width (other shapes)."""

    def write(tmp: Path) -> None:
        Mask.ones_like(_prunable(_model(model, **options))).save(tmp / name)

    return write


def subset_mask(name: str) -> Setup:
    """A mask of the right model that covers only its first prunable layer."""

    def write(tmp: Path) -> None:
        first = dict(list(_prunable(_model()).items())[:1])
        Mask.ones_like(first).save(tmp / name)

    return write


def zero_mask(name: str) -> Setup:
    """A mask of the default conv1d that prunes every weight."""

    def write(tmp: Path) -> None:
        Mask(
            {n: torch.zeros_like(p, dtype=torch.bool) for n, p in _prunable(_model()).items()}
        ).save(tmp / name)

    return write


def short_group_mask(name: str) -> Setup:
    """A mask of the default conv1d's layers after the first, with one group of 4 input
    channels of ``features.3.weight`` down to 1 alive weight."""

    def write(tmp: Path) -> None:
        params = _prunable(_model())
        del params["features.0.weight"]
        tensors = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
        tensors["features.3.weight"][0, 1:4, 0] = False
        Mask(tensors).save(tmp / name)

    return write


def chain(*setups: Setup) -> Setup:
    def run_all(tmp: Path) -> None:
        for setup in setups:
            setup(tmp)

    return run_all


RunEdit = Callable[[Path], None]


def a_run(*edits: RunEdit, values: dict | None = None, **options: object) -> Setup:
    """A run directory under ``@TMP@/runs`` (see ``fake_runs.make_run``), then ``edits`` to it."""

    def make(tmp: Path) -> None:
        run = make_run(tmp / "runs", values, **options)  # type: ignore[arg-type]
        for edit in edits:
            edit(run)

    return make


def put(rel: str, content: str | bytes) -> RunEdit:
    def write(run: Path) -> None:
        data = content.encode() if isinstance(content, str) else content
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_bytes(data)

    return write


def cut_config(run: Path) -> None:
    """config.toml cut off inside a string: a half-written file."""
    text = (run / "config.toml").read_text()
    (run / "config.toml").write_text(text[: text.index('"mnist1d"') + 4])


def edit_config(run: Path) -> None:
    """A hand edit: the config still reads, but is no longer the one the run computed."""
    path = run / "config.toml"
    text = path.read_text()
    assert "epochs = 2\n" in text
    path.write_text(text.replace("epochs = 2\n", "epochs = 3\n"))


def add_unknown_key(run: Path) -> None:
    """A config written by a newer sparseavg, with a field this one does not know."""
    path = run / "config.toml"
    path.write_text(path.read_text().replace("[train]\n", "[train]\nnew_knob = 1\n"))


def half_written_results(run: Path) -> None:
    path = run / "results.jsonl"
    first, second = path.read_text().splitlines()[:2]
    path.write_text(f"{first}\n{second[: len(second) // 2]}")


def flip_a_byte(rel: str) -> RunEdit:
    def damage(run: Path) -> None:
        data = bytearray((run / rel).read_bytes())
        data[-1] ^= 0xFF
        (run / rel).write_bytes(bytes(data))

    return damage


def remove(rel: str) -> RunEdit:
    def rm(run: Path) -> None:
        (run / rel).unlink()

    return rm


def config_file(name: str, values: dict) -> Setup:
    return text(name, to_toml(values))


def other_config_in_run_dir(tmp: Path) -> None:
    """The run directory of FAKE holds the config of another run (seed 1)."""
    run = tmp / "runs" / resolve_config(FAKE).run_name()
    run.mkdir(parents=True)
    (run / "config.toml").write_text(to_toml(resolve_config({**FAKE, "seed": 1}).to_dict()))


ENSEMBLE = {**FAKE, "recipe": "ensemble"}
TENSORBOARD = {**FAKE, "execution": {**FAKE["execution"], "tensorboard": True}}
ANOTHER_RUN = "0" * 64  # the run id in the manifest of a cycle folder copied from elsewhere
LONG = "x" * 300  # longer than a file name may be (255 bytes on Linux and macOS)


# -- the table -----------------------------------------------------------------------------------


def case(
    id: str,
    argv: tuple[str, ...] | list[str],
    *fragments: str,
    setup: Setup | None = None,
    absent: tuple[str, ...] = (),
    bug: str | None = None,
    marks: tuple[pytest.MarkDecorator, ...] = (),
    missing: tuple[str, ...] = (),
):
    """One bad input: ``argv`` for ``main`` (``run`` cases without their own ``--runs-dir``
    get one appended), the fragments the error line must contain and those it must not, the
    packages made unimportable for it. ``bug`` marks a known source bug (strict xfail)."""
    all_marks = list(marks)
    if bug:
        all_marks.append(pytest.mark.xfail(strict=True, reason=bug))
    return pytest.param(list(argv), fragments, setup, absent, missing, id=id, marks=all_marks)


def run(*args: str) -> list[str]:
    return ["run", *args]


def s(item: str) -> tuple[str, str]:
    return ("--set", item)


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees a CUDA device")
NO_MPS = pytest.mark.skipif(torch.backends.mps.is_available(), reason="torch sees an MPS device")
CASES = [
    # ---- config files
    case(
        "toml-syntax-error",
        run(f"{TMP}/bad.toml"),
        "bad.toml", "not valid TOML", "line 1",
        setup=text("bad.toml", "recipe = \n"),
    ),
    case(
        "toml-unclosed-table",
        run(f"{TMP}/bad.toml"),
        "bad.toml", "not valid TOML",
        setup=text("bad.toml", "[train\nepochs = 1\n"),
    ),
    case(
        "toml-duplicate-key",
        run(f"{TMP}/dup.toml"),
        "dup.toml", "not valid TOML",
        setup=text("dup.toml", "[train]\nepochs = 1\nepochs = 2\n"),
    ),
    case(
        "toml-duplicate-table",
        run(f"{TMP}/dup.toml"),
        "dup.toml", "not valid TOML",
        setup=text("dup.toml", "[train]\nepochs = 1\n[train]\nlr = 0.1\n"),
    ),
    case("toml-missing-file", run(f"{TMP}/nope.toml"), "nope.toml", "no such config file"),
    case(
        "toml-not-utf8",
        run(f"{TMP}/latin1.toml"),
        "latin1.toml", "not valid TOML", "utf-8",
        setup=raw("latin1.toml", 'recipe = "caf\xe9"\n'.encode("latin-1")),
    ),
    case(
        "toml-path-is-a-directory",
        run(f"{TMP}/conf.toml"),
        "conf.toml",
        setup=mkdir("conf.toml"),
    ),
    # ---- unknown keys
    case(
        "unknown-top-level-key-in-file",
        run(f"{TMP}/c.toml", "--quiet"),
        "unknown key epochs", "recipe, seed, data, model, train",
        setup=text("c.toml", "epochs = 3\n"),
    ),
    case(
        "unknown-section-in-file",
        run(f"{TMP}/c.toml", "--quiet"),
        "unknown key bogus", "the top level accepts",
        setup=text("c.toml", "[bogus]\nx = 1\n"),
    ),
    case(
        "unknown-section-key-in-file",
        run(f"{TMP}/c.toml", "--quiet"),
        "unknown key train.epoch", "epochs, batch_size",
        setup=text("c.toml", "[train]\nepoch = 3\n"),
    ),
    case("unknown-top-level-key", run(*s("bogus=1")), "unknown key bogus", "recipe, seed"),
    case("unknown-section-key", run(*s("train.epoch=3")), "unknown key train.epoch", "epochs"),
    case("unknown-section", run(*s("trian.epochs=3")), "unknown key trian", "train, pruning"),
    case(
        "unknown-pruning-key",
        run(*s("pruning.sparsity=0.5")),
        "unknown key pruning.sparsity", "target_sparsity",
    ),
    # ---- wrong types
    case("str-for-int", run(*s("train.epochs='ten'")), "train.epochs", "an integer", "'ten'"),
    case("float-for-int", run(*s("train.epochs=1.5")), "train.epochs", "an integer", "1.5"),
    case("int-for-bool", run(*s("train.nesterov=1")), "train.nesterov", "true or false", "1"),
    case("str-for-bool", run(*s("train.swa=yes")), "train.swa", "true or false", "'yes'"),
    case("table-for-number", run(*s("train.lr={a=1}")), "train.lr", "a number", "{'a': 1}"),
    case("list-for-int", run(*s("train.batch_size=[1,2]")), "train.batch_size", "[1, 2]"),
    case("table-for-str", run(*s("model.name={x=1}")), "model.name", "a string"),
    case(
        "str-list-for-float-list",
        run(*s("train.milestones=['a','b']")),
        "train.milestones[0]", "a number", "'a'",
    ),
    case("scalar-for-list", run(*s("train.milestones=0.5")), "train.milestones", "a list"),
    case("scalar-for-table", run(*s("model.options=3")), "model.options", "a table"),
    case("scalar-for-section", run(*s("train=3")), "train", "expected a table"),
    case("int-for-recipe", run(*s("recipe=3")), "recipe", "a string", "3"),
    case(
        "int-in-str-list",
        run(*s("pruning.exclude=[1]")),
        "pruning.exclude[0]", "a string", "1",
    ),
    # ---- out of range
    case("fraction-0", run(*s("pruning.fraction=0")), "pruning.fraction", "0.0", "(0, 1)"),
    case("fraction-1", run(*s("pruning.fraction=1")), "pruning.fraction", "1.0", "(0, 1)"),
    case("fraction-1.5", run(*s("pruning.fraction=1.5")), "pruning.fraction", "1.5", "(0, 1)"),
    case("fraction-neg", run(*s("pruning.fraction=-0.1")), "pruning.fraction", "-0.1", "(0, 1)"),
    case(
        "ingredients-count-0",
        run("--recipe", "sms", *s("ingredients.count=0")),
        "ingredients.count", "0", "[1, inf)",
    ),
    case("swa-start-1", run(*s("train.swa_start=1.0")), "train.swa_start", "1.0", "[0, 1)"),
    case("swa-start-neg", run(*s("train.swa_start=-0.1")), "train.swa_start", "-0.1", "[0, 1)"),
    case("epochs-neg", run(*s("train.epochs=-1")), "train.epochs", "-1", "[0, inf)"),
    case("lr-0", run(*s("train.lr=0")), "train.lr", "0.0", "(0, inf)"),
    case(
        "weight-decay-neg",
        run(*s("train.weight_decay=-1e-4")),
        "train.weight_decay", "-0.0001", "[0, inf)",
    ),
    case("momentum-1", run(*s("train.momentum=1")), "train.momentum", "1.0", "[0, 1)"),
    case("val-fraction-1", run(*s("data.val_fraction=1")), "data.val_fraction", "1.0", "[0, 1)"),
    case("batch-size-0", run(*s("train.batch_size=0")), "train.batch_size", "0", "[1, inf)"),
    case("seed-neg-flag", run("--seed", "-1"), "seed", "-1", "[0, inf)"),
    case(
        "target-sparsity-1",
        run(*s("pruning.target_sparsity=1")),
        "pruning.target_sparsity", "1.0", "[0, 1)",
    ),
    case(
        "fraction-nan",
        run(*s("pruning.fraction=nan"), *TINY),
        "pruning.fraction", "nan",
    ),
    case(
        "val-fraction-nan",
        run(*s("data.val_fraction=nan"), *TINY),
        "data.val_fraction", "nan",
    ),
    case(
        "lr-nan",
        run(*s("train.lr=nan"), *TINY),
        "train.lr", "nan",
    ),
    case(
        "lr-inf",
        run(*s("train.lr=inf"), *TINY),
        "train.lr", "inf",
    ),
    case(
        "rewind-epochs-inf",
        run(*TINY, *s("pruning.rewind_epochs=inf")),
        "pruning.rewind_epochs", "inf",
    ),
    # ---- bad choices
    case("optimizer", run(*s("train.optimizer=adamx")), "train.optimizer", "'adamx'", "sgd, adam"),
    case("schedule", run(*s("train.schedule=linear")), "train.schedule", "'linear'", "cosine"),
    case("precision", run(*s("train.precision=fp8")), "train.precision", "fp8", "auto, fp32"),
    case(
        "pruning-scope",
        run(*s("pruning.scope=local")),
        "pruning.scope", "'local'", "global, layerwise",
    ),
    case(
        "pruning-method",
        run(*s("pruning.method=snip")),
        "pruning.method", "'snip'", "magnitude, random",
    ),
    case(
        "retrain-schedule",
        run(*s("pruning.retrain_schedule=linear")),
        "pruning.retrain_schedule", "'linear'", "llr",
    ),
    case(
        "ingredients-combine",
        run("--recipe", "sms", *s("ingredients.combine=mean")),
        "ingredients.combine", "'mean'", "single, uniform, greedy",
    ),
    case(
        "ingredients-vary",
        run(*s("ingredients.vary=momentum")),
        "ingredients.vary", "'momentum'", "seed, weight_decay, lr, length",
    ),
    case(
        "ingredients-accept",
        run(*s("ingredients.accept=always")),
        "ingredients.accept", "'always'", "ge",
    ),
    case(
        "on-divergence",
        run(*s("execution.on_divergence=ignore")),
        "execution.on_divergence", "'ignore'", "stop, drop",
    ),
    case(
        "progress",
        run(*s("execution.progress=fancy")),
        "execution.progress", "'fancy'", "auto, rich, plain, none",
    ),
    case(
        "mode",
        run(*s("execution.mode=parallel")),
        "execution.mode", "'parallel'", "sequential, stacked, distributed",
    ),
    case(
        "timeout-zero",
        run(*s("execution.timeout=0")),
        "execution.timeout", "0", "(0, inf)",
    ),
    case(
        "distributed-without-torchrun",
        run(*s("execution.mode=distributed")),
        "execution.mode = 'distributed' runs under torchrun", "--nproc-per-node",
    ),
    case(
        "tensorboard-not-installed",
        run(*s("execution.tensorboard=true"), *TINY),
        "execution.tensorboard", 'pip install "sparseavg[tensorboard]"',
        missing=("tensorboard", "torch.utils.tensorboard"),  # nor imported by an earlier test
    ),
    case(
        "unknown-recipe",
        run("--recipe", "lottery"),
        "recipe", "'lottery'", "imp, imp-swa, swamp", "gmp",
    ),
    case("unknown-recipe-in-set", run(*s("recipe=imp2")), "'imp2'", "imp, imp-swa"),
    # ---- contradicting a recipe's fixed settings
    case(
        "imp-fixes-count",
        run("--recipe", "imp", *s("ingredients.count=3")),
        "recipe imp", "ingredients.count = 3", "fixes it to 1",
    ),
    case(
        "swamp-fixes-swa",
        run("--recipe", "swamp", *s("train.swa=false")),
        "recipe swamp", "train.swa = False", "fixes it to True",
    ),
    case(
        "imp-fixes-combine",
        run(*s("ingredients.combine=greedy"), *s("data.val_fraction=0")),
        "recipe imp", "ingredients.combine", "'single'",
    ),
    case(
        "gmp-fixes-cycles",
        run("--recipe", "gmp", *s("pruning.cycles=3")),
        "recipe gmp", "pruning.cycles = 3", "fixes it to 0",
    ),
    case(
        "random-fixes-method",
        run("--recipe", "random", *s("pruning.method=magnitude")),
        "recipe random", "pruning.method", "'random'",
    ),
    # ---- cross-field checks
    case(
        "greedy-without-val",
        run("--recipe", "sms", *s("ingredients.combine=greedy"), *s("data.val_fraction=0")),
        "greedy", "data.val_fraction > 0",
    ),
    case(
        "values-with-vary-seed",
        run("--recipe", "sms", *s("ingredients.values=[1.0,2.0,3.0]")),
        "ingredients.values", "vary = 'seed'",
    ),
    case(
        "values-length",
        run("--recipe", "sms", *s("ingredients.vary=lr"), *s("ingredients.values=[1.0,2.0]")),
        "ingredients.values has 2 entries", "count is 3",
    ),
    case(
        "values-not-positive",
        run("--recipe", "sms", *s("ingredients.vary=lr"), *s("ingredients.values=[1.0,0,2]")),
        "ingredients.values[1]", "0.0", "(0, inf)",
    ),
    case(
        "gmp-end-before-start",
        run("--recipe", "gmp", *s("pruning.gmp_end=0.05")),
        "pruning.gmp_end", "pruning.gmp_start",
    ),
    case(
        "one-shot-without-target",
        run("--recipe", "one-shot", *s("pruning.target_sparsity=0")),
        "one-shot", "pruning.target_sparsity",
    ),
    case("zero-epochs-no-checkpoint", run(*s("train.epochs=0")), "train.epochs = 0", "pretrained"),
    # ---- --set syntax
    case("set-without-equals", run(*s("train.epochs")), "--set 'train.epochs'", "KEY=VALUE"),
    case("set-empty-key", run(*s("=3")), "--set '=3'", "bad key"),
    case("set-empty-key-part", run(*s("train..lr=0.1")), "bad key", "'train..lr'"),
    case(
        "argparse-bad-int",
        run("--seed", "abc"),
        "--seed", "'abc'",
    ),
    # ---- model and data set
    case(
        "unknown-model",
        run("--model", "resnet21"),
        "'resnet21'", "known models", "conv1d", "resnet20", "wrn<depth>_<width>",
    ),
    case(
        "unknown-dataset",
        run("--dataset", "mnist2d", *TINY),
        "'mnist2d'", "mnist1d", "cifar10",
    ),
    case("model-vs-input-shape", run("--model", "resnet20"), "resnet20", "input_shape", "(1, 40)"),
    case(
        "unknown-model-option",
        run(*s("model.options={bogus=1}")),
        "bogus", "conv1d", "width, batch_norm",
    ),
    case("bad-model-option-value", run(*s("model.options={width=-1}")), "width", "-1"),
    case(
        "exclusions-leave-nothing",
        run(*s("pruning.exclude=['*']")),
        "pruning", "no layer to prune",
    ),
    case(
        "mnist-files-missing",
        run(
            "--dataset", "mnist", "--data-dir", f"{TMP}/empty",
            *s("execution.download=false"), *TINY,
        ),
        "mnist", f"{TMP}/empty/mnist", "train-images-idx3-ubyte", "download=False",
        setup=mkdir("empty"),
    ),
    # ---- pretrained checkpoint
    case(
        "pretrained-missing",
        run(*s(f"model.pretrained='{TMP}/nope.pt'")),
        "model.pretrained", "nope.pt", "does not exist",
    ),
    case(
        "pretrained-garbage-pt",
        run(*s(f"model.pretrained='{TMP}/garbage.pt'")),
        "model.pretrained", "garbage.pt", "refused by torch.load(weights_only=True)",
        setup=raw("garbage.pt", b"not a pickle at all"),
    ),
    case(
        "pretrained-garbage-safetensors",
        run(*s(f"model.pretrained='{TMP}/garbage.safetensors'")),
        "garbage.safetensors", "not a readable safetensors file",
        setup=raw("garbage.safetensors", b"\xff" * 64),
    ),
    case(
        "pretrained-other-model-pt",
        run(*s(f"model.pretrained='{TMP}/mlp.pt'")),
        "model.pretrained", "mlp.pt", "does not fit the model", "missing", "unexpected",
        "layers.1.weight",
        setup=state_pt("mlp.pt"),
    ),
    case(
        "pretrained-other-model-safetensors",
        run(*s(f"model.pretrained='{TMP}/mlp.safetensors'")),
        "model.pretrained", "mlp.safetensors", "does not fit the model", "missing", "unexpected",
        setup=state_safetensors("mlp.safetensors"),
    ),
    case(
        "pretrained-other-width",
        run(*s(f"model.pretrained='{TMP}/narrow.pt'")),
        "model.pretrained", "narrow.pt", "shapes differ", "(8, 1, 5) vs model (32, 1, 5)",
        setup=state_pt("narrow.pt", "conv1d", width=8),
    ),
    case(
        "pretrained-not-tensors",
        run(*s(f"model.pretrained='{TMP}/plain.pt'")),
        "model.pretrained", "plain.pt", "state_dict of tensors",
        setup=pickled("plain.pt", {"epoch": 3, "note": "hello"}),
    ),
    case(
        "pretrained-list",
        run(*s(f"model.pretrained='{TMP}/list.pt'")),
        "model.pretrained", "list.pt", "state_dict of tensors",
        setup=pickled("list.pt", [torch.zeros(3)]),
    ),
    case(
        "pretrained-pickle-payload",
        run(*s(f"model.pretrained='{TMP}/payload.pt'")),
        "model.pretrained", "payload.pt", "refused by torch.load(weights_only=True)",
        setup=payload_pt("payload.pt"),
    ),
    # ---- initial mask
    case(
        "mask-missing",
        run(*s(f"pruning.initial_mask='{TMP}/nope.safetensors'")),
        "pruning.initial_mask", "nope.safetensors", "does not exist",
    ),
    case(
        "mask-float-tensors",
        run(*s(f"pruning.initial_mask='{TMP}/float.safetensors'")),
        "float.safetensors", "not a mask", "not bool",
        setup=float_mask("float.safetensors"),
    ),
    case(
        "mask-garbage",
        run(*s(f"pruning.initial_mask='{TMP}/junk.safetensors'")),
        "junk.safetensors", "not a readable safetensors file",
        setup=raw("junk.safetensors", b"\x00" * 32),
    ),
    case(
        "mask-other-model-names",
        run(*s(f"pruning.initial_mask='{TMP}/mlp_mask.safetensors'")),
        "pruning.initial_mask", "mlp_mask.safetensors", "'layers.1.weight' is not a parameter",
        setup=mask_of("mlp_mask.safetensors", "mlp"),
    ),
    case(
        "mask-other-shapes",
        run(*s(f"pruning.initial_mask='{TMP}/narrow_mask.safetensors'")),
        "pruning.initial_mask", "narrow_mask.safetensors", "has shape (8, 1, 5)", "(32, 1, 5)",
        setup=mask_of("narrow_mask.safetensors", "conv1d", width=8),
    ),
    case(
        "mask-subset-of-layers",
        run(*s(f"pruning.initial_mask='{TMP}/part.safetensors'")),
        "pruning.initial_mask", "part.safetensors", "missing", "fc.weight",
        setup=subset_mask("part.safetensors"),
    ),
    # ---- device
    case(
        "device-cuda-without-cuda",
        run(*s("execution.device=cuda")),
        "execution.device", "cuda", "no CUDA device",
        marks=(NO_CUDA,),
    ),
    case(
        "device-flag-cuda-without-cuda",
        run("--device", "cuda:1"),
        "execution.device", "no CUDA device",
        marks=(NO_CUDA,),
    ),
    case(
        "device-nonsense",
        run(*s("execution.device=nonsense")),
        "execution.device", "'nonsense'", "cpu, cuda",
    ),
    # ---- export / inspect
    case(
        "export-missing-run-dir",
        ["export", f"{TMP}/no_run", "--cycle", "0", "--out", f"{TMP}/out.safetensors"],
        f"{TMP}/no_run", "not a run directory",
    ),
    case(
        "export-dir-not-a-run",
        ["export", f"{TMP}/emptyrun", "--cycle", "0", "--out", f"{TMP}/out.pt"],
        "emptyrun", "not a run directory",
        setup=mkdir("emptyrun"),
    ),
    case("inspect-missing-file", ["inspect", f"{TMP}/nope.safetensors"], "nope.safetensors"),
    case(
        "inspect-missing-toml",
        ["inspect", f"{TMP}/nope.toml"],
        "nope.toml", "no such config file",
    ),
    case(
        "inspect-garbage-file",
        ["inspect", f"{TMP}/junk.safetensors"],
        "junk.safetensors", "not a readable safetensors file",
        setup=raw("junk.safetensors", b"\x01" * 16),
    ),
    case(
        "inspect-bad-toml",
        ["inspect", f"{TMP}/c.toml"],
        "unknown key train.epoch",
        setup=text("c.toml", "[train]\nepoch = 3\n"),
    ),
    case("inspect-nothing", ["inspect"], "inspect needs a run directory or file"),
    case(
        "rewind-after-training",
        run(*s("pruning.rewind_epochs=40"), *s("train.epochs=30")),
        "pruning.rewind_epochs (40) must be less than train.epochs (30)",
    ),
    # ---- N:M pattern
    case(
        "pattern-malformed",
        run(*s("pruning.pattern=2-4")),
        "pruning.pattern", "'2-4'", "'N:M' with 0 < N < M <= 32",
    ),
    case("pattern-n-equals-m", run(*s("pruning.pattern=4:4")), "pruning.pattern", "'4:4'"),
    case("pattern-m-too-large", run(*s("pruning.pattern=2:64")), "pruning.pattern", "'2:64'"),
    case(
        "pattern-not-a-string",
        run(*s("pruning.pattern=2")),
        "pruning.pattern", "a string", "2",
    ),
    case(
        "pattern-contradicts-target",
        run(*s("pruning.pattern=2:4"), *s("pruning.target_sparsity=0.9")),
        "pruning.target_sparsity = 0.9 contradicts pruning.pattern = '2:4'", "0.5",
    ),
    case(
        "pattern-without-cycles",
        run(*s("pruning.pattern=2:4"), *s("pruning.cycles=0")),
        "pruning.pattern = '2:4' needs pruning.cycles >= 1",
    ),
    case(
        "pattern-with-shuffle",
        run("--recipe", "shuffle", *s("pruning.pattern=2:4")),
        "pruning.method = 'shuffle'", "pruning.pattern = '2:4'", "'random'",
    ),
    case(
        "pattern-with-layer-fractions",
        run(*s("pruning.pattern=2:4"), *s('pruning.layer_fractions={"fc.weight" = 0.1}')),
        "pruning.layer_fractions", "pruning.pattern = '2:4'", "pruning.exclude",
    ),
    case(
        "pattern-with-masks-from",
        run(*s("pruning.pattern=2:4"), *s(f"pruning.masks_from='{TMP}/runs/x'")),
        "pruning.masks_from", "pruning.pattern = '2:4'",
    ),
    # ---- elements of lists and tables
    case(
        "milestone-past-the-end",
        run(*s("train.milestones=[1.5]")),
        "train.milestones[0]", "1.5", "is outside (0, 1)",
    ),
    case(
        "layer-fractions-pattern-matches-nothing",
        run(*s('pruning.layer_fractions={"fc9.*" = 0.1}'), *TINY),
        "pruning.layer_fractions pattern 'fc9.*' matches no prunable weight", "fc.weight",
    ),
    case(
        "layer-fraction-1",
        run(*s('pruning.layer_fractions={"fc.weight" = 1.0}')),
        "pruning.layer_fractions.fc.weight", "1.0", "is outside [0, 1)",
    ),
    # ---- paths: OS errors name the path
    case(
        "runs-dir-is-a-file",
        run("--runs-dir", f"{TMP}/notes.txt"),
        "--runs-dir", f"{TMP}/notes.txt", "is a file, not a folder",
        setup=text("notes.txt", "hello\n"),
    ),
    case(
        "runs-dir-name-too-long",
        run("--runs-dir", f"{TMP}/{LONG}", *TINY),
        f"{TMP}/{LONG}", "File name too long",
    ),
    case(
        "config-path-too-long",
        run(f"{TMP}/{LONG}.toml"),
        f"{LONG}.toml", "File name too long",
    ),
    case(
        "demo-out-is-a-file",
        ["demo", "--out", f"{TMP}/notes.txt", "--quiet"],
        "--out", f"{TMP}/notes.txt", "is a file, not a folder",
        setup=text("notes.txt", "hello\n"),
    ),
    case(
        "demo-unknown-recipe",
        ["demo", "--out", f"{TMP}/demo", "--recipes", "imp,lottery", "--quiet"],
        "demo", "'lottery'", "imp, swamp, sms, ensemble",
    ),
    # ---- study
    case(
        "study-unknown-setting",
        ["study", "--settings", "mnist1d,cifar", "--runs-dir", f"{TMP}/r", "--docs", f"{TMP}/d"],
        "--settings", "'mnist1d,cifar'", "mnist1d, mnist-lenet",
    ),
    case(
        "study-one-seed",
        ["study", "--seeds", "3", "--runs-dir", f"{TMP}/r", "--docs", f"{TMP}/d"],
        "--seeds", "at least two seeds",
    ),
    case(
        "study-seeds-not-integers",
        ["study", "--seeds", "1,two", "--runs-dir", f"{TMP}/r", "--docs", f"{TMP}/d"],
        "--seeds", "'1,two'", "comma-separated integers",
    ),
    case(
        "study-repeated-seed",
        ["study", "--seeds", "1,1", "--runs-dir", f"{TMP}/r", "--docs", f"{TMP}/d"],
        "--seeds", "distinct",
    ),
    case(
        "study-no-workers",
        ["study", "--workers", "0", "--runs-dir", f"{TMP}/r", "--docs", f"{TMP}/d"],
        "--workers 0", "must be >= 1",
    ),
    case(
        "study-docs-is-a-file",
        ["study", "--runs-dir", f"{TMP}/r", "--docs", f"{TMP}/notes.txt"],
        "--docs", f"{TMP}/notes.txt", "is a file, not a folder",
        setup=text("notes.txt", "hello\n"),
    ),
    # ---- size-like flags are bounded (issue 16, item 4: no flag fills the memory)
    case(
        "analyze-points-huge",
        ["analyze", RUN, "--points", "100000000", "--quiet"],
        "points must be an integer from 2 to 1001", "100000000",
        setup=a_run(),
    ),
    case(
        "analyze-probes-huge",
        ["analyze", RUN, "--probes", "1000000000", "--quiet"],
        "probes must be an integer from 2 to 10000", "1000000000",
        setup=a_run(),
    ),
    case(
        "analyze-hessian-batches-huge",
        ["analyze", RUN, "--hessian-batches", "1000000000", "--quiet"],
        "hessian_batches must be an integer from 1 to 10000",
        setup=a_run(),
    ),
    case(
        "export-cycle-huge",
        ["export", RUN, "--cycle", "1" + "0" * 300, "--out", f"{TMP}/m.safetensors"],
        "is not complete", "complete cycles: [0]",
        absent=("File name too long",),
        setup=a_run(),
    ),
    case(
        "study-workers-huge",
        ["study", "--workers", "1000000000", "--runs-dir", f"{TMP}/r", "--docs", f"{TMP}/d"],
        "--workers 1000000000", "<= 1024",
    ),
    case(
        "export-out-is-the-runs-own-mask",
        ["export", RUN, "--cycle", "0", "--out", f"{RUN}/cycle_00/mask.safetensors"],
        f"{RUN}/cycle_00/mask.safetensors", f"is inside the run directory {RUN}",
        setup=a_run(),
    ),
    # ---- a resume refused before any write (issue 16, item 4)
    case(
        "engine-resume-tensorboard-is-a-file",
        run(f"{TMP}/tb.toml", "--quiet"),
        f"{RUN}/tensorboard", "a file where the run writes a folder",
        setup=chain(
            config_file("tb.toml", TENSORBOARD),
            a_run(put("tensorboard", "not a folder\n"), values=TENSORBOARD, complete=2),
        ),
    ),
    case(
        "engine-resume-results-csv-is-a-folder",
        run(f"{TMP}/c.toml", "--quiet"),
        f"{RUN}/results.csv", "a folder (or a broken link) where the run writes a file",
        setup=chain(
            config_file("c.toml", FAKE),
            a_run(remove("results.csv"), put("results.csv/x", "x"), complete=2),
        ),
    ),
    # ---- report
    case(
        "report-out-is-a-file",
        ["report", f"{TMP}/runs", "--out", f"{TMP}/report.md"],
        "--out", f"{TMP}/report.md", "is a file, not a folder",
        setup=chain(a_run(), text("report.md", "# mine\n")),
    ),
    case(
        "report-out-name-too-long",
        ["report", f"{TMP}/runs", "--out", f"{TMP}/{LONG}"],
        f"{TMP}/{LONG}", "File name too long",
        setup=a_run(),
    ),
    case(
        "report-out-under-a-file",
        ["report", f"{TMP}/runs", "--out", f"{TMP}/notes.txt/report"],
        f"{TMP}/notes.txt/report", "Not a directory",
        setup=chain(a_run(), text("notes.txt", "hello\n")),
    ),
    case(
        "report-config-garbage",
        ["report", f"{TMP}/runs"],
        f"{RUN}/config.toml", "not valid TOML", "damaged",
        setup=a_run(put("config.toml", b"\x89PNG\r\n\x1a\n\x00\xff garbage")),
    ),
    case(
        "report-config-half-written",
        ["report", f"{TMP}/runs"],
        f"{RUN}/config.toml", "not valid TOML",
        setup=a_run(cut_config),
    ),
    case(
        "report-config-edited",
        ["report", f"{TMP}/runs"],
        f"{RUN}/config.toml", "edited after the run started",
        setup=a_run(edit_config),
    ),
    case(
        "report-config-from-a-newer-version",
        ["report", f"{TMP}/runs"],
        f"{RUN}/config.toml", "unknown key train.new_knob",
        setup=a_run(add_unknown_key),
    ),
    case(
        "report-results-garbage",
        ["report", f"{TMP}/runs"],
        f"{RUN}/results.jsonl, line 1", "malformed JSON",
        f"sparseavg run {RUN}/config.toml --runs-dir {TMP}/runs", "rewrites it",
        setup=a_run(put("results.jsonl", "this is not json\n")),
    ),
    case(
        "report-results-not-utf8",
        ["report", f"{TMP}/runs"],
        f"{RUN}/results.jsonl", "not UTF-8", "rewrites it",
        setup=a_run(put("results.jsonl", b"\xff\xfe\x00garbage")),
    ),
    case(
        "report-results-half-written-line",
        ["report", f"{TMP}/runs"],
        f"{RUN}/results.jsonl, line 2", "malformed JSON", "rewrites it",
        setup=a_run(half_written_results, complete=2),
    ),
    case(
        "report-results-unknown-role",
        ["report", f"{TMP}/runs"],
        f"{RUN}/results.jsonl, line 1", "'role' must be one of", "'soup'",
        setup=a_run(put("results.jsonl", '{"cycle": 0, "role": "soup"}\n')),
    ),
    case(
        "report-results-headline-not-bool",
        ["report", f"{TMP}/runs"],
        f"{RUN}/results.jsonl, line 1", "'headline' must be true or false",
        setup=a_run(put("results.jsonl", '{"cycle": 0, "role": "combined", "headline": 1}\n')),
    ),
    # ---- inspect
    case(
        "inspect-config-garbage",
        ["inspect", RUN],
        f"{RUN}/config.toml", "not valid TOML",
        setup=a_run(put("config.toml", "[[[\n")),
    ),
    case(
        "inspect-config-edited",
        ["inspect", RUN],
        f"{RUN}/config.toml", "edited after the run started",
        setup=a_run(edit_config),
    ),
    case(
        "inspect-results-half-written-line",
        ["inspect", RUN],
        f"{RUN}/results.jsonl, line 2", "malformed JSON",
        setup=a_run(half_written_results, complete=2),
    ),
    case(
        "inspect-damaged-checkpoint",
        ["inspect", RUN],
        "checkpoint.pt", "refused by torch.load(weights_only=True)",
        setup=a_run(put("cycle_01/ingredient_0/checkpoint.pt", b"PK\x03\x04 half")),
    ),
    case(
        "inspect-name-too-long",
        ["inspect", f"{TMP}/{LONG}.safetensors"],
        f"{LONG}.safetensors",
    ),
    # ---- export
    case(
        "export-out-is-a-directory",
        ["export", RUN, "--cycle", "0", "--out", f"{TMP}/model.safetensors"],
        f"{TMP}/model.safetensors", "is a directory",
        setup=chain(a_run(), mkdir("model.safetensors")),
    ),
    case(
        "export-summary-path-is-a-directory",
        ["export", RUN, "--cycle", "0", "--out", f"{TMP}/model.pt"],
        f"{TMP}/model.json", "is a directory",
        setup=chain(a_run(), mkdir("model.json")),
    ),
    case(
        "export-sparse-path-is-a-directory",
        ["export", RUN, "--cycle", "0", "--out", f"{TMP}/model.safetensors"],
        f"{TMP}/model.sparse.safetensors", "is a directory",
        setup=chain(a_run(), mkdir("model.sparse.safetensors")),
    ),
    case(
        "export-onnx-path-is-a-directory",
        ["export", RUN, "--cycle", "0", "--out", f"{TMP}/model.pt", "--onnx"],
        f"{TMP}/model.onnx", "is a directory",
        setup=chain(a_run(), mkdir("model.onnx")),
    ),
    case(
        "export-out-txt",
        ["export", RUN, "--cycle", "0", "--out", f"{TMP}/model.txt"],
        "model.txt", "ends in .safetensors or .pt", "'.txt'",
        setup=a_run(),
    ),
    case(
        "export-out-without-suffix",
        ["export", RUN, "--cycle", "0", "--out", f"{TMP}/model"],
        "model", "ends in .safetensors or .pt", "no suffix",
        setup=a_run(),
    ),
    case(
        "export-out-under-a-file",
        ["export", RUN, "--cycle", "0", "--out", f"{TMP}/notes.txt/model.safetensors"],
        f"{TMP}/notes.txt",
        setup=chain(a_run(), text("notes.txt", "hello\n")),
    ),
    case(
        "export-out-name-too-long",
        ["export", RUN, "--cycle", "0", "--out", f"{TMP}/{LONG}.safetensors"],
        f"{LONG}.safetensors", "File name too long",
        setup=a_run(),
    ),
    case(
        "export-ensemble-without-member",
        ["export", RUN, "--cycle", "0", "--out", f"{TMP}/m.safetensors"],
        "2 ensemble members", "--member (0 to 1)",
        setup=a_run(values=ENSEMBLE),
    ),
    case(
        "export-ensemble-member-2",
        ["export", RUN, "--cycle", "0", "--member", "2", "--out", f"{TMP}/m.safetensors"],
        "--member 2", "members 0 to 1",
        setup=a_run(values=ENSEMBLE),
    ),
    case(
        "export-member-of-a-single-run",
        ["export", RUN, "--cycle", "0", "--member", "1", "--out", f"{TMP}/m.safetensors"],
        "--member 1", "only member 0",
        setup=a_run(),
    ),
    case(
        "export-negative-member",
        ["export", RUN, "--cycle", "0", "--member", "-1", "--out", f"{TMP}/m.safetensors"],
        "--member -1", "only member 0",
        setup=a_run(),
    ),
    case(
        "export-incomplete-cycle",
        ["export", RUN, "--cycle", "1", "--out", f"{TMP}/m.safetensors"],
        "cycle 1 is not complete", "complete cycles: [0]",
        setup=a_run(),
    ),
    case(
        "export-config-garbage",
        ["export", RUN, "--cycle", "0", "--out", f"{TMP}/m.safetensors"],
        f"{RUN}/config.toml", "not valid TOML",
        setup=a_run(put("config.toml", "recipe = \n")),
    ),
    case(
        "export-config-edited",
        ["export", RUN, "--cycle", "0", "--out", f"{TMP}/m.safetensors"],
        f"{RUN}/config.toml", "hashes to", "edited after the run started",
        setup=a_run(edit_config),
    ),
    case(
        "export-cycle-copied-from-another-run",
        ["export", RUN, "--cycle", "0", "--out", f"{TMP}/m.safetensors"],
        f"{RUN}/cycle_00", "names run 00000000", "copied in from another run directory",
        setup=a_run(run_id=ANOTHER_RUN),
    ),
    case(
        "export-damaged-weights",
        ["export", RUN, "--cycle", "0", "--out", f"{TMP}/m.safetensors"],
        f"{RUN}/cycle_00/combined.safetensors", "checksum differs",
        setup=a_run(flip_a_byte("cycle_00/combined.safetensors")),
    ),
]  # fmt: skip

# An N:M pattern that passes validation but not the model: refused in prepare(); no training.
NM_PREPARE = (
    "--set", "pruning.pattern=2:4",
    "--set", "train.epochs=1",
    "--set", "pruning.rewind_epochs=0",
    "--set", "train.batch_size=4096",
    "--quiet",
)  # fmt: skip

# The engine's side of item 5 of issue 8: refused in prepare() and before any write.
ENGINE_CASES = [
    case(
        "engine-pattern-layer-with-one-input-channel",
        run(*NM_PREPARE),
        "pruning.pattern = '2:4' groups 4 consecutive input channels",
        "features.0.weight has 1 input channel (shape (32, 1, 5))",
        "pruning.exclude = ['features.0.weight']",
    ),
    case(
        "engine-pattern-initial-mask-group-too-sparse",
        run(
            *NM_PREPARE,
            *s("pruning.exclude_first=true"),
            *s(f"pruning.initial_mask='{TMP}/short.safetensors'"),
        ),
        "pruning.initial_mask leaves 1 of 4 weights alive in a group of features.3.weight",
        "fewer than the 2",
        setup=short_group_mask("short.safetensors"),
    ),
    case(
        "engine-batch-larger-than-the-training-split",
        run(*TINY, *s("train.batch_size=100000")),
        "train.batch_size", "100000",
    ),
    case(
        "engine-step-schedule-cannot-anneal-to-swa",
        run("--recipe", "imp-swa", *s('train.schedule="step"'), *TINY),
        "'step'", "swa_schedule",
    ),
    case(
        "engine-device-mps-unavailable",
        run("--device", "mps", *TINY),
        "execution.device", "mps",
        marks=(NO_MPS,),
    ),
    case(
        "engine-model-too-large",
        run("--model", "mlp", *s("model.options={hidden=[3000000, 3000000]}"), *TINY),
        "model",
    ),
    case(
        "engine-pretrained-is-a-folder",
        run(*s(f"model.pretrained='{TMP}/weights'")),
        "model.pretrained", f"{TMP}/weights",
        absent=("does not exist",),
        setup=mkdir("weights"),
    ),
    case(
        "engine-exclude-glob-matches-nothing",
        run(*s("pruning.exclude=['nomatch.*']"), *TINY),
        "pruning.exclude", "nomatch.*",
    ),
    case(
        "engine-include-glob-matches-nothing",
        run(*s("pruning.include=['nomatch.*']"), *TINY),
        "pruning.include", "nomatch.*",
    ),
    case(
        "engine-initial-mask-prunes-everything",
        run(*s(f"pruning.initial_mask='{TMP}/zeros.safetensors'"), *TINY),
        "pruning.initial_mask", "zeros.safetensors",
        setup=zero_mask("zeros.safetensors"),
    ),
    case(
        "engine-cycles-leave-no-weight",
        run(*TINY, *s("pruning.cycles=2"), *s("pruning.fraction=0.999")),
        "pruning",
    ),
    case(
        "engine-run-dir-holds-another-config",
        run(f"{TMP}/c.toml", "--quiet"),
        "config.toml",
        setup=chain(config_file("c.toml", FAKE), other_config_in_run_dir),
    ),
    case(
        "engine-cycle-copied-from-another-run",
        run(f"{TMP}/c.toml", "--quiet"),
        f"{RUN}/cycle_00", "names run 00000000",
        setup=chain(config_file("c.toml", FAKE), a_run(run_id=ANOTHER_RUN)),
    ),
    case(
        "engine-resume-refused-before-any-write",
        run(f"{TMP}/c.toml", "--quiet"),
        f"{RUN}/cycle_01/combined.safetensors", "checksum differs",
        setup=chain(
            config_file("c.toml", FAKE),
            a_run(
                flip_a_byte("cycle_01/combined.safetensors"), remove("results.jsonl"), complete=2
            ),
        ),
    ),
]  # fmt: skip


# -- the harness ---------------------------------------------------------------------------------


DATA_CACHE = {"data", "data/mnist1d", "data/mnist1d/mnist1d-10000-seed42.npz"}


def _files(root: Path) -> dict[str, str]:
    """Every path below ``root`` with its content's hash (``"dir"`` for folders), less the
    MNIST-1D cache that loading the data may write (a data-set cache, not part of any run)."""
    out = {}
    for p in root.rglob("*"):
        rel = str(p.relative_to(root))
        if rel not in DATA_CACHE:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def _subst(item: str, tmp: Path) -> str:
    if RUN in item:
        runs = sorted((tmp / "runs").iterdir())
        assert len(runs) == 1, runs
        item = item.replace(RUN, str(runs[0]))
    return item.replace(TMP, str(tmp))


class Hung(BaseException):
    """A bad input that was not refused in time (no ``except Exception`` swallows it)."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    def fire(signum: int, frame: object) -> None:
        raise Hung(f"not refused within {seconds} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tmp_path`` as the working directory and data root, so a stray write lands there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPARSEAVG_DATA", str(tmp_path / "data"))
    return tmp_path


def _main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit:  # argparse; reported through the assertions below
        return exit.code if isinstance(exit.code, int) else 1


def test_cases_are_many_and_named_uniquely():
    ids = [p.id for p in CASES + ENGINE_CASES]
    assert len(CASES) >= 140
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize(("argv", "fragments", "setup", "absent", "missing"), CASES + ENGINE_CASES)
def test_bad_input_is_refused_cleanly(
    argv, fragments, setup, absent, missing, sandbox, capsys, monkeypatch
):
    for package in missing:
        monkeypatch.setitem(sys.modules, package, None)  # an import of it fails
    runs = sandbox / "runs"
    if setup is not None:
        setup(sandbox)
    args = [_subst(a, sandbox) for a in argv]
    if args[0] == "run" and "--runs-dir" not in args:
        args += ["--runs-dir", str(runs)]
    had_runs = runs.exists()
    before = _files(sandbox)

    with deadline(DEADLINE):
        rc = _main(args)

    out, err = capsys.readouterr()
    assert "Traceback" not in err + out
    assert out == "", out  # nothing is shown before the refusal
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith("sparseavg: error: "), line
    for fragment in fragments:
        assert _subst(fragment, sandbox) in line, f"{fragment!r} not in {line!r}"
    for fragment in absent:
        assert _subst(fragment, sandbox) not in line, f"{fragment!r} in {line!r}"
    assert rc == 2
    after = _files(sandbox)
    assert had_runs or not runs.exists(), sorted(set(after) - set(before))
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert not changed, sorted(changed)
    assert not (sandbox / "MARKER").exists()


def test_existing_runs_dir_is_left_unchanged(sandbox, capsys):
    runs = sandbox / "runs"
    (runs / "other-run").mkdir(parents=True)
    (runs / "other-run" / "config.toml").write_text('recipe = "imp"\n')
    before = _files(sandbox)
    rc = _main(["run", "--model", "resnet21", "--runs-dir", str(runs)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("sparseavg: error: ")
    assert _files(sandbox) == before


def test_pickle_payload_in_pretrained_is_not_executed(sandbox, capsys):
    """``model.pretrained`` is read with ``weights_only``: a pickle whose ``__reduce__`` would
    create a file is refused without running it (the message format is checked above)."""
    payload_pt("payload.pt")(sandbox)
    marker = sandbox / "MARKER"
    rc = _main(["run", "--set", f"model.pretrained='{sandbox}/payload.pt'", "--runs-dir", "runs"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("sparseavg: error: model.pretrained: ") and "payload.pt" in err
    assert "Traceback" not in err
    assert not marker.exists()
    assert not (sandbox / "runs").exists()
    # the payload is live: an unsafe load would have created the marker
    torch.load(sandbox / "payload.pt", weights_only=False)
    assert marker.exists()
    os.remove(marker)


def test_print_config_is_a_positive_control(sandbox, capsys):
    runs = sandbox / "runs"
    before = _files(sandbox)
    rc = main(["run", "--recipe", "imp", "--print-config", "--runs-dir", str(runs)])
    out, err = capsys.readouterr()
    assert rc == 0
    assert err == ""
    assert out.startswith(f"# run directory: {runs}/imp-mnist1d-conv1d-")
    assert 'recipe = "imp"' in out
    assert not runs.exists()
    assert _files(sandbox) == before


def test_a_closed_stdout_stops_quietly(tmp_path):
    """`sparseavg ... | head -1`: no error line and no traceback when the reader goes away."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "sparseavg", "inspect", "--recipes"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert err == ""
