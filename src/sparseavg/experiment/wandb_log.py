"""Weights & Biases logging of a run (``execution.wandb = true``): the scalars TensorBoard gets
(:mod:`.logs`), under the same names, in one W&B run per run directory.

- The W&B run is named after the run directory and gets the resolved config as its config;
  its id is kept in ``RUN_DIR/wandb.json``, so a resumed run continues the same W&B run
  (``resume="allow"``).
- As each cycle completes, its ingredients' training curves are logged
  (``cycle_XX/[member_<l>/]ingredient_<k>/train_loss``, ``/train_accuracy``, ``/lr``: the
  tags of TensorBoard's run ``cycle_XX/``, with ``global_step`` = the cycle's step at the
  epoch's end), then its rows
  (``<role>/accuracy``, ``/loss``, ``/sparsity``, ``/metrics.<key>``, with ``cycle``).
  ``wandb.json`` lists the cycles logged, so a resumed run logs no cycle twice.
- The project is ``$WANDB_PROJECT`` (default ``sparseavg``); ``WANDB_MODE=offline`` and the
  other ``WANDB_*`` variables work as wandb documents them.

wandb is imported only when a run asks for it (the optional ``wandb`` extra).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..utils.files import atomic_write_text
from ..utils.imports import import_problem
from .logs import Scalar, cycle_scalars, epoch_scalars

#: what to run when ``execution.wandb`` is on and the package is missing
WANDB_INSTALL = 'pip install "sparseavg[wandb]"'
#: the file in the run directory that keeps the W&B run id and the cycles logged
WANDB_FILE = "wandb.json"


def wandb_problem() -> str | None:
    """Why ``wandb`` does not import, in one line, or ``None`` when it does."""
    return import_problem("wandb")


def _by_step(points: Sequence[Scalar], step_key: str) -> list[dict[str, float]]:
    """Points grouped into one ``log`` call per step, in step order, each with its step
    under ``step_key``."""
    steps: dict[int, dict[str, float]] = {}
    for tag, value, step in points:
        steps.setdefault(step, {step_key: float(step)})[tag] = value
    return [steps[s] for s in sorted(steps)]


class WandbLog:
    """The W&B run of one run directory; :meth:`log_cycle` each complete cycle, then
    :meth:`close`."""

    def __init__(self, run_dir: Path, name: str, config: dict[str, Any], cycles: int) -> None:
        """Start (or continue) the W&B run of ``run_dir``, whose run has ``cycles`` cycles;
        a run whose cycles are all logged starts none.

        Raises:
            ConfigError: W&B did not start (no login, no network, a bad ``WANDB_*`` value),
                in one line.
        """
        import wandb

        self.path = Path(run_dir) / WANDB_FILE
        state = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}
        self.run_id: str = state.get("id") or secrets.token_hex(4)
        self.logged: set[int] = set(state.get("cycles", []))
        self.run: Any = None
        if self.logged >= set(range(cycles)):
            return
        self._save()  # before init: a W&B run that was created is always continued
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "sparseavg"),
                id=self.run_id,
                name=name,
                config=config,
                resume="allow",
            )
        except Exception as err:  # no login, no network, a bad WANDB_* value
            text = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ConfigError(
                f"execution.wandb = true: W&B did not start ({text}); run `wandb login`, or "
                "set WANDB_MODE=offline, or execution.wandb = false"
            ) from err

    def _save(self) -> None:
        text = json.dumps({"id": self.run_id, "cycles": sorted(self.logged)}) + "\n"
        atomic_write_text(self.path, text)

    def log_cycle(
        self,
        cycle: int,
        rows: Sequence[dict[str, Any]],
        epochs: Sequence[dict[str, Any]],
        lineages: int,
    ) -> None:
        """Log cycle ``cycle``'s training curves and rows, unless a call logged them before."""
        if cycle in self.logged or self.run is None:
            return
        curves = [(f"cycle_{cycle:02d}/{t}", v, s) for t, v, s in epoch_scalars(epochs, lineages)]
        for values in _by_step(curves, "global_step"):
            self.run.log(values)
        for values in _by_step(cycle_scalars(rows, lineages), "cycle"):
            self.run.log(values)
        self.logged.add(cycle)
        self._save()

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
