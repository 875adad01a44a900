"""Resuming grid computations: the steps every store-backed job (surfaces, curvature maps) shares."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import bad_type
from .store import GridStore


def check_store_args(func: str, store: Any, overwrite: Any) -> Path | None:
    """Validate the ``store``/``overwrite`` arguments; the store path or None."""
    if store is not None and not isinstance(store, (str, Path)):
        raise bad_type(func, "store", "a path (str or pathlib.Path) or None", store)
    if not isinstance(overwrite, bool):
        raise bad_type(func, "overwrite", "a bool", overwrite)
    return Path(store) if store is not None else None


def open_existing(store: Path | None, *, overwrite: bool, func: str,
                  expected: Callable[[dict[str, Any]], dict[str, Any]]) -> GridStore | None:
    """The store already at ``store``, locked for writing and checked against
    ``expected(stored_provenance)`` (a mismatch raises :class:`ProvenanceMismatchError`); None when
    there is none (``overwrite=True`` first removes it)."""
    if store is None:
        return None
    if overwrite:
        GridStore.remove(store, func=func)
    if not GridStore.exists(store):
        return None
    gstore = GridStore.open(store, func=func)
    gstore.lock(func=func)
    try:
        gstore.check_provenance(expected(gstore.provenance), func=func)
    except BaseException:
        gstore.unlock()
        raise
    return gstore
