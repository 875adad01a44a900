"""Checks of command-line values made at the CLI boundary, before any heavy work.

Every failure is an :class:`~lossatlas.errors.InvalidArgumentError` whose one-line message names the
option (or argument), what was expected and what was received; the main turns it into one red line
and exit status 2. Output paths go through :func:`out_file`, :func:`out_dir` or :func:`store_path`,
used by every command that writes (figures, checkpoints, certificates, stores, output folders).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..errors import InvalidArgumentError

#: what ``lossatlas.plot.save`` writes (matplotlib figures) and ``plot.save_html`` (interactive figures)
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")
HTML_SUFFIXES = (".html", ".htm")
#: what ``torch.save`` checkpoints are read back as (``Trajectory.open`` and the checkpoint options)
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def _fail(option: str, expected: str, path: Path, why: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"{option} must be {expected}; received {str(path)!r} ({why})")


def _check_parent_writable(path: Path, option: str, expected: str) -> None:
    """The nearest existing folder above ``path`` must be a folder in which files can be created
    (probed by creating and removing a temporary file: permission bits say nothing to root, or on
    read-only and virtual file systems such as /proc)."""
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise _fail(option, expected, path, f"{str(parent)!r} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".lossatlas-write-probe-", dir=parent)
    except OSError as exc:
        raise _fail(option, expected, path, f"cannot create files in {str(parent)!r}: "
                                            f"{exc.strerror or type(exc).__name__}") from None
    os.close(fd)
    os.unlink(probe)


def out_file(path: Path | None, option: str, suffixes: Sequence[str] | None = None,
             what: str = "file") -> Path | None:
    """``path`` as a file to write: not an existing folder, ending in one of ``suffixes`` (when
    given, case-insensitive), in a folder that exists (or can be created) and is writable."""
    if path is None:
        return None
    path = Path(path)
    kinds = f" ending in {', '.join(suffixes)}" if suffixes else ""
    expected = f"a writable {what}{kinds}"
    if suffixes and path.suffix.lower() not in tuple(s.lower() for s in suffixes):
        raise _fail(option, expected, path, f"suffix {path.suffix or '(none)'!r} is not one this file can be "
                                            "written as")
    if path.is_dir():
        raise _fail(option, expected, path, "an existing folder")
    _check_parent_writable(path, option, expected)
    return path


def out_dir(path: Path | None, option: str, what: str = "output folder") -> Path | None:
    """``path`` as a folder to write into: new or an existing folder (not a file), creatable and
    writable."""
    if path is None:
        return None
    path = Path(path)
    expected = f"a writable {what} (new or existing)"
    if path.exists() and not path.is_dir():
        raise _fail(option, expected, path, "an existing file, not a folder")
    if path.is_dir():
        _check_parent_writable(path / "x", option, expected)
    else:
        _check_parent_writable(path, option, expected)
    return path


def store_path(path: Path | None, option: str = "--store") -> Path | None:
    """``path`` as a zarr store (a folder) to create or resume."""
    return out_dir(path, option, what="store folder")


def choice(value: str, option: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else the standard error."""
    if value not in choices:
        raise InvalidArgumentError(f"{option} must be one of {', '.join(choices)}; received {value!r}")
    return value


def finite(value: float | None, option: str) -> float | None:
    if value is not None and not math.isfinite(value):
        raise InvalidArgumentError(f"{option} must be a finite number; received {value!r}")
    return value


def value_range(vmin: float | None, vmax: float | None, low: str = "--vmin", high: str = "--vmax") -> None:
    """Finite bounds with ``vmin < vmax`` when both are given."""
    finite(vmin, low)
    finite(vmax, high)
    if vmin is not None and vmax is not None and not vmin < vmax:
        raise InvalidArgumentError(f"{low} must be smaller than {high}; received {low} {vmin:g} and {high} {vmax:g}")


def positive(value: float, option: str, *, allow_zero: bool = False) -> float:
    """A finite number > 0 (or >= 0)."""
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise InvalidArgumentError(f"{option} must be a finite number {'>=' if allow_zero else '>'} 0; "
                                   f"received {value!r}")
    return value
