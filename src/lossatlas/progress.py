"""A rich progress display for long work, that can be turned off (``progress=False``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress_bar(total: int, description: str, *, enabled: bool = True, completed: int = 0,
                 unit: str = "points") -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; shows points done / total, rate and time left when ``enabled``."""
    if not enabled or total <= 0:
        yield lambda n: None
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn(unit), TaskProgressColumn(), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=total, completed=completed, rate="")

        def advance(n: int) -> None:
            bar.advance(task, n)
            speed = bar.tasks[task].speed
            if speed:
                bar.update(task, rate=f"{speed:,.1f} {unit}/s")
        yield advance
