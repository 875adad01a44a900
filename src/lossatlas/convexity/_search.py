"""Searching for Jensen violations J(a, b, t) = f((1−t)a + tb) − (1−t)f(a) − t·f(b) > 0.

The search spends a budget of loss evaluations (in the problem's dtype) on:

1. symmetric segments θ ± r·u (second differences, whose midpoint is θ) and off-centre segments
   θ + r·u → θ + r·v, at radii relative to ‖θ‖ and along filter-normalised directions (radii in
   units of each filter's norm, Li et al. 2018);
2. long segments from θ to far points, scanning t;
3. segments between user-supplied checkpoints (e.g. a training trajectory), scanning t;
4. 1-D slices through θ, whose every interior triple is a midpoint test (discrete second differences);
5. refinement of the best candidates by normalised gradient ascent on J over both endpoints.

Candidates are ranked by the relative gap J / max(|f|); the best are re-evaluated in float64 by the
caller. Nothing here can prove convexity: it can only fail to find a violation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .. import directions as D
from .. import params as P
from ..progress import progress_bar
from ._jensen import jensen_gap

RADII = (1e-3, 1e-2, 0.05, 0.2, 0.5, 1.0)        # × ‖θ‖
FILTER_RADII = (0.05, 0.25, 1.0)                  # × filter norms
FAR = (2.0, 5.0)                                   # × ‖θ‖ (or × filter norms)
T_SCAN = tuple(np.linspace(0.1, 0.9, 9))


@dataclass
class Candidate:
    a: P.Params
    b: P.Params
    t: float
    f_a: float
    f_b: float
    f_t: float
    source: str
    radius: float

    @property
    def gap(self) -> float:
        return jensen_gap(self.f_a, self.f_b, self.f_t, self.t)

    @property
    def relative_gap(self) -> float:
        scale = max(abs(self.f_a), abs(self.f_b), abs(self.f_t), 1e-30)
        g = self.gap
        return g / scale if math.isfinite(g) else -math.inf


@dataclass
class SearchResult:
    candidates: list[Candidate]
    relative_gaps: np.ndarray
    tried: dict[str, int] = field(default_factory=dict)
    radii: dict[str, list[float]] = field(default_factory=dict)
    evaluations: int = 0
    seconds: float = 0.0
    non_finite: int = 0
    refinement_skipped: str = ""

    @property
    def best(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None


class _Budget:
    def __init__(self, problem, total: int, advance):
        self.problem = problem
        self.total = total
        self.used = 0
        self.advance = advance
        self.non_finite = 0

    @property
    def left(self) -> int:
        return self.total - self.used

    def loss(self, params: Mapping[str, Tensor]) -> float:
        self.used += 1
        self.advance(1)
        with torch.no_grad():
            value = float(self.problem.evaluate_tensors(params, metrics=False)["loss"])
        if not math.isfinite(value):
            self.non_finite += 1  # a NaN/Inf point: its candidates get gap −inf, never a violation
        return value

    def grad(self, params: Mapping[str, Tensor]) -> P.Params:
        """∇f (:meth:`Problem.grad`) — counted as three evaluations (forward + backward)."""
        self.used += 3
        self.advance(3)
        return self.problem.grad(params)


def _unit(d: Mapping[str, Tensor]) -> P.Params:
    n = P.norm(d)
    return P.scale(d, 1.0 / n) if n > 0 else dict(d)


def jensen_search(problem, theta: Mapping[str, Tensor], *, budget: int = 400, seed: int = 0,
                  checkpoints: Sequence[Mapping[str, Tensor]] | None = None, keep: int = 8,
                  progress: bool = False) -> SearchResult:
    """Spend about ``budget`` loss evaluations looking for Jensen violations around ``theta``."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    theta = {k: v.detach() for k, v in theta.items()}
    norm_theta = max(P.norm(theta), 1e-12)
    found: list[Candidate] = []
    gaps: list[float] = []
    tried: dict[str, int] = {}
    radii_used: dict[str, list[float]] = {"relative_to_norm": [], "filter": [], "far": []}

    def record(c: Candidate) -> None:
        gaps.append(c.relative_gap)
        tried[c.source] = tried.get(c.source, 0) + 1
        found.append(c)
        if len(found) > 4 * keep:
            found.sort(key=lambda x: x.relative_gap, reverse=True)
            del found[2 * keep:]

    with progress_bar(budget, "Jensen search", enabled=progress, unit="evaluations") as advance:
        B = _Budget(problem, budget, advance)
        f0 = B.loss(theta)

        def gaussian(scale_kind: str, r: float, salt: int) -> P.Params:
            s = int(rng.integers(2**31)) + salt
            if scale_kind == "filter":
                d = D.random(theta, n=1, norm="filter", ignore=None, seed=s, model=problem.model)[0]
                return P.scale(d, r)
            d = D.random(theta, n=1, norm=None, ignore=None, seed=s)[0]
            return P.scale(_unit(d), r * norm_theta)

        phases = [("relative_to_norm", r) for r in RADII] + [("filter", r) for r in FILTER_RADII]
        share = 0.45 * budget
        per_radius = max(1, int(share / (len(phases) * 5)))
        for kind, r in phases:
            radii_used[kind].append(r)
            for _ in range(per_radius):
                if B.left < 8:
                    break
                u, v = gaussian(kind, r, 0), gaussian(kind, r, 1)
                a, b = P.sub(theta, u), P.add(theta, u)
                record(Candidate(a, b, 0.5, B.loss(a), B.loss(b), f0, "midpoint", r))
                a2, b2 = P.add(theta, u), P.add(theta, v)
                t = float(rng.uniform(0.2, 0.8))
                x = P.lincomb(a2, [P.sub(b2, a2)], [t])
                record(Candidate(a2, b2, t, B.loss(a2), B.loss(b2), B.loss(x), "segment", r))

        _far_segments(B, theta, f0, gaussian, record, radii_used["far"], budget)
        if checkpoints:
            _between_checkpoints(B, checkpoints, record, budget)
        _slices(B, theta, f0, gaussian, record, rng, budget)

        # refinement: normalised gradient ascent on J(a, b, t) from the best candidates (skipped, and said
        # so, when torch cannot differentiate the loss: a 0–1 loss, a kernel without backward)
        found.sort(key=lambda x: x.relative_gap, reverse=True)
        starts = [c for c in found[:3] if math.isfinite(c.relative_gap)]
        try:
            _refine(B, starts, found, gaps, tried, norm_theta)
        except (RuntimeError, NotImplementedError) as exc:
            refinement_skipped = f"torch could not differentiate the loss: {' '.join(str(exc).split())[:200]}"
        else:
            refinement_skipped = ""
        advance(max(0, budget - B.used))

    found.sort(key=lambda x: x.relative_gap, reverse=True)
    return SearchResult(found[:keep], np.asarray(gaps, dtype=float), tried, radii_used, B.used,
                        time.perf_counter() - t0, B.non_finite, refinement_skipped)


