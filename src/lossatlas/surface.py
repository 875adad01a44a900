"""Loss surfaces: L(θ + Σᵢ aᵢdᵢ) over a grid of coefficients, as an ``xarray.Dataset``.

Li et al., "Visualizing the Loss Landscape of Neural Nets" (2018, arXiv:1712.09913), with
filter-normalised directions from :func:`lossatlas.directions.random`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from . import _faults, _threads
from . import params as P
from ._behaviour import agree
from ._cost import check_grid_cost
from ._param_io import read_params, write_params
from . import _auto_span
from ._bn_honesty import warn_if_stale
from ._resume import check_store_args
from ._version import __version__
from .directions._base import Directions, _jsonable, check_independent
from .distributed import DataParallelEvaluator
from .distributed import context as _dist_context
from .errors import LossAtlasError, StoreError, bad_type, bad_value, current_function, public
from .evaluator import STRATEGIES, PointEvaluator, probe_free_strategy
from .grid import Grid
from .grid_job import FORMAT, GridJob, open_grid, run_grid, store_provenance
from .problem import Problem

__all__ = ["surface", "surface_job", "open_surface", "as_directions"]

CHUNK_SECONDS = 1.0  # target compute time of one chunk when the chunk size is chosen automatically
PARALLEL = ("grid", "data")


def as_directions(directions: Any, *, func: str | None = None) -> Directions:
    """Accept a :class:`Directions`, one parameter dict, or a list of parameter dicts (messages name
    ``func``, default: the public function running, else ``surface``)."""
    func = func or current_function("surface", innermost=True)
    if isinstance(directions, Directions):
        return directions
    if isinstance(directions, Mapping) and directions and all(isinstance(v, Tensor) for v in directions.values()):
        return Directions([dict(directions)], {"kind": "custom", "n": 1})
    if isinstance(directions, (list, tuple)) and directions and all(isinstance(d, Mapping) for d in directions):
        return Directions([dict(d) for d in directions], {"kind": "custom", "n": len(directions)})
    raise bad_type(func, "directions", "a Directions object, a parameter dict or a list of parameter dicts",
                   directions)


@public("surface")
def surface(
    problem: Problem,
    center: Mapping[str, Tensor] | None,
    directions: Directions | Mapping[str, Tensor] | Sequence[Mapping[str, Tensor]],
    *,
    steps: int | Sequence[int] = 51,
    span: float | Sequence[float] | Sequence[Sequence[float]] = 1.0,
    strategy: str = "auto",
    chunk: int | None = None,
    store: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    exact_linear: bool = True,
    metrics: bool = True,
    parallel: str = "grid",
    allow_large: bool = False,
) -> xr.Dataset:
    """Evaluate the loss (and metrics) at θ + Σᵢ aᵢdᵢ for every point of a grid.

    One direction gives dims ``("x",)``, two ``("x", "y")``, up to four. ``steps`` points per axis
    (odd ``steps`` with a symmetric ``span`` put θ exactly on the grid); ``span`` is a number s
    (axis [−s, s]), a ``(lo, hi)`` pair, one pair per axis, or ``"auto"`` (``"auto:F"``): each axis
    spans where the loss has risen by the factor F (default 2) along its direction, found by a few
    loss evaluations (:mod:`lossatlas._auto_span`; recorded in ``attrs["span_auto"]``); coordinates
    are in units of the directions. Each point is evaluated at exactly θ + Σ aᵢdᵢ. NaN/Inf results are kept and counted
    in ``attrs["nan_points"]``/``attrs["inf_points"]``.

    ``strategy``: ``"loop"``, ``"vmap"`` or ``"auto"`` (timed on the problem, or ``"loop"`` below 256
    points where timing would cost more than the grid; the two agree to
    rounding, so pass one explicitly for bit-identical results across runs without a store — a store
    pins the strategy it was made with). ``chunk``: points per
    chunk of work (default: about one second of work each). ``store``: a directory (zarr) written
    chunk by chunk; calling again with the same arguments resumes and computes only missing chunks;
    a store made by a different computation is refused unless ``overwrite=True``.
    ``allow_large``: a grid of more than 10⁷ points is refused (with its estimated points, memory
    and time) unless this is ``True``.
    ``exact_linear``: fold affine layers whose input does not depend on θ (exact algebra).

    Under ``torchrun`` (see :mod:`lossatlas.distributed`) call it on every rank with the same
    arguments: ``parallel="grid"`` shares the chunks of points between ranks (dynamic assignment),
    ``parallel="data"`` evaluates every point with the batches split between ranks (small grid, big
    data). Either way the values are bit-identical to a one-process run: strategy, vmap batch,
    chunk shape and CPU threads are decided on rank 0 and pinned in the store's provenance.

    >>> import torch, lossatlas
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    >>> x = torch.randn(64, 2)
    >>> problem = lossatlas.Problem(net, torch.nn.MSELoss(), (x, x.sum(1, keepdim=True)))
    >>> d = lossatlas.directions.random(problem, n=2, seed=0)
    >>> ds = surface(problem, None, d, steps=5, span=1.0, progress=False)
    >>> ds.loss.dims, ds.loss.shape
    (('x', 'y'), (5, 5))
    >>> abs(float(ds.loss.sel(x=0.0, y=0.0)) - problem.loss(problem.params())) < 1e-6
    True
    """
    job, store = surface_job(problem, center, directions, steps=steps, span=span, strategy=strategy, chunk=chunk,
                             store=store, overwrite=overwrite, progress=progress, exact_linear=exact_linear,
                             metrics=metrics, parallel=parallel, allow_large=allow_large)
    return run_grid(job, store=store, overwrite=overwrite, progress=progress)


def surface_job(problem: Problem, center: Mapping[str, Tensor] | None, directions: Any, *,
                steps: Any = 51, span: Any = 1.0, strategy: str = "auto", chunk: int | None = None,
                store: Any = None, overwrite: Any = False, progress: Any = True, exact_linear: Any = True,
                metrics: Any = True, parallel: str = "grid", allow_large: bool = False) -> tuple[GridJob, Path | None]:
    """The :class:`~lossatlas.grid_job.GridJob` of :func:`surface` (arguments validated, in the order
    :func:`surface` documents) and the validated store path. Messages (and the job) name the public
    function building it (:func:`surface`, :func:`~lossatlas.interpolate`)."""
    func = current_function("surface", innermost=True)
    if not isinstance(problem, Problem):
        raise bad_type("problem", "a lossatlas.Problem", problem)
    span_auto = None
    if isinstance(span, str):  # "auto" / "auto:F": spans found from the loss, recorded in attrs["span_auto"]
        factor = _auto_span.parse(span, func)
        start = problem.params(copy=False) if center is None else center  # θ₀ read-only: no copy
        problem.check_params(start, arg="center")
        span_auto = json.loads(json.dumps(_auto_span.auto_span(problem, start, as_directions(directions).vectors,
                                                               factor), sort_keys=True))
        span = [(-s, s) for s in span_auto["spans"]]
    if center is None:  # the problem's own θ₀, read-only (every consumer copies or binds, never writes)
        center = problem.params(copy=False)
    problem.check_params(center, arg="center")
    dirs = as_directions(directions)
    for i, d in enumerate(dirs):
        P.check_like(center, d, arg=f"directions[{i}]", ref_arg="center")
    worst = check_independent(dirs)
    warn_if_stale(problem, func, dirs.vectors, "a direction")
    if "max_abs_cosine" not in dirs.spec:  # user directions: the measured value, not a default 0
        dirs = Directions(dirs.vectors, {**dirs.spec, "max_abs_cosine": worst})
    grid = Grid.make(len(dirs), steps, span, func=func)
    if strategy not in STRATEGIES:
        raise bad_value("strategy", f"one of {STRATEGIES}", strategy)
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise bad_value("chunk", "a positive integer (points per chunk) or None", chunk)
    if parallel not in PARALLEL:
        raise bad_value("parallel", f"one of {PARALLEL}", parallel)
    for flag, value in (("overwrite", overwrite), ("progress", progress), ("exact_linear", exact_linear),
                        ("metrics", metrics)):
        if not isinstance(value, bool):
            raise bad_type(flag, "a bool", value)
    names = _names(problem, metrics)
    check_grid_cost(func, grid, problem, center, variables=len(names), allow_large=allow_large)
    store = check_store_args(func, store, overwrite)
    _faults.checkpoint("start")

    ctx = _dist_context()
    base = _provenance(problem, center, dirs, grid, metrics, exact_linear)
    requested = {"strategy": None if strategy == "auto" else strategy,
                 "chunk_shape": None if chunk is None else list(grid.chunk_shape_for(chunk)),
                 "vmap_batch": None, "threads": None}

    def make_evaluator(strategy_: str, vmap_batch: int | None):
        if parallel == "data":
            return DataParallelEvaluator(problem, center, dirs.vectors, ctx=ctx, strategy=strategy_,
                                         vmap_batch=vmap_batch, exact_linear=exact_linear, metrics=metrics)
        return PointEvaluator(problem, center, dirs.vectors, strategy=strategy_, vmap_batch=vmap_batch,
                              exact_linear=exact_linear, metrics=metrics)

    def plan(req: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        evaluator = make_evaluator(probe_free_strategy(req["strategy"] or "auto", grid.size), None)
        try:
            shape = req["chunk_shape"]
            if shape is None:
                world = 1 if parallel == "data" else ctx.world
                shape = list(grid.chunk_shape_for(_auto_chunk(getattr(evaluator, "local", evaluator), grid, world)))
            threads = _threads.for_problem(problem)
        except BaseException:
            evaluator.close()
            raise
        return {"strategy": evaluator.strategy, "vmap_batch": evaluator.vmap_batch, "chunk_shape": shape,
                "threads": threads}, evaluator

    job = GridJob(
        kind="surface", func=func, grid=grid, variables=tuple(names), provenance=base, requested=requested,
        plan=plan, evaluator=lambda settings: make_evaluator(settings["strategy"], settings["vmap_batch"]),
        attrs=lambda settings: dict(_attrs(dict(base, **settings), dirs, problem),
                                    **({"span_auto": span_auto} if span_auto is not None else {})),
        labels=tuple(dirs.labels),
        write_extra=lambda tmp: _save_basis(tmp, center, dirs), split="data" if parallel == "data" else "chunks",
        description=f"surface {'×'.join(map(str, grid.shape))}")
    return job, store


def _names(problem: Problem, metrics: bool) -> list[str]:
    return list(problem.metric_names) if metrics else ["loss"]


def _auto_chunk(evaluator: PointEvaluator, grid: Grid, world: int = 1) -> int:
    """Points per chunk: about CHUNK_SECONDS of work, and at least 8 chunks per rank so that
    ranks finishing early have chunks left to take. A point's cost is the evaluator's own timing, else
    that of the no-grad forward passes at θ its exact-linear fold ran over every batch, else one
    point timed here."""
    per_point = evaluator.seconds_per_point
    if per_point is None:
        per_point = getattr(getattr(evaluator, "fold", None), "forward_seconds", None)
        per_point = None if per_point is None else max(per_point, 1e-7)
    if per_point is None:
        t = time.perf_counter()
        evaluator(np.zeros((1, grid.ndim)))
        per_point = max(time.perf_counter() - t, 1e-7)
    by_time = max(1, int(CHUNK_SECONDS / per_point))
    return max(1, min(by_time, math.ceil(grid.size / (8 * world))))


def _provenance(problem: Problem, center, dirs: Directions, grid: Grid, metrics: bool,
                exact_linear: bool, *, func: str | None = None) -> dict[str, Any]:
    """The surface's provenance (``func`` names the ranks' agreement check, default: the public
    function running)."""
    func = func or current_function("surface", innermost=True)
    fp = problem.fingerprint()
    return {
        "format": FORMAT,
        "kind": "surface",
        "software": f"lossatlas {__version__}; torch {torch.__version__}",
        "model": fp["model"],
        "data": fp["data"],
        "loss": fp["loss"],
        "settings": fp["settings"],
        # what the problem computes (loss, metrics, outputs at fixed points): checked with a tolerance on
        # resume, and taken from rank 0 once every rank agrees (the provenance must be bit-identical)
        "behaviour": agree(problem.behaviour_fingerprint(), func=func),
        "center": P.fingerprint(center),
        "directions": dirs.fingerprint(),
        "direction_spec": json.loads(json.dumps(_jsonable(dirs.spec))),
        "grid": [list(map(float, a)) for a in grid.axes],
        "metrics": bool(metrics),
        "exact_linear": bool(exact_linear),
    }


def _attrs(prov: Mapping[str, Any], dirs: Directions, problem: Problem) -> dict[str, Any]:
    spec = dirs.spec
    return {
        "kind": "surface",
        "lossatlas_version": __version__,
        "dtype": str(problem.dtype).replace("torch.", ""),
        "strategy": prov["strategy"],
        "n_samples": int(problem.n_samples),
        "model_fingerprint": prov["model"],
        "data_fingerprint": prov["data"],
        "center_fingerprint": prov["center"],
        "directions_fingerprint": prov["directions"],
        "direction_kind": str(spec.get("kind", "custom")),
        "direction_norm": str(spec.get("norm")),
        "direction_ignore": str(spec.get("ignore")),
        "direction_seed": str(spec.get("seed")),
        "direction_labels": list(dirs.labels),
        "max_abs_cosine": float(spec.get("max_abs_cosine", 0.0)),
        "chunk_shape": list(prov["chunk_shape"]),
    }


def _save_basis(root: Path, center, dirs: Directions) -> None:
    dirs.save(root / "directions")
    import zarr

    write_params(zarr.open_group(str(root / "center"), mode="w", zarr_format=3), center)


@public("open_surface")
def open_surface(path: str | Path) -> xr.Dataset:
    """Reopen a store written by :func:`surface` as the same Dataset (loaded into memory).

    Points of chunks not yet computed are NaN; ``attrs["complete"]``, ``attrs["points_done"]`` tell
    how far the run got, ``attrs["nan_points"]`` counts NaN results among computed points. Every
    done chunk is checked against its checksum: a damaged store (a chunk missing, truncated or
    altered; coordinates or attributes edited) raises :class:`~lossatlas.StoreError` naming what is
    damaged; rerunning the computation recomputes damaged chunks. ``attrs["verified"]`` is 0 for a
    store made before checksums.
    """
    return open_grid(path, func="open_surface")


@public("open_directions")
def open_directions(path: str | Path) -> tuple[P.Params, Directions]:
    """The centre and directions saved in a surface store."""
    import zarr

    if not isinstance(path, (str, Path)):
        raise bad_type("open_directions", "path", "a store path (str or pathlib.Path)", path)
    path = Path(path)
    # a missing path or a folder that is no store: StoreError naming the path, as open_surface
    prov = store_provenance(path, func="open_directions")
    try:
        center = read_params(zarr.open_group(str(path / "center"), mode="r"))
        dirs = Directions.load(path / "directions")
    except LossAtlasError:
        raise
    except Exception as exc:
        raise StoreError(f"open_directions(): argument 'path' must be a store that holds its centre and "
                         f"directions; received {str(path)!r}, where they cannot be read ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())})") from exc
    # the saved centre and directions must be those the store's values were computed with
    edited = [what for what, have, fp in (("centre", prov.get("center"), P.fingerprint(center)),
                                          ("directions", prov.get("directions"), dirs.fingerprint()))
              if have is not None and have != fp]
    if edited:
        raise StoreError(f"open_directions(): argument 'path' points to a damaged lossatlas store at {str(path)!r} "
                         f"(its saved {' and '.join(edited)} differ from the fingerprints in its provenance: edited "
                         "or damaged); recompute it with overwrite=True")
    return center, dirs
