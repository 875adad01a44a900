"""Influence of training points on a test loss (Koh & Liang 2017), via damped inverse products.

The training objective is R(θ) = (1/N) Σᵢ fᵢ(θ) with fᵢ the problem's loss on sample i alone (a
closure's regulariser included: a closure returning mean loss + (λ/2)‖θ‖² gives fᵢ = ℓᵢ + (λ/2)‖θ‖²).
At a minimiser θ̂, removing sample j and minimising again moves the parameters by one Newton step

    θ₋ⱼ − θ̂ ≈ H⁻¹ ∇fⱼ(θ̂) / (N − 1),      H = ∇²R(θ̂)

(exact to first order; the objective without j is (N R − fⱼ)/(N − 1), whose gradient at θ̂ is
−∇fⱼ/(N − 1)), so the test loss changes by

    ΔL_test(j) ≈ ∇L_test(θ̂)ᵀ H⁻¹ ∇fⱼ(θ̂) / (N − 1)           (``Influence.values``)

and Koh & Liang's up-weighting influence is I_up,loss(j) = −∇L_testᵀ H⁻¹ ∇fⱼ (``up_weight``).
One solve s = (H + λI)⁻¹ ∇L_test serves every training point (conjugate gradients with its residual,
or KFAC: :func:`~lossatlas.curvature.inverse_product`). With ``damping`` λ > 0 or the GGN in place of
H (``curvature="ggn"``) the estimate is that of the damped / Gauss–Newton quadratic model: for a
non-convex model at a non-minimum the Hessian is indefinite and needs damping.

See docs/influence.md for a worked example checked against leave-one-out retraining.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import bad_type, bad_value, public, renamed
from ..params.selection import ParamSelection
from ..problem import Problem
from .matrices import curvature_operator, kfac_operator
from .solve import Solve, inverse_product

__all__ = ["Influence", "influence"]


@dataclass(frozen=True)
class Influence:
    """Influence of each training point on the test loss (see :mod:`lossatlas.curvature.influence`).

    ``values[j]``: predicted change of the test loss when training point j is left out and the model
    retrained (positive: removing it hurts the test loss, the point is helpful); ``up_weight[j]``:
    Koh & Liang's I_up,loss = −(N − 1)·values[j]; ``indices``: the points' indices in the problem's
    data (None for points given as tensors); ``test_loss``: the test loss at θ; ``solve``: the
    inverse product (residual, iterations, convergence) every value rests on.
    """

    values: np.ndarray
    up_weight: np.ndarray
    test_loss: float
    solve: Solve
    n_train: int
    damping: float
    curvature: str
    indices: tuple[int, ...] | None = None

    def __repr__(self) -> str:
        top = np.argsort(-np.abs(self.values))[:3]
        shown = ", ".join(f"{(self.indices[i] if self.indices else int(i))}: {self.values[i]:+.3g}" for i in top)
        return (f"Influence(points={len(self.values)}, curvature={self.curvature!r}, damping={self.damping:g}, "
                f"largest=[{shown}], test_loss={self.test_loss:.6g}, solve residual="
                f"{self.solve.relative_residual:.2g} in {self.solve.iterations} iterations, "
                f"converged={self.solve.converged})")


def _cast(problem, batch: Any) -> Any:
    def one(t):
        if not isinstance(t, Tensor):
            return t
        t = t.to(problem.device)
        return t.to(problem.dtype) if t.is_floating_point() else t

    if isinstance(batch, Mapping):
        return {k: one(v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return tuple(one(t) for t in batch)
    return one(batch)


def _size(batch: Any) -> int:
    first = next(iter(batch.values())) if isinstance(batch, Mapping) else (batch[0] if isinstance(batch, (
        tuple, list)) else batch)
    return int(first.shape[0])


def _row(batch: Any, i: int) -> Any:
    if isinstance(batch, Mapping):
        return {k: v[i:i + 1] if isinstance(v, Tensor) else v for k, v in batch.items()}
    return tuple(t[i:i + 1] if isinstance(t, Tensor) else t for t in batch)


def _mean_gradient(op, batch: Any, closure=None) -> tuple[Tensor, float]:
    """∇ of the per-sample mean objective on ``batch`` (or of ``closure(model_call, batch)``) over the
    operator's coordinates, and its value."""
    problem = op.problem
    leaves = [op.theta[k].detach().clone().requires_grad_(True) for k in op.names]
    point = dict(op.theta)
    point.update(zip(op.names, leaves))
    n = _size(batch)
    with torch.enable_grad():
        if closure is not None:
            with problem.bound(point, getattr(op, "_buffers", None)) as module:
                value = closure(module, batch)
            if not isinstance(value, Tensor) or value.ndim != 0:
                raise bad_value("influence", "test_loss", "a closure returning a scalar tensor", value)
        else:
            value = problem.batch_loss(point, batch, n, getattr(op, "_buffers", None))  # the batch's mean
        grads = torch.autograd.grad(value, leaves, allow_unused=True)
    flat = torch.cat([(g if g is not None else torch.zeros_like(t)).reshape(-1) for g, t in zip(grads, leaves)])
    return flat.detach(), float(value.detach())


