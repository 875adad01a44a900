"""A grid job — what is evaluated at every point of a grid — and the one runner of such jobs.

:class:`GridJob` says *what*: the grid and its variables, the provenance of the computation, the
settings that change rounding and so are pinned (``requested``: a value, or ``None`` to let rank 0
decide), how rank 0 plans them (:attr:`GridJob.plan`), how any rank builds the evaluator
(:attr:`GridJob.evaluator`), the attributes of the result, the coordinate labels, what else a store
keeps (:attr:`GridJob.write_extra`, e.g. the centre and directions) and a summary computed from the
values (:attr:`GridJob.finish`). :func:`lossatlas.surface`, :func:`lossatlas.curvature.ratio_map`,
:func:`lossatlas.interpolate` and :meth:`lossatlas.Curve.evaluate` only build a job and call
:func:`run_grid`; none of them touches the session, the chunk loop or the store.

:func:`run_grid` says *how*, the same way for every job: on rank 0 it takes the store's lock,
removes (``overwrite``), cleans and repairs, checks the provenance and settles the pinned settings
(from the store, or by :attr:`GridJob.plan`); every rank gets the same settings or the same error.
It runs the chunk loop (:func:`lossatlas.runner.evaluate_chunks`) and assembles the result once:
the values computed in this call are kept in memory; only chunks computed by an earlier run
(resume) or by another rank are read from the store, each checked against its checksum (and a
chunk checked by the repair on opening is not read again). A complete store is read once.

The result: an ``xarray.Dataset`` with one float64 variable per job variable over the dims of the
grid (``x``, ``y``, … with ``long_name`` = the coordinate label), and the same ``attrs`` keys with or
without a store:

=======================  ==========================================================================
the job's attrs          :attr:`GridJob.attrs` of the settings (``kind``, fingerprints, …), as JSON
``chunk_shape``          points per chunk along each axis (a pinned setting)
``provenance``           JSON (sorted keys) of the job's provenance with the pinned settings: what a
                         store is checked against on resume
``points_total``         points of the grid
``points_done``          points computed (by this call or before); ``complete`` 1 when all are
``nan_points``           computed points whose first variable (``loss``) is NaN; ``inf_points``: ±inf
``seconds``              wall seconds of this call's chunk loop (0.0 when nothing was left to compute)
``ranks``                processes of this call (1 without torchrun)
``rank_points``          points computed by each rank in this call (a list, one per rank)
``rank_busy_seconds``    seconds each rank spent evaluating and writing in this call
``store``                the store's path as given ("" in memory)
``verified``             1: every value was computed in this call or checked against its checksum; 0:
                         read from a store made before checksums
the job's summary        :attr:`GridJob.finish` of the Dataset (e.g. path metrics), also written to the
                         store's attributes (sealed: not an edit)
=======================  ==========================================================================

:func:`open_grid` reopens a store as the same Dataset (run figures of "no run": ``seconds`` 0.0,
``ranks`` 1, zeros per rank); a stored result equals :func:`open_grid` of its store but for these.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from . import _faults
from ._ncattrs import make_safe
from . import distributed as D
from .grid import ChunkLayout, Grid
from .runner import SPLITS, evaluate_chunks, fill, pinned_threads
from .store import FORMAT, GridStore, StoreLock

__all__ = ["GridJob", "run_grid", "open_grid", "store_provenance", "RUN_KEYS", "FORMAT"]

#: attrs that describe one call (how long, on how many ranks), not the values
RUN_KEYS = ("seconds", "ranks", "rank_points", "rank_busy_seconds")
#: group attributes of a store that are the store's own bookkeeping, not attrs of the result
_STORE_KEYS = ("format", "dims", "variables", "provenance", "integrity", "write_empty_chunks")


@dataclass(frozen=True)
class GridJob:
    """What is evaluated over a grid (see the module docstring for how :func:`run_grid` uses it).

    ``plan(requested) -> (settings, evaluator or None)`` runs on rank 0 only, when no store holds
    the settings yet: ``requested`` maps every pinned setting to a value or ``None`` (decide it), and
    ``settings`` must give every one of them (JSON-able; ``chunk_shape`` always; ``threads``, when
    present, is pinned while evaluating). The evaluator it may return (it may have timed strategies
    to decide) is used by rank 0; otherwise ``evaluator(settings)`` builds one. An evaluator maps an
    (m, ndim) array of coefficients to ``{variable: (m,) values}`` and may have ``close()``.
    """

    kind: str
    func: str  #: the public function, named in messages
    grid: Grid
    variables: tuple[str, ...]
    provenance: Mapping[str, Any]  #: without the pinned settings (JSON-able, the same on every rank)
    requested: Mapping[str, Any]
    plan: Callable[[dict[str, Any]], tuple[dict[str, Any], Any]]
    evaluator: Callable[[dict[str, Any]], Any]
    attrs: Callable[[dict[str, Any]], dict[str, Any]]
    labels: tuple[str, ...]
    write_extra: Callable[[Path], None] | None = None
    split: str = "chunks"  #: "chunks": ranks share chunks; "data": the evaluator is collective
    description: str = ""
    finish: Callable[[xr.Dataset], dict[str, Any]] | None = None  #: summary attrs from the values

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"GridJob: split must be one of {SPLITS}, not {self.split!r}")
        if len(self.labels) != self.grid.ndim:
            raise ValueError(f"GridJob: {self.grid.ndim} coordinate labels needed, not {len(self.labels)}")

    def full_provenance(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        return dict(self.provenance, **settings)


def run_grid(job: GridJob, *, store: str | Path | None = None, overwrite: bool = False, progress: bool = True,
             context: D.Context | None = None) -> xr.Dataset:
    """Evaluate ``job`` at every point of its grid (every rank of a torchrun job calls it), into memory
    or into the resumable ``store`` (``overwrite``: replace a store made by another computation)."""
    ctx = context or D.context()
    ctx.check_same(job.provenance, func=job.func, what="computation (problem, centre, directions or grid)")
    held: dict[str, Any] = {}
    try:
        settings, complete = ctx.run_on_main(lambda: _open_on_main(job, store, overwrite, ctx, held))
    except BaseException:
        _close(held.pop("evaluator", None))  # e.g. an evaluator planned before the store failed
        raise
    gstore: GridStore | None = held.get("store")
    if store is not None and gstore is None:
        gstore = GridStore.open(store, func=job.func)
    evaluator = held.get("evaluator")
    try:
        layout = job.grid.chunks(settings["chunk_shape"])
        report: dict[str, Any] = {"world": ctx.world, "points": [0] * ctx.world, "busy_seconds": [0.0] * ctx.world}
        elapsed = 0.0
        blocks: dict = {}
        if not complete:
            with pinned_threads(settings.get("threads")):
                if evaluator is None:
                    evaluator = job.evaluator(dict(settings))
                t0 = time.perf_counter()
                blocks = evaluate_chunks(layout, evaluator, list(job.variables), store=gstore, progress=progress,
                                         description=job.description or job.kind, split=job.split, context=ctx,
                                         report=report, func=job.func)
                elapsed = time.perf_counter() - t0
        if gstore is not None:
            # chunks done before this call, or by other ranks: read once each, checked against their checksums
            # (on rank 0, those the repair on opening has just checked are not read again)
            others = [c for c in layout if c not in blocks]
            blocks.update(gstore.read_chunks(others, func=job.func))
        values = fill(layout, job.variables, blocks)
        done = np.ones(layout.counts, dtype=bool)
        if gstore is not None:
            attrs = _stored_attrs(gstore.group.attrs, gstore.provenance, store, gstore.verified)
        else:
            attrs = _memory_attrs(job, settings)
        labels = _store_labels(gstore) if gstore is not None else job.labels
        ds = _dataset(job.grid, values, labels, attrs, layout, done)
        ds.attrs.update(seconds=float(elapsed), ranks=int(report.get("world", 1)),
                        rank_points=[int(p) for p in report.get("points", [])],
                        rank_busy_seconds=[float(b) for b in report.get("busy_seconds", [])])
        if job.finish is not None:
            extra = json.loads(json.dumps(job.finish(ds)))
            ds.attrs.update(extra)
            if gstore is not None and ctx.is_main and any(
                    json.dumps(gstore.group.attrs.get(k), sort_keys=True) != json.dumps(v, sort_keys=True)
                    for k, v in extra.items()):
                GridStore.update_attrs(gstore.path, extra, func=job.func)  # re-sealed: not an edit
        return make_safe(ds)  # netCDF-safe attrs: ds.to_netcdf() works as is (lossatlas._ncattrs)
    finally:
        _close(evaluator)
        lock = held.pop("lock", None)
        if lock is not None:
            lock.release()


def _open_on_main(job: GridJob, store: str | Path | None, overwrite: bool, ctx: D.Context,
                  held: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Rank 0: settle the settings (and open or create the store under its lock)."""
    if store is None:
        settings, held["evaluator"] = job.plan(dict(job.requested))
        return dict(settings), False
    lock = StoreLock.acquire(store, func=job.func, job=ctx.job or None)
    held["lock"] = lock
    try:
        _faults.checkpoint("locked")
        if overwrite:
            GridStore.remove_here(store, func=job.func)
        GridStore.clean_leftovers(store)
        if GridStore.exists(store):
            gstore = GridStore.open(store, func=job.func)
            gstore.repair(func=job.func)
            expected = dict(job.provenance)
            for key, value in job.requested.items():
                expected[key] = gstore.provenance.get(key) if value is None else value
            gstore.check_provenance(expected, func=job.func)
            settings = {key: gstore.provenance.get(key) for key in job.requested}
            complete = not gstore.pending()
        else:
            settings, held["evaluator"] = job.plan(dict(job.requested))
            settings = dict(settings)
            gstore = _create(job, store, settings)
            complete = False
        held["store"] = gstore
        return settings, complete
    except BaseException:
        lock.release()
        held.pop("lock", None)
        raise


