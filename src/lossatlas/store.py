"""Resumable, self-describing stores of grid results (zarr v3 directories that xarray reads).

Why zarr: every chunk of every variable is its own file, written atomically (temporary
``*.partial`` file + rename), so a process killed at any moment leaves either the old or the new
chunk, never a torn one, and ranks writing different chunks never touch the same file.
HDF5/netCDF keeps one file whose internal metadata a killed writer can corrupt.

Layout of a store directory::

    zarr.json        group attributes: format, provenance (JSON), grid, chunking
    x, y, …          coordinate arrays
    loss, …          one float64 array per variable, chunked like the work
    chunk_done       uint8 per chunk: 1 once every variable of the chunk is written
    directions/      the directions (see Directions.save)
    center/          the centre θ

and beside it ``.<name>.lock``, held (flock) by the process writing the store: one process, or
rank 0 of a torch.distributed job for the whole job (see :class:`StoreLock`).

A chunk counts as done only through ``chunk_done``, written after its values; NaN values are
results like any other (divergent points), never a marker of missing work. Every written chunk
has its file (``write_empty_chunks``), so a done chunk whose file is missing or unreadable is
detected by :meth:`GridStore.repair` and recomputed, never read as NaN.

Crash safety, case by case:

* killed while creating: the store is built in ``.<name>.creating-<host>-<pid>-<id>`` and renamed
  into place when complete, so ``<name>`` is either absent or complete; leftovers are removed by
  the next run.
* killed while writing a chunk: a ``*.partial`` file may remain (removed by the next lock holder);
  the chunk is not marked done and is recomputed.
* damaged metadata (a missing array, wrong shapes): opening refuses the store with a clear message.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import _faults
from .errors import ProvenanceMismatchError, StoreError, StoreLockedError, StoreRepairWarning
from .grid import ChunkLayout, Grid

FORMAT = "lossatlas-grid-store/1"
DONE = "chunk_done"
STALE_CREATION_SECONDS = 24 * 3600  # a creation directory of another host older than this is garbage
DEAD_HOLDER_GRACE = 5.0  # seconds to wait for the kernel to release the lock of a holder that has died

__all__ = ["GridStore", "StoreLock", "FORMAT"]


def _zarr():
    import zarr

    return zarr


class StoreLock:
    """The exclusive writer lock of a store: ``flock`` on ``.<name>.lock`` beside it.

    The kernel releases it when the holder exits or is killed, so a crash never leaves a stale
    lock. The file holds one line naming the holder (pid, host, start time, command line, and the
    torch.distributed job when there is one) for the message given to a refused run.
    """

    def __init__(self, path: Path, fd: int):
        self.path = path
        self._fd: int | None = fd

    @staticmethod
    def file_for(path: str | Path) -> Path:
        """The lock file: beside the store (a hidden file), so zarr readers never see it."""
        path = Path(path)
        return path.parent / f".{path.name}.lock"

    @classmethod
    def acquire(cls, path: str | Path, *, func: str, job: str | None = None) -> StoreLock:
        """Take the lock or raise :class:`StoreLockedError` naming the holder (never waits)."""
        path = Path(path)
        lock_file = cls.file_for(path)
        try:
            lock_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"{func}(): argument 'store' at {str(path)!r} cannot be locked for writing: {exc}") \
                from exc
        deadline = time.monotonic() + DEAD_HOLDER_GRACE
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown process"
                # a holder killed a moment ago: the kernel releases its lock asynchronously, shortly after
                if _dead_local_holder(holder) and time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
                os.close(fd)
                raise StoreLockedError(f"{func}(): argument 'store' at {str(path)!r} is being written by "
                                       f"another run ({holder}); wait for it to finish or use another path") from None
        line = (f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                f"{', ' + job if job else ''}: {' '.join(sys.argv)[:200]}")
        os.ftruncate(fd, 0)
        os.pwrite(fd, line.encode(), 0)
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None


class GridStore:
    """A grid store on disk. Create with :meth:`create` or :meth:`open`; write chunks while the
    store's :class:`StoreLock` is held (by this process, or by rank 0 of this job)."""

    def __init__(self, path: Path, group: Any, *, func: str = "open_surface"):
        self.path = path
        self.group = group
        attrs = dict(group.attrs)
        missing = [k for k in ("dims", "chunk_shape", "variables", "provenance") if k not in attrs]
        if missing:
            raise self._damaged(func, f"its metadata lacks {', '.join(missing)}")
        try:
            self.provenance: dict[str, Any] = json.loads(attrs["provenance"])
            self.variables: list[str] = list(attrs["variables"])
            self.grid = Grid(tuple(np.asarray(group[d][...], dtype=np.float64) for d in attrs["dims"]))
            self.layout: ChunkLayout = self.grid.chunks(attrs["chunk_shape"])
        except Exception as exc:
            raise self._damaged(func, f"its metadata cannot be read: {exc}") from exc
        self.writes_empty_chunks = bool(attrs.get("write_empty_chunks", False))
        self._arrays: dict[str, Any] = {}
        self._lock: StoreLock | None = None
        self._validate(func)

    # -- creation / opening ---------------------------------------------------------------------
    @staticmethod
    def exists(path: str | Path) -> bool:
        return (Path(path) / "zarr.json").exists()

    @classmethod
    def open(cls, path: str | Path, *, func: str = "open_surface") -> GridStore:
        path = Path(path)
        if not path.exists():
            raise StoreError(f"{func}(): argument 'path' must be an existing lossatlas store; received "
                             f"{str(path)!r}, which does not exist")
        try:
            group = _zarr().open_group(str(path), mode="r+")
            if group.attrs.get("format") != FORMAT:
                raise ValueError("no lossatlas format marker")
        except Exception as exc:
            hint = (" (it looks like a damaged lossatlas store: delete it or pass overwrite=True)"
                    if (path / DONE / "zarr.json").exists() else "")
            raise StoreError(f"{func}(): argument 'path' must be a lossatlas store; received {str(path)!r} "
                             f"({exc}){hint}") from exc
        return cls(path, group, func=func)

    @classmethod
    def create(cls, path: str | Path, *, grid: Grid, chunk_shape: Sequence[int], variables: Sequence[str],
               provenance: Mapping[str, Any], extra_attrs: Mapping[str, Any] | None = None,
               coord_attrs: Mapping[str, Mapping[str, Any]] | None = None,
               write_extra=None) -> GridStore:
        """Build the store in a temporary directory beside ``path`` and rename it into place, so a
        crash during creation never leaves a half-made store at ``path``."""
        zarr = _zarr()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.creating-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        encoding = {"name": "default", "separator": "/"}
        try:
            root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            for dim, coords in zip(grid.dims, grid.axes):
                arr = root.create_array(dim, shape=coords.shape, dtype="float64", chunks=coords.shape,
                                        dimension_names=[dim])
                arr[...] = coords
                for k, v in (coord_attrs or {}).get(dim, {}).items():
                    arr.attrs[k] = v
            layout = grid.chunks(chunk_shape)
            for name in variables:
                root.create_array(name, shape=grid.shape, dtype="float64", chunks=tuple(chunk_shape),
                                  fill_value=np.nan, dimension_names=list(grid.dims), chunk_key_encoding=encoding)
            root.create_array(DONE, shape=layout.counts, dtype="uint8", chunks=(1,) * grid.ndim, fill_value=0,
                              dimension_names=[f"chunk_{d}" for d in grid.dims], chunk_key_encoding=encoding)
            if write_extra is not None:
                write_extra(tmp)
            attrs = {"format": FORMAT, "dims": list(grid.dims), "chunk_shape": list(chunk_shape),
                     "variables": list(variables), "provenance": json.dumps(provenance, sort_keys=True),
                     "write_empty_chunks": True}
            attrs.update(extra_attrs or {})
            root.update_attributes(attrs)  # one metadata write
            _faults.checkpoint("create")
            os.rename(tmp, path)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and cls.exists(path):
                return cls.open(path)  # another process created it first
            raise StoreError(f"could not create store at {str(path)!r}: {exc}") from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls.open(path)

    @staticmethod
    def clean_leftovers(path: str | Path) -> list[str]:
        """Remove creation directories of crashed runs beside ``path``: those of dead processes of
        this host, and those of other hosts older than a day. Call while holding the lock."""
        path = Path(path)
        removed = []
        host = socket.gethostname()
        for tmp in path.parent.glob(f".{path.name}.creating-*"):
            rest = tmp.name[len(f".{path.name}.creating-"):]
            parts = rest.rsplit("-", 2)
            stale = False
            if len(parts) == 3 and parts[0] == host and parts[1].isdigit():
                stale = not _alive(int(parts[1]))
            else:
                try:
                    stale = time.time() - tmp.stat().st_mtime > STALE_CREATION_SECONDS
                except OSError:
                    stale = False
            if stale:
                shutil.rmtree(tmp, ignore_errors=True)
                removed.append(tmp.name)
        return removed

    @staticmethod
    def remove(path: str | Path, *, func: str) -> None:
        """Delete a lossatlas store (refuses directories that are not lossatlas stores).

        Under torch.distributed this is collective (call it on every rank): rank 0 deletes, the
        others wait, so a rank cannot delete a store another rank has just created."""
        from .distributed import context

        ctx = context()
        if ctx.active:
            ctx.run_on_main(lambda: GridStore.remove_here(path, func=func))
        else:
            GridStore.remove_here(path, func=func)

    @staticmethod
    def remove_here(path: str | Path, *, func: str) -> None:
        """:meth:`remove` in this process only (no coordination with other ranks)."""
        path = Path(path)
        if not path.exists():
            return
        marker = path / "zarr.json"
        ok = (path / DONE / "zarr.json").exists()  # a lossatlas store, possibly with damaged metadata
        if marker.exists():
            try:
                ok = ok or json.loads(marker.read_text()).get("attributes", {}).get("format") == FORMAT
            except ValueError:
                pass
        if not ok and path.is_dir() and any(path.iterdir()):
            raise StoreError(f"{func}(): argument 'store' points to {str(path)!r}, which exists and is not a "
                             "lossatlas store; refusing to overwrite it")
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()

    # -- validation and repair ------------------------------------------------------------------
    def _damaged(self, func: str, why: str) -> StoreError:
        arg = "path" if func.startswith("open") else "store"
        return StoreError(f"{func}(): argument '{arg}' points to a damaged lossatlas store at {str(self.path)!r} "
                          f"({why}); delete it or pass overwrite=True to recompute it")

    def _validate(self, func: str) -> None:
        """Refuse a store whose arrays do not match its own metadata (never use it silently)."""
        expected = {name: (self.grid.shape, tuple(self.layout.chunk_shape), "float64") for name in self.variables}
        expected[DONE] = (self.layout.counts, (1,) * self.grid.ndim, "uint8")
        for name, (shape, chunks, dtype) in expected.items():
            try:
                arr = self.group[name]
            except Exception:
                raise self._damaged(func, f"array {name!r} is missing") from None
            if tuple(arr.shape) != tuple(shape) or tuple(arr.chunks) != tuple(chunks) or str(arr.dtype) != dtype:
                raise self._damaged(func, f"array {name!r} has shape {tuple(arr.shape)}, chunks "
                                          f"{tuple(arr.chunks)}, dtype {arr.dtype}; expected {tuple(shape)}, "
                                          f"{tuple(chunks)}, {dtype}")

    def _chunk_file(self, name: str, chunk: tuple[int, ...]) -> Path:
        return self.path.joinpath(name, "c", *map(str, chunk))

    def repair(self, *, func: str) -> list[str]:
        """Clean up after a crashed run (call while holding the lock, before writing).

        Removes ``*.partial`` files of interrupted writes, deletes chunk files that cannot be
        decoded, and un-marks done chunks whose values are missing or unreadable so that they are
        computed again. Returns what was repaired (also issued as a :class:`StoreRepairWarning`).
        """
        notes = []
        partial = list(self.path.rglob("*.partial"))
        for p in partial:
            try:
                p.unlink()
            except OSError:
                pass
        if partial:
            notes.append(f"removed {len(partial)} unfinished temporary write(s)")
        done = self._checked_done(notes)
        redo: set[tuple[int, ...]] = set()
        for name in self.variables:
            try:
                np.asarray(self._array(name)[...])
            except Exception:
                for chunk in self.layout:
                    try:
                        np.asarray(self._array(name)[self.layout.index(chunk)])
                    except Exception:
                        self._chunk_file(name, chunk).unlink(missing_ok=True)
                        notes.append(f"deleted unreadable chunk {chunk} of {name!r}")
                        redo.add(chunk)
        if self.writes_empty_chunks:
            for chunk in self.layout:
                if done[chunk] and any(not self._chunk_file(n, chunk).exists() for n in self.variables):
                    notes.append(f"chunk {chunk} was marked done but its values are missing")
                    redo.add(chunk)
        for chunk in sorted(redo):
            if done[chunk]:
                self._array(DONE)[tuple(slice(i, i + 1) for i in chunk)] = np.zeros((1,) * len(chunk), np.uint8)
        if notes:
            warnings.warn(StoreRepairWarning(
                f"{func}(): the store at {str(self.path)!r} was left half-written by an interrupted run and has "
                f"been repaired: {'; '.join(notes[:5])}{' …' if len(notes) > 5 else ''}"), stacklevel=3)
        return notes

    def _checked_done(self, notes: list[str]) -> np.ndarray:
        try:
            return self.done_mask()
        except Exception:
            for chunk in self.layout:
                try:
                    np.asarray(self._array(DONE)[tuple(slice(i, i + 1) for i in chunk)])
                except Exception:
                    self._chunk_file(DONE, chunk).unlink(missing_ok=True)
                    notes.append(f"deleted unreadable done marker of chunk {chunk}")
            return self.done_mask()

    # -- provenance ------------------------------------------------------------------------------
    def check_provenance(self, expected: Mapping[str, Any], *, func: str) -> None:
        """Raise :class:`ProvenanceMismatchError` naming every field that differs.

        The ``"behaviour"`` field (:meth:`Problem.behaviour_fingerprint`: loss, metrics and model
        outputs at fixed points) is compared numerically, with a tolerance scaled to the evaluation
        precision, and the message says what differs (model outputs, the loss, a metric). A store
        without one (made before behaviour fingerprints) or with one of another scheme is accepted
        on its other fields, with a warning saying so."""
        from . import _behaviour as B

        diffs: list[str] = []
        shown: list[str] = []
        for key, value in expected.items():
            have = self.provenance.get(key, "<missing>")
            if key == "behaviour":
                if not B.comparable(have, value):
                    note = (B.describe_missing(func, str(self.path)) if key not in self.provenance
                            else B.describe_incomparable(func, str(self.path), have, value))
                    warnings.warn(note, UserWarning, stacklevel=3)
                    continue
                why = B.compare(have, value)
                if why:
                    diffs.append(key)
                    shown.insert(0, "behaviour: " + "; ".join(why[:3]))
                continue
            if json.dumps(have, sort_keys=True) != json.dumps(value, sort_keys=True):
                diffs.append(key)
                shown.append(f"{key}: store has {_short(_part(have, value))}, requested {_short(_part(value, have))}")
        if diffs:
            raise ProvenanceMismatchError(
                f"{func}(): argument 'store' at {str(self.path)!r} was made by a different computation "
                f"({len(diffs)} field(s) differ: {'; '.join(shown[:4])}); pass overwrite=True to replace it, "
                "or another path")

    # -- locking ----------------------------------------------------------------------------------
    def lock(self, *, func: str, job: str | None = None) -> None:
        """Take the exclusive writer lock (released automatically if the process dies) and repair
        what a crashed writer left behind.

        Under torch.distributed this is collective (call it on every rank): rank 0 takes the lock
        for the whole job and repairs, and every rank raises the same error if the store is busy.
        :func:`lossatlas.runner.open_session` does all of opening, locking and checking at once."""
        from .distributed import context

        ctx = context()

        def take() -> None:
            self._lock = StoreLock.acquire(self.path, func=func, job=job or ctx.job or None)
            try:
                self.repair(func=func)
            except BaseException:
                self.unlock()
                raise
        ctx.run_on_main(take)

    @staticmethod
    def lock_path(path: Path) -> Path:
        """The lock file beside the store."""
        return StoreLock.file_for(path)

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- chunks -----------------------------------------------------------------------------------
    def _array(self, name: str):
        arr = self._arrays.get(name)
        if arr is None:
            arr = self.group[name]
            if self.writes_empty_chunks:
                arr = arr.with_config({"write_empty_chunks": True})
            self._arrays[name] = arr
        return arr

    def done_mask(self) -> np.ndarray:
        """Boolean array over the chunk grid: True where the chunk's values are all written."""
        return np.asarray(self._array(DONE)[...]).astype(bool)

    def pending(self) -> list[tuple[int, ...]]:
        done = self.done_mask()
        return [c for c in self.layout if not done[c]]

    def write_chunk(self, chunk: tuple[int, ...], values: Mapping[str, np.ndarray]) -> None:
        """Write every variable of one chunk, then mark it done (the marker is written last)."""
        index = self.layout.index(chunk)
        shape = self.layout.block_shape(chunk)
        for name in self.variables:
            _faults.checkpoint("write")
            self._array(name)[index] = np.asarray(values[name], dtype=np.float64).reshape(shape)
        _faults.checkpoint("done")
        self._array(DONE)[tuple(slice(i, i + 1) for i in chunk)] = np.ones((1,) * len(chunk), dtype=np.uint8)

    def read(self) -> dict[str, np.ndarray]:
        return {name: np.asarray(self._array(name)[...]) for name in self.variables}

    def points_done(self) -> int:
        done = self.done_mask()
        return int(sum(int(np.prod(self.layout.block_shape(c))) for c in self.layout if done[c]))


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is running (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
    except OSError:
        return True


def _dead_local_holder(holder: str) -> bool:
    """True when the lock line names a process of this host that no longer runs."""
    parts = holder.split()
    if len(parts) >= 4 and parts[0] == "pid" and parts[1].isdigit() and parts[2] == "on" \
            and parts[3] == socket.gethostname():
        return not _alive(int(parts[1]))
    return False


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 24 else text[:21] + "..."


def _part(value: Any, other: Any) -> Any:
    """The fields of a ``a=1|b=2`` description that ``other`` does not have (settings, losses): what
    differs, not the common prefix that a short display would show instead."""
    if isinstance(value, str) and isinstance(other, str) and "|" in value + other:
        theirs = set(other.split("|"))
        mine = [f for f in value.split("|") if f not in theirs]
        return "|".join(mine) if mine else "(none)"
    return value
