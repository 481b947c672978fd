"""Human-readable descriptions of run directories and of the files in them."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import read_toml, to_toml
from ..pruning import Mask
from ..recipes import resolve_config
from ..utils.files import load_tensors
from .report import find_runs, markdown_table
from .runinfo import read_run


def describe_run(run_dir: str | Path) -> str:
    """Config summary, progress (complete cycles, training ingredients) and the latest mask."""
    info = read_run(run_dir)
    config, rd = info.config, info.rundir
    t = config.train
    cycles = config.pruning.cycles + 1
    complete = info.complete_cycles()
    lines = [
        f"run       {rd.path}",
        f"recipe    {config.recipe}  seed {config.seed}",
        f"data      {config.data.dataset}  model {config.model.name}",
        f"training  {t.epochs} epochs, batch {t.batch_size}, lr {t.lr} ({t.schedule}), swa {t.swa}",
        f"cycles    {len(complete)}/{cycles} complete",
    ]
    lock = rd.path / "run.lock"
    if lock.is_file():
        lines.append(f"lock      held by process {lock.read_text().strip()}")
    for ckpt in sorted(rd.path.rglob("checkpoint.pt")):
        payload = rd.load_checkpoint(ckpt)
        step = payload.get("step", "?")
        lines.append(f"training  {ckpt.parent.relative_to(rd.path)} at step {step}")
    masks = [
        p
        for c in range(cycles)
        if (p := rd.member_dir(c, 0, info.members) / "mask.safetensors").is_file()
    ]
    if masks:
        lines += [
            "",
            f"mask of {masks[-1].relative_to(rd.path)}:",
            Mask.load(masks[-1]).format_report(),
        ]
    computed = _computed_with(info.rows())
    if computed:
        lines.insert(5, f"computed  {computed}")
    if complete:
        lines += ["", markdown_table(find_runs([rd.path]))]
    return "\n".join(lines)


def _computed_with(rows: list[dict]) -> str:
    """The torch versions and thread counts the run's cycles were read out with, cycles named
    where they differ ("torch 2.13.0+cpu, 2 threads"); empty for rows that predate them."""
    seen: dict[tuple[str, int], list[int]] = {}
    for row in rows:
        if "torch" in row and "threads" in row:
            cycles = seen.setdefault((row["torch"], row["threads"]), [])
            if row["cycle"] not in cycles:
                cycles.append(row["cycle"])
    parts = [
        f"torch {version}, {threads} thread{'s' if threads != 1 else ''}"
        + (f" (cycles {', '.join(map(str, cycles))})" if len(seen) > 1 else "")
        for (version, threads), cycles in seen.items()
    ]
    return "; ".join(parts)


def describe_file(path: str | Path) -> str:
    """A mask's per-layer sparsity, a model file's tensors, or a validated config file."""
    p = Path(path)
    if p.suffix == ".toml":
        return to_toml(resolve_config(read_toml(p)).to_dict())
    tensors = load_tensors(p)
    if tensors and all(t.dtype == torch.bool for t in tensors.values()):
        return Mask(tensors).format_report()
    lines = [f"{'tensor':<40} {'shape':<22} {'dtype':<10} zeros"]
    total = zeros = 0
    for name, t in tensors.items():
        z = int((t == 0).sum())
        total += t.numel()
        zeros += z
        shape = "x".join(map(str, t.shape))
        lines.append(
            f"{name:<40} {shape:<22} {str(t.dtype).removeprefix('torch.'):<10} "
            f"{z / max(t.numel(), 1):.2%}"
        )
    lines.append(f"{len(tensors)} tensors, {total} values, {zeros / max(total, 1):.2%} zeros")
    return "\n".join(lines)
