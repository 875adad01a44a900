"""Argument checks shared by every plot function (one place, one message style).

Each raises the library's own exception with the standard one-line message naming the function,
the argument, what was expected and what was received, before any drawing is done.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError, bad_type, bad_value, with_name


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_limit(*args: Any) -> float | None:
    """``check_limit(arg, value)``: ``value`` (``vmin``/``vmax``) as a finite float, or None. Every
    check here names the public function running, or the name given first (``check_limit(func, arg,
    value)``)."""
    func, (arg, value) = with_name(args, 2, "check_limit")
    if value is None:
        return None
    if not _is_real(value):
        raise bad_type(func, arg, "a finite real number or None", value)
    if not math.isfinite(float(value)):
        raise bad_value(func, arg, "a finite real number or None", value)
    return float(value)


def check_limits(*args: Any) -> tuple[float | None, float | None]:
    """``check_limits(vmin, vmax)``: both as finite floats (or None) with ``vmin < vmax`` when both
    are given."""
    func, (vmin, vmax) = with_name(args, 2, "check_limits")
    lo, hi = check_limit(func, "vmin", vmin), check_limit(func, "vmax", vmax)
    if lo is not None and hi is not None and not lo < hi:
        raise bad_value(func, "vmin", f"smaller than vmax={hi:g}", vmin)
    return lo, hi


def check_levels(*args: Any, arg: str = "levels", sequence: bool = True) -> Any:
    """``check_levels(levels)``: a positive integer (how many), or (if ``sequence``) a non-empty
    increasing sequence of finite numbers (where)."""
    func, (levels,) = with_name(args, 1, "check_levels")
    expected = "a positive integer" + (" or an increasing sequence of finite numbers" if sequence else "")
    if isinstance(levels, (numbers.Integral, np.integer)) and not isinstance(levels, (bool, np.bool_)):
        if int(levels) < 1:
            raise bad_value(func, arg, expected, levels)
        return int(levels)
    if not sequence or isinstance(levels, (str, bytes)) or not isinstance(levels, (Sequence, np.ndarray)):
        raise bad_type(func, arg, expected, levels)
    try:
        arr = np.asarray(levels, dtype=float)
    except (TypeError, ValueError):
        raise bad_type(func, arg, expected, levels) from None
    if arr.ndim != 1 or arr.size == 0 or not np.isfinite(arr).all() or (np.diff(arr) <= 0).any():
        raise bad_value(func, arg, expected, levels)
    return arr


def check_out_path(*args: Any, arg: str = "path") -> Path:
    """``check_out_path(path, formats)``: an output file path with one of ``formats`` as suffix, its parent folder created (a folder
    that cannot be created, or a path that is a directory, is a ``StoreError`` naming it)."""
    func, (path, formats) = with_name(args, 2, "check_out_path")
    if not isinstance(path, (str, Path)):
        raise bad_type(func, arg, "a file path (str or pathlib.Path)", path)
    path = Path(path)
    if path.suffix.lower() not in formats:
        raise bad_value(func, arg, f"a file name ending in one of {tuple(formats)}", str(path))
    if path.is_dir():
        raise StoreError(f"{func}(): argument '{arg}' must be a file path; received {str(path)!r}, a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{func}(): argument '{arg}' must be in a folder that exists or can be created; "
                         f"received {str(path)!r} ({_oserror(exc)})") from exc
    return path


def write_failed(func: str, path: Path, exc: OSError, arg: str = "path") -> StoreError:
    """The error for a figure that could not be written to ``path``."""
    return StoreError(f"{func}(): argument '{arg}' could not be written; received {str(path)!r} ({_oserror(exc)})")


def _oserror(exc: OSError) -> str:
    text = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


__all__ = ["check_limit", "check_limits", "check_levels", "check_out_path", "write_failed"]


def _inline_backend() -> bool:
    import matplotlib

    return "inline" in str(matplotlib.get_backend()).lower()


def released(fig):
    """``fig`` as a figure that a notebook displays once: in Jupyter's inline backend a figure still
    open in pyplot is drawn at the end of the cell *and* again as the cell's returned value, so it is
    closed there (it still displays, saves and can be edited); elsewhere pyplot keeps it, so that
    ``plt.show()`` in a script shows it."""
    if _inline_backend():
        import matplotlib.pyplot as plt

        plt.close(fig)
    return fig


def subplots(*args, **kwargs):
    """``plt.subplots`` whose figure is :func:`released` (shown once in notebooks)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(*args, **kwargs)
    return released(fig), ax


def figure(**kwargs):
    """``plt.figure`` whose figure is :func:`released` (shown once in notebooks)."""
    import matplotlib.pyplot as plt

    return released(plt.figure(**kwargs))