def _create(job: GridJob, store: str | Path, settings: Mapping[str, Any]) -> GridStore:
    return GridStore.create(
        store, grid=job.grid, chunk_shape=settings["chunk_shape"], variables=list(job.variables),
        provenance=job.full_provenance(settings), extra_attrs=_job_attrs(job, settings),
        coord_attrs={d: {"long_name": lab} for d, lab in zip(job.grid.dims, job.labels)},
        write_extra=job.write_extra)


def _close(evaluator: Any) -> None:
    if evaluator is not None and hasattr(evaluator, "close"):
        evaluator.close()


def _job_attrs(job: GridJob, settings: Mapping[str, Any]) -> dict[str, Any]:
    return dict(job.attrs(dict(settings)), chunk_shape=list(settings["chunk_shape"]))


def _memory_attrs(job: GridJob, settings: Mapping[str, Any]) -> dict[str, Any]:
    attrs = json.loads(json.dumps(_job_attrs(job, settings)))  # as a store would keep them
    attrs["provenance"] = json.dumps(json.loads(json.dumps(job.full_provenance(settings))), sort_keys=True)
    attrs["store"] = ""
    attrs["verified"] = 1  # every value computed in this call
    return attrs


def _stored_attrs(group_attrs: Mapping[str, Any], provenance: Mapping[str, Any], path: str | Path,
                  verified: bool) -> dict[str, Any]:
    attrs = {k: v for k, v in group_attrs.items() if k not in _STORE_KEYS}
    attrs["provenance"] = json.dumps(provenance, sort_keys=True)
    attrs["store"] = str(Path(path))
    attrs["verified"] = int(verified)  # 0: made before checksums (unverified)
    return attrs


