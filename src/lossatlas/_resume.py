"""Argument checks every store-backed job (surfaces, curvature maps) shares; the resume itself is
:func:`lossatlas.grid_job.run_grid`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import bad_type


def check_store_args(func: str, store: Any, overwrite: Any) -> Path | None:
    """Validate the ``store``/``overwrite`` arguments; the store path or None."""
    if store is not None and not isinstance(store, (str, Path)):
        raise bad_type(func, "store", "a path (str or pathlib.Path) or None", store)
    if not isinstance(overwrite, bool):
        raise bad_type(func, "overwrite", "a bool", overwrite)
    return Path(store) if store is not None else None
