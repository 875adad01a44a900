"""Extreme eigenpairs of the Hessian (or GGN) at θ, at either end of the spectrum or both.

A C² function is convex only if its Hessian is positive semi-definite everywhere, so one converged
negative eigenvalue at one point proves that the loss is not convex. The smallest eigenvalue is
found by the same thick-restart Lanczos run as the largest (:mod:`.lanczos`); the residual
‖Hv − λv‖ of every returned pair is computed explicitly — Hv from the products actually taken
(Hv = Σⱼ sⱼ Hvⱼ for v = Σⱼ sⱼ vⱼ), not from the Lanczos recurrence's estimate — and reported.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from ..errors import bad_value
from ..progress import progress_bar
from . import _common as C
from .lanczos import breakdown_tolerance, extreme_pairs
from .operators import CurvatureOperator, as_operator
from .results import Eigen

__all__ = ["eigenvalues", "WHICH"]

WHICH = ("largest", "smallest", "both", "magnitude")
DEFAULT_TOL = 1e-4
DEFAULT_MAX_PRODUCTS = 1000
#: fewest products before convergence may be declared. The lower end of a network's Hessian
#: spectrum sits in a bulk of near-zero eigenvalues, where a tiny Krylov space yields small
#: residuals before the most negative eigenvalue emerges (ARPACK's default basis is 20 too); the
#: top end is usually a few well-separated outliers.
MIN_STEPS = {"largest": 8, "magnitude": 8, "smallest": 20, "both": 20}


def _priority(which: str):
    """Ordering of the indices of ascending Ritz values, most wanted first."""
    def largest(theta: np.ndarray) -> np.ndarray:
        return np.arange(len(theta))[::-1]

    def smallest(theta: np.ndarray) -> np.ndarray:
        return np.arange(len(theta))

    def magnitude(theta: np.ndarray) -> np.ndarray:
        return np.argsort(-np.abs(theta), kind="stable")

    def both(theta: np.ndarray) -> np.ndarray:
        m = len(theta)
        out = np.empty(m, dtype=np.int64)
        out[0::2] = np.arange(m - 1, m - 1 - (m + 1) // 2, -1)
        out[1::2] = np.arange(m // 2)
        return out

    return {"largest": largest, "smallest": smallest, "magnitude": magnitude, "both": both}[which]


def eigenvalues(problem, theta: Mapping[str, Tensor] | None = None, *, k: int = 1, which: str = "largest",
                tol: float = DEFAULT_TOL, seed: int = 0, max_products: int | None = DEFAULT_MAX_PRODUCTS,
                basis: int | None = None, params=None, dtype: torch.dtype | None = None, curvature: str = "hessian",
                progress: bool = True) -> Eigen:
    """The ``k`` extreme eigenpairs of the Hessian (``curvature="ggn"``: the GGN) of the problem's loss
    at ``theta`` (default θ₀), with explicit residuals and an honest convergence flag.

    ``which``: ``"largest"`` (algebraic, λmax first), ``"smallest"`` (algebraic, most negative first),
    ``"both"`` (k from each end) or ``"magnitude"`` (largest |λ|). A pair has converged when
    ‖Hv − λv‖ ≤ ``tol`` · max|θ| (Ritz values). ``max_products`` bounds the number of
    Hessian-vector products; ``basis`` the size of the Lanczos basis between restarts (default
    100, less when 1 GiB of float64 vectors and their products would not hold it). ``params``, ``dtype``: as
    :func:`hessian_operator`. ``problem`` may also be a :class:`CurvatureOperator` (then leave
    ``theta``, ``params``, ``dtype`` out). The start vector is Gaussian from ``seed``: the same seed
    gives the same result.

    >>> import torch, lossatlas
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    >>> x = torch.randn(64, 2)
    >>> problem = lossatlas.Problem(net, torch.nn.MSELoss(), (x, x[:, :1] * x[:, 1:]))
    >>> eig = lossatlas.curvature.eigenvalues(problem, k=1, which="both", dtype=torch.float64, progress=False)
    >>> eig.min < 0 < eig.max, eig.all_converged     # negative curvature: this loss is not convex
    (True, True)
    """
    func = "curvature.eigenvalues"
    k = C.check_int(func, "k", k)
    if which not in WHICH:
        raise bad_value(func, "which", f"one of {WHICH}", which)
    tol = C.check_tol(func, tol)
    seed = C.check_seed(func, seed)
    max_products = C.check_int(func, "max_products", max_products, allow_none=True)
    basis = C.check_int(func, "basis", basis, minimum=2, allow_none=True)
    C.check_flag(func, "progress", progress)
    op = as_operator(problem, theta, func=func, curvature=curvature, params=params, dtype=dtype)
    n = op.shape[0]
    wanted = 2 * k if which == "both" else k
    if wanted > n:
        raise bad_value(func, "k", f"at most {n // 2 if which == 'both' else n} (the operator has {n} rows)", k)
    return solve(op, k=k, which=which, tol=tol, seed=seed, max_products=max_products, basis=basis, progress=progress)


def solve(op: CurvatureOperator, *, k: int, which: str, tol: float, seed: int, max_products: int | None,
          basis: int | None, progress: bool) -> Eigen:
    """:func:`eigenvalues` on an operator, arguments already checked."""
    n = op.shape[0]
    wanted = 2 * k if which == "both" else k
    limit = max_products if max_products is not None else max(DEFAULT_MAX_PRODUCTS, 10 * wanted)
    basis = C.default_basis(n, wanted, basis)
    start = op.products
    v0 = C.gaussian(n, seed, device=op.device)
    label = {"largest": "λmax", "smallest": "λmin", "both": "λmin, λmax", "magnitude": "max |λ|"}[which]
    with progress_bar(limit, f"Lanczos {label}", enabled=progress, unit="products") as advance:
        found = extreme_pairs(op.mv, v0, priority=_priority(which), k=wanted, tol=tol, max_products=limit,
                              basis=basis, breakdown=breakdown_tolerance(op.dtype), min_steps=MIN_STEPS[which],
                              on_product=lambda: advance(1))
    norms = torch.linalg.vector_norm(found.vectors, dim=0, keepdim=True)
    signs = _signs(found.vectors)
    vectors, images = found.vectors * (signs / norms), found.images * (signs / norms)
    values = found.values
    residuals = torch.linalg.vector_norm(images - vectors * torch.as_tensor(values, device=vectors.device),
                                         dim=0).cpu().numpy()
    order = _output_order(values, which)
    values, residuals, vectors = values[order], residuals[order], vectors[:, order]
    converged = residuals <= tol * found.scale
    return Eigen(values=values, vectors=[op.embed(vectors[:, i]) for i in range(vectors.shape[1])],
                 residuals=residuals, converged=converged, which=which, tol=tol, scale=found.scale,
                 products=op.products - start, seed=seed, names=op.names)


def _output_order(values: np.ndarray, which: str) -> np.ndarray:
    if which == "smallest":
        return np.argsort(values, kind="stable")
    if which == "magnitude":
        return np.argsort(-np.abs(values), kind="stable")
    return np.argsort(-values, kind="stable")


def _signs(vectors: Tensor) -> Tensor:
    """Eigenvectors are defined up to sign: the signs that make each one's largest-magnitude entry positive."""
    idx = vectors.abs().argmax(dim=0)
    signs = torch.sign(vectors[idx, torch.arange(vectors.shape[1], device=vectors.device)])
    signs[signs == 0] = 1.0
    return signs
