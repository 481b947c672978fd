"""Export a cycle's model: a plain state_dict that the bare model loads, its mask, a compact
sparse file, a summary, and optionally an ONNX model."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..pruning import Mask, compress
from ..pruning.channels import INSTALL as CHANNELS_INSTALL
from ..pruning.channels import (
    channel_groups,
    parameter_count,
    pruned_channels,
    slim_model,
    torch_pruning_available,
)
from ..utils.files import (
    all_or_nothing,
    atomic_open,
    atomic_write_bytes,
    atomic_write_text,
    save_tensors,
)
from .onnx_export import INSTALL, onnx_available, to_onnx
from .rundir import enclosing_run_dir
from .runinfo import RunDirError, read_run
from .task import load_data, make_model

#: what ``out`` may end in: safetensors, or ``torch.save`` of a dict of tensors
SUFFIXES = (".safetensors", ".pt")


class ExportError(ValueError):
    """An export that cannot be written as asked: a bad ``out`` path, a member to choose, or an
    ONNX model that cannot be made."""


def export_paths(
    out: str | Path, *, onnx: bool = False, slim: bool = False, slim_onnx: bool = False
) -> dict[str, Path]:
    """The files an export writes: ``state`` (``out``), ``mask``
    (``<stem>.mask.safetensors``), ``sparse`` (``<stem>.sparse.safetensors``), ``onnx``
    (``<stem>.onnx``, only when ``onnx``), with ``slim`` the smaller model's ``slim``
    (``<stem>.slim.safetensors``) and ``slim_program`` (``<stem>.slim.pt2``), with
    ``slim_onnx`` its ``<stem>.slim.onnx``, and ``summary`` (``<stem>.json``).

    Raises:
        ExportError: ``out`` ends in neither ``.safetensors`` nor ``.pt``, or one of the
            paths is an existing directory.
    """
    out = Path(out)
    if out.suffix not in SUFFIXES:
        raise ExportError(
            f"{out}: an export ends in .safetensors or .pt, not "
            f"{repr(out.suffix) if out.suffix else 'no suffix'}"
        )
    stem = out.with_suffix("")

    def beside(suffix: str) -> Path:
        return stem.with_name(stem.name + suffix)

    paths = {
        "state": out,
        "mask": beside(".mask.safetensors"),
        "sparse": beside(".sparse.safetensors"),
        **({"onnx": beside(".onnx")} if onnx else {}),
        **(
            {"slim": beside(".slim.safetensors"), "slim_program": beside(".slim.pt2")}
            if slim
            else {}
        ),
        **({"slim_onnx": beside(".slim.onnx")} if slim and slim_onnx else {}),
        "summary": beside(".json"),
    }
    for p in paths.values():
        if p.is_dir():
            raise ExportError(f"{p}: is a directory; --out names the file to write")
    return paths


def built_in(config: Config) -> bool:
    """Whether the run's data set and model are built in (sparseavg can rebuild the model),
    rather than the user's own (``sparseavg.swamp(model_fn, ...)``)."""
    from ..data import available_datasets
    from ..models import available_models

    return config.data.dataset in available_datasets() and config.model.name in available_models()


def format_bytes(n: int) -> str:
    """``n`` bytes in decimal units: ``"812 B"``, ``"61.2 kB"``, ``"4.3 MB"``, ``"1.2 GB"``."""
    if n < 1000:
        return f"{n} B"
    for unit, scale in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9)):
        if round(n / scale, 1) < 1000 or unit == "GB":
            break
    return f"{n / scale:.1f} {unit}"


def size_line(sparse: Path, dense: Path) -> str:
    """``sparse file: 61.2 kB (14.8 % of the dense 413.5 kB)`` for two written files."""
    s, d = sparse.stat().st_size, dense.stat().st_size
    return f"sparse file: {format_bytes(s)} ({100 * s / d:.1f} % of the dense {format_bytes(d)})"


def slim_line(summary: Path) -> str:
    """``slim model: 20,789 parameters (26.6 % of the dense 78,042)`` from a written summary."""
    slim = json.loads(summary.read_text())["slim"]
    n, d = slim["parameters"], slim["dense_parameters"]
    return f"slim model: {n:,} parameters ({100 * n / d:.1f} % of the dense {d:,})"


