"""Resumable, self-describing stores of grid results (zarr v3 directories that xarray reads).

Why zarr: every chunk of every variable is its own file, written atomically (temporary
``*.partial`` file + rename), so a process killed at any moment leaves either the old or the new
chunk, never a torn one, and ranks writing different chunks never touch the same file.
HDF5/netCDF keeps one file whose internal metadata a killed writer can corrupt.

Layout of a store directory::

    zarr.json        group attributes: format, provenance (JSON), grid, chunking
    x, y, …          coordinate arrays
    loss, …          one float64 array per variable, chunked like the work
    chunk_done       uint64 per chunk: 0 until every variable of the chunk is written, then the
                     chunk's checksum (uint8 and 1 in stores made before checksums)
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

Integrity (stores made since checksums, ``attrs["integrity"]``):

* every group attribute and every coordinate array (values and attributes) has a digest taken at
  creation; opening a store whose attributes or coordinates were edited, added or removed refuses
  it (:class:`StoreError` naming them);
* the done marker of a chunk *is* its checksum: ``chunk_done`` (uint64) holds a digest (blake2b,
  64 bits, never 0) of the chunk's exact float64 bytes of every variable and of its index, written
  in one file after the values (0: not done), so no moment exists where a chunk is marked done
  without its checksum; every read
  (:meth:`GridStore.read`, ``open_surface``) checks every done chunk, and a chunk that is missing,
  undecodable (truncated) or does not match its digest is *damaged*: a read refuses the store
  naming the chunks, a resume (:meth:`GridStore.repair`) marks them not done and recomputes them
  (with a :class:`StoreRepairWarning` naming them), and :meth:`GridStore.audit` lists them
  (``lossatlas info --check``).

Stores made before checksums open as before and say ``verified = False`` ("unverified").
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import _faults
from . import _behaviour as B
from .errors import ProvenanceMismatchError, StoreError, StoreLockedError, StoreRepairWarning, bad_type
from .grid import ChunkLayout, Grid

FORMAT = "lossatlas-grid-store/1"
DONE = "chunk_done"
INTEGRITY = "integrity"
SCHEME = "lossatlas-digest/1 (blake2b-64)"
STALE_CREATION_SECONDS = 24 * 3600  # a creation directory of another host older than this is garbage
DEAD_HOLDER_GRACE = 5.0  # seconds to wait for the kernel to release the lock of a holder that has died

__all__ = ["GridStore", "StoreLock", "FORMAT", "Damage"]


def _zarr():
    import zarr

    return zarr


def _real(path: str | Path) -> Path:
    """The store's resolved path (symlinks of the store and of its parents followed), so two paths to
    one store share one lock and one creation."""
    return Path(os.path.realpath(Path(path)))


def _hash(*parts: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.digest()


def _json_digest(value: Any) -> str:
    return _hash(json.dumps(value, sort_keys=True).encode()).hex()


def _coord_digest(values: np.ndarray, attrs: Mapping[str, Any]) -> str:
    data = np.ascontiguousarray(np.asarray(values, dtype="<f8"))
    return _hash(data.tobytes(), repr(data.shape).encode(), json.dumps(dict(attrs), sort_keys=True).encode()).hex()


def chunk_digest(chunk: Sequence[int], values: Mapping[str, np.ndarray]) -> int:
    """The digest of one chunk: the chunk's index, then each variable's name, shape and exact float64
    bytes (a chunk file moved to another index or variable does not match). Never 0 or 1 (0 is the
    fill value, "not done"; 1 is the marker of stores made before checksums)."""
    parts = [json.dumps([int(i) for i in chunk]).encode()]
    for name in sorted(values):
        data = np.ascontiguousarray(np.asarray(values[name], dtype="<f8"))
        parts += [name.encode(), repr(data.shape).encode(), data.tobytes()]
    value = int.from_bytes(_hash(*parts), "little")
    return value if value > 1 else value + 2


# -- the store's file-system boundary ------------------------------------------------------------------
#: what an errno means for someone running a job (the message adds the errno's name)
_WHY = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
        errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted", errno.ENOENT: "a directory on the path does not exist",
        errno.ENOTDIR: "a part of the path is a file, not a directory",
        errno.EEXIST: "a part of the path is a file, not a directory", errno.EIO: "an input/output error"}


def describe_os_error(exc: OSError) -> str:
    """``"no space left on the device [ENOSPC]"``: what an OSError means, with its errno's name."""
    code = exc.errno
    name = errno.errorcode.get(code, str(code)) if code is not None else None
    why = _WHY.get(code) or (exc.strerror or str(exc) or type(exc).__name__).lower()
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{why}{where}{f' [{name}]' if name else ''}"


