"""Running an evaluation over the chunks of a grid, into memory or into a resumable store, in one
process or shared by the ranks of a ``torchrun`` job.

The runner is generic: it takes ``evaluate(coefficients) -> {variable: values}`` for a block of
points and knows nothing about losses. It is the chunk loop of :func:`lossatlas.grid_job.run_grid`,
which owns the session around it (lock, repair, provenance, pinned settings) and the assembly of the
result:

* :func:`evaluate_chunks` evaluates the pending chunks and returns the values computed in this call,
  chunk by chunk (nothing is read back from the store). Under torch.distributed it hands chunks out
  dynamically from a counter in the job's key-value store (a rank that finishes early takes the
  next chunk), each rank writes its own chunks, and rank 0 shows progress with per-rank throughput.
* :func:`run_chunks` is the same returning whole arrays (with a store: read back from it), for code
  written against the store primitives.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import _faults
from . import distributed as D
from .errors import DistributedError, bad_value
from .grid import ChunkLayout
from .progress import progress_bar, rank_progress
from .store import GridStore

ChunkFn = Callable[[np.ndarray], dict[str, np.ndarray]]
Blocks = dict[tuple[int, ...], dict[str, np.ndarray]]  # {chunk: {variable: block of values}}
SPLITS = ("chunks", "data")
POLL_SECONDS = (0.001, 0.05)  # a rank that has finished checks the others' progress, backing off to 50 ms
STATS_SECONDS = 0.5  # how often rank 0 refreshes the per-rank figures

__all__ = ["evaluate_chunks", "run_chunks", "pinned_threads", "interrupt_progress", "SPLITS"]


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


# -- running chunks ---------------------------------------------------------------------------------
def run_chunks(layout: ChunkLayout, evaluate: ChunkFn, variables: Sequence[str], *, store: GridStore | None,
               progress: bool, description: str, split: str = "chunks", threads: int | None = None,
               context: D.Context | None = None, report: dict[str, Any] | None = None,
               func: str | None = None) -> dict[str, np.ndarray]:
    """:func:`evaluate_chunks`, returning the full arrays (NaN only where a value is NaN): with a
    ``store``, every value read back from it (checked against its checksums); in memory, the values
    of every chunk (gathered from every rank)."""
    blocks = evaluate_chunks(layout, evaluate, variables, store=store, progress=progress, description=description,
                             split=split, threads=threads, context=context, report=report, func=func)
    if store is not None:
        return store.read()
    return fill(layout, variables, blocks)


def fill(layout: ChunkLayout, variables: Sequence[str], blocks: Blocks) -> dict[str, np.ndarray]:
    """Whole arrays (NaN where no block is given) from blocks of chunks."""
    values = {v: np.full(layout.grid.shape, np.nan) for v in variables}
    for chunk, result in blocks.items():
        index = layout.index(chunk)
        for v in variables:
            values[v][index] = result[v]
    return values


def evaluate_chunks(layout: ChunkLayout, evaluate: ChunkFn, variables: Sequence[str], *, store: GridStore | None,
                    progress: bool, description: str, split: str = "chunks", threads: int | None = None,
                    context: D.Context | None = None, report: dict[str, Any] | None = None,
                    func: str | None = None) -> Blocks:
    """Evaluate every chunk not yet done; return the values computed in this call as float64 blocks
    ``{chunk: {variable: array of the chunk's block shape}}`` (exactly the values written).

    In one process chunks run in order. Under torch.distributed (call on every rank, same layout):

    * ``split="chunks"``: ranks claim pending chunks one at a time from a shared counter, evaluate
      and write them (``store``: each rank returns its own chunks) or keep them (in memory: gathered
      once at the end, every rank returns every chunk);
    * ``split="data"``: ``evaluate`` is itself collective (e.g.
      :class:`~lossatlas.distributed.DataParallelEvaluator`); every rank runs every chunk (and returns
      it) and rank 0 writes.

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


def _block(result: dict[str, np.ndarray], variables: Sequence[str], shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    return {v: np.asarray(result[v], dtype=np.float64).reshape(shape) for v in variables}


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
    """How far an interrupted :func:`evaluate_chunks` (or :func:`run_chunks`) got: ``{"store": path or
    None, "points_done": int or None, "points_total": int}``, or ``None`` when ``exc`` was not raised inside one."""
    info = getattr(exc, "lossatlas_progress", None)
    return info if isinstance(info, dict) else None


def _points(layout: ChunkLayout, chunk: tuple[int, ...]) -> int:
    return math.prod(layout.block_shape(chunk))


def _run_local(layout, evaluate, variables, store, progress, description, report) -> Blocks:
    grid = layout.grid
    if store is not None:
        pending = store.pending()
        done_points = grid.size - sum(_points(layout, c) for c in pending)
    else:
        pending = list(layout)
        done_points = 0
    blocks: Blocks = {}
    start = time.perf_counter()
    with progress_bar(grid.size, description, enabled=progress, completed=done_points) as advance:
        for chunk in pending:
            index = layout.index(chunk)
            shape = layout.block_shape(chunk)
            _faults.checkpoint("chunk")
            result = evaluate(grid.coefficients(index))
            if store is not None:
                store.write_chunk(chunk, result)
            blocks[chunk] = _block(result, variables, shape)
            advance(math.prod(shape))
    seconds = time.perf_counter() - start
    if report is not None:
        report.update(world=1, rank=0, points=[sum(_points(layout, c) for c in pending)], busy_seconds=[seconds],
                      seconds=seconds, coordination_seconds=0.0, wait_seconds=0.0)
    return blocks


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


def _run_shared(layout, evaluate, variables, store, progress, description, split, ctx, report) -> Blocks:
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
    mine: Blocks = {}
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
                mine[chunk] = _block(result, variables, layout.block_shape(chunk))
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
            waiting = _wait_for_ranks(board, total, description, refresh)
            refresh(total, force=True)
        except BaseException as exc:
            if not isinstance(exc, DistributedError):
                board.fail(f"rank {ctx.rank} failed with {type(exc).__name__}: {exc}")
            raise
    seconds = time.perf_counter() - start
    if report is not None:
        _fill_report(report, board, ctx, seconds, coordination, waiting)
    if store is None and split == "chunks":
        for part in ctx.gather(mine):  # one collective at the end, every rank gets every chunk
            mine.update(part)
    return mine


def _wait_for_ranks(board: _Board, total: int, description: str, refresh: Callable[[int], None]) -> float:
    """Poll ``board`` until ``total`` points are done, raising another rank's failure; the seconds waited."""
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
    return time.perf_counter() - waiting


def _fill_report(report: dict[str, Any], board: _Board, ctx: D.Context, seconds: float, coordination: float,
                 waiting: float) -> None:
    """Write this run's per-rank points and busy seconds, and this rank's timings, into ``report``."""
    stats = board.per_rank()
    report.update(world=ctx.world, rank=ctx.rank, points=[p for p, _ in stats],
                  busy_seconds=[s for _, s in stats], seconds=seconds, coordination_seconds=coordination,
                  wait_seconds=waiting)


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
