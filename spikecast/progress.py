"""One progress helper used by every long-running step (calibration, validation, CLI)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator, Optional


class _Bar:
    def __init__(self, progress, task):
        self._progress, self._task = progress, task

    def advance(self, n: float = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def update(self, **fields) -> None:
        if self._progress is not None:
            self._progress.update(self._task, **fields)


@contextmanager
def progress_bar(description: str, total: Optional[float], enabled: bool = True) -> Iterator[_Bar]:
    """A rich progress bar on stderr when ``enabled`` and stderr is a terminal; silent otherwise."""
    if not enabled or not sys.stderr.isatty():
        yield _Bar(None, None)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield _Bar(progress, task)