@contextlib.contextmanager
def store_io(path: str | Path, *, func: str | None, what: str, resumable: bool = True, arg: str | None = None):
    """The one place where a failure of the file system under a store (disk full, read-only, permission
    denied, a missing or bad parent directory) becomes a :class:`StoreError`: every write of a store
    (creation, lock, chunks and their done markers, attributes, repair, removal) runs inside it.

    The message names the function, the store's path, what was being done and what the errno means;
    ``arg`` names the argument that gave the path (the message then starts with it). ``resumable``:
    the store keeps every chunk already saved (a chunk is done only once its marker is written, after
    its values), so the message says to rerun once the cause is fixed. The error keeps the original
    ``errno`` and is chained to the OSError."""
    try:
        yield
    except StoreError:
        raise
    except OSError as exc:
        why = describe_os_error(exc)
        hint = ("; chunks already saved are kept: fix the cause and rerun the same command to resume"
                if resumable else "")
        prefix = f"{func}(): " if func else ""
        if arg:
            text = f"{prefix}argument {arg!r} at {str(path)!r}: could not {what}: {why}{hint}"
        else:
            text = f"{prefix}could not {what} the store at {str(path)!r}: {why}{hint}"
        err = StoreError(text)
        err.errno = exc.errno
        raise err from exc


