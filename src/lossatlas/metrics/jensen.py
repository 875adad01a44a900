"""The Jensen violation rate of random segments around θ, at several radii."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .. import params as P
from ..convexity._jensen import is_violation, jensen_gap, rounding_bound
from ..errors import InvalidArgumentError, bad_type, bad_value, check_seed, public
from ..problem import Problem
from . import _common as C

__all__ = ["jensen_rate", "JensenRate", "JensenRow", "wilson_interval"]

RADII = (0.01, 0.1, 1.0)
#: relative rounding allowance per loss value, by the problem's dtype (as the convexity search)
RELATIVE_ERROR = {torch.float64: 1e-9, torch.float32: 1e-4}


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n (95 % for z = 1.96; Wilson 1927).

    >>> [round(v, 4) for v in wilson_interval(0, 50)]
    [0.0, 0.0714]
    """
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class JensenRow:
    """At one radius: ``violations`` of ``segments`` random segments had L(midpoint) > mean of the
    ends + tolerance; ``rate`` ± ``stderr`` (binomial, √(p(1−p)/n)) and the Wilson 95 % interval.
    ``max_gap``: the largest Jensen gap seen (may be ≤ 0); ``non_finite``: segments with a NaN/Inf
    loss (never violations)."""

    radius: float
    segments: int
    violations: int
    max_gap: float
    non_finite: int = 0

    @property
    def rate(self) -> float:
        return self.violations / self.segments

    @property
    def stderr(self) -> float:
        p = self.rate
        return math.sqrt(p * (1 - p) / self.segments)

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.violations, self.segments)

    def __repr__(self) -> str:
        lo, hi = self.interval
        return (f"JensenRow(r={self.radius:.3g}: {self.violations}/{self.segments} = {self.rate:.3f} ± "
                f"{self.stderr:.3f}, 95% [{lo:.3f}, {hi:.3f}])")


@dataclass(frozen=True)
class JensenRate:
    """Jensen violation rates at several radii (one :class:`JensenRow` each). ``relative``: radii
    are multiples of ‖θ‖; ``seed`` reproduces the segments."""

    rows: tuple[JensenRow, ...]
    relative: bool
    seed: int
    tol: float | None

    @property
    def rates(self) -> dict[float, float]:
        return {r.radius: r.rate for r in self.rows}

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        body = "; ".join(f"r={r.radius:.3g}: {r.violations}/{r.segments}" for r in self.rows)
        return f"JensenRate({body}{' (× ‖θ‖)' if self.relative else ''})"


@public("metrics.jensen_rate")
def jensen_rate(problem: Problem, center: Mapping[str, torch.Tensor] | None = None, *,
                radii: Sequence[float] = RADII, segments: int = 64, relative: bool = True, tol: float | None = None,
                seed: int = 0) -> JensenRate:
    """The share of random segments [a, b] around θ whose midpoint violates Jensen's inequality,
    L((a+b)/2) > (L(a) + L(b))/2 + tol, at each radius.

    Endpoints a = θ + r·u, b = θ + r·v with u, v independent Gaussian directions of unit norm over
    all parameters (times ‖θ‖ when ``relative``). ``tol`` (default: the convexity package's
    :func:`~lossatlas.convexity.rounding_bound` of each triple) keeps rounding noise from counting;
    violations counted here are evidence, the audit (:func:`lossatlas.convexity.audit`) turns one into
    a certificate. Each rate comes with its binomial standard error √(p(1−p)/n) and the Wilson score
    interval (Wilson 1927), so "0 of 64" reads as "below 5.7 % at 95 %", not "convex". Segments are
    drawn from ``seed``: the same seed gives the same segments.

    >>> import torch, lossatlas
    >>> x = torch.linspace(-1, 1, 16).reshape(-1, 1)
    >>> problem = lossatlas.Problem(torch.nn.Linear(1, 1).double(), torch.nn.MSELoss(), (x.double(), 2 * x.double()))
    >>> result = jensen_rate(problem, radii=(0.1, 1.0), segments=20)   # least squares: convex
    >>> [row.violations for row in result], [round(v, 3) for v in result.rows[0].interval]
    ([0, 0], [0.0, 0.161])
    """
    func = "metrics.jensen_rate"
    if not isinstance(problem, Problem):
        raise bad_type("problem", "a lossatlas.Problem", problem)
    if center is None:
        center = problem.params()
    problem.check_params(center, arg="center")
    if isinstance(radii, (str, bytes)) or not isinstance(radii, Sequence) or not radii:
        raise bad_value("radii", "a non-empty sequence of positive numbers", radii)
    radii = [C.check_number("radii", r, minimum=0.0, strict=True) for r in radii]
    segments = C.check_int("segments", segments)
    C.check_flag("relative", relative)
    tol = C.check_number("tol", tol, minimum=0.0, allow_none=True)
    seed = check_seed(seed)
    theta = {k: v.detach() for k, v in center.items()}
    scale = P.norm(theta) if relative else 1.0
    if relative and not scale > 0:
        raise InvalidArgumentError(f"{func}(): argument 'relative' must be False when ‖center‖ = 0 (radii are "
                                   "multiples of ‖θ‖); received relative=True at θ = 0")
    rel_err = RELATIVE_ERROR.get(problem.dtype, 1e-2)
    n = sum(v.numel() for v in theta.values())
    rows = []
    for ri, r in enumerate(radii):
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, ri]).generate_state(1)[0]))
        k = bad = 0
        best = -math.inf
        for _ in range(segments):
            uv = torch.randn(2, n, generator=gen, dtype=torch.float64)
            uv = uv / torch.linalg.vector_norm(uv, dim=1, keepdim=True) * (r * scale)
            u, v = (P.unflatten(w.to(dtype=problem.dtype, device=problem.device), theta) for w in uv)
            a, b = P.add(theta, u), P.add(theta, v)
            m = P.lincomb(a, [P.sub(b, a)], [0.5])
            fa, fb, fm = problem.loss(a), problem.loss(b), problem.loss(m)
            if not all(math.isfinite(f) for f in (fa, fb, fm)):
                bad += 1
                continue
            gap = jensen_gap(fa, fb, fm, 0.5)
            best = max(best, gap)
            bound = tol if tol is not None else rounding_bound(fa, fb, fm, relative_error=rel_err)
            k += is_violation(gap, bound)
        rows.append(JensenRow(r, segments, int(k), best, bad))
    return JensenRate(tuple(rows), relative, seed, tol)
