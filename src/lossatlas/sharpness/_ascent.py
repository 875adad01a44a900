"""Projected gradient ascent on L(θ + T⊙u) over a ball ‖u‖₂ ≤ R or a box ‖u‖∞ ≤ 1, keeping the best
point actually evaluated, re-checked in float64 (the value of a worst-case sharpness is a lower
bound: the loss at a point of the set)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import params as P
from ..problem import Problem


@dataclass
class AscentResult:
    increase: float          # L64(θ + T⊙u*) − L64(θ)
    loss_center: float       # L64(θ)
    loss_witness: float      # L64(θ + T⊙u*)
    witness: dict            # θ + T⊙u* in the problem's dtype
    offset_norm: float       # ‖u*‖ (2 or ∞) in float64
    evaluations: int
    steps: int
    improved: int


def _float64(problem: Problem) -> Problem:
    return problem if problem.dtype == torch.float64 else problem.with_dtype(torch.float64)


def ascent(problem: Problem, theta: Mapping[str, Tensor], T: Tensor, *, norm: str, radius: float, steps: int,
           lr: float = 0.5, restarts: int = 0, seed: int = 0) -> AscentResult:
    """Maximise φ(u) = L(θ + T⊙u) over ‖u‖ ≤ radius (``norm="l2"``) or |uᵢ| ≤ radius (``norm="linf"``).

    Normalised steps: u ← Π(u + η·R·∇φ/‖∇φ‖₂) for the ball, u ← Π(u + η·R·sign ∇φ) for the box,
    ∇φ = T⊙∇L; η starts at ``lr`` and halves after a step that does not improve φ. Starts from the
    first-order maximiser (R·∇φ/‖∇φ‖, or R·sign ∇φ) and from ``restarts`` random points of the set.
    All arithmetic on u is in float64; the best point is re-evaluated in float64."""
    like = {k: v.detach() for k, v in theta.items()}
    t64 = P.flatten({k: v.to(torch.float64) for k, v in like.items()})
    T = T.to(torch.float64)
    dtype, device = problem.dtype, problem.device

    def point(u: Tensor) -> dict:
        return P.unflatten((t64 + T * u).to(dtype=dtype, device=device), like)

    def project(u: Tensor) -> Tensor:
        if norm == "linf":
            return u.clamp(-radius, radius)
        n = float(torch.linalg.vector_norm(u))
        return u * (radius / n) if n > radius else u

    def grad_u(u: Tensor) -> Tensor:
        g = P.flatten(problem.grad(point(u))).to(torch.float64).cpu()
        return T * g

    def step_dir(g: Tensor) -> Tensor:
        if norm == "linf":
            return radius * torch.sign(g)
        n = float(torch.linalg.vector_norm(g))
        return radius * g / n if n > 0 else torch.zeros_like(g)

    evaluations = 0
    f0 = problem.loss(point(torch.zeros_like(t64)))
    evaluations += 1
    best_u, best_f = torch.zeros_like(t64), f0
    gen = torch.Generator().manual_seed(int(seed))
    first = step_dir(grad_u(torch.zeros_like(t64)))
    if not bool(first.abs().max() > 0):  # a critical point: no first-order direction, start at random
        restarts = max(restarts, 1)
        starts = []
    else:
        starts = [first]
    for _ in range(restarts):
        r = torch.randn(t64.shape, generator=gen, dtype=torch.float64)
        ball = r * (radius / float(torch.linalg.vector_norm(r)))
        starts.append(project(r.sign() * radius if norm == "linf" else ball))
    taken = improved = 0
    for u in starts:
        u = project(u)
        f = problem.loss(point(u))
        evaluations += 1
        if math.isfinite(f) and f > best_f:
            best_u, best_f = u, f
        eta = lr
        for _ in range(steps):
            if eta < 1e-4 or not math.isfinite(f):
                break
            g = grad_u(u)
            cand = project(u + eta * step_dir(g))
            fc = problem.loss(point(cand))
            evaluations += 1
            taken += 1
            if math.isfinite(fc) and fc > f:
                u, f = cand, fc
                improved += 1
                if f > best_f:
                    best_u, best_f = u, f
            else:
                eta *= 0.5
    p64 = _float64(problem)
    like64 = {k: v.to(torch.float64) for k, v in like.items()}
    witness64 = P.unflatten((t64 + T * best_u).to(device=device), like64)
    l64 = p64.loss(witness64)
    c64 = p64.loss(P.unflatten(t64.to(device=device), like64))
    size = float(best_u.abs().max()) if norm == "linf" else float(torch.linalg.vector_norm(best_u))
    return AscentResult(l64 - c64, c64, l64, point(best_u), size, evaluations, taken, improved)