def _training_points(problem, indices: Sequence[int]) -> list[Any]:
    wanted = {int(i): None for i in indices}
    start = 0
    for batch, n in problem.data:
        for i in wanted:
            if start <= i < start + n and wanted[i] is None:
                wanted[i] = _row(batch, i - start)
        start += n
    return [wanted[int(i)] for i in indices]


@public("curvature.influence")
@renamed(theta="center")
def influence(problem: Any, train: int | Sequence[int] | Any, test: Any, center: Mapping[str, Tensor] | None = None,
              *, damping: float = 0.0, curvature: str = "hessian", method: str = "cg", tol: float = 1e-10,
              maxiter: int | None = None, params: ParamSelection = None, dtype: torch.dtype | None = None,
              test_loss: Any = None) -> Influence:
    """Predicted change of the test loss (mean over the ``test`` batch, e.g. ``(x_test, y_test)``)
    when each training point is left out and the model retrained (Koh & Liang 2017).

    ``train``: an index or a list of indices into the problem's data (in its batch order), or a
    batch of points (each row one point). ``damping``, ``curvature``, ``method`` (``"cg"`` or
    ``"kfac"``), ``tol``, ``maxiter``: as :func:`~lossatlas.curvature.inverse_product`.
    ``test_loss``: a ``closure(model_call, batch) -> scalar`` for the test loss when it differs from
    the training objective (e.g. without the regulariser a training closure adds; default: the
    problem's loss or closure on the test batch).
    θ must be a minimiser of the (regularised) training loss for the estimate to mean
    leave-one-out retraining; the result carries the solve's residual and iteration count.
    """

    if not isinstance(problem, Problem):
        raise bad_type("problem", "a lossatlas.Problem", problem)
    if curvature not in ("hessian", "ggn", "ef", "fisher"):
        raise bad_value("curvature", "'hessian', 'ggn', 'ef' or 'fisher'", curvature)
    if method == "kfac":
        op = kfac_operator(problem, center, params=params, dtype=dtype)
    else:
        op = curvature_operator(problem, center, curvature=curvature, params=params, dtype=dtype)
    N = op.problem.n_samples
    indices: tuple[int, ...] | None = None
    if isinstance(train, (int, np.integer)) and not isinstance(train, bool):
        train = [int(train)]
    if isinstance(train, Sequence) and not isinstance(train, tuple) and all(
            isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in train):
        bad = [int(i) for i in train if not 0 <= int(i) < N]
        if bad or not len(train):
            raise bad_value("train", f"indices in [0, {N})", bad[:3] or train)
        indices = tuple(int(i) for i in train)
        points = _training_points(op.problem, indices)
    elif isinstance(train, (tuple, list, Mapping, Tensor)):
        batch = _cast(op.problem, train)
        points = [_row(batch, i) for i in range(_size(batch))]
    else:
        raise bad_type("train", "an index, a list of indices or a batch of points", train)
    if not isinstance(test, (tuple, list, Mapping, Tensor)):
        raise bad_type("test", "a batch of test points, e.g. (x_test, y_test)", test)
    if test_loss is not None and not callable(test_loss):
        raise bad_type("test_loss", "a closure(model_call, batch) -> scalar or None", test_loss)
    g_test, value = _mean_gradient(op, _cast(op.problem, test), test_loss)
    s = inverse_product(op, g_test, damping=damping, method=method, tol=tol, maxiter=maxiter)
    sx = s.x.to(torch.float64)
    dots = np.array([float(sx @ _mean_gradient(op, p)[0].to(torch.float64)) for p in points])
    return Influence(values=dots / (N - 1), up_weight=-dots, test_loss=value, solve=s, n_train=N,
                     damping=float(damping), curvature="kfac" if method == "kfac" else curvature, indices=indices)
