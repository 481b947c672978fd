"""How the engine reports progress: a small protocol the CLI implements with rich."""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO


class Reporter(Protocol):
    """Receives the engine's progress. All methods must be cheap."""

    def message(self, text: str) -> None:
        """A line of information (cycle started, stage skipped on resume, warnings)."""

    def task(self, label: str, total: int) -> int:
        """A new task of ``total`` units (cycles, or training steps); returns its id."""

    def update(self, task: int, completed: int, info: str = "") -> None:
        """``completed`` units of ``task`` are done."""

    def finish(self, task: int) -> None:
        """``task`` is over; remove it from the display."""


class NullReporter:
    """Reports nothing (``--quiet`` and library use)."""

    def message(self, text: str) -> None:
        pass

    def task(self, label: str, total: int) -> int:
        return 0

    def update(self, task: int, completed: int, info: str = "") -> None:
        pass

    def finish(self, task: int) -> None:
        pass


class PlainReporter:
    """Plain log lines for logs and non-terminals: messages, and each task's end."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._tasks: dict[int, tuple[str, int, float, int]] = {}
        self._next = 1

    def message(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def task(self, label: str, total: int) -> int:
        tid = self._next
        self._next += 1
        self._tasks[tid] = (label, total, time.perf_counter(), 0)
        return tid

    def update(self, task: int, completed: int, info: str = "") -> None:
        label, total, start, _ = self._tasks.get(task, ("", 0, time.perf_counter(), 0))
        self._tasks[task] = (label, total, start, completed)

    def finish(self, task: int) -> None:
        label, total, start, done = self._tasks.pop(task, ("", 0, time.perf_counter(), 0))
        if label:
            self.message(f"{label}: {done}/{total} in {time.perf_counter() - start:.1f}s")
