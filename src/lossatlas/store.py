"""Resumable, self-describing stores of grid results (zarr v3 directories that xarray reads).

Why zarr: every chunk of every variable is its own file, written atomically (temporary file +
rename), so a process killed at any moment leaves either the old or the new chunk, never a torn
one, and ranks writing different chunks never touch the same file. HDF5/netCDF keeps one file
whose internal metadata a killed writer can corrupt.

Layout of a store directory::

    zarr.json        group attributes: format, provenance (JSON), grid, chunking
    x, y, …          coordinate arrays
    loss, …          one float64 array per variable, chunked like the work
    chunk_done       uint8 per chunk: 1 once every variable of the chunk is written
    directions/      the directions (see Directions.save)
    center/          the centre θ

and beside it ``.<name>.lock``, held (flock) by the process writing the store.

A chunk counts as done only through ``chunk_done``, written after its values; NaN values are
results like any other (divergent points), never a marker of missing work.
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ProvenanceMismatchError, StoreError, StoreLockedError
from .grid import ChunkLayout, Grid

FORMAT = "lossatlas-grid-store/1"
DONE = "chunk_done"

__all__ = ["GridStore", "FORMAT"]


def _zarr():
    import zarr

    return zarr


class GridStore:
    """A grid store on disk. Create with :meth:`create` or :meth:`open`; write chunks while holding :meth:`lock`."""

    def __init__(self, path: Path, group: Any):
        self.path = path
        self.group = group
        attrs = dict(group.attrs)
        self.provenance: dict[str, Any] = json.loads(attrs["provenance"])
        self.variables: list[str] = list(attrs["variables"])
        self.grid = Grid(tuple(np.asarray(group[d][...], dtype=np.float64) for d in attrs["dims"]))
        self.layout: ChunkLayout = self.grid.chunks(attrs["chunk_shape"])
        self._lock_fd: int | None = None

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
            raise StoreError(f"{func}(): argument 'path' must be a lossatlas store; received {str(path)!r} "
                             f"({exc})") from exc
        return cls(path, group)

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
        tmp = path.parent / f".{path.name}.creating-{uuid.uuid4().hex[:8]}"
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
                                  fill_value=np.nan, dimension_names=list(grid.dims))
            root.create_array(DONE, shape=layout.counts, dtype="uint8", chunks=(1,) * grid.ndim, fill_value=0,
                              dimension_names=[f"chunk_{d}" for d in grid.dims])
            if write_extra is not None:
                write_extra(tmp)
            attrs = {"format": FORMAT, "dims": list(grid.dims), "chunk_shape": list(chunk_shape),
                     "variables": list(variables), "provenance": json.dumps(provenance, sort_keys=True)}
            attrs.update(extra_attrs or {})
            root.attrs.update(attrs)
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
    def remove(path: str | Path, *, func: str) -> None:
        """Delete a lossatlas store (refuses directories that are not lossatlas stores)."""
        path = Path(path)
        if not path.exists():
            return
        marker = path / "zarr.json"
        ok = False
        if marker.exists():
            try:
                ok = json.loads(marker.read_text()).get("attributes", {}).get("format") == FORMAT
            except ValueError:
                ok = False
        if not ok and path.is_dir() and any(path.iterdir()):
            raise StoreError(f"{func}(): argument 'store' points to {str(path)!r}, which exists and is not a "
                             "lossatlas store; refusing to overwrite it")
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()

    # -- provenance ------------------------------------------------------------------------------
    def check_provenance(self, expected: Mapping[str, Any], *, func: str) -> None:
        """Raise :class:`ProvenanceMismatchError` naming every field that differs."""
        diffs = []
        for key, value in expected.items():
            have = self.provenance.get(key, "<missing>")
            if json.dumps(have, sort_keys=True) != json.dumps(value, sort_keys=True):
                diffs.append(key)
        if diffs:
            shown = "; ".join(f"{k}: store has {_short(self.provenance.get(k))}, requested {_short(expected[k])}"
                              for k in diffs[:4])
            raise ProvenanceMismatchError(
                f"{func}(): argument 'store' at {str(self.path)!r} was made by a different computation "
                f"({len(diffs)} field(s) differ: {shown}); pass overwrite=True to replace it, or another path")

    # -- locking ----------------------------------------------------------------------------------
    def lock(self, *, func: str) -> None:
        """Take the exclusive writer lock (released automatically if the process dies)."""
        lock_path = self.lock_path(self.path)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown process"
            finally:
                os.close(fd)
            raise StoreLockedError(f"{func}(): argument 'store' at {str(self.path)!r} is being written by "
                                   f"another run ({holder}); wait for it to finish or use another path") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)[:200]}".encode(), 0)
        self._lock_fd = fd
        self._clean_partials()

    @staticmethod
    def lock_path(path: Path) -> Path:
        """The lock file: beside the store (a hidden file), so zarr readers never see it."""
        return path.parent / f".{path.name}.lock"

    def unlock(self) -> None:
        if self._lock_fd is not None:
            try:
                os.ftruncate(self._lock_fd, 0)
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None

    def _clean_partials(self) -> None:
        """Remove temporary files of atomic writes interrupted by a crash (never real chunks)."""
        for p in self.path.rglob("*.partial"):
            try:
                p.unlink()
            except OSError:
                pass

    # -- chunks -----------------------------------------------------------------------------------
    def done_mask(self) -> np.ndarray:
        """Boolean array over the chunk grid: True where the chunk's values are all written."""
        return np.asarray(self.group[DONE][...]).astype(bool)

    def pending(self) -> list[tuple[int, ...]]:
        done = self.done_mask()
        return [c for c in self.layout if not done[c]]

    def write_chunk(self, chunk: tuple[int, ...], values: Mapping[str, np.ndarray]) -> None:
        """Write every variable of one chunk, then mark it done (the marker is written last)."""
        index = self.layout.index(chunk)
        shape = self.layout.block_shape(chunk)
        for name in self.variables:
            self.group[name][index] = np.asarray(values[name], dtype=np.float64).reshape(shape)
        self.group[DONE][tuple(slice(i, i + 1) for i in chunk)] = np.ones((1,) * len(chunk), dtype=np.uint8)

    def read(self) -> dict[str, np.ndarray]:
        return {name: np.asarray(self.group[name][...]) for name in self.variables}

    def points_done(self) -> int:
        done = self.done_mask()
        return int(sum(int(np.prod(self.layout.block_shape(c))) for c in self.layout if done[c]))


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 24 else text[:21] + "..."