@dataclass(frozen=True)
class Damage:
    """One problem found in a store's chunks: ``kind`` is ``unreadable`` (the file cannot be decoded),
    ``missing`` (a done chunk without its file), ``checksum`` (values differ from their digest),
    or ``marker`` (an unreadable done marker)."""

    chunk: tuple[int, ...]
    variable: str | None
    kind: str
    done: bool

    def __str__(self) -> str:
        c, v = self.chunk, self.variable
        return {"unreadable": f"unreadable chunk {c} of {v!r}",
                "missing": f"chunk {c} was marked done but its values are missing ({v!r})",
                "checksum": f"chunk {c} does not match its checksum",
                "marker": f"unreadable done marker of chunk {c}"}[self.kind]


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
        """The lock file: beside the store (a hidden file), so zarr readers never see it. The store's
        path is resolved first (symlinks followed), so every path to one store has one lock."""
        path = _real(path)
        return path.parent / f".{path.name}.lock"

    @classmethod
    def acquire(cls, path: str | Path, *, func: str, job: str | None = None) -> StoreLock:
        """Take the lock or raise :class:`StoreLockedError` naming the holder (never waits)."""
        path = Path(path)
        lock_file = cls.file_for(path)
        with store_io(path, func=func, what="create its lock file", resumable=False, arg="store"):
            if lock_file.parent.exists() and not lock_file.parent.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(lock_file.parent))
            lock_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
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
        try:
            with store_io(path, func=func, what="write its lock file", resumable=False, arg="store"):
                os.ftruncate(fd, 0)
                os.pwrite(fd, line.encode(), 0)
        except BaseException:
            os.close(fd)  # closing releases the flock
            raise
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

    def __init__(self, path: Path, group: Any, *, func: str = "open_surface", verify: bool = True):
        self.path = path
        self.group = group
        #: the public function writing the store, named in the errors of its writes
        self.func = func
        attrs = dict(group.attrs)
        missing = [k for k in ("dims", "chunk_shape", "variables", "provenance") if k not in attrs]
        if missing:
            raise self._damaged(f"its metadata lacks {', '.join(missing)}")
        self.integrity: dict[str, Any] | None = attrs.get(INTEGRITY) if isinstance(attrs.get(INTEGRITY), dict) else None
        #: whether the store carries checksums (False: made before checksums, "unverified")
        self.verified = self.integrity is not None
        #: what was edited in the attributes or coordinates since creation (empty when intact)
        self.metadata_problems: list[str] = self._metadata_problems(attrs)
        if verify and self.metadata_problems:
            raise self._damaged("; ".join(self.metadata_problems))
        try:
            self.provenance: dict[str, Any] = json.loads(attrs["provenance"])
            self.variables: list[str] = list(attrs["variables"])
            self.grid = Grid(tuple(np.asarray(group[d][...], dtype=np.float64) for d in attrs["dims"]))
            self.layout: ChunkLayout = self.grid.chunks(attrs["chunk_shape"])
        except Exception as exc:
            raise self._damaged(f"its metadata cannot be read: {exc}") from exc
        self.writes_empty_chunks = bool(attrs.get("write_empty_chunks", False))
        self._arrays: dict[str, Any] = {}
        #: (chunks, values) checked by the last :meth:`repair` (None: nothing checked yet)
        self._trusted: tuple[set[tuple[int, ...]], dict[str, np.ndarray]] | None = None
        self._validate()

    def _metadata_problems(self, attrs: Mapping[str, Any]) -> list[str]:
        """Attributes and coordinate arrays that differ from their digests taken at creation."""
        if self.integrity is None:
            try:
                if str(self.group[DONE].dtype) == "uint64":
                    return [f"its checksums ({INTEGRITY!r} attribute) were removed"]
            except Exception:
                pass
            return []
        problems = []
        sealed = self.integrity.get("attrs")
        if not isinstance(sealed, dict):
            return [f"its {INTEGRITY!r} attribute is damaged"]
        for key in sorted(set(sealed) | set(attrs)):
            if key == INTEGRITY:
                continue
            if key not in attrs:
                problems.append(f"attribute {key!r} was removed")
            elif key not in sealed:
                problems.append(f"attribute {key!r} was added")
            elif _json_digest(attrs[key]) != sealed[key]:
                problems.append(f"attribute {key!r} was edited")
        coords = self.integrity.get("coords")
        dims = attrs.get("dims")
        if not isinstance(coords, dict) or not isinstance(dims, list):
            return problems + [f"its {INTEGRITY!r} attribute is damaged"]
        for dim in dims:
            try:
                arr = self.group[dim]
                digest = _coord_digest(arr[...], dict(arr.attrs))
            except Exception:
                problems.append(f"coordinate array {dim!r} is missing or unreadable")
                continue
            if digest != coords.get(dim):
                problems.append(f"coordinate array {dim!r} was edited")
        return problems

    @staticmethod
    def _seal(root: Any, dims: Sequence[str]) -> None:
        """Record digests of every group attribute and coordinate array (at creation, or after a
        sanctioned update such as :meth:`update_attrs`)."""
        root.attrs[INTEGRITY] = GridStore._integrity(root, dict(root.attrs), dims)

    @staticmethod
    def _integrity(root: Any, attrs: Mapping[str, Any], dims: Sequence[str]) -> dict[str, Any]:
        """The digests of ``attrs`` (as stored: JSON) and of the coordinate arrays of ``root``."""
        attrs = {k: v for k, v in attrs.items() if k != INTEGRITY}
        coords = {}
        for dim in dims:
            arr = root[dim]
            coords[dim] = _coord_digest(arr[...], dict(arr.attrs))
        return {"scheme": SCHEME, "attrs": {k: _json_digest(v) for k, v in attrs.items()}, "coords": coords}

    @staticmethod
    def update_attrs(path: str | Path, values: Mapping[str, Any], *, func: str = "update_attrs") -> dict[str, Any]:
        """Add or change group attributes of a store after its run (e.g. a summary) and re-seal them;
        returns every group attribute as now stored."""
        with store_io(path, func=func, what="write the attributes of"):
            root = _zarr().open_group(str(path), mode="r+")
            attrs = dict(root.attrs)
            values = json.loads(json.dumps(dict(values)))
            if isinstance(attrs.get(INTEGRITY), dict):  # the values and their digests in one metadata write
                values[INTEGRITY] = GridStore._integrity(root, {**attrs, **values}, list(attrs["dims"]))
            root.update_attributes(values)
            return {**attrs, **values}

    # -- creation / opening ---------------------------------------------------------------------
    @staticmethod
    def exists(path: str | Path) -> bool:
        return (Path(path) / "zarr.json").exists()

    @classmethod
    def open(cls, path: str | Path, *, func: str = "open_surface", verify: bool = True) -> GridStore:
        """Open an existing store. ``verify=False`` opens one whose attributes or coordinates were
        edited (listed in ``metadata_problems``) instead of refusing it: for audits only."""
        if not isinstance(path, (str, os.PathLike)):
            raise bad_type(func, "path" if func.startswith("open") else "store", "a path (str or pathlib.Path)", path)
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
        return cls(path, group, func=func, verify=verify)

    @classmethod
    def create(cls, path: str | Path, *, grid: Grid, chunk_shape: Sequence[int], variables: Sequence[str],
               provenance: Mapping[str, Any], extra_attrs: Mapping[str, Any] | None = None,
               coord_attrs: Mapping[str, Mapping[str, Any]] | None = None,
               write_extra=None) -> GridStore:
        """Build the store in a temporary directory beside ``path`` and rename it into place, so a
        crash during creation never leaves a half-made store at ``path``."""
        zarr = _zarr()
        given = Path(path)
        path = _real(given)  # through a symlink: the store is made where it points
        if path.exists() and not cls.exists(path) and not (path.is_dir() and not any(path.iterdir())):
            if cls.is_store(path):
                raise StoreError(f"could not create store at {str(given)!r}: a damaged lossatlas store is there (its "
                                 "group metadata is missing); delete it or pass overwrite=True to recompute it")
            raise StoreError(f"could not create store at {str(given)!r}: it exists and is not a lossatlas store "
                             f"({'a file' if not path.is_dir() else 'a directory with other contents'}); "
                             "choose another path")
        tmp = path.parent / f".{path.name}.creating-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        encoding = {"name": "default", "separator": "/"}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
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
            root.create_array(DONE, shape=layout.counts, dtype="uint64", chunks=(1,) * grid.ndim, fill_value=0,
                              dimension_names=[f"chunk_{d}" for d in grid.dims], chunk_key_encoding=encoding)
            if write_extra is not None:
                write_extra(tmp)
            attrs = {"format": FORMAT, "dims": list(grid.dims), "chunk_shape": list(chunk_shape),
                     "variables": list(variables), "provenance": json.dumps(provenance, sort_keys=True),
                     "write_empty_chunks": True}
            attrs.update(extra_attrs or {})
            root.update_attributes(json.loads(json.dumps(attrs)))  # one metadata write
            cls._seal(root, grid.dims)  # digests of the attributes as stored (JSON) and of the coordinates
            _faults.checkpoint("create")
            os.rename(tmp, path)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and cls.exists(path):
                return cls.open(given)  # another process created it first
            with store_io(given, func=None, what="create", resumable=False):
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls.open(given)

    @staticmethod
    def clean_leftovers(path: str | Path) -> list[str]:
        """Remove creation directories of crashed runs beside ``path``: those of dead processes of
        this host, and those of other hosts older than a day. Call while holding the lock."""
        path = _real(path)
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
    def remove_here(path: str | Path, *, func: str) -> None:
        """Delete a lossatlas store, in this process only (:func:`lossatlas.grid_job.run_grid` calls it
        on rank 0, under the store's lock, for ``overwrite=True``).

        Deletes only a lossatlas store (one whose metadata names the format, or a damaged one that
        still has its done markers); a regular file, or a directory with anything else in it, is
        refused with :class:`StoreError`. Through a symlink, the store it points to is deleted (the
        link is kept, and the new store is made where it points). An empty directory is left in
        place (the new store takes its place)."""
        given = Path(path)
        if not given.exists():
            return  # nothing there (or a dangling link: the store will be made where it points)
        path = _real(given)
        if not path.is_dir():
            raise StoreError(f"{func}(): argument 'store' points to {str(given)!r}, which is a file, not a lossatlas "
                             "store; refusing to delete it (choose another path)")
        if not any(path.iterdir()):
            return
        if not GridStore.is_store(path):
            raise StoreError(f"{func}(): argument 'store' points to {str(given)!r}, which exists and is not a "
                             "lossatlas store; refusing to overwrite it")
        with store_io(given, func=func, what="delete it (overwrite=True)", resumable=False, arg="store"):
            shutil.rmtree(path)

    @staticmethod
    def is_store(path: str | Path) -> bool:
        """Whether ``path`` is a directory made by lossatlas (possibly damaged): its group metadata
        names the format, or its done markers are there."""
        path = Path(path)
        if not path.is_dir():
            return False
        if (path / DONE / "zarr.json").is_file():
            return True
        try:
            doc = json.loads((path / "zarr.json").read_text())
            return isinstance(doc, dict) and doc.get("attributes", {}).get("format") == FORMAT
        except (OSError, ValueError, AttributeError):
            return False

    # -- validation and repair ------------------------------------------------------------------
    def _damaged(self, why: str) -> StoreError:
        """The error naming this store as damaged (``why``), from the function that opened it."""
        func = self.func
        arg = "path" if func.startswith("open") else "store"
        return StoreError(f"{func}(): argument '{arg}' points to a damaged lossatlas store at {str(self.path)!r} "
                          f"({why}); delete it or pass overwrite=True to recompute it")

    def _validate(self) -> None:
        """Refuse a store whose arrays do not match its own metadata (never use it silently)."""
        expected = {name: (self.grid.shape, tuple(self.layout.chunk_shape), "float64") for name in self.variables}
        expected[DONE] = (self.layout.counts, (1,) * self.grid.ndim, "uint64" if self.verified else "uint8")
        for name, (shape, chunks, dtype) in expected.items():
            try:
                arr = self.group[name]
            except Exception:
                raise self._damaged(f"array {name!r} is missing") from None
            if tuple(arr.shape) != tuple(shape) or tuple(arr.chunks) != tuple(chunks) or str(arr.dtype) != dtype:
                raise self._damaged(f"array {name!r} has shape {tuple(arr.shape)}, chunks "
                                          f"{tuple(arr.chunks)}, dtype {arr.dtype}; expected {tuple(shape)}, "
                                          f"{tuple(chunks)}, {dtype}")

    def _chunk_file(self, name: str, chunk: tuple[int, ...]) -> Path:
        return self.path.joinpath(name, "c", *map(str, chunk))

    def repair(self, *, func: str | None = None) -> list[str]:
        """Clean up after a crashed run or damage (call while holding the lock, before writing).

        Removes ``*.partial`` files of interrupted writes, deletes chunk files that cannot be
        decoded, and un-marks done chunks that are damaged (values missing, unreadable, or not
        matching their checksum) so that they are computed again. Returns what was repaired (also
        issued as a :class:`StoreRepairWarning` naming the chunks to recompute; ``func``: the function
        it names, default: the one that opened the store).
        """
        func = func or self.func
        with store_io(self.path, func=func, what="repair"):
            notes, redo = self._repair()
        if notes:
            again = (f"; chunk(s) {', '.join(map(str, sorted(redo)))} will be computed again" if redo else "")
            warnings.warn(StoreRepairWarning(
                f"{func}(): the store at {str(self.path)!r} was damaged or left half-written by an interrupted run "
                f"and has been repaired: {'; '.join(notes[:5])}{' …' if len(notes) > 5 else ''}{again}"),
                stacklevel=3)
        return notes

    def _repair(self) -> tuple[list[str], set[tuple[int, ...]]]:
        """What :meth:`repair` does: (notes, chunks to compute again)."""
        notes = []
        self._trusted = None
        partial = list(self.path.rglob("*.partial"))
        for p in partial:
            try:
                p.unlink()
            except OSError:
                pass
        if partial:
            notes.append(f"removed {len(partial)} unfinished temporary write(s)")
        done, values, damage = self._scan()
        redo: set[tuple[int, ...]] = set()
        for d in damage:
            if d.kind == "unreadable":
                self._chunk_file(d.variable, d.chunk).unlink(missing_ok=True)
                notes.append(f"deleted {d}")
            elif d.kind == "marker":
                self._chunk_file(DONE, d.chunk).unlink(missing_ok=True)
                notes.append(f"deleted {d}")
            else:
                notes.append(str(d))
            if d.done or d.kind == "marker":
                redo.add(d.chunk)
        for chunk in sorted(redo):
            if done[chunk]:
                self._array(DONE)[tuple(slice(i, i + 1) for i in chunk)] = np.zeros((1,) * len(chunk), np.uint8)
        # the done chunks just checked hold trusted values: kept, so that assembling the result of the run
        # that follows (under the same lock: nobody else writes them) reads each of them once, not twice
        self._trusted = ({c for c in self.layout if done[c] and c not in redo}, values)
        return notes, redo

    def _read_done(self) -> tuple[np.ndarray, list[tuple[int, ...]]]:
        """The done markers (0: not done; the chunk's digest, or 1 before checksums), and the chunks
        whose marker cannot be decoded (counted not done)."""
        try:
            return np.asarray(self._array(DONE)[...]).astype(np.uint64), []
        except Exception:
            done = np.zeros(self.layout.counts, dtype=np.uint64)
            bad = []
            for chunk in self.layout:
                try:
                    done[chunk] = int(np.asarray(self._array(DONE)[tuple(slice(i, i + 1) for i in chunk)]).item())
                except Exception:
                    bad.append(chunk)
            return done, bad

    def _read_tolerant(self, name: str, shape: tuple[int, ...], fill: Any,
                       dtype: Any) -> tuple[np.ndarray, list[tuple[int, ...]]]:
        """A whole array, chunk by chunk where a chunk cannot be decoded (those filled, and listed)."""
        arr = self._array(name)
        try:
            return np.asarray(arr[...]), []
        except Exception:
            out = np.full(shape, fill, dtype=dtype)
            bad = []
            for chunk in self.layout:
                index = self.layout.index(chunk)
                try:
                    out[index] = np.asarray(arr[index])
                except Exception:
                    bad.append(chunk)
            return out, bad

    def _scan(self) -> tuple[np.ndarray, dict[str, np.ndarray], list[Damage]]:
        """Read everything once and check it: the done mask, the values (NaN where not done or
        damaged), and every problem found. The done markers are read first: a chunk's values and
        digest are written before its marker, so a store being written by another process is
        never seen as damaged."""
        markers, bad_markers = self._read_done()
        done = markers != 0
        damage = [Damage(c, None, "marker", False) for c in bad_markers]
        values: dict[str, np.ndarray] = {}
        for name in self.variables:
            values[name], bad = self._read_tolerant(name, self.grid.shape, np.nan, np.float64)
            damage += [Damage(c, name, "unreadable", bool(done[c])) for c in bad]
        unreadable = {(d.chunk, d.variable) for d in damage}
        if self.writes_empty_chunks:
            for chunk in self.layout:
                if done[chunk]:
                    damage += [Damage(chunk, n, "missing", True) for n in self.variables
                               if (chunk, n) not in unreadable and not self._chunk_file(n, chunk).exists()]
        if self.verified:
            flagged = {d.chunk for d in damage}
            for chunk in self.layout:
                if done[chunk] and chunk not in flagged:
                    index = self.layout.index(chunk)
                    if chunk_digest(chunk, {n: values[n][index] for n in self.variables}) != int(markers[chunk]):
                        damage.append(Damage(chunk, None, "checksum", True))
        bad_chunks = {d.chunk for d in damage if d.done}
        for chunk in self.layout:
            if not done[chunk] or chunk in bad_chunks:
                for name in self.variables:
                    values[name][self.layout.index(chunk)] = np.nan
        return done, values, damage

    def audit(self) -> list[Damage]:
        """Every damaged chunk (see :class:`Damage`), without changing anything: done chunks that
        cannot be trusted and unreadable done markers. (An unreadable file of a chunk not yet done
        holds no result: it is not listed, and the next run deletes it.)"""
        return [d for d in self._scan()[2] if d.done or d.kind == "marker"]

    def leftovers(self) -> list[str]:
        """Temporary files left by interrupted runs: ``*.partial`` writes inside the store and
        creation directories beside it (removed by the next run that writes the store)."""
        real = _real(self.path)
        out = [str(p.relative_to(self.path)) for p in sorted(self.path.rglob("*.partial"))]
        out += [p.name for p in sorted(real.parent.glob(f".{real.name}.creating-*"))]
        return out

    # -- provenance ------------------------------------------------------------------------------
    def check_provenance(self, expected: Mapping[str, Any], *, func: str) -> None:
        """Raise :class:`ProvenanceMismatchError` naming every field that differs.

        The ``"behaviour"`` field (:meth:`Problem.behaviour_fingerprint`: loss, metrics and model
        outputs at fixed points) is compared numerically, with a tolerance scaled to the evaluation
        precision, and the message says what differs (model outputs, the loss, a metric). A store
        without one (made before behaviour fingerprints) or with one of another scheme is accepted
        on its other fields, with a warning saying so."""
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

    def write_chunk(self, chunk: tuple[int, ...], values: Mapping[str, np.ndarray], *,
                    func: str | None = None) -> None:
        """Write every variable of one chunk, then mark it done (the marker, which holds the chunk's
        checksum, is written last, in one atomic file write). A failure of the file system (disk full,
        read-only, permission denied) raises :class:`StoreError`; the chunk stays not done and every
        chunk done before is kept (see :func:`store_io`)."""
        index = self.layout.index(chunk)
        shape = self.layout.block_shape(chunk)
        if self._trusted is not None:
            self._trusted[0].discard(tuple(chunk))  # what the repair read of it is no longer what is stored
        with interrupts_deferred(), store_io(self.path, func=func or self.func, what=f"write chunk {tuple(chunk)} to"):
            for name in self.variables:
                _faults.checkpoint("write")
                self._array(name)[index] = np.asarray(values[name], dtype=np.float64).reshape(shape)
            marker = 1
            if self.verified:
                _faults.checkpoint("digest")
                marker = chunk_digest(chunk, {n: np.asarray(values[n], dtype=np.float64).reshape(shape)
                                              for n in self.variables})
            _faults.checkpoint("done")
            dtype = np.uint64 if self.verified else np.uint8
            done = np.full((1,) * len(chunk), marker, dtype=dtype)
            self._array(DONE)[tuple(slice(i, i + 1) for i in chunk)] = done

    def read_checked(self, *, func: str = "open_surface") -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The values (NaN where a chunk is not done) and the done mask, after checking every done
        chunk; a damaged one raises :class:`StoreError` naming the chunks (never wrong values)."""
        done, values, damage = self._scan()
        damage = [d for d in damage if d.done or d.kind == "marker"]
        if damage:
            raise self.damage_error(damage, func=func)
        return values, done

    def damage_error(self, damage: Sequence[Damage], *, func: str) -> StoreError:
        chunks = sorted({d.chunk for d in damage})
        shown = "; ".join(map(str, damage[:6])) + (" …" if len(damage) > 6 else "")
        return StoreError(
            f"{func}(): the store at {str(self.path)!r} is damaged: {len(chunks)} chunk(s) "
            f"{', '.join(map(str, chunks[:10]))}{' …' if len(chunks) > 10 else ''} cannot be trusted ({shown}); "
            "run the computation that made it again with the same arguments to recompute them "
            "(`lossatlas info --check` lists every problem)")

    def read_chunks(self, chunks: Sequence[tuple[int, ...]], *,
                    func: str = "read") -> dict[tuple[int, ...], dict[str, np.ndarray]]:
        """The values of the given done chunks, each checked against its checksum (the checks of
        :meth:`read_checked`, for these chunks only): ``{chunk: {variable: block}}``. Chunks checked by
        the last :meth:`repair` are taken from what it read (not read again). A chunk that is not done
        or is damaged raises :class:`StoreError` naming it."""
        out: dict[tuple[int, ...], dict[str, np.ndarray]] = {}
        trusted, cached = self._trusted if self._trusted is not None else (set(), {})
        rest = [tuple(c) for c in chunks if tuple(c) not in trusted]
        for chunk in chunks:
            chunk = tuple(chunk)
            if chunk in trusted:
                index = self.layout.index(chunk)
                out[chunk] = {n: np.array(cached[n][index]) for n in self.variables}
        if not rest:
            return out
        markers, bad_markers = self._read_done()
        damage = [Damage(c, None, "marker", False) for c in bad_markers if c in set(rest)]
        for chunk in rest:
            if any(d.chunk == chunk for d in damage):
                continue
            if not markers[chunk]:
                damage.append(Damage(chunk, None, "missing", True))
                continue
            index = self.layout.index(chunk)
            block: dict[str, np.ndarray] = {}
            for name in self.variables:
                if self.writes_empty_chunks and not self._chunk_file(name, chunk).exists():
                    damage.append(Damage(chunk, name, "missing", True))
                    break
                try:
                    block[name] = np.asarray(self._array(name)[index], dtype=np.float64)
                except Exception:
                    damage.append(Damage(chunk, name, "unreadable", True))
                    break
            else:
                if self.verified and chunk_digest(chunk, block) != int(markers[chunk]):
                    damage.append(Damage(chunk, None, "checksum", True))
                    continue
                out[chunk] = block
        if damage:
            raise self.damage_error(damage, func=func)
        return out

    def read(self) -> dict[str, np.ndarray]:
        """Every variable's values after checking every done chunk (see :meth:`read_checked`)."""
        return self.read_checked(func="read")[0]

    def points_done(self) -> int:
        done = self.done_mask()
        return int(sum(int(np.prod(self.layout.block_shape(c))) for c in self.layout if done[c]))


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, then raise it.

    zarr writes on its own event-loop thread: a KeyboardInterrupt in the main thread while it waits
    for a write abandons the wait but not the write, which then lands after the interrupt was
    reported (a chunk counted as not saved turns up done). Deferring the interrupt over one chunk's
    writes (milliseconds) keeps "what the store holds" and "what was reported" the same. Only in the
    main thread, where Python delivers signals; elsewhere the block runs as is.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not \
            signal.default_int_handler:
        yield
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


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
