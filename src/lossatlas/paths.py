"""Straight paths between two models: loss along θ(t) = a + t·(b − a), barriers and monotonicity.

* Goodfellow, Vinyals & Saxe, "Qualitatively characterizing neural network optimization problems"
  (ICLR 2015): the loss along the line from initialisation to solution.
* Lucas et al., "Analyzing Monotonic Linear Interpolation in Neural Network Loss Landscapes"
  (ICML 2021): the MLI property — the loss decreases monotonically from a to b.
* Frankle et al. (2020), Entezari et al. (2022): the *barrier* between two solutions,

      B = max_{t∈[0,1]} f(t) − max(f(0), f(1)),
      B_lin = max_{t∈[0,1]} [f(t) − ((1 − t)·f(0) + t·f(1))]   (above the chord of the end losses).

The evaluation is :func:`lossatlas.surface` along the single direction ``b − a`` (exact points
a + t·(b − a), chunked, resumable with ``store=``); this module adds the path metrics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from . import _bn_honesty
from . import params as P
from ._ncattrs import make_safe
from .directions import between
from .errors import bad_type, bad_value, public
from .grid_job import run_grid
from .problem import Problem
from .surface import open_surface, surface_job

__all__ = ["interpolate", "open_interpolation", "path_metrics"]

BN_CHOICES = (None, "eval", "recalibrate")


@public("interpolate")
def interpolate(problem: Problem, a: Mapping[str, Tensor] | nn.Module, b: Mapping[str, Tensor] | nn.Module, *,
                steps: int = 101, extend: tuple[float, float] = (0.0, 1.0), bn: str | None = None,
                strategy: str = "auto", chunk: int | None = None, store: str | Path | None = None,
                overwrite: bool = False, progress: bool = True, metrics: bool = True,
                tol: float | None = None) -> xr.Dataset:
    """Loss (and metrics) at θ(t) = a + t·(b − a) for ``steps`` values of t spanning ``extend``.

    Returns an ``xarray.Dataset`` along ``t`` (``loss``, ``accuracy``, any metric of the problem)
    whose ``attrs`` hold the path metrics of :func:`path_metrics` over t ∈ [0, 1]: ``barrier``,
    ``barrier_t``, ``barrier_linear``, ``loss_a``, ``loss_b``, ``mli`` (1 when the loss never
    rises by more than ``mli_tol`` walking from a to b), ``largest_bump``, ``error_barrier`` (with
    accuracy) and ``distance`` = ‖b − a‖.

    ``a``, ``b``: parameter dicts like ``problem.params()`` or modules of the same architecture.
    ``extend=(lo, hi)`` with lo ≤ 0 and hi ≥ 1 evaluates beyond the endpoints (t < 0, t > 1); when
    t = 0 or t = 1 is not a grid point its loss is evaluated separately for the metrics.
    ``bn``: ``"recalibrate"`` recomputes BatchNorm statistics at every t (needed between two
    trained BN networks, whose stored statistics belong to one endpoint only); ``"eval"`` uses
    the stored ones (and warns, :class:`~lossatlas.errors.BatchNormStatsWarning`); ``None``:
    ``"recalibrate"`` when the model has BatchNorm layers with running statistics, else the
    problem's setting. ``tol``: the rise tolerated by the MLI
    test (default 10·ε·max|f|, ε the problem's machine epsilon). ``strategy``, ``chunk``,
    ``store``, ``overwrite``, ``progress``, ``metrics``: as in :func:`lossatlas.surface` (a store is
    reopened by :func:`open_interpolation`); ``"auto"`` means ``"loop"`` below 256 points, where
    timing the alternatives would cost more than the path.

    >>> import torch, lossatlas
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> x = torch.randn(64, 3)
    >>> problem = lossatlas.Problem(torch.nn.Linear(3, 1), torch.nn.MSELoss(), (x, x.sum(1, keepdim=True)))
    >>> a = problem.params()
    >>> b = {k: torch.zeros_like(v) for k, v in a.items()}
    >>> ds = lossatlas.interpolate(problem, a, b, steps=11, progress=False)
    >>> ds.loss.dims, ds.attrs["mli"] in (0, 1), ds.attrs["barrier"] >= 0
    (('t',), True, True)
    """
    if not isinstance(problem, Problem):
        raise bad_type("problem", "a lossatlas.Problem", problem)
    a = _as_params(problem, a, "a")
    b = _as_params(problem, b, "b")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 2:
        raise bad_value("steps", "an integer >= 2", steps)
    lo, hi = _check_extend(extend)
    if bn not in BN_CHOICES:
        raise bad_value("bn", f"one of {BN_CHOICES}", bn)
    if tol is not None and not (isinstance(tol, (int, float)) and not isinstance(tol, bool) and tol >= 0):
        raise bad_value("tol", "a number >= 0 or None", tol)
    if bn is None and problem.has_batchnorm and problem.bn == "eval":
        bn = "recalibrate"  # two networks' points: stored statistics describe one endpoint at most (cheap on a line)
    evaluated = with_bn(problem, bn)
    _bn_honesty.warn_if_stale(evaluated, "interpolate", [P.sub(b, a)], "the path from a to b")
    with _bn_honesty.quiet():
        job, store = surface_job(evaluated, a, between(a, b), steps=int(steps), span=(lo, hi), strategy=strategy,
                                 chunk=chunk, store=store, overwrite=overwrite, progress=progress, metrics=metrics)
    distance = P.norm(P.sub(b, a))

    def finish(ds: xr.Dataset) -> dict[str, Any]:  # the path metrics: part of the job's attrs (and its store's)
        return dict(_summary(evaluated, _as_path(ds), a, b, tol), distance=distance, bn=str(evaluated.bn),
                    kind="interpolation")

    return make_safe(_as_path(run_grid(replace(job, finish=finish), store=store, overwrite=overwrite,
                                       progress=progress)))


@public("open_interpolation")
def open_interpolation(path: str | Path) -> xr.Dataset:
    """Reopen a store written by :func:`interpolate` (the same Dataset, along ``t``)."""
    return make_safe(_as_path(open_surface(path)))


def with_bn(problem: Problem, bn: str | None) -> Problem:
    """``problem`` evaluated with another BatchNorm policy (same model, data and loss)."""
    return problem if bn is None else problem.replace(bn=bn)


@public("path_metrics")
def path_metrics(t: np.ndarray, loss: np.ndarray, *, dtype: torch.dtype = torch.float64, tol: float | None = None,
                 accuracy: np.ndarray | None = None) -> dict[str, Any]:
    """Barrier and monotonicity of a loss profile ``loss[i] = f(t[i])`` with t sorted, t[0] = 0 and
    t[-1] = 1 (points outside [0, 1] must be removed first).

    ``barrier`` = max f − max(f(0), f(1)) at ``barrier_t``; ``barrier_linear`` = max [f(t) −
    ((1 − t)f(0) + t f(1))]; ``largest_bump`` = max_{s ≤ t} [f(t) − f(s)], the largest rise met
    walking from t = 0 to t = 1; ``mli`` = 1 if ``largest_bump`` ≤ ``mli_tol`` (monotonic
    linear interpolation, Lucas et al. 2021). With ``accuracy``: ``error_barrier`` on 1 − accuracy.

    >>> m = path_metrics(np.array([0.0, 0.5, 1.0]), np.array([1.0, 2.0, 0.5]))
    >>> m["barrier"], m["barrier_linear"], m["largest_bump"], m["mli"]
    (1.0, 1.25, 1.0, 0)
    """
    t = np.asarray(t, dtype=np.float64)
    f = np.asarray(loss, dtype=np.float64)
    f0, f1 = float(f[0]), float(f[-1])
    top = int(np.nanargmax(f)) if np.isfinite(f).any() else 0
    chord = (1.0 - t) * f0 + t * f1
    rise = f - np.minimum.accumulate(f)
    bump = float(np.max(rise))
    if tol is None:
        scale = float(np.nanmax(np.abs(f))) if np.isfinite(f).any() else 0.0
        tol = 10.0 * torch.finfo(dtype).eps * scale
    out: dict[str, Any] = {
        "loss_a": f0,
        "loss_b": f1,
        "barrier": float(f[top] - max(f0, f1)),
        "barrier_t": float(t[top]),
        "barrier_linear": float(np.max(f - chord)),
        "largest_bump": bump,
        "largest_bump_t": float(t[int(np.argmax(rise))]),
        "mli": int(bool(bump <= tol)),
        "mli_tol": float(tol),
        "max_loss": float(f[top]),
    }
    if not np.isfinite(f).all():
        out.update(barrier=math.nan, barrier_linear=math.nan, largest_bump=math.nan, mli=0)
    if accuracy is not None:
        err = 1.0 - np.asarray(accuracy, dtype=np.float64)
        out["error_barrier"] = float(np.max(err) - max(err[0], err[-1]))
    return out


# -- helpers ---------------------------------------------------------------------------------------
def _as_params(problem: Problem, x: Any, arg: str) -> dict[str, Tensor]:
    if isinstance(x, nn.Module):
        x = P.params_of(x, dtype=problem.dtype, device=problem.device)
    if not isinstance(x, Mapping):
        raise bad_type(arg, "a parameter dict (like problem.params()) or an nn.Module", x)
    problem.check_params(x, arg=arg)
    return {k: v.detach() for k, v in x.items()}


def _check_extend(extend: Any) -> tuple[float, float]:
    ok = (isinstance(extend, (list, tuple)) and len(extend) == 2
          and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in extend))
    if ok:
        lo, hi = float(extend[0]), float(extend[1])
        ok = math.isfinite(lo) and math.isfinite(hi) and lo <= 0.0 and hi >= 1.0
    if not ok:
        raise bad_value("extend", "a pair (lo, hi) of finite numbers with lo <= 0 and hi >= 1", extend)
    return lo, hi


def _as_path(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.rename({"x": "t"})
    ds["t"].attrs["long_name"] = "t (θ = a + t·(b − a))"
    ds.attrs["kind"] = "interpolation"
    return ds


def _summary(problem: Problem, ds: xr.Dataset, a, b, tol: float | None) -> dict[str, Any]:
    """Path metrics over t ∈ [0, 1]; endpoints that are not grid points are evaluated here."""
    t = ds["t"].values
    inside = (t >= 0.0) & (t <= 1.0)
    tt = list(t[inside])
    values = {k: list(ds[k].values[inside]) for k in ("loss", "accuracy") if k in ds}
    for end, params in ((0.0, a), (1.0, b)):
        if end not in tt:
            point = problem.evaluate(params)
            pos = 0 if end == 0.0 else len(tt)
            tt.insert(pos, end)
            for k in values:
                values[k].insert(pos, point[k])
    return path_metrics(np.array(tt), np.array(values["loss"]), dtype=problem.dtype, tol=tol,
                        accuracy=np.array(values["accuracy"]) if "accuracy" in values else None)