def _far_segments(B: _Budget, theta: P.Params, f0: float, gaussian, record, radii: list[float], budget: int) -> None:
    """Long segments from θ to far points, scanning t (the far radii used are appended to ``radii``)."""
    for kind, r in [("relative_to_norm", R) for R in FAR] + [("filter", R) for R in FAR]:
        if B.left < len(T_SCAN) + 2 + int(0.3 * budget):
            break
        radii.append(r)
        far = P.add(theta, gaussian(kind, r, 2))
        f_far = B.loss(far)
        for t in T_SCAN:
            x = P.lincomb(theta, [P.sub(far, theta)], [t])
            record(Candidate(theta, far, float(t), f0, f_far, B.loss(x), "far", r))


def _between_checkpoints(B: _Budget, checkpoints, record, budget: int) -> None:
    """Midpoints of the segments between every pair of checkpoints."""
    pts = [dict(c) for c in checkpoints]
    values = [B.loss(c) for c in pts]
    for i in range(len(pts)):
        for j in range(i + 1, len(pts)):
            if B.left < 3 + int(0.25 * budget):
                break
            t = 0.5
            x = P.lincomb(pts[i], [P.sub(pts[j], pts[i])], [t])
            record(Candidate(pts[i], pts[j], t, values[i], values[j], B.loss(x), "checkpoints", 0.0))


def _slices(B: _Budget, theta: P.Params, f0: float, gaussian, record, rng: np.random.Generator, budget: int) -> None:
    """1-D slices through θ: discrete second differences f(k−1) + f(k+1) − 2 f(k) along random directions."""
    m = 6
    while B.left > 2 * m + int(0.25 * budget):
        kind = "filter" if rng.random() < 0.5 else "relative_to_norm"
        r = float(rng.choice(FILTER_RADII if kind == "filter" else RADII[2:]))
        d = gaussian(kind, r / m, 3)
        values = {0: f0}
        for k in range(-m, m + 1):
            if k:
                values[k] = B.loss(P.lincomb(theta, [d], [float(k)]))
        for k in range(-m + 1, m):
            a = P.lincomb(theta, [d], [float(k - 1)])
            b = P.lincomb(theta, [d], [float(k + 1)])
            record(Candidate(a, b, 0.5, values[k - 1], values[k + 1], values[k], "slice", r))


def _refine(B: _Budget, starts: list[Candidate], found: list[Candidate], gaps: list[float], tried: dict[str, int],
            norm_theta: float) -> None:
    """Normalised gradient ascent on J over both endpoints, from each start."""
    for c in starts:
        best = c
        step = 0.25 * max(P.norm(P.sub(c.b, c.a)), 1e-8 * norm_theta)
        while B.left >= 9 and step > 1e-6 * norm_theta:
            x = P.lincomb(best.a, [P.sub(best.b, best.a)], [best.t])
            gx = B.grad(x)
            ga = B.grad(best.a)
            gb = B.grad(best.b)
            da = P.scale(P.sub(gx, ga), 1.0 - best.t)        # ∂J/∂a
            db = P.scale(P.sub(gx, gb), best.t)              # ∂J/∂b
            g_norm = math.sqrt(P.norm(da) ** 2 + P.norm(db) ** 2)
            if not math.isfinite(g_norm) or g_norm == 0:
                break
            a_new = P.axpy(step / g_norm, da, best.a)
            b_new = P.axpy(step / g_norm, db, best.b)
            if B.left < 3:
                break
            x_new = P.lincomb(a_new, [P.sub(b_new, a_new)], [best.t])
            cand = Candidate(a_new, b_new, best.t, B.loss(a_new), B.loss(b_new), B.loss(x_new), "refined",
                             best.radius)
            gaps.append(cand.relative_gap)
            tried["refined"] = tried.get("refined", 0) + 1
            if cand.gap > best.gap:
                best = cand
                step *= 1.5
            else:
                step *= 0.3
        if best is not c:
            found.append(best)
