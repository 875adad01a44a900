"""Extreme eigenpairs of the Hessian (or GGN) at θ, at either end of the spectrum or both.

A C² function is convex only if its Hessian is positive semi-definite everywhere, so one converged
negative eigenvalue at one point proves that the loss is not convex. The smallest eigenvalue is
found by the same thick-restart Lanczos run as the largest (:mod:`.lanczos`); the residual
‖Hv − λv‖ of every returned pair is computed explicitly — Hv from the products actually taken
(Hv = Σⱼ sⱼ Hvⱼ for v = Σⱼ sⱼ vⱼ), not from the Lanczos recurrence's estimate — and reported.

What the flags claim:

* ``converged[i]``: ‖Hv − λv‖ ≤ tol·scale. Then *an* eigenvalue of H lies within the residual of
  ``values[i]`` — not necessarily the i-th extreme one. Lanczos from one start vector finds one copy
  of a repeated eigenvalue and can stop with an interior eigenvalue in the place of one it missed.
* ``extremal_certified[i]``: the returned values are the k extreme ones. After the first run, a
  second Lanczos run from an independent random start searches the orthogonal complement of the
  returned vectors, (I − YYᵀ)H(I − YYᵀ), with the same convergence test; whatever it finds is merged by
  Rayleigh–Ritz over both sets, and the check repeats until a run finds nothing beyond the returned
  values by more than the convergence threshold (flag True), or the product budget ends (flag
  False). When a Krylov space grows to the whole (complement) space, every eigenvalue has been
  seen and the claim is exact. The check is randomised: it misses an eigenvalue only when a
  Gaussian start vector is (numerically) orthogonal to its eigenvector.
* ``errors[i]``: when the values are the k extreme ones, |values[i] − λᵢ| ≤ errors[i] =
  ‖R‖₂ + τ, with R the residual matrix of the pairs at that end of the spectrum (Kahan's bound for
  Rayleigh–Ritz pairs; interlacing gives λᵢ ≤ values[i] at the lower end, ≥ at the upper) and τ the
  zero band (:func:`._common.zero_band`) covering the error of the products themselves.

``all_converged`` is True only when every pair both converged and was certified extremal.
At a point where the products are not finite (NaN/Inf loss or gradient), the result holds NaN
values, ``converged`` False and a note, instead of raising: a map of many points keeps going.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from ..errors import bad_value, public, renamed
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


@public("curvature.eigenvalues")
@renamed(theta="center")
def eigenvalues(problem, center: Mapping[str, Tensor] | None = None, *, k: int = 1, which: str = "largest",
                tol: float = DEFAULT_TOL, seed: int = 0, max_products: int | None = DEFAULT_MAX_PRODUCTS,
                basis: int | None = None, params=None, dtype: torch.dtype | None = None, curvature: str = "hessian",
                certify: bool = True, progress: bool = True) -> Eigen:
    """The ``k`` extreme eigenpairs of the Hessian (``curvature="ggn"``: the GGN) of the problem's loss
    at ``center`` (default θ₀), with explicit residuals and an honest convergence flag.

    ``which``: ``"largest"`` (algebraic, λmax first), ``"smallest"`` (algebraic, most negative first),
    ``"both"`` (k from each end) or ``"magnitude"`` (largest |λ|). A pair has converged when
    ‖Hv − λv‖ ≤ ``tol`` · max|θ| (Ritz values). ``max_products`` bounds the number of
    Hessian-vector products; ``basis`` the size of the Lanczos basis between restarts (default
    100, less when 1 GiB of float64 vectors and their products would not hold it). ``params``, ``dtype``: as
    :func:`hessian_operator`. ``problem`` may also be a :class:`CurvatureOperator` (then leave
    ``center``, ``params``, ``dtype`` out). The start vector is Gaussian from ``seed``: the same seed
    gives the same result. ``certify``: check from fresh random starts that no eigenvalue beyond the
    returned ones was missed (see the module notes; ``False`` saves those products and leaves
    ``extremal_certified`` False). The result records how products were computed
    (``product_method``, see :data:`~lossatlas.curvature.operators.PRODUCT_METHODS`) and ``notes``.

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
    k = C.check_int("k", k)
    if which not in WHICH:
        raise bad_value("which", f"one of {WHICH}", which)
    tol = C.check_tol(tol)
    seed = C.check_seed(seed)
    max_products = C.check_int("max_products", max_products, allow_none=True)
    basis = C.check_int("basis", basis, minimum=2, allow_none=True)
    C.check_flag("progress", progress)
    C.check_flag("certify", certify)
    op = as_operator(problem, center, curvature=curvature, params=params, dtype=dtype)
    n = op.shape[0]
    wanted = 2 * k if which == "both" else k
    if wanted > n:
        raise bad_value("k", f"at most {n // 2 if which == 'both' else n} (the operator has {n} rows)", k)
    return solve(op, k=k, which=which, tol=tol, seed=seed, max_products=max_products, basis=basis, progress=progress,
                 certify=certify)


