"""Spectral density of the Hessian by stochastic Lanczos quadrature (Ghorbani, Krishnan & Xiao,
"An Investigation into Neural Net Optimization via Hessian Eigenvalue Density", ICML 2019).

For a random unit vector v, ``iters`` Lanczos steps give nodes θᵢ (Ritz values) and weights wᵢ with
vᵀ f(H) v ≈ Σᵢ wᵢ f(θᵢ); since E[vᵀ f(H) v] = (1/n) tr f(H) = ∫ f dμ for the spectral measure
μ = (1/n) Σⱼ δ(λⱼ), averaging over probes estimates μ. Smoothing each node with a Gaussian of
width σ gives the density φ. The basis is fully reorthogonalised, so no ghost eigenvalues appear.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from ..errors import EvaluationError, bad_value, public, renamed
from ..progress import progress_bar
from . import _common as C
from .lanczos import breakdown_tolerance, quadrature
from .operators import as_operator
from .results import Density, Estimate, _bracket, _mean_estimate, cms_bracket, mass_estimate

__all__ = ["density"]

DEFAULT_ITERS = 90
DEFAULT_PROBES = 8
TAIL = 6.0  # the tabulated grid extends this many σ beyond the extreme nodes
MAX_POINTS = 200_001


@public("curvature.density")
@renamed(theta="center")
def density(problem, center: Mapping[str, Tensor] | None = None, *, iters: int = DEFAULT_ITERS,
            probes: int = DEFAULT_PROBES, seed: int = 0, sigma: float | None = None, points: int = 2001,
            params=None, dtype: torch.dtype | None = None, curvature: str = "hessian",
            zero_tol: float | None = None, progress: bool = True) -> Density:
    """The smoothed eigenvalue density of the Hessian (``curvature="ggn"``: GGN) at ``center``.

    ``iters`` Lanczos steps for each of ``probes`` random unit vectors (Rademacher/√n from
    ``seed``): ``iters × probes`` products. ``sigma``: width of the Gaussian kernel (default
    (λmax − λmin)/400 of the Ritz values' range). The density is tabulated on ``points`` points from
    6σ below the smallest node to 6σ above the largest (more points when needed to resolve σ, up to
200,001); it integrates to 1. ``params``, ``dtype``:
    as :func:`hessian_operator`; ``problem`` may be a :class:`CurvatureOperator`.

    ``negative_mass`` is the mass certainly below zero (below −τ, τ = ``zero_tol``) and
    ``negative_bounds`` a bracket of the negative mass honest about the zero band, the quadrature
    and the sampling of probes (see :class:`Density`). ``zero_tol``: τ (default: from the dtype,
    ‖H‖ and the measured product error, :func:`lossatlas.curvature._common.zero_band`). Raises
    :class:`~lossatlas.errors.EvaluationError` where the products are not finite.

    >>> import torch, lossatlas
    >>> x = torch.linspace(-1, 1, 8).reshape(-1, 1)
    >>> problem = lossatlas.Problem(torch.nn.Linear(1, 1), torch.nn.MSELoss(), (x, 3 * x))
    >>> d = lossatlas.curvature.density(problem, dtype=torch.float64, progress=False)
    >>> round(d.integral(), 6), d.negative_mass.value, round(d.trace.value, 6)
    (1.0, 0.0, 2.857143)
    """
    iters = C.check_int("iters", iters)
    probes = C.check_int("probes", probes)
    seed = C.check_seed(seed)
    points = C.check_int("points", points, minimum=3)
    if sigma is not None and (isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.floating))
                              or not np.isfinite(sigma) or sigma <= 0):
        raise bad_value("sigma", "a positive number or None", sigma)
    if zero_tol is not None and (isinstance(zero_tol, bool) or not isinstance(zero_tol, (int, float, np.floating))
                                 or not np.isfinite(zero_tol) or zero_tol < 0):
        raise bad_value("zero_tol", "a non-negative number or None (automatic)", zero_tol)
    C.check_flag("progress", progress)
    op = as_operator(problem, center, curvature=curvature, params=params, dtype=dtype)
    n = op.shape[0]
    steps = min(iters, n)
    start = op.products
    nodes = np.zeros((probes, steps))
    weights = np.zeros((probes, steps))
    exact = np.zeros(probes, dtype=bool)
    starts = C.rademacher(n, probes, seed, device=op.device)
    tiny = breakdown_tolerance(op.dtype)
    asymmetry = 0.0
    with progress_bar(probes * steps, "spectral density (SLQ)", enabled=progress, unit="products") as advance:
        for p in range(probes):
            q = quadrature(op.mv, starts[:, p], steps=steps, breakdown=tiny, on_product=lambda: advance(1))
            if not q.finite:
                raise EvaluationError(f"curvature.density(): the curvature products are not finite at θ (NaN or Inf in the "
                                      "loss or its derivatives); there is no spectrum to estimate")
            m = len(q.nodes)
            nodes[p, :m], weights[p, :m], exact[p] = q.nodes, q.weights, q.exact
            nodes[p, m:] = q.nodes[-1]  # padding with zero weight after an early (exact) breakdown
            asymmetry = max(asymmetry, q.asymmetry)
    lo, hi = float(nodes.min()), float(nodes.max())
    tau = (C.zero_band(op.dtype, max(abs(lo), abs(hi)), asymmetry, n, op.product_error) if zero_tol is None
           else float(zero_tol))
    width = sigma if sigma is not None else max(hi - lo, abs(hi), abs(lo), 1e-12) / 400.0
    span = hi - lo + 2 * TAIL * width
    points = max(points, min(MAX_POINTS, int(np.ceil(span / (0.5 * width))) + 1))  # resolve the kernel
    grid = np.linspace(lo - TAIL * width, hi + TAIL * width, points)
    negative = mass_estimate(nodes, weights, 0.0, exact, tau, n)
    bounds = _bracket(*cms_bracket(nodes, weights, 0.0, exact, band=tau), 3.0, n)
    tr = _mean_estimate(n * (weights * nodes).sum(axis=1), "slq")
    products = op.products - start
    notes = tuple(op.method_notes)
    result = Density(grid=grid, values=np.zeros(points), nodes=nodes, weights=weights, sigma=float(width),
                     negative_mass=negative, negative_bounds=bounds,
                     trace=Estimate(tr.value, tr.stderr, tr.samples, "slq", products, product_method=op.method,
                                    notes=notes),
                     size=n, products=products, seed=seed, iters=steps, exact=exact, zero_tol=tau,
                     product_method=op.method, notes=notes)
    object.__setattr__(result, "values", result(grid))  # tabulate φ with the object's own evaluator
    return result
