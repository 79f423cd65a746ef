"""Progress on a terminal: a bar on standard error while a long command works, none under `--json`
or when the output is piped (lines printed through the tracker stay above the bar)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)


class Tracker:
    def __init__(self, bar: Progress | None, task: int | None):
        self._bar, self._task = bar, task

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)

    def describe(self, text: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=text)

    @staticmethod
    def print(line: str) -> None:
        """A line on standard output (above the bar when both are the terminal)."""
        print(line, flush=True)


@contextmanager
def progress(description: str, total: int, hidden: bool) -> Iterator[Tracker]:
    stderr = Console(stderr=True)
    if hidden or not stderr.is_terminal:
        yield Tracker(None, None)
        return
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=stderr, transient=True, redirect_stdout=Console().is_terminal, redirect_stderr=False)
    with bar:
        yield Tracker(bar, bar.add_task(description, total=total))
