"""Maps of |λmin/λmax| over a plane of parameter space (Li et al. 2018, Fig. 7).

At every grid point θ + Σᵢ aᵢdᵢ the extreme Hessian eigenvalues are computed by Lanczos (both ends
from one Krylov space). Neighbouring points have similar Hessians, so each point's Lanczos run starts
from its neighbours' Ritz vectors: at each end (λmin's, λmax's) the sign-aligned sum of the vectors of
its nearest point and of the others within :data:`NEIGHBOUR_RADIUS` grid steps computed before it
*in the same chunk*, weighted by inverse distance (a warm start, :func:`_warm_start`, in the chunk's
fixed row-major order; the first point of a chunk
starts from the seeded Gaussian vector, so a result never depends on ranks or resumes) and stops on
the same residual rule with :data:`WARM_MIN_STEPS` as its floor: the floor of a cold start guards
against Ritz values still in the bulk, which a start already close to both eigenvectors is not.
``ratio = |λmin/λmax|`` is near 0 where the loss is locally nearly convex
(λmin ≥ 0 or tiny negative curvature relative to the positive curvature) and large where
negative curvature is significant. The map is a :class:`~lossatlas.grid_job.GridJob`, run chunk by
chunk by :func:`~lossatlas.grid_job.run_grid` into memory or a resumable store, as :func:`lossatlas.surface`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from .. import _threads
from .. import params as P
from .._bn_honesty import warn_if_stale
from .._cost import check_grid_cost
from .._resume import check_store_args
from ..directions._base import Directions
from ..errors import bad_type, bad_value, public
from ..grid import Grid
from ..params.selection import select
from ..grid_job import GridJob, run_grid, store_provenance
from ..problem import Problem
from ..surface import _attrs, _provenance, _save_basis, as_directions
from . import _common as C
from .eigen import solve
from .operators import DTYPES, KINDS, CurvatureOperator, ggn_operator

__all__ = ["ratio_map", "VARIABLES"]

#: variables of a ratio map, one value per grid point
VARIABLES = ("loss", "lambda_min", "lambda_max", "ratio", "residual_min", "residual_max", "converged", "products")
#: points per chunk by default: whole rows, so that most points start warm from a neighbour
DEFAULT_CHUNK = 16
#: computed points within this many grid steps of a point (the row's previous, the three above) add their
#: Ritz vectors to its warm start, besides the nearest
NEIGHBOUR_RADIUS = 1.5
#: warm-start rules by their provenance label -> neighbour radius (None: the nearest point's two Ritz vectors
#: summed, the rule of stores made before 2026-12-02); new maps use START_RULE, a resumed store its own
START_RULES = {"warm": None, "warm-neighbours": NEIGHBOUR_RADIUS}
START_RULE = "warm-neighbours"
#: fewest products of a warm-started point before convergence may be declared (cold: eigen.MIN_STEPS)
WARM_MIN_STEPS = 6


@public("curvature.ratio_map")
def ratio_map(problem: Problem, center: Mapping[str, Tensor] | None,
              directions: Directions | Mapping[str, Tensor] | Sequence[Mapping[str, Tensor]], *,
              steps: int | Sequence[int] = 11, span: float | Sequence[float] | Sequence[Sequence[float]] = 1.0,
              tol: float = 1e-3, seed: int = 0, max_products: int = 500, basis: int | None = None, params=None,
              dtype: torch.dtype | None = None, curvature: str = "hessian", chunk: int | None = None,
              store: str | Path | None = None, overwrite: bool = False, progress: bool = True,
              allow_large: bool = False, warm_start: bool = True) -> xr.Dataset:
    """λmin, λmax and ``ratio = |λmin/λmax|`` of the Hessian at every point of a grid.

    Grid arguments (``center``, ``directions``, ``steps``, ``span``, ``store``, ``overwrite``,
    ``progress``, ``allow_large``) are those of :func:`lossatlas.surface`; ``chunk`` is the number of points per
    chunk of work (default 16). ``warm_start``: start each point but a chunk's first from its neighbours'
    Ritz vectors (see the module notes; ``False``: every point from the seeded Gaussian vector). At each
    point the Lanczos run of :func:`eigenvalues` (``which="both"``,
    ``tol``, ``seed``, ``max_products``, ``basis``) gives the variables ``lambda_min``,
    ``lambda_max``, ``ratio``, their residuals ``residual_min``/``residual_max``, ``converged``
    (1 when both pairs converged, else 0), ``products`` (Hessian-vector products used) and the
    ``loss``. ``params``/``dtype``/``curvature`` as :func:`eigenvalues`. A store is written chunk by
    chunk and resumed by calling again with the same arguments (reopen it with
    :func:`lossatlas.open_surface`).

    What a point claims: ``converged`` = 1 means both values are eigenvalues within their residuals;
    to keep maps affordable their extremality is *not* certified (``attrs["extremal_certified"]`` = 0;
    use :func:`eigenvalues` at a point of interest for that). A negative converged ``lambda_min``
    with ``lambda_min + residual_min < 0`` proves negative curvature either way. A point where the
    loss or its derivatives are not finite keeps NaN curvature (``converged`` 0) and the map goes on;
    ``attrs["nan_curvature_points"]`` counts them (``attrs["nan_points"]`` counts NaN losses).
    ``attrs["product_method"]`` records how this run computed its products (one of
    :data:`~lossatlas.curvature.operators.PRODUCT_METHODS`, e.g. the math attention kernel for a
    transformer).

    >>> import torch, lossatlas
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1))
    >>> x = torch.randn(32, 2)
    >>> problem = lossatlas.Problem(net, torch.nn.MSELoss(), (x, x[:, :1] * x[:, 1:]))
    >>> d = lossatlas.directions.random(problem, n=2, seed=0)
    >>> ds = lossatlas.curvature.ratio_map(problem, None, d, steps=3, span=0.5, progress=False)
    >>> ds.ratio.shape, bool((ds.lambda_min <= ds.lambda_max).all()), int(ds.converged.min())
    ((3, 3), True, 1)
    """
    func = "curvature.ratio_map"
    problem, center, dirs = _checked_inputs(func, problem, center, directions, dtype, curvature)
    warn_if_stale(problem, func, dirs.vectors, "a direction")
    grid = Grid.make(len(dirs), steps, span, func=func)
    tol = C.check_tol(func, tol)
    seed = C.check_seed(func, seed)
    max_products = C.check_int(func, "max_products", max_products)
    basis = C.check_int(func, "basis", basis, minimum=2, allow_none=True)
    chunk = C.check_int(func, "chunk", chunk, allow_none=True)
    C.check_flag(func, "progress", progress)
    C.check_flag(func, "warm_start", warm_start)
    # each point is a Lanczos run: up to max_products Hessian-vector products (≈ 2.5 evaluations each)
    check_grid_cost(func, grid, problem, center, variables=8, allow_large=allow_large,
                    evaluations_per_point=2.5 * max_products, max_points=10**6)
    store = check_store_args(func, store, overwrite)
    if curvature == "ggn":  # validates the loss once, before any work
        ggn_operator(problem, center, params=params, retain=False)
    names = select(problem, params, func=func)

    start = (_stored_start_rule(store) if store is not None and not overwrite else None) or START_RULE
    job = _ratio_job(func, problem, center, dirs, grid, names, curvature=curvature, tol=tol, seed=seed,
                     max_products=max_products, basis=basis, chunk=chunk, warm_start=warm_start, start=start)
    return run_grid(job, store=store, overwrite=overwrite, progress=progress)


def _stored_start_rule(store: Path) -> str | None:
    """The warm-start rule an existing store was made with, when it is an older one of
    :data:`START_RULES` (its resume keeps it, so the store's bytes do not depend on the day it was
    resumed); None for a new store or one this function cannot read (the usual checks then apply)."""
    try:
        with warnings.catch_warnings():  # the real open, in run_grid, warns if there is anything to say
            warnings.simplefilter("ignore")
            rule = store_provenance(store, func="curvature.ratio_map").get("eigen", {}).get("start")
    except Exception:  # no store yet, or damaged: run_grid reports it
        return None
    return rule if rule in START_RULES else None


def _checked_inputs(func: str, problem, center, directions, dtype, curvature: str):
    """Check ``problem``, ``dtype``, ``curvature``, ``center`` and ``directions``; return them in ``dtype``."""
    if not isinstance(problem, Problem):
        raise bad_type(func, "problem", "a lossatlas.Problem", problem)
    if dtype is not None and dtype not in DTYPES:
        raise bad_value(func, "dtype", "torch.float32, torch.float64 or None (the problem's dtype)", dtype)
    if curvature not in KINDS:
        raise bad_value(func, "curvature", f"one of {KINDS}", curvature)
    if center is None:
        center = problem.params()
    dirs = as_directions(directions, func=func)
    if dtype is not None and dtype != problem.dtype:
        problem = problem.with_dtype(dtype)
        center = P.to(center, dtype=dtype)
        dirs = dirs.to(dtype=dtype)
    problem.check_params(center, func=func, arg="center")
    for i, d in enumerate(dirs):
        P.check_like(center, d, func=func, arg=f"directions[{i}]", ref_arg="center")

    return problem, center, dirs


def _ratio_job(func: str, problem: Problem, center, dirs: Directions, grid: Grid, names, *, curvature: str,
               tol: float, seed: int, max_products: int, basis: int | None, chunk: int | None,
               warm_start: bool, start: str = START_RULE) -> GridJob:
    """The :class:`~lossatlas.grid_job.GridJob` of a ratio map: its plan, attrs, point evaluator and NaN counts."""
    chunk_shape = grid.chunk_shape_for(chunk or DEFAULT_CHUNK)
    settings = {"curvature": curvature, "tol": tol, "seed": seed, "max_products": max_products, "basis": basis,
                "params": list(names)}
    if warm_start:  # a cold map is recorded as before warm starts existed, so older stores still resume
        settings["start"] = start  # the rule of _warm_start: START_RULE, or an older store's
    base = dict(_provenance(problem, center, dirs, grid, False, False, func=func), kind="ratio_map", strategy="lanczos",
                eigen=settings)

    def attrs_for(pinned: dict) -> dict:
        return dict(_attrs(dict(base, chunk_shape=pinned["chunk_shape"]), dirs, problem), kind="ratio_map",
                    curvature=curvature, tol=tol, seed=seed, max_products=max_products)

    made: list[_PointCurvature] = []

    def build(pinned: dict) -> _PointCurvature:
        evaluate = _PointCurvature(problem, center, dirs, names, kind=curvature, tol=tol, seed=seed,
                                   max_products=max_products, basis=basis, warm_start=warm_start,
                                   unit=_steps_of(grid), radius=START_RULES[start])
        made.append(evaluate)
        return evaluate

    def finish(ds: xr.Dataset) -> dict:
        extra = _count_nan(ds)
        methods = [e.method for e in made if e.method is not None]
        if methods:  # how the products of this run were computed (PRODUCT_METHODS)
            extra["product_method"] = methods[0]
        return extra

    job = GridJob(
        kind="ratio_map", func=func, grid=grid, variables=VARIABLES, provenance=base,
        requested={"chunk_shape": None if chunk is None else list(chunk_shape), "threads": None},
        plan=lambda req: ({"chunk_shape": req["chunk_shape"] or list(chunk_shape),
                           "threads": _threads.for_problem(problem)}, None),
        evaluator=build, attrs=attrs_for, labels=tuple(dirs.labels), write_extra=lambda tmp: _save_basis(tmp, center, dirs),
        description=f"|λmin/λmax| {'×'.join(map(str, grid.shape))}", finish=finish)
    return job


def _count_nan(ds: xr.Dataset) -> dict:
    """Count computed points whose curvature is NaN (``products`` is NaN only where not computed)."""
    computed = np.isfinite(ds["products"].values)
    return {"nan_curvature_points": int((computed & ~np.isfinite(ds["lambda_min"].values)).sum()),
            "extremal_certified": 0}


def _steps_of(grid: Grid) -> np.ndarray:
    """The grid's step along each axis (1 for an axis of one point): the unit of neighbour distances."""
    return np.array([float(a[1] - a[0]) if len(a) > 1 else 1.0 for a in grid.axes])


