"""Running an evaluation over the chunks of a grid, into memory or into a resumable store, in one
process or shared by the ranks of a ``torchrun`` job.

The runner is generic: it takes ``evaluate(coefficients) -> {variable: values}`` for a block of
points and knows nothing about losses. Surfaces and curvature ratio maps both use it:

* :func:`open_session` opens (or creates) the store for a job on every rank: rank 0 takes the
  writer lock for the whole job, repairs what a crashed run left, checks provenance and settles
  the settings that change rounding (strategy, vmap batch, chunk shape, threads); every rank gets
  the same settings or the same error.
* :func:`run_chunks` evaluates the pending chunks. Under torch.distributed it hands chunks out
  dynamically from a counter in the job's key-value store (a rank that finishes early takes the
  next chunk), each rank writes its own chunks, and rank 0 shows progress with per-rank throughput.

Typical use (on every rank)::

    with open_session(path, func="ratio_map", overwrite=False, provenance=prov,
                      requested={"chunk_shape": None}, decide=decide, create=create) as session:
        if not session.complete:
            run_chunks(layout, evaluate, variables, store=session.store, progress=True,
                       description="ratio map")
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import _faults
from . import distributed as D
from .errors import DistributedError, bad_value
from .grid import ChunkLayout
from .progress import progress_bar, rank_progress
from .store import GridStore, StoreLock

ChunkFn = Callable[[np.ndarray], dict[str, np.ndarray]]
SPLITS = ("chunks", "data")
POLL_SECONDS = (0.001, 0.05)  # a rank that has finished checks the others' progress, backing off to 50 ms
STATS_SECONDS = 0.5  # how often rank 0 refreshes the per-rank figures

__all__ = ["run_chunks", "open_session", "Session", "pinned_threads", "interrupt_progress", "SPLITS"]


# -- threads ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def pinned_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads (restored afterwards; ``None``: unchanged).

    CPU reductions (e.g. a sum over more than 32k elements) split their work by thread, so their
    rounding depends on the thread count; a store pins the count it was made with so that a resumed
    or distributed run gives the same bits.
    """
    before = torch.get_num_threads()
    if threads is None or int(threads) == before:
        yield
        return
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- sessions -------------------------------------------------------------------------------------
@dataclass
class Session:
    """A store opened for one job on every rank (``store`` is ``None`` for in-memory work), with
    the ``settings`` every rank must use. Rank 0 holds the store's lock until :meth:`close`."""

    store: GridStore | None
    settings: dict[str, Any]
    complete: bool
    context: D.Context
    lock: StoreLock | None = field(default=None, repr=False)
    local: dict[str, Any] = field(default_factory=dict, repr=False)  # rank 0's objects made by decide()

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_session(path: str | Path | None, *, func: str, overwrite: bool, provenance: Mapping[str, Any],
                 requested: Mapping[str, Any], decide: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]],
                 create: Callable[[dict[str, Any]], GridStore], context: D.Context | None = None) -> Session:
    """Open or create the store at ``path`` for one job; call on every rank.

    ``provenance`` (JSON-able) identifies the computation: every rank must have the same (checked),
    and an existing store must have been made by it. ``requested`` maps each pinned setting to a
    value or ``None``: with an existing store a ``None`` takes the store's value and a value must
    equal it; without one, ``decide(requested, local)`` (rank 0 only; may time things and leave
    objects in ``local``, returned as ``session.local``) returns every setting, and
    ``create(settings)`` makes the store (rank 0, under the lock). Errors on rank 0 are raised on
    every rank with the same type and message.
    """
    ctx = context or D.context()
    ctx.check_same(provenance, func=func, what="computation (problem, centre, directions or grid)")
    held: dict[str, Any] = {}
    local: dict[str, Any] = {}

    def on_main() -> tuple[dict[str, Any], bool]:
        if path is None:
            return decide(dict(requested), local), False
        lock = StoreLock.acquire(path, func=func, job=ctx.job or None)
        held["lock"] = lock
        try:
            _faults.checkpoint("locked")
            if overwrite:
                GridStore.remove_here(path, func=func)
            GridStore.clean_leftovers(path)
            if GridStore.exists(path):
                gstore = GridStore.open(path, func=func)
                gstore.repair(func=func)
                expected = dict(provenance)
                for key, value in requested.items():
                    expected[key] = gstore.provenance.get(key) if value is None else value
                gstore.check_provenance(expected, func=func)
                settings = {key: gstore.provenance.get(key) for key in requested}
                complete = not gstore.pending()
            else:
                settings = decide(dict(requested), local)
                gstore = create(settings)
                complete = False
            held["store"] = gstore
            return settings, complete
        except BaseException:
            lock.release()
            held.pop("lock", None)
            raise

    try:
        settings, complete = ctx.run_on_main(on_main)
    except BaseException:
        for obj in local.values():  # e.g. an evaluator made by decide(): undo what it set up
            if hasattr(obj, "close"):
                obj.close()
        raise
    gstore = held.get("store")
    if path is not None and gstore is None:
        gstore = GridStore.open(path, func=func)
    return Session(gstore, dict(settings), bool(complete), ctx, held.get("lock"), local)