def solve(op: CurvatureOperator, *, k: int, which: str, tol: float, seed: int, max_products: int | None,
          basis: int | None, progress: bool, certify: bool = True, start_vector: Tensor | None = None,
          min_steps: int | None = None) -> Eigen:
    """:func:`eigenvalues` on an operator, arguments already checked. ``start_vector``: the first Lanczos vector
    (default: Gaussian from ``seed``; e.g. a warm start from a neighbouring point's Ritz vectors);
    ``min_steps``: fewest products before convergence may be declared (default :data:`MIN_STEPS`)."""
    n = op.shape[0]
    wanted = 2 * k if which == "both" else k
    limit = max_products if max_products is not None else max(DEFAULT_MAX_PRODUCTS, 10 * wanted)
    basis = C.default_basis(n, wanted, basis)
    start = op.products
    v0 = C.gaussian(n, seed, device=op.device) if start_vector is None else start_vector.to(device=op.device)
    priority = _priority(which)
    breakdown = breakdown_tolerance(op.dtype)
    label = {"largest": "λmax", "smallest": "λmin", "both": "λmin, λmax", "magnitude": "max |λ|"}[which]
    notes: list[str] = []
    with progress_bar(limit, f"Lanczos {label}", enabled=progress, unit="products") as advance:
        found = extreme_pairs(op.mv, v0, priority=priority, k=wanted, tol=tol, max_products=limit, basis=basis,
                              breakdown=breakdown, min_steps=MIN_STEPS[which] if min_steps is None else min_steps,
                              on_product=lambda: advance(1))
        if not found.finite:
            return _nonfinite(op, which, wanted, tol, seed, start)
        norms = torch.linalg.vector_norm(found.vectors, dim=0, keepdim=True)
        vectors, images, values = found.vectors / norms, found.images / norms, found.values
        scale, asymmetry, used = found.scale, found.asymmetry, found.products
        extremal = found.complete or wanted >= n
        checks = 0
        while certify and not extremal and used < limit:
            checks += 1
            check = extreme_pairs(op.mv, C.gaussian(n, seed, stream=checks, device=op.device), priority=priority,
                                  k=wanted, tol=tol, max_products=limit - used, basis=basis, breakdown=breakdown,
                                  min_steps=MIN_STEPS[which], on_product=lambda: advance(1),
                                  lock=vectors.T.contiguous())
            used += check.products
            if not check.finite:
                return _nonfinite(op, which, wanted, tol, seed, start)
            asymmetry = max(asymmetry, check.asymmetry)
            scale = max(scale, check.scale)
            merged, merged_vectors, merged_images = _rayleigh_ritz(
                torch.cat([vectors, check.vectors], dim=1), torch.cat([images, check.images], dim=1), priority,
                wanted)
            scale = max(scale, float(np.abs(merged).max()))
            beyond = _beyond(merged, values, which, tol * scale)
            vectors, images, values = merged_vectors, merged_images, merged
            if not beyond:
                extremal = check.complete or not check.exhausted
                break
            notes.append(f"check {checks} from a fresh start found eigenvalues beyond the first ones (merged)")
            extremal = check.complete and not check.exhausted  # the whole complement was seen: nothing left
    if certify and not extremal:
        notes.append("extremality not certified: the product budget ran out before a check from a fresh start "
                     "found nothing beyond the returned values (raise max_products)")
    elif not certify and not extremal:
        notes.append("extremality not checked (certify=False): each converged value is an eigenvalue within its "
                     "residual, not necessarily the k-th extreme one")
    signs = _signs(vectors)
    vectors, images = vectors * signs, images * signs
    residual_vectors = images - vectors * torch.as_tensor(values, device=vectors.device)
    residuals = torch.linalg.vector_norm(residual_vectors, dim=0).cpu().numpy()
    tau = C.zero_band(op.dtype, scale, asymmetry, n, op.product_error)
    errors = _errors(residual_vectors, values, which, k) + tau
    order = _output_order(values, which)
    values, residuals, vectors, errors = values[order], residuals[order], vectors[:, order], errors[order]
    converged = residuals <= tol * scale
    notes = list(op.method_notes) + notes
    return Eigen(values=values, vectors=[op.embed(vectors[:, i]) for i in range(vectors.shape[1])],
                 residuals=residuals, converged=converged, which=which, tol=tol, scale=scale,
                 products=op.products - start, seed=seed, names=op.names, errors=errors,
                 extremal_certified=np.full(len(values), bool(extremal)), zero_tol=tau, product_method=op.method,
                 checks=checks, notes=tuple(notes))