def export_cycle(
    run_dir: str | Path,
    cycle: int,
    out: str | Path,
    *,
    member: int | None = None,
    onnx: bool = False,
    slim: bool = False,
) -> dict[str, Path]:
    """Write the combined model of ``cycle`` to ``out`` and the other files beside it.

    ``out`` ending in ``.pt`` is written with ``torch.save`` (a dict of tensors),
    ``.safetensors`` as safetensors. Pruned weights are exact zeros in the dense tensors, so
    ``model.load_state_dict(state)`` works on the unmodified model. Also written:
    ``<stem>.mask.safetensors``, ``<stem>.sparse.safetensors`` (the same state in compact form,
    read back by :func:`sparseavg.load_sparse`), ``<stem>.json`` (config, cycle, sparsity per
    layer, test accuracy) and, with ``onnx``, ``<stem>.onnx``: the run's model with these
    weights, input ``"input"`` ``(batch, *input_shape)`` and output ``"logits"``, batch free.
    ``member`` picks an ensemble member; a run with more than one needs it.

    With ``slim`` (the ``structured`` extra): the model with its pruned channels removed
    physically (:func:`~sparseavg.pruning.slim_model`), a smaller dense model with the same
    outputs, as ``<stem>.slim.safetensors`` (its state dict), ``<stem>.slim.pt2`` (a
    ``torch.export`` program, architecture included: ``torch.export.load(path).module()``
    runs it with plain torch, batch size free) and, when ``onnx`` is installed,
    ``<stem>.slim.onnx``; the summary gains a ``slim`` entry (parameters before and after,
    channels kept per group).

    Everything is checked, and the ONNX model made, before the first file is written; files
    that would land inside a run directory are refused; the files are written all or none
    (a failure part way leaves every target as it was).

    Raises:
        FileNotFoundError: ``run_dir`` is not a run directory, or has no complete ``cycle``.
        ExportError: a bad ``out`` (see :func:`export_paths`) or one whose files would land
            inside a run directory; ``member`` missing for a run
            with several members, or not one of them; ``onnx`` without the ``onnx`` package,
            or a model torch cannot export to ONNX; ``slim`` without the ``torch-pruning``
            package, for a run of the user's own model, or a model it cannot slim.
        RunDirError, CorruptFileError: the run's config or the cycle's files are damaged,
            edited, or copied in from another run.
        MaskError: the cycle's weights are not zero where its mask prunes.
    """
    if slim and not torch_pruning_available():
        raise ExportError(f"--slim needs the torch-pruning package: {CHANNELS_INSTALL}")
    paths = export_paths(out, onnx=onnx, slim=slim, slim_onnx=slim and onnx_available())
    _check_outside_runs(paths, run_dir)
    info = read_run(run_dir)
    if slim and not built_in(info.config):
        raise ExportError(
            f"--slim: {info.path} is a run of your own model ({info.config.model.name!r}), "
            "which the run does not record how to build; load the state into your model and "
            "call sparseavg.pruning.slim_model(model, example, mask) on it"
        )
    if onnx and not built_in(info.config):
        raise ExportError(
            f"--onnx: {info.path} is a run of your own model ({info.config.model.name!r}), "
            "which the run does not record how to build; export without --onnx, load the "
            "state into your model (model.load_state_dict) and call torch.onnx.export on it"
        )
    if onnx and not onnx_available():
        raise ExportError(f"--onnx needs the onnx package: {INSTALL}")
    members = info.members
    if member is None:
        if members > 1:
            raise ExportError(
                f"{info.path}: the run has {members} ensemble members; choose one with "
                f"--member (0 to {members - 1})"
            )
        member = 0
    if not 0 <= member < members:
        which = "only member 0" if members == 1 else f"members 0 to {members - 1}"
        raise ExportError(f"--member {member}: {info.path} has {which}")
    rd = info.rundir
    if not 0 <= cycle <= info.config.pruning.cycles or not rd.is_complete(cycle):
        done = info.complete_cycles()
        raise FileNotFoundError(
            f"{rd.path}: cycle {cycle} is not complete (complete cycles: {done or 'none'})"
        )
    rd.verify_manifest(rd.cycle_dir(cycle))
    mdir = rd.member_dir(cycle, member, members)
    state = rd.load_state(mdir / "combined.safetensors")
    mask = Mask.load(mdir / "mask.safetensors")
    rows = rd.read_json(rd.cycle_dir(cycle) / "rows.json")
    if not isinstance(rows, list):
        raise RunDirError(f"{rd.cycle_dir(cycle) / 'rows.json'}: not a list of result rows")
    mine = [
        r
        for r in rows
        if isinstance(r, dict) and r.get("role") == "combined" and r.get("lineage", 0) == member
    ]
    summary: dict[str, Any] = {
        "run": rd.path.name,
        "cycle": cycle,
        "member": member,
        "sparsity": mask.sparsity,
        "alive": mask.num_alive,
        "total": mask.num_total,
        "test_accuracy": mine[0].get("accuracy") if mine else None,
        "layers": [
            {"name": r.name, "shape": list(r.shape), "alive": r.alive, "total": r.total}
            for r in mask.report()
        ],
        "config": info.config.to_dict(),
    }
    sparse = compress(state, mask)
    onnx_model = _onnx_model(info.config, state) if onnx else None
    slimmed = _slim(info.config, state, mask, with_onnx="slim_onnx" in paths) if slim else None
    if slimmed is not None:
        summary["slim"] = slimmed.summary
    with all_or_nothing(list(paths.values())) as temps:
        tmp = dict(zip(paths, temps, strict=True))
        if paths["state"].suffix == ".pt":
            with atomic_open(tmp["state"], "wb") as f:
                torch.save(state, f)
        else:
            save_tensors(tmp["state"], state, metadata={"format": "sparseavg-export/1"})
        mask.save(tmp["mask"])
        save_tensors(tmp["sparse"], sparse.tensors, sparse.metadata)
        if onnx_model is not None:
            atomic_write_bytes(tmp["onnx"], onnx_model)
        if slimmed is not None:
            save_tensors(tmp["slim"], slimmed.state, metadata={"format": "sparseavg-slim/1"})
            atomic_write_bytes(tmp["slim_program"], slimmed.program)
            if slimmed.onnx is not None:
                atomic_write_bytes(tmp["slim_onnx"], slimmed.onnx)
        atomic_write_text(tmp["summary"], json.dumps(summary, indent=1) + "\n")
    return paths