class _PointCurvature:
    """``evaluate(coefficients) -> {variable: values}`` for the chunk runner (one chunk per call; the
    points of a chunk in their given order, each warm-started from its nearest predecessor)."""

    def __init__(self, problem: Problem, center, dirs: Directions, names, *, kind: str, tol: float, seed: int,
                 max_products: int, basis: int | None, warm_start: bool = False, unit: np.ndarray | None = None,
                 radius: float | None = NEIGHBOUR_RADIUS):
        self.problem, self.center, self.dirs, self.names = problem, dict(center), list(dirs.vectors), names
        self.kind, self.tol, self.seed, self.max_products, self.basis = kind, tol, seed, max_products, basis
        self.warm_start, self.unit, self.radius = warm_start, unit, radius
        self.method: str | None = None  # the product method found at the first point, kept for the others

    def point(self, coefficients: np.ndarray, start: Tensor | None = None) -> dict[str, float]:
        """The variables at one point (``start``: a warm start vector in the operator's coordinates),
        with the point's two Ritz vectors under ``"_vectors"`` (None where not finite)."""
        theta = P.lincomb(self.center, self.dirs, [float(c) for c in coefficients])
        op = CurvatureOperator(self.problem, theta, self.names, kind=self.kind, method=self.method)
        eig = solve(op, k=1, which="both", tol=self.tol, seed=self.seed, max_products=self.max_products,
                    basis=self.basis, progress=False, certify=False, start_vector=start,
                    min_steps=None if start is None else WARM_MIN_STEPS)
        self.method = self.method or op._method
        lmax, lmin = float(eig.values[0]), float(eig.values[-1])
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = float(np.abs(np.float64(lmin) / np.float64(lmax)))
        vectors = None
        if self.warm_start and np.isfinite(lmin) and np.isfinite(lmax):
            vectors = (op.flatten(eig.vectors[0]).to(torch.float64), op.flatten(eig.vectors[-1]).to(torch.float64))
        return {"loss": self.problem.loss(theta), "lambda_min": lmin, "lambda_max": lmax, "ratio": ratio,
                "residual_min": float(eig.residuals[-1]), "residual_max": float(eig.residuals[0]),
                "converged": float(bool(np.all(eig.converged))), "products": float(op.products), "_vectors": vectors}

    def __call__(self, coefficients: np.ndarray) -> dict[str, np.ndarray]:
        points = np.asarray(coefficients, dtype=np.float64).reshape(-1, len(self.dirs))
        unit = self.unit if self.unit is not None else np.ones(points.shape[1])
        # the neighbours within NEIGHBOUR_RADIUS (the one before in the row, three above): keep a row and one more
        keep = len(np.unique(points[:, -1])) + 1
        done: list[tuple[np.ndarray, tuple[Tensor, Tensor]]] = []
        rows = []
        for c in points:
            start = _warm_start(c, done, unit, self.radius) if self.warm_start and done else None
            row = self.point(c, start) if start is not None else self.point(c)
            vectors = row.pop("_vectors", None)
            if vectors is not None:
                done = (done + [(c, vectors)])[-keep:]
            rows.append(row)
        return {v: np.array([r[v] for r in rows]) for v in VARIABLES}


