"""The non-convexity fraction of a sampled slice: the share of grid points whose sampled Hessian
is indefinite, with the error due to the grid's resolution."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _common as C
from ..errors import public

__all__ = ["nonconvexity_fraction", "NonConvexity", "sampled_hessian"]


@dataclass(frozen=True)
class NonConvexity:
    """Share of interior grid points whose sampled Hessian is indefinite (2D) or whose second
    difference is negative (1D).

    ``fraction`` on the full grid (``points`` interior points, ``indefinite`` of them), ``fraction_half``
    on the half-resolution grid (every other point keeping the middle one, spacing 2h); ``resolution_error`` =
    |fraction − fraction_half|, the grid's error on the fraction. ``negative_fraction``: share of points
    with a negative eigenvalue (indefinite or concave). ``tol``: the curvature band |λ| ≤ tol counted
    as zero (rounding of the second differences).
    """

    fraction: float
    fraction_half: float
    points: int
    indefinite: int
    negative_fraction: float
    tol: float
    spacing: tuple[float, ...]

    @property
    def resolution_error(self) -> float:
        return abs(self.fraction - self.fraction_half)

    def __float__(self) -> float:
        return float(self.fraction)

    def __repr__(self) -> str:
        return (f"NonConvexity({self.fraction:.3f} ± {self.resolution_error:.3f} (half resolution "
                f"{self.fraction_half:.3f}), {self.indefinite}/{self.points} points)")


def sampled_hessian(values: np.ndarray, h: tuple[float, ...]) -> tuple[np.ndarray, ...]:
    """Central second differences at interior points: (f_xx,) for 1D; (f_xx, f_yy, f_xy) for 2D, with
    f_xy = (f₊₊ − f₊₋ − f₋₊ + f₋₋) / (4 h_x h_y). Exact for quadratics (up to rounding)."""
    f = values
    if f.ndim == 1:
        return ((f[2:] - 2 * f[1:-1] + f[:-2]) / h[0] ** 2,)
    hx, hy = h
    fxx = (f[2:, 1:-1] - 2 * f[1:-1, 1:-1] + f[:-2, 1:-1]) / hx ** 2
    fyy = (f[1:-1, 2:] - 2 * f[1:-1, 1:-1] + f[1:-1, :-2]) / hy ** 2
    fxy = (f[2:, 2:] - f[2:, :-2] - f[:-2, 2:] + f[:-2, :-2]) / (4 * hx * hy)
    return fxx, fyy, fxy


def _count(values: np.ndarray, h: tuple[float, ...], tol: float) -> tuple[int, int, int]:
    """(interior points, indefinite points, points with a negative eigenvalue)."""
    parts = sampled_hessian(values, h)
    if values.ndim == 1:
        (fxx,) = parts
        neg = int((fxx < -tol).sum())
        return int(fxx.size), neg, neg
    fxx, fyy, fxy = parts
    mean = 0.5 * (fxx + fyy)
    rad = np.sqrt((0.5 * (fxx - fyy)) ** 2 + fxy ** 2)
    lmin, lmax = mean - rad, mean + rad
    return int(fxx.size), int(((lmin < -tol) & (lmax > tol)).sum()), int((lmin < -tol).sum())


@public("metrics.nonconvexity_fraction")
def nonconvexity_fraction(surface: Any, *, tol: float | None = None) -> NonConvexity:
    """The share of interior grid points of a 2D slice whose sampled 2×2 Hessian is indefinite
    (one eigenvalue below −tol, one above tol), and the same on the half-resolution grid.

    The sampled Hessian at a point is [[f_xx, f_xy], [f_xy, f_yy]] from central second differences of
    the grid (:func:`sampled_hessian`), with eigenvalues (f_xx + f_yy)/2 ± √(((f_xx − f_yy)/2)² + f_xy²).
    For a 1D slice the fraction counts negative second differences (f_xx < −tol) instead.
    ``tol`` (default: the rounding band 16·u·max|L| / min(h)², u the unit roundoff of the surface's
    dtype) keeps rounding noise from counting. The half-resolution grid (spacing 2h) gives the
    resolution error |fraction − fraction_half|; both are reported. The idea of reading convexity off
    the principal curvatures of a plot follows Li et al. 2018 (arXiv:1712.09913, Fig. 7).

    >>> import numpy as np, xarray as xr
    >>> x = np.linspace(-1, 1, 11)
    >>> X, Y = np.meshgrid(x, x, indexing="ij")
    >>> saddle = xr.Dataset({"loss": (("x", "y"), X ** 2 - Y ** 2)}, coords={"x": x, "y": x})
    >>> bowl = xr.Dataset({"loss": (("x", "y"), X ** 2 + Y ** 2)}, coords={"x": x, "y": x})
    >>> nonconvexity_fraction(saddle).fraction, nonconvexity_fraction(bowl).fraction
    (1.0, 0.0)
    """
    values, axes, dims = C.check_surface(surface)
    h = tuple(C.spacing(a, d) for a, d in zip(axes, dims))
    tol = C.check_number("tol", tol, minimum=0.0, allow_none=True)
    if tol is None:
        u = C.roundoff(surface)
        tol = 16.0 * u * float(np.max(np.abs(values))) / min(h) ** 2
    points, indefinite, negative = _count(values, h, tol)
    half = C.half_grid(values)
    if min(half.shape) >= 3:
        hp, hi, _ = _count(half, tuple(2 * s for s in h), tol / 4)
        frac_half = hi / hp
    else:
        frac_half = math.nan
    return NonConvexity(indefinite / points, frac_half, points, indefinite, negative / points, tol, h)
