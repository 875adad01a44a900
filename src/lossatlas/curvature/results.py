"""Typed results of the curvature estimators, each carrying its uncertainty or convergence."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import params as P
from .._repr import table, text

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
    product_method: str = ""
    notes: tuple[str, ...] = ()

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
    actually taken, not estimated by the Lanczos recurrence) and what is known about each pair:

    * ``converged``: ``residual ≤ tol · scale`` (``scale``: the largest |Ritz value|, an estimate of
      ‖A‖₂ from below). A converged value is *an* eigenvalue within its residual.
    * ``extremal_certified``: the values are the k extreme ones, checked from fresh random starts
      on the complement of the returned vectors (see :mod:`lossatlas.curvature.eigen`).
    * ``errors``: |value − λ| ≤ error for the true eigenvalue of the same rank, where the pair is
      converged and certified extremal (residual-matrix norm of that end plus the zero band).
    * ``zero_tol``: τ, the band |λ| ≤ τ these products cannot tell from zero
      (:func:`lossatlas.curvature._common.zero_band`).

    ``all_converged`` (and ``status``) require both flags. ``product_method`` records how the
    Hessian-vector products were computed; ``notes`` say what else the user should know (a fallback
    product method, an uncertified or NaN result); ``checks`` counts the extremality checks run.

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
    errors: np.ndarray | None = None
    extremal_certified: np.ndarray | None = None
    zero_tol: float = 0.0
    product_method: str = "double-backward"
    checks: int = 0
    notes: tuple[str, ...] = ()

    def __post_init__(self):
        n = len(self.values)
        if self.errors is None:
            object.__setattr__(self, "errors", np.asarray(self.residuals, dtype=np.float64).copy())
        if self.extremal_certified is None:
            object.__setattr__(self, "extremal_certified", np.zeros(n, dtype=bool))

    @property
    def certified(self) -> np.ndarray:
        """Per pair: converged *and* certified to be the extreme eigenvalue of its rank."""
        return np.asarray(self.converged, dtype=bool) & np.asarray(self.extremal_certified, dtype=bool)

    @property
    def negative(self) -> np.ndarray:
        """Per pair: the Hessian certainly has an eigenvalue below zero near this one — converged and
        value + error < 0 (a converged Ritz value has an eigenvalue within its residual; the error adds
        the zero band of the products). Evidence of non-convexity, not a certificate."""
        values = np.asarray(self.values, dtype=np.float64)
        return np.asarray(self.converged, dtype=bool) & np.isfinite(values) & (values + self.errors < 0)

    @property
    def all_converged(self) -> bool:
        """True when every returned pair converged and was certified extremal (see :attr:`status`)."""
        return bool(len(self.values)) and bool(np.all(self.certified))

    @property
    def status(self) -> list[str]:
        """Per pair: ``"converged, extremal"``, ``"converged, extremality not certified"``,
        ``"not converged"`` or ``"not finite"``."""
        out = []
        for v, c, e in zip(self.values, self.converged, self.extremal_certified):
            if not np.isfinite(v):
                out.append("not finite")
            elif not c:
                out.append("not converged")
            else:
                out.append("converged, extremal" if e else "converged, extremality not certified")
        return out

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
        """One row per pair: value, residual, relative residual, error, converged, extremal_certified
        and the status in words."""
        return [{"value": float(v), "residual": float(r), "relative_residual": float(r / self.scale) if self.scale
                 else float("nan"), "error": float(err), "converged": bool(c), "extremal_certified": bool(x),
                 "status": st}
                for v, r, err, c, x, st in zip(self.values, self.residuals, self.errors, self.converged,
                                               self.extremal_certified, self.status)]

    def __repr__(self) -> str:
        shown = list(zip(self.values, self.errors, self.status))
        pairs = ", ".join(f"{v:.6g} ± {e:.1e} ({st})" for v, e, st in shown[:6])
        if len(shown) > 6:
            pairs += f", … {len(shown) - 6} more"
        notes = "".join(f"; note: {n}" for n in self.notes)
        return text("Eigen", [("which", repr(self.which))],
                    [f"[{pairs}]", f"products={self.products}, product_method={self.product_method!r}, "
                                   f"zero_tol={self.zero_tol:.2g}{notes}"])

    def _repr_html_(self) -> str:
        rows = [(f"λ{i + 1}", f"{v:.6g} ± {e:.1e} ({st})")
                for i, (v, e, st) in enumerate(list(zip(self.values, self.errors, self.status))[:10])]
        if len(self.values) > 10:
            rows.append(("…", f"{len(self.values) - 10} more (.summary())"))
        rows += [("products", f"{self.products} ({self.product_method})"), ("zero band τ", f"{self.zero_tol:.2g}")]
        return table(f"Eigen ({self.which})", rows, "; ".join(self.notes))


@dataclass(frozen=True)
class Density:
    """A smoothed spectral density φ(t) = (1/n) Σⱼ g_σ(t − λⱼ) estimated by stochastic Lanczos
    quadrature (Ghorbani, Krishnan & Xiao 2019): φ(t) ≈ mean over probes of Σᵢ wᵢ g_σ(t − θᵢ),
    with Gaussian kernel g_σ.

    ``grid``/``values`` tabulate φ (it integrates to 1); ``nodes``/``weights`` are the Ritz values and
    quadrature weights, one row per probe (ascending), ``exact`` marks probes whose Krylov space
    became invariant (their quadrature is the exact measure). ``trace`` estimates
    tr H = n · E[Σ wᵢ θᵢ].

    Signs near zero. ``zero_tol`` is τ, the band |λ| ≤ τ that these products cannot tell from zero
    (:func:`lossatlas.curvature._common.zero_band`: 100 machine epsilons of the operator's dtype
    times ‖H‖, or more when the products were measured to be less accurate).

    * ``negative_mass``: the fraction of eigenvalues *below −τ* (certainly negative), each probe's
      Gauss-quadrature mass there averaged over probes; its ``stderr`` combines the probe-to-probe
      standard error with the quadrature's own uncertainty at −τ (:func:`mass_estimate`).
    * ``negative_bounds``: a bracket of the negative mass that accounts for everything else. Its lower
      end is the Chebyshev–Markov–Stieltjes lower bound of the mass below −τ (so a zero eigenvalue is
      never counted negative), its upper end the CMS upper bound of the mass below +τ (the band may
      hide tiny negative eigenvalues), each averaged over probes and widened by 3 standard deviations
      of a probe average (bounded for Rademacher probes: √(2F/(n·probes)), see :func:`_bracket`).
      It contains both the fraction of eigenvalues
      below −τ and the fraction below 0 (eigenvalues within rounding, ~τ/100, of ±τ may fall on
      either side of the band's edge).
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
    zero_tol: float = 0.0
    product_method: str = "double-backward"
    notes: tuple[str, ...] = ()

    def _rows(self) -> list[tuple[str, str]]:
        lo, hi = self.negative_bounds
        return [("size n", f"{self.size:,}"), ("probes × iters", f"{self.nodes.shape[0]} × {self.iters}"),
                ("trace", f"{self.trace.value:.6g} ± {self.trace.stderr:.2g}"),
                ("negative mass (< −τ)", f"{self.negative_mass.value:.3g} ± {self.negative_mass.stderr:.2g}"),
                ("negative mass bracket", f"[{lo:.3g}, {hi:.3g}]"),
                ("Ritz range", f"[{float(self.nodes.min()):.4g}, {float(self.nodes.max()):.4g}]"),
                ("σ, τ", f"{self.sigma:.3g}, {self.zero_tol:.2g}"),
                ("products", f"{self.products} ({self.product_method})")]

    def __repr__(self) -> str:
        rows = dict(self._rows())
        return text("Density", [("size", self.size), ("trace", rows["trace"]),
                                ("negative_mass", rows["negative mass (< −τ)"])],
                    [f"bracket {rows['negative mass bracket']}, Ritz range {rows['Ritz range']}, "
                     f"probes × iters {rows['probes × iters']}, products {self.products}"])

    def _repr_html_(self) -> str:
        return table("Spectral density (stochastic Lanczos quadrature)", self._rows(), "; ".join(self.notes))

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
        """The estimated fraction of eigenvalues certainly below ``t``, i.e. below t − τ (``zero_tol``):
        each probe's quadrature mass there (Σ wᵢ over θᵢ < t − τ) averaged over probes, ± a standard
        error combining the probes' sampling error and the quadrature's uncertainty
        (:func:`mass_estimate`). See :meth:`mass_bounds` for a bracket."""
        return mass_estimate(self.nodes, self.weights, t, self.exact, self.zero_tol, self.size)

    def mass_bounds(self, t: float, z: float = 3.0) -> tuple[float, float]:
        """A bracket of the fraction of eigenvalues below ``t``, honest about the band: from the
        Chebyshev–Markov–Stieltjes lower bound of the mass below t − τ to the upper bound of the mass
        below t + τ, averaged over probes, each end widened by ``z`` standard deviations of a probe
        average (:func:`_bracket`), clipped to [0, 1].

        A Gauss quadrature brackets the distribution function of each probe's spectral measure: with
        θ_j < t ≤ θ_{j+1}, the mass below t lies between Σ_{i<j} wᵢ and Σ_{i≤j+1} wᵢ (exactly Σ_{i≤j} wᵢ
        for a probe whose Krylov space became invariant). The expected probe measure is the spectral
        measure, so the probe averages bracket it up to sampling error.
        """
        lo, hi = cms_bracket(self.nodes, self.weights, t, self.exact, band=self.zero_tol)
        return _bracket(lo, hi, z, self.size)

    @property
    def lambda_min(self) -> float:
        """The smallest Ritz value over all probes (≥ λmin of the operator)."""
        return float(self.nodes.min())

    @property
    def lambda_max(self) -> float:
        """The largest Ritz value over all probes (≤ λmax of the operator)."""
        return float(self.nodes.max())


def _probe_sd(n: int, m: int, mass: float = 1.0) -> float:
    """A bound on the standard deviation of the average over ``m`` Rademacher/√n probes v of vᵀPv, for
    the spectral projector P of a mass ``mass`` = k/n: Var(zᵀPz) = 2(‖P‖_F² − Σ Pᵢᵢ²) ≤ 2k, so
    sd ≤ √(2·mass/(n·m)). Empirical spreads can badly understate it for small n (few distinct probes)."""
    return math.sqrt(2.0 * max(mass, 0.0) / (max(n, 1) * max(m, 1)))


def _bracket(lo: np.ndarray, hi: np.ndarray, z: float, n: int) -> tuple[float, float]:
    """The mass F below a threshold from per-probe bounds lo_p ≤ F_p ≤ hi_p (F_p: each probe's own
    mass, E[F_p] = F): mean(lo) − z·σ(F) ≤ F ≤ mean(hi) + z·σ(F) with σ(F) = √(2F/(n·m))
    (:func:`_probe_sd`), solved for F. Holds with probability ≥ 1 − 1/z² by Chebyshev's inequality
    (≈ 99.7 % for z = 3 once the probe average is near-normal)."""
    m = len(lo)
    c = z * math.sqrt(2.0 / (max(n, 1) * max(m, 1)))
    a, b = float(np.mean(hi)), float(np.mean(lo))
    upper = ((c + math.sqrt(c * c + 4 * max(a, 0.0))) / 2) ** 2
    lower = ((-c + math.sqrt(c * c + 4 * b)) / 2) ** 2 if b > 0 else 0.0
    return (float(max(0.0, min(lower, b))), float(min(1.0, max(upper, a))))


def _mean_estimate(samples: np.ndarray, method: str, products: int = 0) -> Estimate:
    samples = np.asarray(samples, dtype=np.float64)
    m = len(samples)
    stderr = float(samples.std(ddof=1) / math.sqrt(m)) if m > 1 else float("nan")
    return Estimate(float(samples.mean()), stderr, samples=m, method=method, products=products)


def quadrature_mass(nodes: np.ndarray, weights: np.ndarray, t: float) -> np.ndarray:
    """(probes,): each probe's quadrature mass Σ wᵢ over the nodes θᵢ < t (the Gauss-quadrature
    estimate of its spectral measure's mass below t; exact for an invariant Krylov space)."""
    return (weights * (nodes < t)).sum(axis=1)


def mass_estimate(nodes: np.ndarray, weights: np.ndarray, t: float, exact: np.ndarray | None, band: float,
                  n: int, method: str = "slq") -> Estimate:
    """The fraction of eigenvalues below t − band: the mean over probes of the quadrature mass there,
    with a standard error that combines the probe-to-probe standard error s and the quadrature's
    own uncertainty q, half the mean width of the per-probe CMS bracket at t − band (the weights
    of the nodes next to the threshold): stderr = √(s² + q²), with s the larger of the probes' spread
    and the bound of :func:`_probe_sd` (``n``: the operator size)."""
    count = quadrature_mass(nodes, weights, t - band)
    sampled = _mean_estimate(count, method)
    lo, hi = cms_bracket(nodes, weights, t - band, exact)
    q = 0.5 * float(np.mean(hi - lo))
    spread = sampled.stderr if len(count) > 1 else 0.0
    s = max(spread, _probe_sd(n, len(count), sampled.value))
    return Estimate(sampled.value, math.sqrt(s * s + q * q), samples=sampled.samples, method=method)


def cms_bracket(nodes: np.ndarray, weights: np.ndarray, t: float, exact: np.ndarray | None = None, *,
                band: float = 0.0) -> np.ndarray:
    """(2, probes): the Chebyshev–Markov–Stieltjes lower bound of each probe's mass below
    ``t − band`` and upper bound of its mass up to ``t + band`` (for probes whose Krylov space became
    invariant: the quadrature's own masses there, which are exact)."""
    lower = (nodes < t - band).sum(axis=1)
    upper = (nodes <= t + band).sum(axis=1)
    cum = np.concatenate([np.zeros((len(nodes), 1)), np.cumsum(weights, axis=1)], axis=1)
    rows = np.arange(len(nodes))
    lo = cum[rows, np.maximum(lower - 1, 0)]
    hi = cum[rows, np.minimum(upper + 1, nodes.shape[1])]
    if exact is not None and len(exact) == len(nodes):
        lo = np.where(exact, cum[rows, lower], lo)
        hi = np.where(exact, cum[rows, upper], hi)
    return np.stack([lo, np.minimum(hi, 1.0)])
