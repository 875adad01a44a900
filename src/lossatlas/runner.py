"""Running an evaluation over the chunks of a grid, into memory or into a resumable store.

The runner is generic: it takes ``evaluate(coefficients) -> {variable: values}`` for a block of
points and knows nothing about losses. Surfaces and curvature ratio maps both use it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .grid import ChunkLayout
from .progress import progress_bar
from .store import GridStore

ChunkFn = Callable[[np.ndarray], dict[str, np.ndarray]]


def run_chunks(layout: ChunkLayout, evaluate: ChunkFn, variables: Sequence[str], *, store: GridStore | None,
               progress: bool, description: str) -> dict[str, np.ndarray]:
    """Evaluate every chunk not yet done; return the full arrays (NaN only where a value is NaN)."""
    grid = layout.grid
    if store is not None:
        pending = store.pending()
        done_points = grid.size - sum(int(np.prod(layout.block_shape(c))) for c in pending)
    else:
        pending = list(layout)
        done_points = 0
        values = {v: np.full(grid.shape, np.nan) for v in variables}
    with progress_bar(grid.size, description, enabled=progress, completed=done_points) as advance:
        for chunk in pending:
            index = layout.index(chunk)
            shape = layout.block_shape(chunk)
            result = evaluate(grid.coefficients(index))
            if store is not None:
                store.write_chunk(chunk, result)
            else:
                for v in variables:
                    values[v][index] = np.asarray(result[v]).reshape(shape)
            advance(int(np.prod(shape)))
    return store.read() if store is not None else values