def _rayleigh_ritz(basis: Tensor, images: Tensor, priority, wanted: int) -> tuple[np.ndarray, Tensor, Tensor]:
    """The ``wanted`` Ritz pairs (by ``priority``) of A over the span of the columns of ``basis``, with
    ``images`` = A·basis: no new products."""
    q, r = torch.linalg.qr(basis)  # the columns are orthonormal up to rounding: r ≈ I
    aq = torch.linalg.solve_triangular(r, images, upper=True, left=False)
    g = q.T @ aq
    theta, s = np.linalg.eigh(((g + g.T) / 2).cpu().numpy())
    order = priority(theta)[:wanted]
    coefficients = torch.as_tensor(s[:, order], dtype=torch.float64, device=q.device)
    return theta[order].copy(), q @ coefficients, aq @ coefficients


def _beyond(new: np.ndarray, old: np.ndarray, which: str, margin: float) -> bool:
    """Whether the merged values ``new`` go beyond ``old`` (both in priority order) by more than ``margin``."""
    if which == "largest":
        return bool(np.any(new > old + margin))
    if which == "smallest":
        return bool(np.any(new < old - margin))
    if which == "magnitude":
        return bool(np.any(np.abs(new) > np.abs(old) + margin))
    return bool(np.any(new[0::2] > old[0::2] + margin) or np.any(new[1::2] < old[1::2] - margin))


def _errors(residual_vectors: Tensor, values: np.ndarray, which: str, k: int) -> np.ndarray:
    """‖R‖₂ of the residual matrix of the pairs at each end of the spectrum (Kahan's bound), per pair."""
    out = np.zeros(len(values))
    if which == "both":
        groups = [np.arange(0, len(values), 2), np.arange(1, len(values), 2)]
    else:
        groups = [np.arange(len(values))]
    for g in groups:
        if len(g):
            out[g] = float(torch.linalg.matrix_norm(residual_vectors[:, g], ord=2))
    return out


def _nonfinite(op: CurvatureOperator, which: str, wanted: int, tol: float, seed: int, start: int) -> Eigen:
    nan = torch.full((op.shape[0],), float("nan"), dtype=op.dtype, device=op.device)
    note = ("the curvature products are not finite at this point (NaN or Inf in the loss or its derivatives): "
            "values are NaN")
    return Eigen(values=np.full(wanted, np.nan), vectors=[op.embed(nan) for _ in range(wanted)],
                 residuals=np.full(wanted, np.nan), converged=np.zeros(wanted, dtype=bool), which=which, tol=tol,
                 scale=float("nan"), products=op.products - start, seed=seed, names=op.names,
                 errors=np.full(wanted, np.nan), extremal_certified=np.zeros(wanted, dtype=bool),
                 zero_tol=float("nan"), product_method=op.method, notes=tuple(op.method_notes) + (note,))


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