# -- running chunks ---------------------------------------------------------------------------------
def run_chunks(layout: ChunkLayout, evaluate: ChunkFn, variables: Sequence[str], *, store: GridStore | None,
               progress: bool, description: str, split: str = "chunks", threads: int | None = None,
               context: D.Context | None = None, report: dict[str, Any] | None = None,
               func: str | None = None) -> dict[str, np.ndarray]:
    """Evaluate every chunk not yet done; return the full arrays (NaN only where a value is NaN).

    In one process chunks run in order. Under torch.distributed (call on every rank, same layout):

    * ``split="chunks"``: ranks claim pending chunks one at a time from a shared counter, evaluate
      and write them (``store``) or keep them (in memory: gathered once at the end);
    * ``split="data"``: ``evaluate`` is itself collective (e.g.
      :class:`~lossatlas.distributed.DataParallelEvaluator`); every rank runs every chunk and rank 0
      writes.

    ``threads`` pins the intra-op thread count during evaluation. ``report``, when given, receives
    per-rank figures ``points`` and ``busy_seconds`` (evaluating and writing), and this rank's
    ``seconds`` (wall), ``coordination_seconds`` (shared counters) and ``wait_seconds`` (for the
    chunks still running on other ranks at the end).

    ``func`` (the public function running the job) is named in the :class:`StoreError` raised when the
    store cannot be written (disk full, read-only, permission denied): the chunks already written stay
    done, so the same call resumes. A ``KeyboardInterrupt`` propagates unchanged, with the store
    consistent (a chunk is done only once all its values are written) and an attribute
    ``lossatlas_progress`` (see :func:`interrupt_progress`) saying how far the run got.
    """
    if split not in SPLITS:
        raise bad_value("run_chunks", "split", f"one of {SPLITS}", split)
    ctx = context or D.context()
    if store is not None and func:
        store.func = func  # named by the errors of its writes
    try:
        with pinned_threads(threads):
            if not ctx.active:
                return _run_local(layout, evaluate, variables, store, progress, description, report)
            return _run_shared(layout, evaluate, variables, store, progress, description, split, ctx, report)
    except KeyboardInterrupt as exc:
        _note_progress(exc, layout, store)
        raise


def _note_progress(exc: BaseException, layout: ChunkLayout, store: GridStore | None) -> None:
    """Attach to an interrupt how far the run got (for the CLI's one line); never raises."""
    if getattr(exc, "lossatlas_progress", None) is not None:
        return
    info: dict[str, Any] = {"store": None, "points_done": 0, "points_total": int(layout.grid.size)}
    if store is not None:
        info["store"] = str(store.path)
        try:
            info["points_done"] = int(store.points_done())
        except BaseException:  # the store cannot be read back now: say so rather than guess
            info["points_done"] = None
    try:
        exc.lossatlas_progress = info
    except Exception:
        pass


def interrupt_progress(exc: BaseException) -> dict[str, Any] | None:
    """How far an interrupted :func:`run_chunks` got: ``{"store": path or None, "points_done": int or
    None, "points_total": int}``, or ``None`` when ``exc`` was not raised inside one."""
    info = getattr(exc, "lossatlas_progress", None)
    return info if isinstance(info, dict) else None


def _points(layout: ChunkLayout, chunk: tuple[int, ...]) -> int:
    return math.prod(layout.block_shape(chunk))


def _run_local(layout, evaluate, variables, store, progress, description, report) -> dict[str, np.ndarray]:
    grid = layout.grid
    if store is not None:
        pending = store.pending()
        done_points = grid.size - sum(_points(layout, c) for c in pending)
    else:
        pending = list(layout)
        done_points = 0
        values = {v: np.full(grid.shape, np.nan) for v in variables}
    start = time.perf_counter()
    with progress_bar(grid.size, description, enabled=progress, completed=done_points) as advance:
        for chunk in pending:
            index = layout.index(chunk)
            shape = layout.block_shape(chunk)
            _faults.checkpoint("chunk")
            result = evaluate(grid.coefficients(index))
            if store is not None:
                store.write_chunk(chunk, result)
            else:
                for v in variables:
                    values[v][index] = np.asarray(result[v]).reshape(shape)
            advance(math.prod(shape))
    seconds = time.perf_counter() - start
    if report is not None:
        report.update(world=1, rank=0, points=[sum(_points(layout, c) for c in pending)], busy_seconds=[seconds],
                      seconds=seconds, coordination_seconds=0.0, wait_seconds=0.0)
    return store.read() if store is not None else values


