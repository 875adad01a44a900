"""A rich progress display for long work, that can be turned off (``progress=False``).

Where it shows: in a terminal, a live bar; in a pipe or a log file, rich draws it once when the work
ends (quiet); in a Jupyter notebook, nothing by default (rich's live display there needs ipywidgets
and warns on every call without it). ``LOSSATLAS_PROGRESS=0`` turns every bar off, ``=1`` shows them
even in a notebook.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence


def _columns(unit: str):
    from rich.progress import (BarColumn, MofNCompleteColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn(unit), TaskProgressColumn(), TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn())


def shown(enabled: bool) -> bool:
    """Whether a bar asked for (``enabled``) is drawn here (see the module's docs)."""
    if not enabled:
        return False
    env = os.environ.get("LOSSATLAS_PROGRESS", "").strip().lower()
    if env in ("0", "false", "no", "off"):
        return False
    if env in ("1", "true", "yes", "on"):
        return True
    return not _in_notebook()


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except Exception:  # pragma: no cover - an odd IPython
        return False
    return ip is not None and type(ip).__name__ != "TerminalInteractiveShell"


@contextlib.contextmanager
def progress_bar(total: int, description: str, *, enabled: bool = True, completed: int = 0,
                 unit: str = "points") -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; shows points done / total, rate and time left when ``enabled``
    (and :func:`shown`)."""
    if not shown(enabled) or total <= 0:
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
    if not shown(enabled) or total <= 0:
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
