"""Grids of coefficients (a₁ … a_n) and their division into chunks, the unit of work.

Points are ordered in C order (the last axis fastest; no zig-zag rows). A chunk is a hyper-rectangle
of the grid; chunks are what get evaluated, checkpointed, resumed and shared between ranks.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import bad_type, bad_value

__all__ = ["Grid", "DIM_NAMES", "axis_coordinates"]

DIM_NAMES = ("x", "y", "z", "w")


def axis_coordinates(lo: float, hi: float, steps: int) -> np.ndarray:
    """``steps`` evenly spaced values from lo to hi, endpoints exact; a symmetric range gives an exactly
    symmetric axis with 0.0 exactly on it for odd ``steps``."""
    if steps == 1:
        return np.array([0.0 if lo == -hi else (lo + hi) / 2.0])
    if lo == -hi:
        m = steps - 1
        coords = hi * (2.0 * np.arange(steps) - m) / m
    else:
        coords = lo + (hi - lo) * (np.arange(steps) / (steps - 1))
        coords[-1] = hi
        coords[np.abs(coords) <= 1e-12 * (hi - lo)] = 0.0
    return coords.astype(np.float64)


@dataclass(frozen=True)
class Grid:
    """Coordinates along each axis, in units of the directions."""

    axes: tuple[np.ndarray, ...]

    @property
    def dims(self) -> tuple[str, ...]:
        return DIM_NAMES[: len(self.axes)]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(a) for a in self.axes)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def ndim(self) -> int:
        return len(self.axes)

    @classmethod
    def make(cls, n_dims: int, steps: Any, span: Any, *, func: str = "surface") -> Grid:
        """Validate ``steps``/``span`` and build the grid.

        ``steps``: an int (all axes) or one int per axis, each ≥ 1. ``span``: a positive number s
        (each axis covers [−s, s]), a ``(lo, hi)`` pair for every axis, or one pair per axis.
        """
        if not 1 <= n_dims <= len(DIM_NAMES):
            raise bad_value(func, "directions", f"between 1 and {len(DIM_NAMES)} directions", n_dims)
        steps_list = _per_axis_steps(steps, n_dims, func)
        ranges = _per_axis_ranges(span, n_dims, func)
        return cls(tuple(axis_coordinates(lo, hi, n) for (lo, hi), n in zip(ranges, steps_list)))

    def coefficients(self, index: tuple[slice, ...]) -> np.ndarray:
        """The (P, n) coefficients of the points in a block, in C order."""
        sub = [a[s] for a, s in zip(self.axes, index)]
        mesh = np.meshgrid(*sub, indexing="ij")
        return np.stack([m.reshape(-1) for m in mesh], axis=1)

    def chunk_shape_for(self, points: int) -> tuple[int, ...]:
        """A block shape of about ``points`` points: whole trailing axes first."""
        points = max(1, int(points))
        shape = []
        remaining = points
        for n in reversed(self.shape):
            c = max(1, min(n, remaining))
            shape.append(c)
            remaining = max(1, remaining // c)
        return tuple(reversed(shape))

    def chunks(self, chunk_shape: Sequence[int]) -> ChunkLayout:
        return ChunkLayout(self, tuple(int(c) for c in chunk_shape))


@dataclass(frozen=True)
class ChunkLayout:
    grid: Grid
    chunk_shape: tuple[int, ...]

    @property
    def counts(self) -> tuple[int, ...]:
        """Number of chunks along each axis."""
        return tuple(math.ceil(n / c) for n, c in zip(self.grid.shape, self.chunk_shape))

    @property
    def n_chunks(self) -> int:
        return math.prod(self.counts)

    def index(self, chunk: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(chunk, self.chunk_shape, self.grid.shape))

    def block_shape(self, chunk: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.index(chunk))

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        return itertools.product(*(range(n) for n in self.counts))


def _per_axis_steps(steps: Any, n_dims: int, func: str) -> list[int]:
    items = list(steps) if isinstance(steps, (list, tuple)) else [steps] * n_dims
    if len(items) != n_dims:
        raise bad_value(func, "steps", f"an integer or {n_dims} integers (one per direction)", steps)
    for s in items:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise bad_type(func, "steps", "an integer >= 1 (or one per direction)", steps)
        if s < 1:
            raise bad_value(func, "steps", "an integer >= 1", s)
    return [int(s) for s in items]


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _per_axis_ranges(span: Any, n_dims: int, func: str) -> list[tuple[float, float]]:
    if _is_number(span):
        s = float(span)
        if not math.isfinite(s) or s <= 0:
            raise bad_value(func, "span", "a positive finite number or (lo, hi) ranges", span)
        return [(-s, s)] * n_dims
    if isinstance(span, (list, tuple)) and len(span) == 2 and all(_is_number(v) for v in span):
        ranges = [(float(span[0]), float(span[1]))] * n_dims
    elif isinstance(span, (list, tuple)) and len(span) == n_dims and all(
            isinstance(r, (list, tuple)) and len(r) == 2 and all(_is_number(v) for v in r) for r in span):
        ranges = [(float(r[0]), float(r[1])) for r in span]
    else:
        raise bad_value(func, "span", f"a positive number, a (lo, hi) pair, or {n_dims} (lo, hi) pairs", span)
    for lo, hi in ranges:
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
            raise bad_value(func, "span", "ranges (lo, hi) with lo < hi, both finite", span)
    return ranges
