"""Export a cycle's model: a plain state_dict that the bare model loads, its mask, a compact
sparse file, a summary, and optionally an ONNX model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..pruning import Mask, compress
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


def export_paths(out: str | Path, *, onnx: bool = False) -> dict[str, Path]:
    """The files an export writes: ``state`` (``out``), ``mask``
    (``<stem>.mask.safetensors``), ``sparse`` (``<stem>.sparse.safetensors``), ``onnx``
    (``<stem>.onnx``, only when ``onnx``) and ``summary`` (``<stem>.json``).

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


def export_cycle(
    run_dir: str | Path,
    cycle: int,
    out: str | Path,
    *,
    member: int | None = None,
    onnx: bool = False,
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

    Everything is checked, and the ONNX model made, before the first file is written; files
    that would land inside a run directory are refused; the files are written all or none
    (a failure part way leaves every target as it was).

    Raises:
        FileNotFoundError: ``run_dir`` is not a run directory, or has no complete ``cycle``.
        ExportError: a bad ``out`` (see :func:`export_paths`) or one whose files would land
            inside a run directory; ``member`` missing for a run
            with several members, or not one of them; ``onnx`` without the ``onnx`` package,
            or a model torch cannot export to ONNX.
        RunDirError, CorruptFileError: the run's config or the cycle's files are damaged,
            edited, or copied in from another run.
        MaskError: the cycle's weights are not zero where its mask prunes.
    """
    paths = export_paths(out, onnx=onnx)
    _check_outside_runs(paths, run_dir)
    info = read_run(run_dir)
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
