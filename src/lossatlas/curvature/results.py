"""Typed results of the curvature estimators, each carrying its uncertainty or convergence."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import params as P

__all__ = ["Eigen", "Estimate", "Density"]


@dataclass(frozen=True)
class Estimate:
    """A stochastic estimate ``value ± stderr`` (one standard error), from ``samples`` random probes.

    ``layers`` holds the same estimate for each layer (module) when it was computed; their values
    sum to ``value``.

    >>> e = Estimate(29.57, 0.12, samples=33, method="hutch++")
    >>> str(e), float(e)
    ('29.57 ± 0.12', 29.57)
    """

    value: float
    stderr: float
    samples: int = 0
    method: str = ""
    products: int = 0
    layers: dict[str, Estimate] = field(default_factory=dict, repr=False)

    def __float__(self) -> float:
        return float(self.value)

    def __str__(self) -> str:
        digits = 2 if not self.stderr or not math.isfinite(self.stderr) else max(0, 1 - int(math.floor(
            math.log10(abs(self.stderr)))))
        return f"{self.value:.{digits}f} ± {self.stderr:.{digits}f}"

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        """``value ∓ z·stderr`` (95 % for the default z, by the central limit theorem)."""
        return (self.value - z * self.stderr, self.value + z * self.stderr)


@dataclass(frozen=True)
class Eigen:
    """Eigenpairs of a curvature matrix with their residuals ‖A v − λ v‖ (computed from the products
    actually taken, not estimated by the Lanczos recurrence) and a convergence flag per pair: ``residual ≤ tol · scale``, where
    ``scale`` is the largest |Ritz value| (an estimate of ‖A‖₂ from below).

    Order: ``which="largest"`` descending, ``"smallest"`` ascending, ``"magnitude"`` by descending
    |λ|, ``"both"`` descending over the k largest and the k smallest (``values[0]`` is λmax,
    ``values[-1]`` is λmin). ``vectors[i]`` is the unit eigenvector of ``values[i]`` as a parameter
    dict over all the problem's parameters (zero outside the selected ones).
    """

    values: np.ndarray
    vectors: list[P.Params]
    residuals: np.ndarray
    converged: np.ndarray
    which: str = "largest"
    tol: float = 0.0
    scale: float = 0.0
    products: int = 0
    seed: int = 0
    names: tuple[str, ...] = ()

    @property
    def all_converged(self) -> bool:
        """True when every returned pair converged."""
        return bool(np.all(self.converged))

    @property
    def max(self) -> float:
        """The largest eigenvalue found."""
        return float(np.max(self.values))

    @property
    def min(self) -> float:
        """The smallest eigenvalue found."""
        return float(np.min(self.values))

    def __len__(self) -> int:
        return len(self.values)

    def summary(self) -> list[dict[str, Any]]:
        """One row per pair: value, residual, relative residual, converged."""
        return [{"value": float(v), "residual": float(r), "relative_residual": float(r / self.scale) if self.scale
                 else float("nan"), "converged": bool(c)}
                for v, r, c in zip(self.values, self.residuals, self.converged)]


@dataclass(frozen=True)
class Density:
    """A smoothed spectral density φ(t) = (1/n) Σⱼ g_σ(t − λⱼ) estimated by stochastic Lanczos
    quadrature (Ghorbani, Krishnan & Xiao 2019): φ(t) ≈ mean over probes of Σᵢ wᵢ g_σ(t − θᵢ),
    with Gaussian kernel g_σ.

    ``grid``/``values`` tabulate φ (it integrates to 1); ``nodes``/``weights`` are the Ritz values and
    quadrature weights, one row per probe (ascending), ``exact`` marks probes whose Krylov space
    became invariant (their quadrature is the exact measure). ``negative_mass`` estimates the fraction of
    eigenvalues below zero (see :meth:`mass_below`) and ``negative_bounds`` brackets it;
    ``trace`` estimates tr H = n · E[Σ wᵢ θᵢ].
    """

    grid: np.ndarray
    values: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    sigma: float
    negative_mass: Estimate
    negative_bounds: tuple[float, float]
    trace: Estimate
    size: int
    products: int = 0
    seed: int = 0
    iters: int = 0
    exact: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __call__(self, t: Any) -> np.ndarray:
        """φ at the points ``t`` (any array shape)."""
        t = np.asarray(t, dtype=np.float64)
        z = (t[..., None, None] - self.nodes) / self.sigma
        k = np.exp(-0.5 * z * z) / (self.sigma * math.sqrt(2.0 * math.pi))
        return (k * self.weights).sum(axis=(-1, -2)) / self.nodes.shape[0]

    def integral(self) -> float:
        """∫ φ over the tabulated grid (trapezoid rule): 1 up to the kernel's tails, ~1e-9."""
        return float(np.trapezoid(self.values, self.grid))

    def mass_below(self, t: float) -> Estimate:
        """The estimated fraction of eigenvalues below ``t``, mean ± standard error over probes.

        A Gauss quadrature brackets the distribution function of each probe's spectral measure
        (Chebyshev–Markov–Stieltjes inequalities): with θ_j < t ≤ θ_{j+1}, the mass below t lies
        between Σ_{i<j} wᵢ and Σ_{i≤j+1} wᵢ. The estimate is the middle of that bracket; counting
        only the nodes below t would be biased when a heavy node sits near t (the bulk of near-zero
        eigenvalues of a trained network sits at t = 0).
        """
        return _mean_estimate(cms_bracket(self.nodes, self.weights, t, self.exact).mean(axis=0), "slq")

    def mass_bounds(self, t: float) -> tuple[float, float]:
        """The bracket of :meth:`mass_below`, averaged over probes (add the sampling error)."""
        lo, hi = cms_bracket(self.nodes, self.weights, t, self.exact)
        return float(lo.mean()), float(hi.mean())

    @property
    def lambda_min(self) -> float:
        """The smallest Ritz value over all probes (≥ λmin of the operator)."""
        return float(self.nodes.min())

    @property
    def lambda_max(self) -> float:
        """The largest Ritz value over all probes (≤ λmax of the operator)."""
        return float(self.nodes.max())


def _mean_estimate(samples: np.ndarray, method: str, products: int = 0) -> Estimate:
    samples = np.asarray(samples, dtype=np.float64)
    m = len(samples)
    stderr = float(samples.std(ddof=1) / math.sqrt(m)) if m > 1 else float("nan")
    return Estimate(float(samples.mean()), stderr, samples=m, method=method, products=products)


def cms_bracket(nodes: np.ndarray, weights: np.ndarray, t: float, exact: np.ndarray | None = None) -> np.ndarray:
    """(2, probes): lower and upper Chebyshev–Markov–Stieltjes bounds of each probe's mass below ``t``
    (both equal to the quadrature's own mass for probes whose Krylov space became invariant)."""
    below = (nodes < t).sum(axis=1)
    cum = np.concatenate([np.zeros((len(nodes), 1)), np.cumsum(weights, axis=1)], axis=1)
    rows = np.arange(len(nodes))
    lo = cum[rows, np.maximum(below - 1, 0)]
    hi = cum[rows, np.minimum(below + 1, nodes.shape[1])]
    if exact is not None and len(exact) == len(nodes):
        lo = np.where(exact, cum[rows, below], lo)
        hi = np.where(exact, cum[rows, below], hi)
    return np.stack([lo, hi])
