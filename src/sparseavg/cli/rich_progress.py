"""A :class:`~sparseavg.experiment.Reporter` drawn with rich progress bars (ETA included)."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class RichReporter:
    """Cycle, ingredient and step progress as live bars on a terminal."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            transient=False,
        )

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def message(self, text: str) -> None:
        self.progress.console.print(text, highlight=False, markup=False)

    def task(self, label: str, total: int) -> int:
        return int(self.progress.add_task(label, total=total, info=""))

    def update(self, task: int, completed: int, info: str = "") -> None:
        self.progress.update(TaskID(task), completed=completed, info=info)

    def finish(self, task: int) -> None:
        tid = TaskID(task)
        t = self.progress.tasks[[x.id for x in self.progress.tasks].index(tid)]
        if t.description.endswith("cycles"):
            self.progress.update(tid, completed=t.total)
        else:
            self.progress.remove_task(tid)
