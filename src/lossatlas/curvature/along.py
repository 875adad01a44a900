"""Curvature along a training trajectory: λmax, λmin and the trace at recorded checkpoints, for
edge-of-stability plots (Cohen et al. 2021, arXiv:2103.00065: full-batch gradient descent with step
size η drives λmax up to 2/η and hovers there)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr

from ..errors import bad_type, bad_value, public
from ..problem import Problem
from ..trajectory import Trajectory, _as_trajectory
from .eigen import eigenvalues
from .trace import trace as trace_fn

__all__ = ["along_trajectory"]


@public("curvature.along_trajectory")
def along_trajectory(problem: Any, trajectory: Any, *, indices: Sequence[int] | None = None, every: int = 1,
                     lr: float | None = None, momentum: float = 0.0, trace_probes: int = 30, tol: float = 1e-6,
                     max_products: int | None = 300, seed: int = 0, dtype: torch.dtype | None = torch.float64,
                     use_state: bool = True) -> xr.Dataset:
    """λmax, λmin (:func:`lossatlas.curvature.eigenvalues`, ``which="both"``) and tr ∇²L
    (:func:`lossatlas.curvature.trace`, Hutch++, ``trace_probes`` probes; 0 skips it) of
    ``problem``'s loss at checkpoints of ``trajectory`` (a :class:`lossatlas.Trajectory`, a
    recording's path, or a list of parameter dicts).

    ``indices`` picks checkpoints (default every ``every``-th, and always the last). With
    ``use_state`` and a recording that holds buffers, each checkpoint is evaluated with its own
    BatchNorm statistics (:meth:`Trajectory.problem`). ``lr`` (and ``momentum`` β) set
    ``attrs["threshold"]`` = (2 + 2β)/η, the stability limit of (heavy-ball) gradient descent on a
    quadratic, drawn by :func:`lossatlas.plot.edge_of_stability`.

    Returns a Dataset along ``step`` with ``lambda_max``, ``lambda_max_error``, ``lambda_min``,
    ``lambda_min_error``, ``converged``, ``trace``, ``trace_stderr`` and ``index`` (checkpoint).
    """
    if not isinstance(problem, Problem):
        raise bad_type("problem", "a lossatlas.Problem", problem)
    if isinstance(trajectory, (list, tuple)):
        traj = Trajectory.from_params(list(trajectory))
    else:
        traj = _as_trajectory(trajectory)
    n = len(traj)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise bad_value("every", "an integer >= 1", every)
    if indices is None:
        idx = list(range(0, n, every))
        if idx[-1] != n - 1:
            idx.append(n - 1)
    else:
        idx = [int(i) % n if -n <= int(i) < n else None for i in indices]
        if not idx or any(i is None for i in idx):
            raise bad_value("indices", f"checkpoint indices in [-{n}, {n})", indices)
    if lr is not None and not (isinstance(lr, (int, float)) and lr > 0):
        raise bad_value("lr", "a positive step size or None", lr)
    if isinstance(trace_probes, bool) or not isinstance(trace_probes, int) or trace_probes < 0:
        raise bad_value("trace_probes", "an integer >= 0", trace_probes)
    names = list(problem.params())
    cols: dict[str, list[float]] = {k: [] for k in ("lambda_max", "lambda_max_error", "lambda_min",
                                                    "lambda_min_error", "converged", "trace", "trace_stderr")}
    has_buffers = use_state and traj.param_names is not None and bool(traj.buffers(idx[0]))
    for i in idx:
        prob = traj.problem(problem, i) if has_buffers else problem
        theta = traj._params(i, None, prob, {})
        theta = {k: theta[k] for k in names}
        eig = eigenvalues(prob, theta, k=1, which="both", tol=tol, seed=seed, max_products=max_products, dtype=dtype,
                          certify=False, progress=False)
        cols["lambda_max"].append(float(eig.values[0]))
        cols["lambda_min"].append(float(eig.values[-1]))
        cols["lambda_max_error"].append(float(eig.residuals[0]))
        cols["lambda_min_error"].append(float(eig.residuals[-1]))
        cols["converged"].append(bool(np.all(eig.converged)))
        if trace_probes:
            est = trace_fn(prob, theta, probes=trace_probes, seed=seed, dtype=dtype, progress=False)
            cols["trace"].append(float(est.value))
            cols["trace_stderr"].append(float(est.stderr))
        else:
            cols["trace"].append(np.nan)
            cols["trace_stderr"].append(np.nan)
    steps = traj.steps[idx]
    data = {k: ("step", np.asarray(v)) for k, v in cols.items()}
    data["index"] = ("step", np.asarray(idx))
    for k, v in traj.scalars.items():
        data[k] = ("step", np.asarray(v)[idx])
    attrs = {"lr": float(lr) if lr is not None else np.nan, "momentum": float(momentum),
             "threshold": (2.0 + 2.0 * momentum) / lr if lr else np.nan, "trace_probes": trace_probes,
             "source": traj.source, "errors": "lambda errors are Lanczos residual norms ‖Hv − λv‖"}
    return xr.Dataset(data, coords={"step": steps}, attrs=attrs)