def _dataset(grid: Grid, values: Mapping[str, np.ndarray], labels: Sequence[str], attrs: Mapping[str, Any],
             layout: ChunkLayout, done: np.ndarray) -> xr.Dataset:
    coords = {d: (d, a, {"long_name": lab}) for d, a, lab in zip(grid.dims, grid.axes, labels)}
    ds = xr.Dataset({k: (grid.dims, np.asarray(v, dtype=np.float64)) for k, v in values.items()}, coords=coords)
    ds.attrs.update(attrs)
    computed = np.zeros(grid.shape, dtype=bool)
    points_done = 0
    for c in layout:
        if done[c]:
            computed[layout.index(c)] = True
            points_done += int(np.prod(layout.block_shape(c)))
    first = ds["loss"].values if "loss" in ds else ds[next(iter(values))].values
    ds.attrs.update({
        "points_total": int(grid.size),
        "points_done": points_done,
        "complete": int(points_done == grid.size),
        "nan_points": int(np.isnan(first[computed]).sum()),
        "inf_points": int(np.isinf(first[computed]).sum()),
    })
    return ds


def open_grid(path: str | Path, *, func: str = "open_surface") -> xr.Dataset:
    """Reopen a store written by :func:`run_grid` as the same Dataset (loaded into memory; see the
    module docstring). Points of chunks not yet computed are NaN; every done chunk is checked against
    its checksum: a damaged store raises :class:`~lossatlas.StoreError` naming what is damaged."""
    gstore = GridStore.open(path, func=func)
    attrs = _stored_attrs(gstore.group.attrs, gstore.provenance, path, gstore.verified)
    values, done = gstore.read_checked(func=func)  # a damaged chunk: StoreError naming it
    ds = _dataset(gstore.grid, values, _store_labels(gstore), attrs, gstore.layout, done)
    ds.attrs.update(seconds=0.0, ranks=1, rank_points=[0], rank_busy_seconds=[0.0])  # no run in this call
    return make_safe(ds)


def _store_labels(gstore: GridStore) -> list[str]:
    """The coordinate labels a store was made with (``long_name`` of its coordinate arrays; before
    that, the ``direction_labels`` attribute)."""
    fallback = gstore.group.attrs.get("direction_labels") or []
    out = []
    for i, dim in enumerate(gstore.grid.dims):
        name = dict(gstore.group[dim].attrs).get("long_name")
        if not isinstance(name, str):
            name = fallback[i] if i < len(fallback) else f"direction {i + 1}"
        out.append(name)
    return out


def store_provenance(path: str | Path, *, func: str) -> dict[str, Any]:
    """The provenance of the store at ``path`` (a missing path or a folder that is no store:
    :class:`~lossatlas.StoreError` naming the path)."""
    return dict(GridStore.open(path, func=func).provenance)
