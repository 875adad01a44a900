"""Refusing grids too large to be meant, with their estimated cost, unless asked explicitly.

A grid of 10⁸ points (``steps=10000`` in 2-D, or ``steps=1000`` in 3-D) would run for days and fill
memory with results; it is almost always a typo. :func:`check_grid_cost` refuses more than
:data:`MAX_POINTS` points unless ``allow_large=True`` (CLI ``--allow-large``), with the number of
points, the memory of the results and a time estimated from one timed evaluation of the loss.
"""

from __future__ import annotations

import time
from typing import Any

from .errors import InvalidArgumentError, bad_type

#: most grid points evaluated without ``allow_large=True``
MAX_POINTS = 10**7


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1024 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PB"  # pragma: no cover


def _human_seconds(s: float) -> str:
    for unit, size in (("years", 365 * 86400), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if s >= size:
            return f"{s / size:.3g} {unit}"
    return f"{s:.3g} s"


def check_grid_cost(func: str, grid: Any, problem: Any, center: Any, *, variables: int, allow_large: Any,
                    evaluations_per_point: float = 1.0, max_points: int = MAX_POINTS) -> None:
    """Raise :class:`InvalidArgumentError` naming ``steps`` when the grid has more than ``max_points``
    points and ``allow_large`` is not ``True``; the message gives points, memory and a time estimate
    (one timed evaluation of the loss at ``center`` × points × ``evaluations_per_point``)."""
    if not isinstance(allow_large, bool):
        raise bad_type(func, "allow_large", "a bool", allow_large)
    points = int(grid.size)
    if points <= max_points or allow_large:
        return
    t0 = time.perf_counter()
    problem.loss(center)
    per_point = (time.perf_counter() - t0) * evaluations_per_point
    memory = points * max(variables, 1) * 8.0
    shape = " × ".join(str(s) for s in grid.shape)
    raise InvalidArgumentError(
        f"{func}(): argument 'steps' gives a grid of {shape} = {points:.3g} points, more than {max_points:.0e} "
        f"without allow_large=True (CLI --allow-large); estimated cost: {_human_bytes(memory)} of results and "
        f"about {_human_seconds(points * per_point)} of computing ({per_point:.2g} s per point measured); "
        f"use fewer steps, or pass allow_large=True to run it anyway")