def _warm_start(c: np.ndarray, done: list[tuple[np.ndarray, tuple[Tensor, Tensor]]], unit: np.ndarray,
                radius: float | None = NEIGHBOUR_RADIUS) -> Tensor:
    """The start vector of the point ``c`` from the points ``done`` before it (coordinates, (ymax, ymin)):
    ŷ = Σᵢ (d₀/dᵢ) sᵢ yᵢ / ‖·‖ at each end over the nearest point (distance d₀ in grid steps; ties: the
    latest) and every other within :data:`NEIGHBOUR_RADIUS` steps, each sign sᵢ = ±1 matching the
    nearest's vector (an eigenvector's sign is arbitrary); the start is ŷmax + ŷmin. ``radius`` None: the
    nearest point's ymax + ymin as they are (the "warm" rule of older stores)."""
    distance = [float(np.linalg.norm((c - q) / unit)) for q, _ in done]
    order = sorted(range(len(done)), key=lambda i: (distance[i], -i))
    if radius is None:
        ymax, ymin = done[order[0]][1]
        return ymax + ymin
    near = [order[0]] + [i for i in order[1:] if distance[i] <= radius]
    d0 = max(distance[order[0]], np.finfo(np.float64).tiny)
    start = None
    for end in (0, 1):
        first = done[order[0]][1][end]
        total = first.clone()
        for i in near[1:]:
            y = done[i][1][end]
            total += (d0 / distance[i]) * (y if float(first @ y) >= 0 else -y)
        total /= torch.linalg.vector_norm(total)
        start = total if start is None else start + total
    return start
