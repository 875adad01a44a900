"""Debug hooks for fault-injection tests: mark phases of a run and optionally pause in them.

Off unless an environment variable is set, and then only a few microseconds per call:

* ``LOSSATLAS_DEBUG_TRACE=/path/file``: every :func:`checkpoint` appends one line
  ``"<phase> <pid> <rank>"`` to the file (``O_APPEND``, so several processes may share it).
* ``LOSSATLAS_DEBUG_PAUSE="write=0.05,done=0.05"``: sleep that many seconds at those phases, which
  widens the window in which a test can kill the process there.

Phases: ``start`` (a run begins, before any store is touched), ``create`` (a new store is
complete in its temporary directory, not yet renamed into place), ``locked`` (the writer lock is
held), ``chunk`` (a chunk's evaluation starts), ``write`` (before each variable of a chunk is
written), ``digest`` (values written, before the chunk's checksum is taken), ``done`` (before the
chunk's done marker, which holds the checksum, is written).

The environment is read at the first checkpoint of each process (forked children re-read it).
"""

from __future__ import annotations

import os
import time

TRACE = "LOSSATLAS_DEBUG_TRACE"
PAUSE = "LOSSATLAS_DEBUG_PAUSE"

_config: tuple[str | None, dict[str, float]] | None = None


def _load() -> tuple[str | None, dict[str, float]]:
    pauses: dict[str, float] = {}
    for item in os.environ.get(PAUSE, "").split(","):
        name, _, seconds = item.partition("=")
        if name.strip() and seconds.strip():
            pauses[name.strip()] = float(seconds)
    return os.environ.get(TRACE) or None, pauses


def reset() -> None:
    """Forget the cached configuration (read the environment again at the next checkpoint)."""
    global _config
    _config = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=reset)


def checkpoint(phase: str) -> None:
    """Record reaching ``phase`` and pause there if configured; a no-op otherwise."""
    global _config
    if _config is None:
        _config = _load()
    trace, pauses = _config
    if trace is None and not pauses:
        return
    if trace is not None:
        fd = os.open(trace, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{phase} {os.getpid()} {os.environ.get('RANK', '0')}\n".encode())
        finally:
            os.close(fd)
    delay = pauses.get(phase)
    if delay:
        time.sleep(delay)