def _check_outside_runs(paths: dict[str, Path], run_dir: str | Path) -> None:
    """Refuse an export any of whose files would land inside a run directory (the one
    exported or another): it would change, or add to, a run's files."""
    own = Path(run_dir).resolve()
    for p in paths.values():
        target = p.resolve()
        inside = own if own in target.parents else enclosing_run_dir(target)
        if inside is not None:
            raise ExportError(
                f"--out {paths['state']}: {p} is inside the run directory {inside}; an export "
                "is written outside run directories (it would change the run's files)"
            )


@dataclass(frozen=True)
class Slim:
    """A slimmed model as the files hold it: its state dict, its ``torch.export`` program
    (bytes of ``torch.export.save``), its ONNX bytes (or ``None``) and the summary entry."""

    state: dict[str, torch.Tensor]
    program: bytes
    onnx: bytes | None
    summary: dict[str, Any]


def _slim(config: Config, state: dict[str, torch.Tensor], mask: Mask, *, with_onnx: bool) -> Slim:
    """The run's model with ``state`` loaded and the channels ``mask`` prunes removed, in
    eval mode, exported as a program (and ONNX with ``with_onnx``)."""
    data = load_data(config, torch.device("cpu"))
    model = make_model(config, data, 0)
    model.load_state_dict(state)
    model.eval()
    example = torch.zeros(2, *data.input_shape)
    dense = parameter_count(model)
    groups = channel_groups(model, example, list(mask))
    dead = pruned_channels(mask, groups)
    try:
        small = slim_model(model, example, mask).eval()
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(small, (example,), dynamic_shapes=({0: batch},))
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        onnx_bytes = to_onnx(small, example) if with_onnx else None
    except Exception as err:  # Torch-Pruning, torch.export and the ONNX exporter raise many kinds
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"--slim: {config.model.name} could not be slimmed ({reason})") from None
    summary = {
        "parameters": parameter_count(small),
        "dense_parameters": dense,
        "channels": {
            g.root: {"kept": g.channels - len(dead.get(g.root, [])), "total": g.channels}
            for g in groups
        },
        "load": "torch.export.load(path).module()",
    }
    slim_state = {k: v.detach().clone().contiguous() for k, v in small.state_dict().items()}
    return Slim(slim_state, buffer.getvalue(), onnx_bytes, summary)


def _onnx_model(config: Config, state: dict[str, torch.Tensor]) -> bytes:
    """The run's model (built as the engine builds it, for its data set's input shape) with
    ``state`` loaded, as ONNX bytes."""
    data = load_data(config, torch.device("cpu"))
    model = make_model(config, data, 0)
    model.load_state_dict(state)
    example = torch.zeros(2, *data.input_shape)
    try:
        return to_onnx(model, example)
    except Exception as err:  # torch's exporter and onnx's checker raise many kinds
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(
            f"--onnx: {config.model.name} could not be exported to ONNX ({reason})"
        ) from None