class _Board:
    """The job's shared counters in the c10d key-value store, under one call's namespace."""

    def __init__(self, ctx: D.Context):
        self.ctx = ctx
        self.prefix = ctx.namespace()
        self.kv = ctx.kv

    def add(self, key: str, n: int) -> int:
        return int(self.kv.add(self.prefix + key, int(n)))

    def fail(self, message: str) -> None:
        try:
            self.kv.set(self.prefix + "error", message)
        except Exception:  # the store itself is gone: torchrun is tearing the job down anyway
            pass

    def failure(self) -> str | None:
        if self.kv.check([self.prefix + "error"]):
            return self.kv.get(self.prefix + "error").decode(errors="replace")
        return None

    def per_rank(self) -> list[tuple[int, float]]:
        return [(self.add(f"points/{r}", 0), self.add(f"busy_ms/{r}", 0) / 1000.0) for r in range(self.ctx.world)]


def _run_shared(layout, evaluate, variables, store, progress, description, split, ctx, report):
    grid = layout.grid

    def plan() -> list[list[int]]:
        chunks = store.pending() if store is not None else list(layout)
        return [list(c) for c in chunks]

    ctx.check_same({"grid": [list(map(float, a)) for a in grid.axes], "chunk_shape": list(layout.chunk_shape),
                    "variables": list(variables), "store": None if store is None else str(Path(store.path).resolve()),
                    "split": split}, func="run_chunks", what="grid, chunking, variables or store")
    pending = [tuple(c) for c in ctx.run_on_main(plan)]
    board = _Board(ctx)
    total = sum(_points(layout, c) for c in pending)
    already = grid.size - total
    mine: dict[tuple[int, ...], dict[str, np.ndarray]] = {}
    coordination = 0.0  # seconds in the shared counters (claims, figures), this rank
    start = time.perf_counter()
    show = progress and ctx.is_main
    with rank_progress(grid.size, f"{description} ({ctx.world} ranks)", world=ctx.world, enabled=show,
                       completed=already) as update:
        last_stats = 0.0

        def refresh(done: int, force: bool = False) -> None:
            nonlocal last_stats
            if show and (force or time.perf_counter() - last_stats >= STATS_SECONDS):
                update(done, board.per_rank())
                last_stats = time.perf_counter()

        try:
            claimed = time.perf_counter()
            for chunk in _claims(pending, board, split):
                t0 = time.perf_counter()
                coordination += t0 - claimed
                _faults.checkpoint("chunk")
                result = evaluate(grid.coefficients(layout.index(chunk)))
                writer = split == "chunks" or ctx.is_main
                if store is not None and writer:
                    store.write_chunk(chunk, result)
                elif store is None:
                    mine[chunk] = {v: np.asarray(result[v]) for v in variables}
                n = _points(layout, chunk)
                t1 = time.perf_counter()
                done = None
                if writer:
                    board.add(f"points/{ctx.rank}", n)
                    board.add(f"busy_ms/{ctx.rank}", round((t1 - t0) * 1000))
                    done = board.add("done", n)
                if ctx.is_main:
                    refresh(done if done is not None else board.add("done", 0))
                failure = board.failure()  # another rank failed: stop taking chunks
                if failure is not None:
                    raise DistributedError(f"{description}: {failure}")
                claimed = time.perf_counter()
                coordination += claimed - t1
            coordination += time.perf_counter() - claimed
            waiting = time.perf_counter()
            pause = POLL_SECONDS[0]
            while True:  # wait for the chunks still in flight on other ranks (no collective: no timeout)
                done = board.add("done", 0)
                failure = board.failure()
                if failure is not None:
                    raise DistributedError(f"{description}: {failure}")
                if done >= total:
                    break
                refresh(done)
                time.sleep(pause)
                pause = min(2 * pause, POLL_SECONDS[1])
            waiting = time.perf_counter() - waiting
            refresh(total, force=True)
        except BaseException as exc:
            if not isinstance(exc, DistributedError):
                board.fail(f"rank {ctx.rank} failed with {type(exc).__name__}: {exc}")
            raise
    seconds = time.perf_counter() - start
    if report is not None:
        stats = board.per_rank()
        report.update(world=ctx.world, rank=ctx.rank, points=[p for p, _ in stats],
                      busy_seconds=[s for _, s in stats], seconds=seconds, coordination_seconds=coordination,
                      wait_seconds=waiting)
    if store is not None:
        return store.read()
    if split == "chunks":
        for part in ctx.gather(mine):  # one collective at the end, every rank gets every chunk
            mine.update(part)
    values = {v: np.full(grid.shape, np.nan) for v in variables}
    for chunk, result in mine.items():
        index = layout.index(chunk)
        shape = layout.block_shape(chunk)
        for v in variables:
            values[v][index] = np.asarray(result[v]).reshape(shape)
    return values


def _claims(pending: Sequence[tuple[int, ...]], board: _Board, split: str) -> Iterator[tuple[int, ...]]:
    """The chunks this rank evaluates: claimed one at a time (``chunks``) or all of them (``data``)."""
    if split == "data":
        yield from pending
        return
    while True:
        i = board.add("next", 1) - 1
        if i >= len(pending):
            return
        yield pending[i]
