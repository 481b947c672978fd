"""Shared by the benchmark scripts: arguments, interleaved timing, medians and ratios.

Every benchmark times its variants in one process, interleaved (A B C A B C ...), so that
noise from other work on the machine hits them alike, and reports medians and ratios.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable, Mapping

import torch

from sparseavg.data import Split
from sparseavg.data.augment import Augmentation


def parser(doc: str | None, repeats: int) -> argparse.ArgumentParser:
    """An argument parser with the ``--device`` and ``--repeats`` every benchmark takes."""
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda (default: cuda when available)",
    )
    p.add_argument("--repeats", type=int, default=repeats, help="timed blocks per variant")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice); 1 gives steadier figures on a "
        "machine shared with other work",
    )
    return p


def setup(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads`` and return the ``--device``."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return torch.device(args.device)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds ``fn()`` takes, the device's queued work included."""
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def interleave(
    variants: Mapping[str, Callable[[], object]],
    device: torch.device,
    repeats: int,
    warmup: int = 1,
) -> dict[str, list[float]]:
    """Run every variant ``warmup`` times, then ``repeats`` rounds of each in turn.

    Returns:
        ``name -> [seconds per call]``, one entry per round.
    """
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn, device))
    return times


def masked_step(
    model: Callable[[torch.Tensor], torch.Tensor],
    opt: torch.optim.Optimizer,
    enforcer: object,
    x: torch.Tensor,
    y: torch.Tensor,
    bf16: bool = False,
) -> None:
    """One optimizer step as ``train()`` takes it: forward (under bf16 autocast if asked),
    backward, gradients masked, step, weights masked. ``enforcer`` is a ``MaskEnforcer``;
    ``model`` may be a compiled forward."""
    import torch.nn.functional as F

    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    enforcer.mask_gradients()  # type: ignore[attr-defined]
    opt.step()
    enforcer.mask_weights()  # type: ignore[attr-defined]


def random_cifar(
    samples: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> Split:
    """``samples`` CIFAR-shaped random images ``(3, 32, 32)`` with labels in ``0..9``, drawn
    from ``generator`` on the CPU (images, then labels), on ``device``, with CIFAR's training
    augmentation (crop after padding 4, horizontal flip)."""
    x = torch.randn(samples, 3, 32, 32, generator=generator)
    y = torch.randint(0, 10, (samples,), generator=generator)
    return Split(x.to(device), y.to(device), Augmentation(crop_padding=4, horizontal_flip=True))


def block(step: Callable[[], object], steps: int) -> Callable[[], None]:
    """``steps`` calls of ``step``: one timed block."""

    def run() -> None:
        for _ in range(steps):
            step()

    return run


def median(values: list[float]) -> float:
    """The median of ``values``."""
    return statistics.median(values)


def paired_ratio(times: Mapping[str, list[float]], a: str, b: str) -> float:
    """The median over rounds of ``a``'s time / ``b``'s time in the same round.

    Pairing each round's neighbours cancels slow drifts in the machine's load better than a
    ratio of medians.
    """
    return median([x / y for x, y in zip(times[a], times[b], strict=True)])


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe(device: torch.device) -> str:
    """One line naming the device, torch and the thread count."""
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{cpu_model()}, {torch.get_num_threads()} threads"
    return f"{device} ({where}), torch {torch.__version__}"


def table(
    times: Mapping[str, list[float]],
    base: str,
    *,
    unit: str = "ms",
    scale: float = 1e3,
    extra: Mapping[str, Callable[[float], str]] | None = None,
) -> dict[str, float]:
    """Print each variant's median (``scale * seconds`` in ``unit``) and its ratio to ``base``.

    ``extra`` adds columns: ``header -> f(median seconds) -> text``. Returns the medians.
    """
    medians = {name: median(ts) for name, ts in times.items()}
    extra = extra or {}
    width = max(len(n) for n in medians) + 2
    head = f"{'variant':<{width}} {unit:>10} {'min':>10} {'vs ' + base:>14}"
    head += "".join(f" {h:>12}" for h in extra)
    print(head)
    for name, m in medians.items():
        row = f"{name:<{width}} {m * scale:>10.2f} {min(times[name]) * scale:>10.2f}"
        row += f" {m / medians[base]:>14.3f}"
        row += "".join(f" {f(m):>12}" for f in extra.values())
        print(row)
    return medians
