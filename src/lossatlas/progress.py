"""A rich progress display for long work, that can be turned off (``progress=False``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence


def _columns(unit: str):
    from rich.progress import (BarColumn, MofNCompleteColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn(unit), TaskProgressColumn(), TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn())


@contextlib.contextmanager
def progress_bar(total: int, description: str, *, enabled: bool = True, completed: int = 0,
                 unit: str = "points") -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; shows points done / total, rate and time left when ``enabled``."""
    if not enabled or total <= 0:
        yield lambda n: None
        return
    from rich.progress import Progress

    with Progress(*_columns(unit), transient=False) as bar:
        task = bar.add_task(description, total=total, completed=completed, rate="")

        def advance(n: int) -> None:
            bar.advance(task, n)
            speed = bar.tasks[task].speed
            if speed:
                bar.update(task, rate=f"{speed:,.1f} {unit}/s")
        yield advance


class _RankTable:
    """Per-rank points done and throughput, re-rendered at every refresh of the live display."""

    def __init__(self, world: int, unit: str):
        self.rows: list[tuple[int, float]] = [(0, 0.0)] * world
        self.unit = unit

    def __rich__(self):
        from rich.table import Table

        table = Table(box=None, padding=(0, 2), show_edge=False)
        for name in ("rank", self.unit, f"{self.unit}/s", "share"):
            table.add_column(name, justify="right", style="dim")
        total = sum(p for p, _ in self.rows) or 1
        for r, (points, seconds) in enumerate(self.rows):
            rate = f"{points / seconds:,.1f}" if seconds > 0 else "-"
            table.add_row(str(r), f"{points:,}", rate, f"{100 * points / total:.0f}%")
        return table


@contextlib.contextmanager
def rank_progress(total: int, description: str, *, world: int, enabled: bool = True, completed: int = 0,
                  unit: str = "points") -> Iterator[Callable[[int, Sequence[tuple[int, float]]], None]]:
    """Progress of a job shared by ``world`` ranks, shown by the caller (rank 0).

    Yields ``update(done, per_rank)``: ``done`` points of the whole job (rate and time left are
    derived from it) and, per rank, ``(points, busy_seconds)`` giving that rank's throughput.
    """
    if not enabled or total <= 0:
        yield lambda done, per_rank: None
        return
    from rich.console import Group
    from rich.live import Live
    from rich.progress import Progress

    bar = Progress(*_columns(unit))
    task = bar.add_task(description, total=total, completed=completed, rate="")
    table = _RankTable(world, unit)

    def update(done: int, per_rank: Sequence[tuple[int, float]]) -> None:
        bar.update(task, completed=completed + done)
        speed = bar.tasks[task].speed
        if speed:
            bar.update(task, rate=f"{speed:,.1f} {unit}/s")
        table.rows = [(int(p), float(s)) for p, s in per_rank]

    with Live(Group(bar, table), refresh_per_second=4, transient=False):
        yield update
