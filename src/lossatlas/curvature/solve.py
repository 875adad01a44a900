"""Damped inverse products (A + λI)⁻¹ b of a curvature matrix A (Hessian, GGN, Fisher, KFAC).

* ``method="cg"``: conjugate gradients (Hestenes & Stiefel 1952) on the matrix-free products, in
  float64 arithmetic on the operator's products. It stops when the residual ‖b − (A + λI)x‖ is at most
  ``tol·‖b‖`` or after ``maxiter`` iterations; the reported residual is recomputed with one more
  product (not the recurrence's), so it is the true residual of the returned x. An indefinite
  A + λI (a Hessian away from a minimum with too little damping) can stop CG early: a direction
  with pᵀ(A + λI)p ≤ 0 ends the run, ``converged`` is False and ``notes`` says why.
* ``method="kfac"``: the exact inverse of the damped KFAC approximation (K + λI)⁻¹ b through
  eigendecompositions of the Kronecker factors (curvlinops); its residual is measured against K
  (the approximation), not against the Hessian.

Ours rather than curvlinops' ``CGInverseLinearOperator`` (GPyTorch's ``linear_cg``): it reports neither
a residual nor an iteration count, and on benchmarks/bench_curvature_matrices.py it stopped at a
relative residual of 1e-5 (not the 1e-8 asked) after 127 s, where ours reached 8e-9 in 1.3 s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import bad_type, bad_value, public, renamed
from . import _common as C
from ..params.selection import ParamSelection
from .matrices import KFACOperator, curvature_operator, kfac_operator

__all__ = ["Solve", "inverse_product"]


@dataclass(frozen=True)
class Solve:
    """The solution ``x`` of (A + λI)x = b (1-D tensor over the operator's coordinates ``names``),
    with its true ``residual`` ‖b − (A + λI)x‖, the ``relative_residual`` (÷ ‖b‖),
    ``iterations`` (CG steps; 0 for KFAC), ``products`` taken, whether it ``converged`` to ``tol``,
    ``damping`` λ, ``method`` and ``kind`` (which matrix), and ``notes``."""

    x: Tensor
    residual: float
    relative_residual: float
    iterations: int
    converged: bool
    damping: float
    method: str
    kind: str
    products: int
    tol: float
    names: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def __repr__(self) -> str:
        notes = "".join(f"; note: {n}" for n in self.notes)
        return (f"Solve(kind={self.kind!r}, method={self.method!r}, damping={self.damping:g}, size={self.x.numel()}, "
                f"residual={self.residual:.3g} (relative {self.relative_residual:.2g}), iterations={self.iterations}, "
                f"converged={self.converged}{notes})")


def _cg(apply, b: Tensor, damping: float, tol: float, maxiter: int) -> tuple[Tensor, int, list[str]]:
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = float(r @ r)
    target = (tol * float(torch.linalg.vector_norm(b))) ** 2
    notes: list[str] = []
    it = 0
    while it < maxiter and rr > target:
        ap = apply(p) + damping * p
        pap = float(p @ ap)
        if not pap > 0.0:
            notes.append(f"CG stopped at iteration {it}: a direction of non-positive curvature pᵀ(A + λI)p = "
                         f"{pap:.3g} (A + λI is not positive definite: increase the damping)")
            break
        alpha = rr / pap
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = float(r @ r)
        p = r + (rr_new / rr) * p
        rr = rr_new
        it += 1
    return x, it, notes


@public("curvature.inverse_product")
@renamed(theta="center")
def inverse_product(problem: Any, b: Tensor | Mapping[str, Tensor], center: Mapping[str, Tensor] | None = None, *,
                    curvature: str = "hessian", damping: float = 0.0, method: str = "cg", tol: float = 1e-10,
                    maxiter: int | None = None, params: ParamSelection = None, dtype: torch.dtype | None = None,
                    **options) -> Solve:
    """(A + λI)⁻¹ b for A the ``curvature`` (``"hessian"``, ``"ggn"``, ``"ef"``, ``"fisher"``; or an
    operator passed as ``problem``, including a :class:`~lossatlas.curvature.KFACOperator`) and
    λ = ``damping`` ≥ 0. ``b``: a 1-D tensor over the operator's coordinates or a parameter dict.

    ``method="cg"`` (``tol``: relative residual, ``maxiter``: default 10·n) or ``"kfac"`` (``options``
    go to :func:`~lossatlas.curvature.kfac_operator`; needs λ > 0). See the module notes.

    >>> import torch, lossatlas
    >>> x = torch.linspace(-1, 1, 8).reshape(-1, 1)
    >>> problem = lossatlas.Problem(torch.nn.Linear(1, 1), torch.nn.MSELoss(), (x, 3 * x))
    >>> s = lossatlas.curvature.inverse_product(problem, torch.ones(2), damping=0.1, dtype=torch.float64)
    >>> s.x.round(decimals=4).tolist(), s.iterations, s.converged   # 1/(0.8571+0.1), 1/(2+0.1)
    ([1.0448, 0.4762], 2, True)
    """
    if method not in ("cg", "kfac"):
        raise bad_value("method", "'cg' or 'kfac'", method)
    if isinstance(damping, bool) or not isinstance(damping, (int, float)) or not (damping >= 0 and
                                                                                  math.isfinite(damping)):
        raise bad_value("damping", "a finite number >= 0", damping)
    damping = float(damping)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
        raise bad_value("tol", "a number in (0, 1) (relative residual)", tol)
    maxiter = C.check_int("maxiter", maxiter, allow_none=True)
    if method == "kfac" and not isinstance(problem, KFACOperator):
        op = kfac_operator(problem, center, params=params, dtype=dtype, **options)
    else:
        op = curvature_operator(problem, center, curvature=curvature, params=params, dtype=dtype,
                                **options)
    if method == "kfac" and not isinstance(op, KFACOperator):
        raise bad_type("problem", "a Problem or a KFACOperator for method='kfac'", op)
    if isinstance(b, Mapping):
        b = torch.cat([b[k].detach().reshape(-1) for k in op.names])
    if not isinstance(b, Tensor) or b.ndim != 1 or b.numel() != op.shape[0]:
        raise bad_value("b", f"a 1-D tensor of {op.shape[0]} entries or a parameter dict", b)
    start = op.products
    b64 = b.detach().to(device=op.device, dtype=torch.float64)

    def apply(v: Tensor) -> Tensor:
        return op.mv(v.to(op.dtype)).to(torch.float64)

    n = op.shape[0]
    notes: list[str] = []
    if method == "kfac":
        if damping <= 0:
            raise bad_value("damping", "a number > 0 for method='kfac'", damping)
        x = op.solve(b64.to(op.dtype), damping).to(torch.float64)
        iterations = 0
    else:
        x, iterations, notes = _cg(apply, b64, damping, tol, maxiter if maxiter is not None else 10 * n)
    residual = float(torch.linalg.vector_norm(b64 - apply(x) - damping * x))
    size = float(torch.linalg.vector_norm(b64))
    rel = residual / size if size else 0.0
    # float32 products cannot reach a residual below their rounding (a few ε·‖A‖‖x‖)
    converged = rel <= max(tol, 100 * float(torch.finfo(op.dtype).eps)) and not notes
    return Solve(x=x.to(op.dtype), residual=residual, relative_residual=rel, iterations=iterations,
                 converged=bool(converged), damping=damping, method=method, kind=getattr(op, "kind", "operator"),
                 products=op.products - start, tol=float(tol), names=tuple(op.names), notes=tuple(notes))
